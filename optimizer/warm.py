"""Carry solver state from one solve to the next, even when the problem's shape changes.

Every column and row of a part's HiGHS model gets a stable *key* that names what it is, not
where it sits: the current of session ``s`` in the step starting at absolute time ``t``; the
energy row of ``s``; the limit row of group ``g`` at ``t``; the target row of node ``n`` at ``t``
(and the columns that belong to those rows: shortfall segments, slacks, deviations). After a
change (a session arrives or leaves, a departure prediction moves, a DSO profile or a
demand-response step changes a limit, the grid rolls forward), the new model's columns and
rows are matched to the old ones by key and take over their basis status; new columns start
non-basic at a bound and new rows basic. HiGHS accepts such a basis as *alien* (it completes
or repairs it), and the dual simplex starts from there instead of from scratch. A part whose
arrays did not change at all is not solved again: its previous solution still holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np

from optimizer.lp_highs import HighsTwin, LpSolution
from optimizer.network import Network
from optimizer.problem import UNMET_SEGMENT_SLOPES, ChargingProblem

_LOWER = int(highspy.HighsBasisStatus.kLower)
_BASIC = int(highspy.HighsBasisStatus.kBasic)
_UPPER = int(highspy.HighsBasisStatus.kUpper)
_STEP_MARGIN = 1 << 20
"""Steps a later grid may start before the first one seen and still share its keys."""


def _key(family: int, name: np.ndarray | int, step: np.ndarray | int) -> np.ndarray:
    """One int64 key from a family tag (< 32), a name id (< 2^27) and a step (< 2^31)."""
    name_a = np.asarray(name, dtype=np.int64)
    step_a = np.asarray(step, dtype=np.int64)
    return ((np.int64(family) << np.int64(27)) + name_a) * np.int64(1 << 31) + step_a


@dataclass
class KeyBook:
    """Stable integer ids for session, group and node names, and a fixed step origin."""

    ids: dict[str, int] = field(default_factory=dict)
    step_s: int | None = None
    origin: int | None = None
    """Absolute step (start time / step length) that keys count from."""
    last: dict[str, tuple[Any, np.ndarray]] = field(default_factory=dict, repr=False)
    """Per family, the names last looked up and their ids (a live engine mostly sees the same
    sessions and groups again)."""

    def family(self, tag: str, names: Any, spelled: Callable[[], list[str]]) -> np.ndarray:
        """Ids of ``names`` (compared with ``==``) spelled out by ``spelled``; the same names
        as the last call of this family give the same (read-only) array."""
        last = self.last.get(tag)
        if last is not None and last[0] == names:
            return last[1]
        out = self.of(spelled())
        out.flags.writeable = False
        self.last[tag] = (names, out)
        return out

    def of(self, names: list[str]) -> np.ndarray:
        out = np.empty(len(names), dtype=np.int64)
        for k, name in enumerate(names):
            got = self.ids.get(name)
            if got is None:
                got = self.ids[name] = len(self.ids)
            out[k] = got
        return out

    def step0(self, net: Network) -> int | None:
        """Key step of the network's first step; None when its grid cannot share keys."""
        step_s = int(net.grid.step_s)
        absolute = int(net.grid.start.timestamp()) // step_s
        if self.step_s is None or self.origin is None:
            self.step_s, self.origin = step_s, absolute - _STEP_MARGIN
        if step_s != self.step_s or not 0 <= absolute - self.origin < (1 << 31) - net.steps:
            return None
        return absolute - self.origin


@dataclass
class NetKeys:
    """Stable ids of one compiled network's sessions, groups and target nodes."""

    session: np.ndarray
    group: np.ndarray
    target_node: np.ndarray
    step0: int
    steps: int

    @classmethod
    def of(cls, net: Network, book: KeyBook) -> NetKeys | None:
        step0 = book.step0(net)
        if step0 is None:
            return None
        kind, subject = net.groups.kind, net.groups.subject
        return cls(
            session=book.family(
                "s", list(net.session_ids), lambda: [f"s:{s}" for s in net.session_ids]
            ),
            group=book.family(
                "g",
                (list(kind), list(subject)),
                lambda: [f"g:{k}:{s}" for k, s in zip(kind, subject, strict=True)],
            ),
            target_node=book.of([f"t:{n}" for n in net.target_nodes]),
            step0=step0,
            steps=net.steps,
        )


@dataclass
class ModelKeys:
    """Key of every column and row of one part's model (layout of :class:`HighsTwin`)."""

    col: np.ndarray
    row: np.ndarray


def model_keys(p: ChargingProblem, target_rows: np.ndarray, keys: NetKeys) -> ModelKeys:
    """Keys of a part's columns ``[i | u | σ | d⁺ | d⁻ | z]`` and rows
    ``[energy | limits | targets | pause ≥ | pause ≤]``.

    ``target_rows`` are the part's target rows numbered in the whole problem (node-major over
    the grid's steps).
    """
    K = len(UNMET_SEGMENT_SLOPES)
    sid = keys.session[p.var_session]
    step = keys.step0 + p.var_step
    e_sid = keys.session[p.energy_session]
    g_id = keys.group[p.limit_group]
    g_step = keys.step0 + p.limit_step
    t_id = keys.target_node[target_rows // keys.steps]
    t_step = keys.step0 + target_rows % keys.steps
    b = p.binary_vars
    seg_name = np.repeat(e_sid, K)
    seg_k = np.tile(np.arange(K), e_sid.size)
    return ModelKeys(
        col=np.concatenate(
            [
                _key(1, sid, step),
                _key(5, seg_name, seg_k),
                _key(6, g_id, g_step),
                _key(7, t_id, t_step),
                _key(8, t_id, t_step),
                _key(9, sid[b], step[b]),
            ]
        ),
        row=np.concatenate(
            [
                _key(2, e_sid, 0),
                _key(3, g_id, g_step),
                _key(4, t_id, t_step),
                _key(10, sid[b], step[b]),
                _key(11, sid[b], step[b]),
            ]
        ),
    )


@dataclass
class WarmState:
    """What one solve leaves for the next, per part: keys, shape, solution and live model."""

    keys: list[ModelKeys | None]
    shape: list[bytes | None]
    """Per part, made when first needed (see ``source``)."""
    solution: list[LpSolution]
    models: list[Any]
    """The parts' live solver objects (their HiGHS models and bases)."""
    session_part: np.ndarray
    """Part of each stable session id (-1 where the session was not in the problem)."""
    problem: ChargingProblem | None = None
    """The whole problem solved (its matrices are shared when the next one has its layout)."""
    parts: list[Any] | None = None
    """Its parts (:class:`optimizer.decompose.Part`)."""
    source: Any = None
    """The partitioned twin that solved it: makes a part's keys and shape on demand."""


def _digest(arrays: list[np.ndarray]) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
        digest.update(str(a.shape).encode())
    return digest.digest()


def shape_fingerprint(p: ChargingProblem, keys: ModelKeys) -> bytes:
    """Columns, rows and matrix of a part by stable key: equal means a model can be updated in
    place (bounds, costs and right-hand sides only)."""
    arrays = [keys.col, keys.row, p.binary_vars, p.i_req_a[p.binary_vars]]
    for m in (p.energy_rows, p.limit_rows, p.target_rows):
        arrays += [m.indptr, m.indices, m.data]
    return _digest(arrays)


def basis_of(twin: HighsTwin) -> tuple[np.ndarray, np.ndarray]:
    """Column and row basis status of a solved model (empty when it has none)."""
    basis = twin.h.getBasis()
    if not basis.valid:
        return np.zeros(0, np.int8), np.zeros(0, np.int8)
    # columns left out of the model (fixed at 0) sit at their lower bound
    col = np.full(twin.ncol, _LOWER, dtype=np.int8)
    col[twin.cols] = np.fromiter((int(s) for s in basis.col_status), dtype=np.int8)
    row = np.fromiter((int(s) for s in basis.row_status), dtype=np.int8)
    return col, row


def _mapped(new: np.ndarray, old: np.ndarray, status: np.ndarray, default: int) -> np.ndarray:
    out = np.full(new.size, default, dtype=np.int8)
    if old.size == 0 or status.size != old.size:
        return out
    order = np.argsort(old, kind="stable")
    pos = np.searchsorted(old[order], new)
    pos = np.minimum(pos, old.size - 1)
    hit = old[order][pos] == new
    out[hit] = status[order][pos[hit]]
    return out


def warm_start(
    twin: HighsTwin,
    keys: ModelKeys,
    old_keys: ModelKeys,
    old_col: np.ndarray,
    old_row: np.ndarray,
) -> bool:
    """Give a fresh model the basis of an older one, matched by key; True when HiGHS took it."""
    if old_col.size == 0:
        return False
    col = _mapped(keys.col, old_keys.col, old_col, _LOWER)[twin.cols]
    row = _mapped(keys.row, old_keys.row, old_row, _BASIC)
    lp = twin.h.getLp()
    col_lo, col_hi = np.asarray(lp.col_lower_), np.asarray(lp.col_upper_)
    row_lo, row_hi = np.asarray(lp.row_lower_), np.asarray(lp.row_upper_)
    # a non-basic status must sit at a finite bound
    col[(col == _UPPER) & ~np.isfinite(col_hi)] = _LOWER
    col[(col == _LOWER) & ~np.isfinite(col_lo)] = _UPPER
    nb_row = row != _BASIC
    row[nb_row & (row == _LOWER) & ~np.isfinite(row_lo)] = _UPPER
    row[nb_row & (row == _UPPER) & ~np.isfinite(row_hi)] = _LOWER
    basis = highspy.HighsBasis()
    basis.col_status = [highspy.HighsBasisStatus(int(s)) for s in col]
    basis.row_status = [highspy.HighsBasisStatus(int(s)) for s in row]
    basis.alien = True
    basis.valid = True
    return bool(twin.h.setBasis(basis) == highspy.HighsStatus.kOk)

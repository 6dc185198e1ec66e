"""Split the scheduling LP into independent parts and solve them side by side.

Two sessions are coupled only through a row they share: a limit row (station, subcluster, DSO
cap), a target row of a DSO profile, or their own energy row. The connected components of that
graph are usually the DSO regions (every limit nests under a region's root node). The objective
is a sum over columns, every row lies in one component, so the LP is the direct sum of the
component LPs: solving each part to optimality *is* solving the whole LP to optimality, and the
objective is the sum of the parts' objectives. Nothing is approximated.

Parts are components, with small ones packed together (:data:`MIN_PART_VARS`) so that a
thousand isolated stations do not become a thousand solver calls. A :class:`PartitionedTwin`
keeps one live HiGHS model per part and offers the interface of
:class:`~optimizer.lp_highs.HighsTwin`: ``solve()`` re-solves only the parts whose bounds
changed, each warm from its previous basis. The parts run on a thread pool (``highspy``
releases the GIL while it solves) or, given a scheduler address, as actors on a Dask
distributed cluster (:mod:`optimizer.distributed`), where each part's model stays on its worker
between solves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from optimizer.lp_highs import HighsTwin, LpSolution
from optimizer.problem import UNMET_SEGMENT_SLOPES, ChargingProblem
from optimizer.warm import (
    KeyBook,
    ModelKeys,
    NetKeys,
    WarmState,
    basis_of,
    model_keys,
    shape_fingerprint,
    warm_start,
)

MIN_PART_VARS = 20_000
"""Components smaller than this many current variables are packed into shared parts."""


def session_components(problem: ChargingProblem) -> np.ndarray:
    """Component label of every session: sessions sharing a limit or target row get one label.

    Returns
    -------
    numpy.ndarray
        ``n_sessions`` integer labels ``0..k-1``.
    """
    net = problem.net
    assert net is not None, "components are found on a whole problem"
    n = net.n_sessions
    links: list[sp.csr_matrix] = []
    bound = np.unique(problem.limit_group)
    if bound.size:
        links.append(net.groups.coef.tocsr()[bound])
    for node in net.target_nodes:
        members = net.node_members[node]
        links.append(
            sp.csr_matrix(
                (np.ones(members.size), (np.zeros(members.size, np.int64), members)),
                shape=(1, n),
            )
        )
    if not links:
        return np.arange(n)
    incidence = sp.vstack(links, format="csr")  # rows × sessions
    r = incidence.shape[0]
    graph = sp.bmat([[None, incidence], [incidence.T, None]], format="csr")
    _, labels = connected_components(graph, directed=False)
    session_label = labels[r:]
    _, compact = np.unique(session_label, return_inverse=True)
    return np.asarray(compact)


def pack_parts(session_label: np.ndarray, vars_per_session: np.ndarray) -> np.ndarray:
    """Part of every session: each large component alone, small ones packed together.

    Components of at least :data:`MIN_PART_VARS` variables are parts of their own; the others
    fill shared parts up to that size, largest first. Labels are ordered by the smallest
    session index in the part, so the split is the same whatever the machine.
    """
    if session_label.size == 0:
        return session_label
    k = int(session_label.max()) + 1
    size = np.bincount(session_label, weights=vars_per_session, minlength=k)
    part_of = np.full(k, -1, dtype=np.int64)
    big = np.nonzero(size >= max(MIN_PART_VARS, 1))[0]
    part_of[big] = np.arange(big.size)
    next_part, fill = big.size, 0.0
    for comp in np.argsort(-size, kind="stable"):
        if part_of[comp] >= 0:
            continue
        if size[comp] == 0 and next_part > 0:
            part_of[comp] = 0  # sessions without variables change no part
            continue
        if fill > 0 and fill + size[comp] > MIN_PART_VARS:
            next_part, fill = next_part + 1, 0.0
        part_of[comp] = next_part
        fill += size[comp]
    labels = part_of[session_label]
    # canonical order: by first session
    first = np.full(labels.max() + 1, session_label.size)
    np.minimum.at(first, labels, np.arange(labels.size))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return np.asarray(rank[labels])


@dataclass
class Part:
    """One independent piece of a problem.

    Attributes
    ----------
    problem : ChargingProblem
        The part's LP (``net`` is ``None``; ``var_session`` keeps whole-problem sessions).
    var : numpy.ndarray
        Whole-problem index of each of the part's current variables.
    limit_rows, energy_rows, target_rows : numpy.ndarray
        Whole-problem index of each of the part's rows of that family.
    """

    problem: ChargingProblem
    var: np.ndarray
    limit_rows: np.ndarray
    energy_rows: np.ndarray
    target_rows: np.ndarray


def _rows_in(rows: sp.csr_matrix, var_part: np.ndarray, n_parts: int) -> np.ndarray:
    """Part of each row, from the part of its first entry (-1 for a row without entries)."""
    out = np.full(rows.shape[0], -1, dtype=np.int64)
    has = np.diff(rows.indptr) > 0
    out[has] = var_part[rows.indices[rows.indptr[:-1][has]]]
    return out


def split_problem(problem: ChargingProblem, session_part: np.ndarray) -> list[Part]:
    """Cut a problem into parts along ``session_part`` (which must not cut any row).

    Target rows without entries (no car plugged in under that node in that step) still carry
    a constant deviation cost; they go to the part holding the node's other rows, else part 0,
    so the parts' objectives add up to the whole objective.
    """
    p = problem
    n_parts = int(session_part.max()) + 1 if session_part.size else 1
    var_part = session_part[p.var_session]
    e_part = session_part[p.energy_session]
    l_part = _rows_in(p.limit_rows, var_part, n_parts)
    t_part = _rows_in(p.target_rows, var_part, n_parts)
    if t_part.size:
        assert p.net is not None, "a whole problem is split"
        node = np.arange(t_part.size) // p.net.steps
        for k in np.unique(node):
            rows = node == k
            known = t_part[rows][t_part[rows] >= 0]
            t_part[rows & (t_part < 0)] = known[0] if known.size else 0
    if l_part.size and (l_part < 0).any():
        l_part[l_part < 0] = 0
    K = len(UNMET_SEGMENT_SLOPES)
    u_hi = p.u_hi_kwh.reshape(-1, K)
    parts = []
    for k in range(n_parts):
        var = np.nonzero(var_part == k)[0]
        erows = np.nonzero(e_part == k)[0]
        lrows = np.nonzero(l_part == k)[0]
        trows = np.nonzero(t_part == k)[0]
        local = np.full(p.n_vars, -1, dtype=np.int64)
        local[var] = np.arange(var.size)
        binary = local[p.binary_vars]
        sub = ChargingProblem(
            net=None,
            weights=p.weights,
            dt_h=p.dt_h,
            var_session=p.var_session[var],
            var_step=p.var_step[var],
            i_lo_a=p.i_lo_a[var].copy(),
            i_hi_a=p.i_hi_a[var].copy(),
            i_req_a=p.i_req_a[var],
            i_cost_per_a=p.i_cost_per_a[var],
            kwh_per_a=p.kwh_per_a[var],
            kw_per_a=p.kw_per_a[var],
            energy_session=p.energy_session[erows],
            need_eff_kwh=p.need_eff_kwh[erows],
            u_hi_kwh=u_hi[erows].ravel(),
            energy_rows=p.energy_rows[erows][:, var],
            limit_rows=p.limit_rows[lrows][:, var],
            limit_rhs=p.limit_rhs[lrows],
            limit_group=p.limit_group[lrows],
            limit_step=p.limit_step[lrows],
            target_rows=p.target_rows[trows][:, var],
            target_kw=p.target_kw[trows],
            binary_vars=binary[binary >= 0],
            var_of=np.zeros((0, 0), dtype=np.int64),
        )
        parts.append(Part(sub, var, lrows, erows, trows))
    return parts


def _same_matrices(a: ChargingProblem, b: ChargingProblem | None) -> bool:
    """True when ``a`` shares the constraint matrices of ``b`` (built with ``like=b``)."""
    return (
        b is not None
        and a.energy_rows is b.energy_rows
        and a.limit_rows is b.limit_rows
        and a.target_rows is b.target_rows
    )


def resplit(problem: ChargingProblem, old: Part) -> Part:
    """``old``'s part of ``problem``, which has the layout of the problem ``old`` was cut from:
    the same columns, rows and matrices, the bounds, costs and right-hand sides of
    ``problem``."""
    p, sub = problem, old.problem
    K = len(UNMET_SEGMENT_SLOPES)
    var, erows, lrows, trows = old.var, old.energy_rows, old.limit_rows, old.target_rows
    new = ChargingProblem(
        net=None,
        weights=p.weights,
        dt_h=p.dt_h,
        var_session=sub.var_session,
        var_step=sub.var_step,
        i_lo_a=p.i_lo_a[var],
        i_hi_a=p.i_hi_a[var],
        i_req_a=p.i_req_a[var],
        i_cost_per_a=p.i_cost_per_a[var],
        kwh_per_a=sub.kwh_per_a,
        kw_per_a=sub.kw_per_a,
        energy_session=sub.energy_session,
        need_eff_kwh=p.need_eff_kwh[erows],
        u_hi_kwh=p.u_hi_kwh.reshape(-1, K)[erows].ravel(),
        energy_rows=sub.energy_rows,
        limit_rows=sub.limit_rows,
        limit_rhs=p.limit_rhs[lrows],
        limit_group=sub.limit_group,
        limit_step=sub.limit_step,
        target_rows=sub.target_rows,
        target_kw=p.target_kw[trows],
        binary_vars=sub.binary_vars,
        var_of=sub.var_of,
    )
    return Part(new, var, lrows, erows, trows)


class _LazyTwin:
    """A part's :class:`HighsTwin`, built on first use (in the solving thread).

    With a ``prior`` (the same part's model from the previous solve of a live engine), the
    model is the prior one updated in place when the shape is unchanged (``how = "inplace"``:
    HiGHS keeps basis and factorisation; ``how = "reused"`` when nothing changed at all, and
    the prior's solution ``kept`` is returned without a solve), or a new one started from the
    prior's basis matched by key (``how = "mapped"``).
    """

    def __init__(
        self,
        problem: ChargingProblem,
        options: dict[str, Any],
        keys: ModelKeys | None = None,
        prior: _LazyTwin | None = None,
        inplace: bool = False,
        kept: LpSolution | None = None,
    ) -> None:
        self.problem = problem
        self.options = options
        self.keys = keys
        self.prior = prior
        self.inplace = inplace
        self.kept = kept
        self.twin: HighsTwin | None = None
        self.how = "cold"
        self.repaired = False
        self.deadline: float | None = None
        """End of the solve's wall-clock budget (``time.perf_counter`` time)."""

    def _get(self) -> HighsTwin:
        if self.twin is not None:
            return self.twin
        prior, self.prior = self.prior, None  # let the old model go once used
        old = prior.twin if prior is not None else None
        if old is not None and self.inplace:
            changed = old.update(self.problem)
            self.twin = old
            if changed or self.kept is None or self.kept.status != "optimal":
                self.how, self.kept = "inplace", None
            else:
                self.how = "reused"
            return old
        self.kept = None
        self.twin = HighsTwin(self.problem, **self.options)
        old_keys = prior.keys if prior is not None else None
        if old is None or old_keys is None or self.keys is None:
            return self.twin
        if warm_start(self.twin, self.keys, old_keys, *basis_of(old)):
            self.how = "mapped"
        return self.twin

    def solve(self) -> LpSolution:
        twin = self._get()
        if self.kept is not None:  # the same LP as the prior's: its optimum holds
            kept, self.kept = self.kept, None
            return dataclasses.replace(kept, time_s=0.0)
        if self.deadline is not None:
            # the budget is wall time for the whole problem: a part gets what is left of it
            left = self.deadline - time.perf_counter()
            if left <= 0:
                n = self.problem.n_vars
                return LpSolution(np.zeros(n), "failed", float("nan"), None, 0.0, np.zeros(0))
            twin.h.setOptionValue("time_limit", float(left))
        return twin.solve()

    def set_current_lower(self, var: np.ndarray, lo_a: np.ndarray) -> None:
        self.repaired = True
        self._get().set_current_lower(var, lo_a)
        self.kept = None


class PartitionedTwin:
    """Live models of the independent parts of one problem, solved side by side.

    Parameters
    ----------
    problem : ChargingProblem
    time_limit_s : float | None
        Budget of each part's solve [s].
    mip_rel_gap : float
    workers : int | None
        Parts solved at the same time on this machine (default: the number of cores).
    scheduler : str | None
        Address of a Dask distributed scheduler (``tcp://host:port``); the parts then live as
        actors on its workers.
    book, warm : KeyBook, WarmState, optional
        For a live engine (:class:`optimizer.engine.LiveEngine`): stable names, and what the
        previous solve left. A part equal to a previous one keeps its solution without a
        solve; a part with the same shape is updated in place and re-solved from its basis;
        a part whose shape changed is solved cold (with presolve), or with ``map_bases`` from
        the previous basis matched by key (:mod:`optimizer.warm`).
    map_bases : bool
        Start reshaped parts from a mapped basis instead of cold.
    net_keys : NetKeys | None
        The network's stable ids, when the caller has them already (else made from ``book``).
    """

    name = "highs"

    def __init__(
        self,
        problem: ChargingProblem,
        *,
        time_limit_s: float | None = None,
        mip_rel_gap: float = 1e-4,
        workers: int | None = None,
        scheduler: str | None = None,
        book: KeyBook | None = None,
        warm: WarmState | None = None,
        map_bases: bool = False,
        net_keys: NetKeys | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.map_bases = map_bases
        self.p = problem
        warm_layout = (
            warm is not None
            and warm.parts is not None
            and _same_matrices(problem, warm.problem)
            and problem.binary_vars.size == 0
        )
        if warm_layout and warm is not None and warm.parts is not None:
            # the previous problem's layout: the same parts, with new bounds and costs
            self.parts = [resplit(problem, pt) for pt in warm.parts]
        else:
            labels = pack_parts(session_components(problem), self._vars_per_session())
            self.parts = split_problem(problem, labels)
        n = len(self.parts)
        self.dirty = [True] * n
        self.last: list[LpSolution | None] = [None] * n
        self.warm_layout = warm_layout
        # expected solve time of each part (sorts the queue): cold parts by size, first
        self.expect_s = [1e3 + pt.var.size for pt in self.parts]
        # with the previous layout, the sessions are in the same parts as before
        self._session_part = warm.session_part if warm_layout and warm is not None else None
        self.scheduler = scheduler
        self._pool: ThreadPoolExecutor | None = None
        if net_keys is None and book is not None and problem.net is not None:
            net_keys = NetKeys.of(problem.net, book)
        self.net_keys = net_keys
        # stable keys and shape fingerprints of the parts, made when first needed: with the
        # previous layout they are the previous ones, and after a reshaping change (a rolled
        # grid) a part whose sizes differ from its predecessor's cannot have its shape
        self.keys: list[ModelKeys | None] = [None] * n
        self.shapes: list[bytes | None] = [None] * n
        if self.net_keys is not None and warm_layout and warm is not None:
            self.keys, self.shapes = warm.keys, warm.shape
        options = {"time_limit_s": time_limit_s, "mip_rel_gap": mip_rel_gap}
        self.solvers: list[Any]
        if scheduler is not None:
            from optimizer.distributed import remote_solvers

            self.solvers = remote_solvers(scheduler, [pt.problem for pt in self.parts], options)
        else:
            # each part's model is built by the task that first solves it, so one thread builds
            # (holding the GIL) while the other solves (HiGHS releases it)
            self._pool = ThreadPoolExecutor(max_workers=workers or None)
            self.solvers = self._local_solvers(options, warm)
            deadline = None if time_limit_s is None else t0 + time_limit_s
            for solver in self.solvers:  # kept models too: this solve's budget
                if isinstance(solver, _LazyTwin):
                    solver.deadline = deadline
        self.owner = np.empty(problem.n_vars, dtype=np.int64)
        self.local = np.empty(problem.n_vars, dtype=np.int64)
        for k, pt in enumerate(self.parts):
            self.owner[pt.var] = k
            self.local[pt.var] = np.arange(pt.var.size)
        self.build_time_s = time.perf_counter() - t0

    def key_of(self, k: int) -> ModelKeys:
        """Stable keys of part ``k``'s columns and rows."""
        got = self.keys[k]
        if got is None:
            assert self.net_keys is not None, "keys need the network's stable ids"
            pt = self.parts[k]
            got = self.keys[k] = model_keys(pt.problem, pt.target_rows, self.net_keys)
        return got

    def shape_of(self, k: int) -> bytes:
        """Shape fingerprint of part ``k`` (:func:`optimizer.warm.shape_fingerprint`)."""
        got = self.shapes[k]
        if got is None:
            got = self.shapes[k] = shape_fingerprint(self.parts[k].problem, self.key_of(k))
        return got

    def _local_solvers(self, options: dict[str, Any], warm: WarmState | None) -> list[Any]:
        """One lazily built model per part; with a previous state, reuse what still holds."""
        n = len(self.parts)
        mapped = self.map_bases and self.net_keys is not None
        if warm is None or self.net_keys is None:
            return [
                _LazyTwin(pt.problem, options, self.key_of(k) if mapped else None)
                for k, pt in enumerate(self.parts)
            ]
        solvers: list[Any] = []
        taken: set[int] = set()
        for k, pt in enumerate(self.parts):
            # the same layout: part k holds the sessions it held before
            j = k if self.warm_layout else self._prior_part(pt, warm, self.net_keys)
            prior = warm.models[j] if j >= 0 else None
            usable = isinstance(prior, _LazyTwin) and not prior.repaired
            same = usable and j not in taken and self._same_shape(k, warm, j)
            inplace = bool(same) and self.parts[k].problem.binary_vars.size == 0
            if inplace:
                taken.add(j)
                self.expect_s[k] = warm.solution[j].time_s
            # another shape: a basis mapped by key only when asked for (HiGHS skips presolve
            # when it starts from a basis, which measured slower than a cold solve at scale)
            keep = usable and (inplace or self.map_bases)
            solvers.append(
                _LazyTwin(
                    pt.problem,
                    options,
                    keys=self.key_of(k) if mapped else None,
                    prior=prior if keep else None,
                    inplace=inplace,
                    # in place with nothing changed: the same LP, its optimum holds
                    kept=warm.solution[j] if inplace else None,
                )
            )
        assert len(solvers) == n
        return solvers

    def _same_shape(self, k: int, warm: WarmState, j: int) -> bool:
        """Part ``k`` has the shape of the previous part ``j``."""
        if self.warm_layout:
            return k == j  # the same layout, cut the same way
        if warm.parts is None or warm.source is None:
            return False
        a, b = self.parts[k].problem, warm.parts[j].problem
        sizes = (
            (p.n_vars, p.energy_session.size, p.limit_rhs.size, p.target_kw.size) for p in (a, b)
        )
        if next(sizes) != next(sizes):
            return False
        return bool(warm.source.shape_of(j) == self.shape_of(k))

    @staticmethod
    def _prior_part(part: Part, warm: WarmState, keys: NetKeys) -> int:
        """The previous part that held most of this part's sessions (-1: none)."""
        sid = keys.session[np.unique(part.problem.var_session)]
        sid = sid[sid < warm.session_part.size]
        old = warm.session_part[sid]
        old = old[old >= 0]
        return int(np.bincount(old).argmax()) if old.size else -1

    def how(self) -> dict[str, int]:
        """How many parts were reused without a solve, updated in place, started from a mapped
        basis, or built cold."""
        out = {"reused": 0, "inplace": 0, "mapped": 0, "cold": 0}
        for solver in self.solvers:
            out[solver.how if isinstance(solver, _LazyTwin) else "cold"] += 1
        return out

    def state(self) -> WarmState | None:
        """What the next solve of a live engine starts from (None without stable names)."""
        if self.net_keys is None or self.scheduler is not None:
            return None
        if any(s is None for s in self.last):
            return None
        if self._session_part is not None:
            session_part = self._session_part
        else:
            size = int(self.net_keys.session.max(initial=-1)) + 1
            session_part = np.full(size, -1, np.int64)
            for k, pt in enumerate(self.parts):
                session_part[self.net_keys.session[np.unique(pt.problem.var_session)]] = k
        return WarmState(
            keys=self.keys,
            shape=self.shapes,
            source=self,
            solution=[s for s in self.last if s is not None],
            models=list(self.solvers),
            session_part=session_part,
            problem=self.p,
            parts=self.parts,
        )

    def _vars_per_session(self) -> np.ndarray:
        net = self.p.net
        assert net is not None
        return np.bincount(self.p.var_session, minlength=net.n_sessions).astype(float)

    @property
    def n_parts(self) -> int:
        return len(self.parts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def set_current_lower(self, var: np.ndarray, lo_a: np.ndarray) -> None:
        """Raise the lower bounds of some currents; only their parts solve again."""
        if var.size == 0:
            return
        self.p.i_lo_a[var] = lo_a
        owner = self.owner[var]
        for k in np.unique(owner):
            mine = owner == k
            self.solvers[k].set_current_lower(self.local[var[mine]], lo_a[mine])
            self.dirty[k] = True

    def _run(self, calls: Sequence[Callable[[], LpSolution]]) -> list[LpSolution]:
        if self.scheduler is not None:
            from optimizer.distributed import gather

            return gather([call() for call in calls])
        assert self._pool is not None
        return list(self._pool.map(lambda call: call(), calls))

    def solve(self) -> LpSolution:
        """Solve the parts whose bounds changed (all on the first call) and assemble."""
        t0 = time.perf_counter()
        # longest first, so that the threads finish together: a part's last solve time, or
        # its size before it has one (cold solves first)
        todo = sorted(
            (k for k, d in enumerate(self.dirty) if d),
            key=lambda k: -self.expect_s[k],
        )
        fresh = self._run([self.solvers[k].solve for k in todo])
        for k, sol in zip(todo, fresh, strict=True):
            self.last[k] = sol
            self.dirty[k] = sol.status != "optimal"
            self.expect_s[k] = sol.time_s
        sols = [s for s in self.last if s is not None]
        elapsed = time.perf_counter() - t0
        x = np.zeros(self.p.n_vars)
        slack = np.zeros(self.p.limit_rhs.size)
        for pt, sol in zip(self.parts, sols, strict=True):
            x[pt.var] = sol.x
            if sol.slack.size:
                slack[pt.limit_rows] = sol.slack
        statuses = {s.status for s in sols}
        status = next((st for st in ("failed", "time_limit") if st in statuses), "optimal")
        gaps = [s.gap for s in sols]
        gap = None if None in gaps else max((g for g in gaps if g is not None), default=0.0)
        return LpSolution(
            x=x,
            status=status,
            objective=float(sum(s.objective for s in sols)),
            gap=gap,
            time_s=elapsed,
            slack=slack,
        )


def _sizes(p: ChargingProblem) -> tuple[int, int, int, int]:
    """Columns and rows of a part's LP: parts of another size have another shape."""
    return (p.n_vars, p.energy_session.size, p.limit_rhs.size, p.target_kw.size)


def part_sizes(twin: PartitionedTwin) -> list[int]:
    """Current variables per part (for reports)."""
    return [int(pt.var.size) for pt in twin.parts]

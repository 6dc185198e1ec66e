"""Assemble the schedule file (``gridcharge.schedule/1``) from a current matrix.

The numbers reported here (energy, node power, violations, KPIs) are recomputed from the rounded
currents that are written out, so the file is consistent with itself; the independent checker
(:mod:`optimizer.checker`) verifies that from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from optimizer.collector import gc_paused
from optimizer.network import UNIT_OF_KIND, Network, gather
from optimizer.problem import required_level_a
from optimizer.uncontrolled import node_power_matrix_kw

SCHEDULE_FORMAT = "gridcharge.schedule/1"
CURRENT_DECIMALS = 4
TOL = 1e-4
"""Excess [A] or [kW] below which a limit counts as held (the checker allows 1e-3)."""


def round_currents(current_a: np.ndarray) -> np.ndarray:
    """Currents as written to the file: rounded down to 1e-4 A, so rounding never creates an
    excess over a limit; never negative."""
    scale = 10.0**CURRENT_DECIMALS
    out = np.multiply(current_a, scale)  # one new array, the rest in place
    out += 1e-6
    np.floor(out, out=out)
    out /= scale
    return np.maximum(out, 0.0, out=out)


def session_energy_kwh(net: Network, current_a: np.ndarray) -> np.ndarray:
    """Delivered energy per session [kWh]: ``Σ_t i[s,t] · n_s · V/1000 · Δt``."""
    return current_a.sum(axis=1) * net.kw_per_a * net.dt_h


def limit_violations(net: Network, current_a: np.ndarray, tol: float = TOL) -> list[dict[str, Any]]:
    """Every (group, step) whose sum exceeds its limit, as schedule ``violations`` entries."""
    g = net.groups
    if g.n == 0:
        return []
    excess = g.coef @ current_a - g.limit
    rows, steps = np.nonzero(excess > tol)
    return [
        {
            "kind": g.kind[r],
            "node": g.subject[r],
            "step": int(t),
            "amount": round(float(excess[r, t]), 6),
            "unit": UNIT_OF_KIND[g.kind[r]],
        }
        for r, t in zip(rows, steps, strict=True)
    ]


def no_pause_dips(net: Network, current_a: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Boolean ``sessions × steps``: below the no-pause level while not full and not filling.

    The rule of ``docs/formats.md`` (kinds ``min_current`` and ``opt_out``); pause-consent
    sessions are exempt. See :func:`no_pause_dip_cells`.
    """
    sessions, steps = no_pause_dip_cells(net, current_a, tol)
    dips = np.zeros(current_a.shape, dtype=bool)
    dips[sessions, steps] = True
    return dips


def no_pause_dip_cells(
    net: Network, current_a: np.ndarray, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Session and step of every cell of :func:`no_pause_dips`, session-major.

    Works on the plugged-in cells only (a fraction of the day) when the schedule has no current
    outside them, as every schedule of the product.
    """
    cell_s, cell_t, run_start = present_cells(net)
    cur = present_values(net, current_a)
    if np.count_nonzero(cur) != np.count_nonzero(current_a):
        rows, cols = np.nonzero(_no_pause_dips_dense(net, current_a, tol))
        return rows, cols
    kwh, req = _cell_constants(net)
    e_step = cur * kwh
    total = np.cumsum(e_step)
    # only cells below their level can be dips: the energy test runs on those alone
    low = np.flatnonzero(cur < req - tol)
    low = low[~net.pause_consent[cell_s[low]]]
    # energy before each cell within its session: the running total less the total before the
    # session's first cell
    first = run_start[low]
    e_before = total[low] - e_step[low] - (total[first] - e_step[first])
    e_after = e_before + e_step[low]
    need = net.need_kwh[cell_s[low]]
    has_need = ~np.isnan(need)
    not_full = ~has_need | (e_before < need - 1e-3)
    filling = has_need & (e_after >= need - 1e-3)
    dip = low[not_full & ~filling]
    return cell_s[dip], cell_t[dip]


def prepare(net: Network) -> None:
    """Compute the per-network arrays the checks of a schedule use (plugged-in cells, their
    levels, node membership), so that a solver can have them ready while it solves. The node
    membership first: the levels need :func:`optimizer.problem.required_level_a`, which the
    greedy anchor computes at its start on another thread."""
    node_power_matrix_kw(net, np.zeros((net.n_sessions, 0)))
    present_cells(net)
    _cell_constants(net)


def _cell_constants(net: Network) -> tuple[np.ndarray, np.ndarray]:
    """Energy per ampere [kWh/A] and no-pause level [A] of every plugged-in cell (in the order
    of :func:`present_cells`). Computed once per network."""
    if "cell_kwh_per_a" not in net._memo:
        cell_s = present_cells(net)[0]
        kwh = (net.kw_per_a * net.dt_h)[cell_s]
        req = present_values(net, required_level_a(net))
        kwh.flags.writeable = False
        req.flags.writeable = False
        net._memo["cell_level_a"] = req
        net._memo["cell_kwh_per_a"] = kwh  # last: its presence means both are there
    return net._memo["cell_kwh_per_a"], net._memo["cell_level_a"]


def present_cells(net: Network) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Session and step of every plugged-in cell (session-major), and for each cell the
    position of its session's first cell. Computed once per network."""
    cached = net._memo.get("present_cells")
    if cached is None:
        stay = net.end - net.first
        start = np.cumsum(stay) - stay  # position of each session's first cell
        cell_s = np.repeat(np.arange(net.n_sessions), stay)
        run_start = np.repeat(start, stay)
        cell_t = np.arange(cell_s.size) - run_start + np.repeat(net.first, stay)
        flat = cell_s * net.steps + cell_t
        for name, a in (
            ("cell_s", cell_s),
            ("cell_t", cell_t),
            ("run_start", run_start),
            ("flat", flat),
        ):
            a.flags.writeable = False
            net._memo[f"present_cells.{name}"] = a
        net._memo["present_cells"] = cell_s
    memo = net._memo
    return (
        memo["present_cells.cell_s"],
        memo["present_cells.cell_t"],
        memo["present_cells.run_start"],
    )


def present_values(net: Network, matrix: np.ndarray) -> np.ndarray:
    """The entries of a ``sessions × steps`` matrix at the plugged-in cells, in the order of
    :func:`present_cells`."""
    present_cells(net)
    return gather(matrix, net._memo["present_cells.flat"])


def _no_pause_dips_dense(net: Network, current_a: np.ndarray, tol: float) -> np.ndarray:
    """:func:`no_pause_dips` for any matrix, current outside the stays included."""
    present = net.presence()
    e_step = current_a * (net.kw_per_a * net.dt_h)[:, None]
    e_after = np.cumsum(e_step, axis=1)
    e_before = e_after - e_step
    need = net.need_kwh[:, None]
    has_need = ~np.isnan(need)
    not_full = np.where(has_need, e_before < need - 1e-3, True)
    filling = np.where(has_need, e_after >= need - 1e-3, False)
    req = required_level_a(net)
    dips = present & not_full & ~filling & (current_a < req - tol)
    dips[net.pause_consent] = False
    return dips


def pause_level_breaks(net: Network, current_a: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Boolean ``sessions × steps``: a pause-consent session between 0 and its minimum.

    Such a session may be paused (0 A) or charge at least its minimum; less than the minimum
    is allowed only in the step it becomes full (kind ``pause_current`` in ``docs/formats.md``).
    """
    if not net.pause_consent.any():
        return np.zeros(current_a.shape, dtype=bool)
    e_step = current_a * (net.kw_per_a * net.dt_h)[:, None]
    e_after = np.cumsum(e_step, axis=1)
    need = net.need_kwh[:, None]
    filling = np.where(~np.isnan(need), e_after >= need - 1e-3, False)
    between = (current_a > tol) & (current_a < net.min_a[:, None] - tol)
    return between & ~filling & net.pause_consent[:, None]


def _row_lists(
    grid: tuple[datetime, int, int],
    keys: list[str],
    matrix: np.ndarray,
    prior: RowMemo | None,
    convert: Callable[[np.ndarray], list[list[float]]],
) -> list[list[float]]:
    """``convert(matrix)``, taking the lists of ``prior`` for rows equal to its row of the same
    key on the same grid."""
    if prior is None or prior.grid != grid:
        return convert(matrix)
    n = len(keys)
    if prior.keys == keys:
        rows = np.arange(n)
        same = (prior.matrix == matrix).all(axis=1)
    else:
        where = {key: k for k, key in enumerate(prior.keys)}
        rows = np.fromiter((where.get(key, -1) for key in keys), np.int64, n)
        known = np.flatnonzero(rows >= 0)
        same = np.zeros(n, dtype=bool)
        same[known] = (prior.matrix[rows[known]] == matrix[known]).all(axis=1)
    fresh = np.flatnonzero(~same)
    out: list[list[float]] = [prior.lists[k] for k in np.where(same, rows, 0).tolist()]
    for k, row in zip(fresh.tolist(), convert(matrix[fresh]), strict=True):
        out[k] = row
    return out


def current_lists(current_a: np.ndarray, net: Network | None = None) -> list[list[float]]:
    """Rows of a ``sessions × steps`` matrix as lists of floats, cheaply: only the span from a
    row's first to its last non-zero entry is converted; the zeros around it are one shared
    ``0.0`` (a day has far more idle than charging steps). With the network, a schedule with
    no current outside the stays is converted stay by stay."""
    steps = current_a.shape[1]
    if net is not None:
        values = present_values(net, current_a)
        if np.count_nonzero(values) == np.count_nonzero(current_a):
            # nothing outside the stays: each row is its stay's values between zeros
            flat = values.tolist()
            zeros = [0.0] * steps
            out = []
            pos = 0
            for a, b in zip(net.first.tolist(), net.end.tolist(), strict=True):
                out.append(zeros[:a] + flat[pos : pos + b - a] + zeros[b:])
                pos += b - a
            return out
    nonzero = current_a != 0
    has = nonzero.any(axis=1)
    lo = np.where(has, nonzero.argmax(axis=1), 0)
    hi = np.where(has, steps - nonzero[:, ::-1].argmax(axis=1), 0)
    t = np.arange(steps)
    values = current_a[(t >= lo[:, None]) & (t < hi[:, None])].tolist()
    zeros = [0.0] * steps
    out = []
    pos = 0
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        out.append(zeros[:a] + values[pos : pos + b - a] + zeros[b:])
        pos += b - a
    return out


@dataclass
class RowMemo:
    """The session rows of the last schedule a live engine built, so that the next schedule
    converts only the rows that changed (most of them do not after a small change)."""

    grid: tuple[datetime, int, int]
    keys: list[str]
    """Session or node ids of the rows."""
    matrix: np.ndarray
    """The values as written (rounded currents [A] or node powers [kW]; read-only)."""
    lists: list[list[float]]


def build_schedule(
    net: Network,
    current_a: np.ndarray,
    *,
    method: str,
    status: str,
    solver: dict[str, Any],
    reason: str | None = None,
    memo: list[RowMemo] | None = None,
) -> dict[str, Any]:
    """The schedule dict for ``current_a`` (``sessions × steps`` [A]).

    ``status`` is downgraded to ``infeasible_limits`` when a limit is exceeded. ``memo``: a
    live engine's list holding the session and node rows of its previous schedule (replaced
    by this schedule's); a row equal to its previous one is copied instead of converted.
    """
    with gc_paused(promote=True):
        return _build_schedule(net, current_a, method, status, solver, reason, memo)


def _build_schedule(
    net: Network,
    current_a: np.ndarray,
    method: str,
    status: str,
    solver: dict[str, Any],
    reason: str | None,
    memo: list[RowMemo] | None = None,
) -> dict[str, Any]:
    cur = round_currents(current_a)
    # the node powers and the limit sums are sparse products, which run without the GIL: on
    # a second thread they overlap the session checks and lists below
    with ThreadPoolExecutor(max_workers=1) as pool:
        sums = pool.submit(lambda: (node_power_matrix_kw(net, cur), limit_violations(net, cur)))
        energy = session_energy_kwh(net, cur)
        need = net.need_kwh
        unmet = np.where(np.isnan(need), np.nan, np.maximum(np.nan_to_num(need) - energy, 0.0))
        dips = no_pause_dip_cells(net, cur, tol=1e-3)
        power_m, violations = sums.result()
    power = dict(zip(net.node_members, power_m, strict=True))
    level = required_level_a(net)
    for s, t in zip(*dips, strict=True):
        # an opt-out session below its share breaks the opt-out rule, and below the station
        # minimum also the minimum-current rule
        shortfalls = [("min_current", float(net.min_a[s] - cur[s, t]))]
        if net.opt_out[s]:
            shortfalls.append(("opt_out", float(level[s, t] - cur[s, t])))
        for kind, amount in shortfalls:
            if amount > 1e-3:
                violations.append(
                    {
                        "kind": kind,
                        "session": net.session_ids[s],
                        "step": int(t),
                        "amount": round(amount, 6),
                        "unit": "A",
                    }
                )
    if net.cap_a is not None:
        over = cur - net.cap_a
        for s, t in zip(*np.nonzero(over > 1e-3), strict=True):
            violations.append(
                {
                    "kind": "session_limit",
                    "session": net.session_ids[s],
                    "step": int(t),
                    "amount": round(float(over[s, t]), 6),
                    "unit": "A",
                }
            )
    breaks = pause_level_breaks(net, cur) if net.pause_consent.any() else None
    for s, t in zip(*(np.nonzero(breaks) if breaks is not None else ((), ())), strict=True):
        violations.append(
            {
                "kind": "pause_current",
                "session": net.session_ids[s],
                "step": int(t),
                "amount": round(float(net.min_a[s] - cur[s, t]), 6),
                "unit": "A",
            }
        )
    if violations and status in ("optimal", "feasible"):
        status = "infeasible_limits"

    grid = (net.grid.start_utc, net.grid.step_s, net.grid.steps)
    prior = memo if memo and len(memo) == 2 else [None, None]
    lists = _row_lists(
        grid,
        net.session_ids,
        cur,
        prior[0],
        lambda m: current_lists(m, None if m is not cur else net),
    )
    power_r = np.round(power_m, 6)
    node_ids = list(power)
    power_kw = _row_lists(grid, node_ids, power_r, prior[1], lambda m: m.tolist())
    if memo is not None:
        cur.flags.writeable = False
        power_r.flags.writeable = False
        memo[:] = [
            RowMemo(grid, net.session_ids, cur, lists),
            RowMemo(grid, node_ids, power_r, power_kw),
        ]
        # the kept lists stay the engine's: the schedule gets copies
        lists = [list(c) for c in lists]
        power_kw = [list(p) for p in power_kw]
    unmet_r = [None if u != u else u for u in np.round(unmet, 6).tolist()]
    sessions = {
        sid: {"current_a": c, "energy_kwh": e, "unmet_kwh": u}
        for sid, c, e, u in zip(
            net.session_ids, lists, np.round(energy, 6).tolist(), unmet_r, strict=True
        )
    }
    nodes = {nid: {"power_kw": p} for nid, p in zip(node_ids, power_kw, strict=True)}
    out: dict[str, Any] = {
        "format": SCHEDULE_FORMAT,
        "status": status,
        "method": method,
        "solver": solver,
        "grid": {
            "start": net.grid.start_utc.isoformat().replace("+00:00", "Z"),
            "step_s": net.grid.step_s,
            "steps": net.grid.steps,
        },
        "sessions": sessions,
        "nodes": nodes,
        "violations": violations,
        "kpis": kpis(net, cur, energy, power, violations),
    }
    if reason is not None:
        out["reason"] = reason
    return out


def kpis(
    net: Network,
    current_a: np.ndarray,
    energy_kwh: np.ndarray,
    power: dict[str, np.ndarray],
    violations: list[dict[str, Any]],
) -> dict[str, Any]:
    """Summary numbers of a schedule (see ``docs/formats.md``)."""
    has_need = ~np.isnan(net.need_kwh)
    need = net.need_kwh[has_need]
    got = energy_kwh[has_need]
    served = got >= need - 1e-3
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(need > 0, got / need, 1.0)
    roots = [nid for k, nid in enumerate(net.node_ids) if net.node_parent[k] < 0]
    out: dict[str, Any] = {
        "sessions": net.n_sessions,
        "energy_requested_kwh": round(float(need.sum()), 3),
        "energy_delivered_kwh": round(float(energy_kwh.sum()), 3),
        "unmet_kwh": round(float(np.maximum(need - got, 0).sum()), 3),
        "sessions_fully_served": round(float(served.mean()) if served.size else 1.0, 4),
        "min_served_share": round(float(share.min()) if share.size else 1.0, 4),
        "peak_kw": {r: round(float(power[r].max(initial=0.0)), 3) for r in roots},
        "cap_kw": {n: round(float(c.min()), 3) for n, c in net.cap_kw.items()},
        "cap_use_max": {
            n: round(float(np.max(power[n] / np.maximum(c, 1e-9))), 4)
            for n, c in net.cap_kw.items()
        },
        "violations": len(violations),
    }
    if net.target_nodes:
        out["target_deviation_kwh"] = {
            n: round(float(np.abs(power[n] - net.target_kw[k]).sum() * net.dt_h), 3)
            for k, n in enumerate(net.target_nodes)
        }
    if net.price_eur_per_mwh is not None:
        total_kw = (current_a * net.kw_per_a[:, None]).sum(axis=0)
        out["cost_eur"] = round(
            float((total_kw * net.dt_h * net.price_eur_per_mwh).sum() / 1000), 3
        )
    return out

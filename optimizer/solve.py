"""Schedule a scenario with one method: ``lp`` (``milp`` when pausing is allowed), ``greedy`` or
``uncontrolled``.

The LP cannot express "at least the minimum current *while the car still needs energy*" exactly
(when a car becomes full is itself a decision). The LP therefore starts with the minimum as a
bound only in the steps before the car could possibly be full, and a short repair loop raises the
lower bound wherever the solution dips below the no-pause level of a car that is not yet full,
then re-solves warm. The result obeys the rule exactly; it is optimal for the LP with those bounds.
If the solver fails, runs out of time without a valid schedule, or the repair does not settle,
the greedy schedule is published with status ``fallback`` and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from optimizer.greedy import greedy_currents_a
from optimizer.lp_highs import HighsTwin, LpSolution
from optimizer.network import Network, compile_network
from optimizer.problem import ChargingProblem, Weights, build_problem
from optimizer.result import build_schedule, no_pause_dips
from optimizer.scenario import Scenario
from optimizer.uncontrolled import uncontrolled_currents_a

METHODS = ("lp", "milp", "greedy", "uncontrolled")
BACKENDS = ("highs", "pyomo")
MAX_REPAIR_ROUNDS = 12

Progress = Callable[[str], None]


def make_twin(
    problem: ChargingProblem, backend: str, time_limit_s: float | None, mip_rel_gap: float
) -> Any:
    """The live solver model for ``backend`` (``highs`` direct twin or ``pyomo``)."""
    if backend == "highs":
        return HighsTwin(problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    if backend == "pyomo":
        from optimizer.lp_pyomo import PyomoTwin

        return PyomoTwin(problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    raise ValueError(f"backend: unknown backend {backend!r} (choose from {BACKENDS})")


def repair_bounds(problem: ChargingProblem, current_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New lower bounds where the solution breaks the no-pause rule.

    A car below its no-pause level at step ``t`` while not yet full must have been charging at
    that level since plug-in, so the level becomes the lower bound of every step from plug-in
    through the session's earliest dip. The bounded prefix is filled in time order within the
    energy the session should get, so its last step may be a partial one (the car is then full).
    """
    net = problem.net
    dips = no_pause_dips(net, current_a)
    s_dip, t_dip = np.nonzero(dips)
    if s_dip.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    sessions = np.unique(s_dip)
    t_end = np.zeros(net.n_sessions, dtype=np.int64)
    np.maximum.at(t_end, s_dip, t_dip)  # latest dip per session
    t_end = t_end[sessions]
    start = net.first[sessions]
    lengths = t_end - start + 1
    s_rep = np.repeat(sessions, lengths)
    group_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    t_rep = np.repeat(start, lengths) + np.arange(lengths.sum()) - group_start
    var = problem.var_of[s_rep, t_rep]
    req = problem.i_req_a[var]
    kwh = problem.kwh_per_a[var]
    old = problem.i_lo_a[var]

    budget = np.full(net.n_sessions, np.inf)
    budget[problem.energy_session] = problem.need_eff_kwh
    forced_all = np.bincount(
        problem.var_session, weights=problem.i_lo_a * problem.kwh_per_a, minlength=net.n_sessions
    )
    forced_prefix = np.bincount(s_rep, weights=old * kwh, minlength=net.n_sessions)
    room = budget - (forced_all - forced_prefix)  # energy the prefix may be forced to take
    want = req * kwh
    cum = np.cumsum(want)
    g0 = np.cumsum(lengths) - lengths
    before = cum - want - np.repeat(cum[g0] - want[g0], lengths)
    lo = np.clip((room[s_rep] - before) / kwh, 0.0, req)
    new_lo = np.maximum(old, lo)
    changed = new_lo > old + 1e-9
    return var[changed], new_lo[changed]


def solve_lp(
    net: Network,
    *,
    backend: str = "highs",
    time_limit_s: float | None = None,
    mip_rel_gap: float = 1e-4,
    weights: Weights | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray | None, dict[str, Any], str | None]:
    """Solve the LP (MILP with pause-consent sessions) with the no-pause repair loop.

    Returns
    -------
    (currents or None, solver info, failure reason or None)
    """
    t0 = time.perf_counter()
    problem = build_problem(net, weights)
    twin = make_twin(problem, backend, time_limit_s, mip_rel_gap)
    info: dict[str, Any] = {
        "name": twin.name,
        "build_s": round(time.perf_counter() - t0, 4),
        "rounds": 0,
        "variables": problem.n_vars,
        "limit_rows": int(problem.limit_rhs.size),
    }
    solution: LpSolution | None = None
    solve_s = 0.0
    for round_ in range(MAX_REPAIR_ROUNDS):
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            return (
                None,
                info,
                f"time limit of {time_limit_s} s reached during repair round {round_}",
            )
        if progress:
            progress(f"solving round {round_ + 1}")
        solution = twin.solve()
        solve_s += solution.time_s
        info["rounds"] = round_ + 1
        if solution.status == "failed":
            return None, info, f"solver failed in round {round_ + 1}"
        current = problem.currents(solution.x)
        var, lo = repair_bounds(problem, current)
        if var.size == 0:
            break
        twin.set_current_lower(var, lo)
    else:
        return None, info, f"no-pause repair did not settle in {MAX_REPAIR_ROUNDS} rounds"
    assert solution is not None
    info.update(
        time_s=round(time.perf_counter() - t0, 4),
        solve_s=round(solve_s, 4),
        objective=solution.objective,
        gap=solution.gap,
        termination=solution.status,
    )
    return problem.currents(solution.x), info, None


def solve_network(
    net: Network,
    method: str = "lp",
    *,
    backend: str = "highs",
    time_limit_s: float | None = None,
    mip_rel_gap: float = 1e-4,
    weights: Weights | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Schedule a compiled network; returns the schedule dict (``docs/formats.md``)."""
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r} (choose from {METHODS})")
    t0 = time.perf_counter()
    if method == "uncontrolled":
        cur = uncontrolled_currents_a(net)
        info = {
            "name": "uncontrolled",
            "time_s": round(time.perf_counter() - t0, 4),
            "objective": None,
            "gap": None,
        }
        return build_schedule(net, cur, method=method, status="feasible", solver=info)
    if method == "greedy":
        cur = greedy_currents_a(net)
        info = {
            "name": "greedy",
            "time_s": round(time.perf_counter() - t0, 4),
            "objective": None,
            "gap": None,
        }
        return build_schedule(net, cur, method=method, status="feasible", solver=info)

    cur_lp, info, reason = solve_lp(
        net,
        backend=backend,
        time_limit_s=time_limit_s,
        mip_rel_gap=mip_rel_gap,
        weights=weights,
        progress=progress,
    )
    label = "milp" if net.pause_consent.any() else "lp"
    if cur_lp is None:
        if progress:
            progress("falling back to greedy")
        cur = greedy_currents_a(net)
        info.update(time_s=round(time.perf_counter() - t0, 4), objective=None, gap=None)
        return build_schedule(net, cur, method=label, status="fallback", solver=info, reason=reason)
    status = "optimal" if info.get("termination") == "optimal" else "feasible"
    return build_schedule(net, cur_lp, method=label, status=status, solver=info)


def solve_scenario(scenario: Scenario, method: str = "lp", **kwargs: Any) -> dict[str, Any]:
    """Compile and schedule a validated scenario; see :func:`solve_network`."""
    return solve_network(compile_network(scenario), method, **kwargs)

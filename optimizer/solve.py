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
    """New lower bounds for the variables where the solution breaks the no-pause rule.

    The bound is the no-pause level, reduced where needed so that a session's bounded energy
    never exceeds the energy it should get (the last bounded step may then be a partial one).
    """
    net = problem.net
    dips = no_pause_dips(net, current_a)
    s_idx, t_idx = np.nonzero(dips)
    if s_idx.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    var = problem.var_of[s_idx, t_idx]
    req = problem.i_req_a[var]
    kwh = problem.kwh_per_a[var]
    # energy already forced by existing lower bounds, per session
    forced = np.bincount(
        problem.var_session, weights=problem.i_lo_a * problem.kwh_per_a, minlength=net.n_sessions
    )
    budget = np.full(net.n_sessions, np.inf)
    budget[problem.energy_session] = problem.need_eff_kwh
    room = budget - forced
    order = np.lexsort((t_idx, s_idx))
    s_o, var_o, req_o, kwh_o = s_idx[order], var[order], req[order], kwh[order]
    want = (req_o - problem.i_lo_a[var_o]) * kwh_o
    cum = np.cumsum(want)
    first_of = np.r_[0, np.nonzero(np.diff(s_o))[0] + 1]
    start_cum = np.repeat(cum[first_of] - want[first_of], np.diff(np.r_[first_of, s_o.size]))
    before = cum - want - start_cum
    give = np.clip(room[s_o] - before, 0.0, want)
    new_lo = problem.i_lo_a[var_o] + give / kwh_o
    keep = give > 1e-9
    return var_o[keep], new_lo[keep]


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
            return None, info, f"time limit of {time_limit_s} s reached during repair round {round_}"
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
        info = {"name": "uncontrolled", "time_s": round(time.perf_counter() - t0, 4),
                "objective": None, "gap": None}
        return build_schedule(net, cur, method=method, status="feasible", solver=info)
    if method == "greedy":
        cur = greedy_currents_a(net)
        info = {"name": "greedy", "time_s": round(time.perf_counter() - t0, 4),
                "objective": None, "gap": None}
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
        return build_schedule(
            net, cur, method=label, status="fallback", solver=info, reason=reason
        )
    status = "optimal" if info.get("termination") == "optimal" else "feasible"
    return build_schedule(net, cur_lp, method=label, status=status, solver=info)


def solve_scenario(scenario: Scenario, method: str = "lp", **kwargs: Any) -> dict[str, Any]:
    """Compile and schedule a validated scenario; see :func:`solve_network`."""
    return solve_network(compile_network(scenario), method, **kwargs)

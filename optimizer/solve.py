"""Schedule a scenario with one method: ``lp`` (``milp`` when pausing is allowed), ``greedy`` or
``uncontrolled``.

The LP cannot express "at least the minimum current *while the car still needs energy*" exactly:
when a car becomes full is itself a decision (a disjunction). The greedy schedule, which obeys the
rule, decides it: every car the greedy fills must be full by the end of the greedy's fill step,
and before that it gets at least its no-pause level (see :func:`optimizer.problem.build_problem`,
``anchor_a``). Within those windows the LP chooses every current. The result obeys the rule by
construction and is never worse than greedy under the LP's objective (that is checked). A safety
loop pins any session that still breaks the rule to its greedy floor and re-solves warm; with the
anchored bounds it finds nothing to do. If the solver fails or runs out of time, the greedy
schedule is published with status ``fallback`` and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.collector import one_blas_thread
from optimizer.decompose import PartitionedTwin
from optimizer.greedy import GreedyRun, first_changed_step, greedy_currents_a, greedy_run
from optimizer.lp_highs import LpSolution
from optimizer.network import Network, compile_network
from optimizer.problem import ChargingProblem, Weights, build_problem, objective_value
from optimizer.result import RowMemo, build_schedule, no_pause_dip_cells, prepare
from optimizer.scenario import Scenario
from optimizer.uncontrolled import uncontrolled_currents_a
from optimizer.warm import KeyBook, NetKeys, WarmState

METHODS = ("lp", "milp", "greedy", "uncontrolled")
DEFAULT_MILP_TIME_LIMIT_S = 60.0
"""Budget of a solve with binaries (pause-consent sessions) when none is given [s]."""
BACKENDS = ("highs", "pyomo")
MAX_REPAIR_ROUNDS = 12
ESCALATE_ROUND = 3
"""From this repair round on, sessions behind the anchor are pinned too (bounds the rounds)."""

Progress = Callable[[str], None]


@dataclass
class LiveState:
    """Solver state a live engine keeps between solves (:class:`optimizer.engine.LiveEngine`)."""

    book: KeyBook = field(default_factory=KeyBook)
    warm: WarmState | None = None
    map_bases: bool = False
    """Start parts whose shape changed from the old basis matched by key (else cold)."""
    span_first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    span_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Columns each stable session id had so far: absolute key steps ``[first, end)``."""
    rows: list[RowMemo] = field(default_factory=list)
    """The session rows of the last schedule (:class:`optimizer.result.RowMemo`)."""
    greedy_net: Network | None = None
    greedy_run: GreedyRun | None = None
    """The previous network and its greedy run (read-only), to resume the greedy from the
    first step the change touches (:func:`optimizer.greedy.first_changed_step`)."""

    def greedy(self, net: Network) -> tuple[np.ndarray, int]:
        """The greedy schedule of ``net`` and the step it was computed from (0: all of it)."""
        resume = None
        if self.greedy_net is not None and self.greedy_run is not None:
            start = first_changed_step(self.greedy_net, net)
            resume = (start, self.greedy_run) if start else None
        run = greedy_run(net, resume=resume)
        run.current_a.flags.writeable = False
        run.remaining_kwh.flags.writeable = False
        self.greedy_net, self.greedy_run = net, run
        return run.current_a, resume[0] if resume else 0

    def span(self, net: Network, keys: NetKeys) -> tuple[np.ndarray, np.ndarray]:
        """Column span of every session of ``net`` [grid step]: its stay, widened to the
        columns it had before (clipped to the grid), so that a departure or arrival that moves
        inside the old span changes bounds only (idle columns fixed at 0 A,
        :func:`optimizer.problem.build_problem`) and its part is re-solved in place."""
        sid = keys.session
        size = int(sid.max(initial=-1)) + 1
        if self.span_first.size < size:
            grow = size - self.span_first.size
            self.span_first = np.concatenate([self.span_first, np.zeros(grow, np.int64)])
            self.span_end = np.concatenate([self.span_end, np.zeros(grow, np.int64)])
        first = keys.step0 + net.first
        end = keys.step0 + net.end
        old_first, old_end = self.span_first[sid], self.span_end[sid]
        had = old_end > old_first
        stays = end > first
        first = np.where(had & stays, np.minimum(first, old_first), np.where(had, old_first, first))
        end = np.where(had & stays, np.maximum(end, old_end), np.where(had, old_end, end))
        lo, hi = keys.step0, keys.step0 + net.steps
        first, end = np.clip(first, lo, hi), np.clip(end, lo, hi)
        end = np.maximum(end, first)
        self.span_first[sid], self.span_end[sid] = first, end
        return first - lo, end - lo


def make_twin(
    problem: ChargingProblem,
    backend: str,
    time_limit_s: float | None,
    mip_rel_gap: float,
    workers: int | None = None,
    scheduler: str | None = None,
    live: LiveState | None = None,
    keys: NetKeys | None = None,
) -> Any:
    """The live solver model for ``backend``.

    ``highs``: the direct twin, one live model per independent part of the problem
    (:mod:`optimizer.decompose`), solved side by side on ``workers`` threads or, with a
    ``scheduler`` address, on a Dask cluster. ``pyomo``: the readable model, in one piece.
    """
    if backend == "highs":
        return PartitionedTwin(
            problem,
            time_limit_s=time_limit_s,
            mip_rel_gap=mip_rel_gap,
            workers=workers,
            scheduler=scheduler,
            book=live.book if live else None,
            warm=live.warm if live else None,
            net_keys=keys,
            map_bases=live.map_bases if live else False,
        )
    if backend == "pyomo":
        from optimizer.lp_pyomo import PyomoTwin

        return PyomoTwin(problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    raise ValueError(f"backend: unknown backend {backend!r} (choose from {BACKENDS})")


def repair_bounds(
    problem: ChargingProblem, current_a: np.ndarray, anchor_a: np.ndarray, escalate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """New lower bounds for the sessions whose solution breaks the no-pause rule.

    Such a session is pinned to at least the anchor schedule (the greedy one, which obeys the
    rule): its lower bound becomes the anchor's current in every step. The LP may still give it
    more where its need allows, but then it is full no earlier than its last anchored step, so
    it cannot dip again. The anchor stays feasible for every bound, so each round's optimum is
    never worse than the anchor.
    """
    net = problem.net
    assert net is not None, "repair works on a whole problem"
    sessions = np.unique(no_pause_dip_cells(net, current_a)[0])
    if sessions.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    if escalate:
        # also pin every session that falls behind the anchor's cumulative energy: only those
        # can become dips in the next round
        kwh = (net.kw_per_a * net.dt_h)[:, None]
        behind = np.cumsum(current_a * kwh, axis=1) < np.cumsum(anchor_a * kwh, axis=1) - 1e-3
        behind[net.pause_consent] = False
        sessions = np.union1d(sessions, np.nonzero(behind.any(axis=1))[0])
    pin = np.isin(problem.var_session, sessions)
    var = np.nonzero(pin)[0]
    old = problem.i_lo_a[var]
    new = np.maximum(old, anchor_a[problem.var_session[var], problem.var_step[var]])
    changed = new > old + 1e-9
    return var[changed], new[changed]


def solve_lp(
    net: Network,
    *,
    backend: str = "highs",
    time_limit_s: float | None = None,
    mip_rel_gap: float = 1e-4,
    weights: Weights | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    live: LiveState | None = None,
) -> tuple[np.ndarray | None, dict[str, Any], str | None]:
    """Solve the LP (MILP with pause-consent sessions) with the no-pause repair loop.

    Returns
    -------
    (currents or None, solver info, failure reason or None)
    """
    t0 = time.perf_counter()
    # the greedy anchor runs on a side thread while the main thread builds the parts of the
    # problem that do not depend on it (its many small steps and the problem's large array
    # operations share the GIL well); a third thread computes the per-network arrays the
    # checks of the result need, while the cores are not yet busy with the solver
    side = ThreadPoolExecutor(max_workers=2)
    try:
        anchor = side.submit(
            lambda: live.greedy(net) if live is not None else (greedy_currents_a(net), 0)
        )
        side.submit(prepare, net)
        keys = NetKeys.of(net, live.book) if live is not None and backend == "highs" else None
        span = live.span(net, keys) if live is not None and keys is not None else None
        like = live.warm.problem if live is not None and live.warm is not None else None
        problem = build_problem(
            net, weights, anchor_a=lambda: anchor.result()[0], span=span, like=like
        )
        greedy, greedy_from = anchor.result()
    finally:
        side.shutdown(wait=False)
    if problem.n_vars == 0:
        empty: dict[str, Any] = {
            "name": "none",
            "rounds": 0,
            "variables": 0,
            "termination": "optimal",
            "objective": 0.0,
            "gap": 0.0,
            "time_s": round(time.perf_counter() - t0, 4),
        }
        return np.zeros((net.n_sessions, net.steps)), empty, None
    twin = make_twin(problem, backend, time_limit_s, mip_rel_gap, workers, scheduler, live, keys)
    try:
        current, info, reason = _repair_loop(problem, twin, greedy, t0, time_limit_s, progress)
        info["greedy_from_step"] = greedy_from
        if isinstance(twin, PartitionedTwin):
            info["parts_by_start"] = twin.how()
            if live is not None and current is not None:
                live.warm = twin.state()
        return current, info, reason
    finally:
        if hasattr(twin, "close"):
            twin.close()


def _repair_loop(
    problem: ChargingProblem,
    twin: Any,
    greedy: np.ndarray,
    t0: float,
    time_limit_s: float | None,
    progress: Progress | None,
) -> tuple[np.ndarray | None, dict[str, Any], str | None]:
    """Solve, pin sessions that break the no-pause rule, re-solve warm; compare with greedy."""
    # the greedy schedule's value does not depend on the solve: it is computed meanwhile
    side = ThreadPoolExecutor(max_workers=1)
    try:
        greedy_value = side.submit(objective_value, problem, greedy)
        return _repair_rounds(problem, twin, greedy, greedy_value, t0, time_limit_s, progress)
    finally:
        side.shutdown(wait=False)


def _repair_rounds(
    problem: ChargingProblem,
    twin: Any,
    greedy: np.ndarray,
    greedy_value_f: Future[float],
    t0: float,
    time_limit_s: float | None,
    progress: Progress | None,
) -> tuple[np.ndarray | None, dict[str, Any], str | None]:
    info: dict[str, Any] = {
        "name": twin.name,
        "parts": getattr(twin, "n_parts", 1),
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
        var, lo = repair_bounds(problem, current, greedy, escalate=round_ + 1 >= ESCALATE_ROUND)
        if var.size == 0:
            break
        twin.set_current_lower(var, lo)
    else:
        return None, info, f"no-pause repair did not settle in {MAX_REPAIR_ROUNDS} rounds"
    assert solution is not None
    # safety net: the repair rounds add bounds the greedy schedule may not meet; publish the
    # LP only if it is at least as good as greedy under the same objective
    # the solver's objective is the LP's value of its solution (slacks and deviations at their
    # optimum); the greedy schedule is valued the same way
    lp_value = solution.objective
    greedy_value = greedy_value_f.result()
    info["greedy_objective"] = greedy_value
    if lp_value > greedy_value + 1e-6 * max(1.0, abs(greedy_value)):
        return (
            None,
            info,
            (f"greedy scored better than the repaired LP ({greedy_value:.6g} < {lp_value:.6g})"),
        )
    info.update(
        time_s=round(time.perf_counter() - t0, 4),
        solve_s=round(solve_s, 4),
        objective=solution.objective,
        gap=solution.gap,
        termination=solution.status,
    )
    return current, info, None


def solve_network(
    net: Network,
    method: str = "lp",
    *,
    backend: str = "highs",
    time_limit_s: float | None = None,
    mip_rel_gap: float = 1e-4,
    weights: Weights | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    live: LiveState | None = None,
) -> dict[str, Any]:
    """Schedule a compiled network; returns the schedule dict (``docs/formats.md``).

    ``workers`` and ``scheduler`` choose where the independent parts of the LP solve: threads
    on this machine (default: one per core) or a Dask cluster at ``tcp://host:port``.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r} (choose from {METHODS})")
    with one_blas_thread():
        return _solve_network(
            net,
            method,
            backend,
            time_limit_s,
            mip_rel_gap,
            weights,
            progress,
            workers,
            scheduler,
            live,
        )


def _solve_network(
    net: Network,
    method: str,
    backend: str,
    time_limit_s: float | None,
    mip_rel_gap: float,
    weights: Weights | None,
    progress: Progress | None,
    workers: int | None,
    scheduler: str | None,
    live: LiveState | None,
) -> dict[str, Any]:
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

    if time_limit_s is None and net.pause_consent.any():
        time_limit_s = DEFAULT_MILP_TIME_LIMIT_S
    cur_lp, info, reason = solve_lp(
        net,
        backend=backend,
        time_limit_s=time_limit_s,
        mip_rel_gap=mip_rel_gap,
        weights=weights,
        progress=progress,
        workers=workers,
        scheduler=scheduler,
        live=live,
    )
    label = "milp" if net.pause_consent.any() else "lp"
    if cur_lp is None:
        if progress:
            progress("falling back to greedy")
        # the anchor of this solve is the greedy schedule of this network
        run = live.greedy_run if live is not None and live.greedy_net is net else None
        cur = run.current_a if run is not None else greedy_currents_a(net)
        info.update(time_s=round(time.perf_counter() - t0, 4), objective=None, gap=None)
        return build_schedule(net, cur, method=label, status="fallback", solver=info, reason=reason)
    status = "optimal" if info.get("termination") == "optimal" else "feasible"
    memo = live.rows if live is not None else None
    return build_schedule(net, cur_lp, method=label, status=status, solver=info, memo=memo)


def solve_scenario(scenario: Scenario, method: str = "lp", **kwargs: Any) -> dict[str, Any]:
    """Compile and schedule a validated scenario; see :func:`solve_network`."""
    return solve_network(compile_network(scenario), method, **kwargs)

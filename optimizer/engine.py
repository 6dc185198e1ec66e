"""A live scheduling engine that keeps solver state from one solve to the next.

The service re-plans many times a day, each time after a small change: a session arrives or
leaves, a departure prediction moves, a demand-response step or a new DSO profile changes a
limit, the grid rolls forward by a step. :class:`LiveEngine` solves each new network with the
same method as a cold solve (greedy anchor, LP in windows, checks; :mod:`optimizer.solve`), but
the independent parts (:mod:`optimizer.decompose`) that did not change keep their solution
without a solve, parts whose bounds, costs or limits changed are updated in place and re-solved
from their basis, and parts whose shape changed are solved cold (or, with ``map_bases``, from
the previous basis matched by stable keys, :mod:`optimizer.warm`). A session keeps the columns
it had (idle ones fixed at 0 A), so a new departure prediction or energy need is a change of
bounds, not of shape; when the layout is unchanged the constraint matrices and the split into
parts are shared with the previous solve (``docs/scale.md``). Its schedules equal a cold
solve's up to the solver's tolerances.
"""

from __future__ import annotations

import threading
from typing import Any

from optimizer.network import Network
from optimizer.problem import Weights
from optimizer.solve import LiveState, solve_network

MAX_NAMES = 2_000_000
"""Names (sessions, groups, nodes) the engine remembers before it starts afresh (cold), so a
service running for months does not grow without bound."""


class LiveEngine:
    """Solve a sequence of related networks, warm.

    Parameters
    ----------
    workers : int | None
        Parts solved at the same time (default: the number of cores).
    scheduler : str | None
        Dask scheduler address (``tcp://host:port``) to solve the parts on a cluster.
    time_limit_s : float | None
        Budget of each solve [s]; beyond it the greedy schedule is published (``fallback``).
    weights : Weights | None
    map_bases : bool
        When a part's shape changed (arrival, departure, new prediction, rolled grid), start
        it from the previous basis matched by key instead of cold. HiGHS skips presolve when
        it starts from a basis; at 16,000 connectors that measured slower than a cold solve
        (docs/BENCHMARKS.md), so it is off by default.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        time_limit_s: float | None = None,
        weights: Weights | None = None,
        map_bases: bool = False,
    ) -> None:
        self.map_bases = map_bases
        self.workers = workers
        self.scheduler = scheduler
        self.time_limit_s = time_limit_s
        self.weights = weights
        self.live = LiveState(map_bases=map_bases)
        self._lock = threading.Lock()

    def solve(self, net: Network, method: str = "lp") -> dict[str, Any]:
        """The schedule of ``net`` (``docs/formats.md``); ``lp`` solves warm."""
        with self._lock:
            if len(self.live.book.ids) > MAX_NAMES:
                self.live = LiveState(map_bases=self.map_bases)
            return solve_network(
                net,
                method,
                time_limit_s=self.time_limit_s,
                weights=self.weights,
                workers=self.workers,
                scheduler=self.scheduler,
                live=self.live if method in ("lp", "milp") else None,
            )

    def reset(self) -> None:
        """Forget the solver state (the next solve is cold)."""
        with self._lock:
            self.live = LiveState(map_bases=self.map_bases)

"""A live scheduling engine that keeps solver state from one solve to the next.

The service re-plans many times a day, each time after a small change: a session arrives or
leaves, a departure prediction moves, a demand-response step or a new DSO profile changes a
limit, the grid rolls forward by a step. :class:`LiveEngine` solves each new network with the
same method as a cold solve (greedy anchor, LP in windows, checks; :mod:`optimizer.solve`), but
the independent parts (:mod:`optimizer.decompose`) that did not change keep their solution
without a solve, and the parts that did start from the previous basis, matched by stable keys
(:mod:`optimizer.warm`). Its schedules equal a cold solve's up to the solver's tolerances.
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
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        time_limit_s: float | None = None,
        weights: Weights | None = None,
    ) -> None:
        self.workers = workers
        self.scheduler = scheduler
        self.time_limit_s = time_limit_s
        self.weights = weights
        self.live = LiveState()
        self._lock = threading.Lock()

    def solve(self, net: Network, method: str = "lp") -> dict[str, Any]:
        """The schedule of ``net`` (``docs/formats.md``); ``lp`` solves warm."""
        with self._lock:
            if len(self.live.book.ids) > MAX_NAMES:
                self.live = LiveState()
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
            self.live = LiveState()

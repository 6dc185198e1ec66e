"""Solve the independent parts of a problem on a Dask distributed cluster.

Each part becomes a Dask *actor*: a :class:`RemotePart` that builds the part's HiGHS model on a
worker and keeps it there, so a later bound change re-solves warm on that worker instead of
shipping the model again. Parts are placed on the workers round-robin, largest first, so the
work is spread evenly. Workers must run the same gridcharge version as the client (they import
:mod:`optimizer` to unpickle the parts); see ``docs/scale.md`` for running them on more machines.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from optimizer.lp_highs import HighsTwin, LpSolution
from optimizer.problem import ChargingProblem

CONNECT_TIMEOUT_S = 10.0
"""How long to try to reach a scheduler before giving up [s]."""
_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def client_for(address: str) -> Any:
    """One connected :class:`distributed.Client` per scheduler address and process."""
    from distributed import Client

    with _LOCK:
        client = _CLIENTS.get(address)
        if client is None or client.status not in ("running", "connecting"):
            client = Client(address, set_as_default=False, timeout=f"{CONNECT_TIMEOUT_S}s")
            _CLIENTS[address] = client
        return client


def close_clients() -> None:
    """Disconnect every client this process opened (e.g. before its cluster shuts down)."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


class RemotePart:
    """The live model of one part, living on a Dask worker (an actor)."""

    def __init__(self, problem: ChargingProblem, options: dict[str, Any]) -> None:
        self.twin = HighsTwin(problem, **options)

    def solve(self) -> LpSolution:
        return self.twin.solve()

    def set_current_lower(self, var: Any, lo_a: Any) -> None:
        self.twin.set_current_lower(var, lo_a)


class _PartProxy:
    """Make an actor handle look like a local part model (``solve`` returns a future)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def solve(self) -> Any:
        return self.actor.solve()

    def set_current_lower(self, var: Any, lo_a: Any) -> None:
        self.actor.set_current_lower(var, lo_a).result()


def remote_solvers(
    address: str, problems: Sequence[ChargingProblem], options: dict[str, Any]
) -> list[_PartProxy]:
    """Create one :class:`RemotePart` actor per part on the cluster at ``address``."""
    client = client_for(address)
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise RuntimeError(f"scheduler: no Dask workers are connected to {address}")
    order = sorted(range(len(problems)), key=lambda k: -problems[k].n_vars)
    placement = {k: workers[j % len(workers)] for j, k in enumerate(order)}
    futures = [
        client.submit(
            RemotePart, problems[k], options, actor=True, workers=[placement[k]], pure=False
        )
        for k in range(len(problems))
    ]
    # an actor handle binds to the client current when it is unpickled; ours is not the
    # process-wide default, so make it current while the handles arrive
    with client.as_current():
        return [_PartProxy(f.result()) for f in futures]


def gather(futures: Sequence[Any]) -> list[LpSolution]:
    """Wait for the actors' solves."""
    return [f.result() for f in futures]

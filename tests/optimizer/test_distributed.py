"""The Dask path: parts solved as actors on a real LocalCluster over loopback TCP give the same
schedule as the local thread pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from optimizer import decompose
from optimizer.checker import check_schedule, explained
from optimizer.network import compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.random_net import random_regions

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        from optimizer.distributed import close_clients

        close_clients()  # else the client keeps trying to reconnect in the background
        cluster.close()


@pytest.mark.parametrize("seed", [2, 6])
def test_dask_schedule_equals_the_local_one(
    scheduler: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decompose, "MIN_PART_VARS", 0)
    assert scheduler.startswith("tcp://127.0.0.1:")
    raw = random_regions(seed, regions=3, stations=5, steps=16)
    net = compile_network(parse_scenario(raw))
    local = solve_network(net, "lp", workers=2)
    remote = solve_network(net, "lp", scheduler=scheduler)
    assert remote["solver"]["parts"] == local["solver"]["parts"] >= 3
    assert remote["sessions"] == local["sessions"]
    assert remote["solver"]["objective"] == local["solver"]["objective"]
    found = check_schedule(raw, remote)
    assert explained(found, remote["violations"]) == [], found


def test_an_unreachable_scheduler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizer import distributed as remote

    monkeypatch.setattr(remote, "CONNECT_TIMEOUT_S", 1.0)
    raw = random_regions(1, regions=2, stations=3, steps=8)
    net = compile_network(parse_scenario(raw))
    with pytest.raises(OSError, match=r"127\.0\.0\.1:9"):
        solve_network(net, "lp", scheduler="tcp://127.0.0.1:9")

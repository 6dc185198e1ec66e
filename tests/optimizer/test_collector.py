"""The garbage-collector and BLAS-thread holds of schedule building and demand-response
activations."""

from __future__ import annotations

import gc

import pytest

from optimizer.collector import gc_paused


@pytest.fixture(autouse=True)
def collector_restored() -> object:
    was = gc.isenabled()
    yield None
    (gc.enable if was else gc.disable)()


def test_gc_paused_nests_and_restores() -> None:
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer holder still runs
    assert gc.isenabled()
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()  # off before, off after
    gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_containers_made_in_the_block_go_to_the_oldest_generation() -> None:
    gc.enable()
    gc.collect()
    with gc_paused(promote=True):
        kept = [[float(k)] * 4 for k in range(5000)]
        assert gc.get_count()[0] >= 5000  # young, and the collector did not run
    # the next allocation finds no young generation to traverse: they were promoted
    assert gc.get_count()[0] < 10
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert id(kept) in oldest and all(id(row) in oldest for row in kept[::500])
    assert gc.get_freeze_count() == 0


def test_someone_elses_frozen_objects_stay_frozen() -> None:
    gc.enable()
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with gc_paused(promote=True):
            young = [[1.0] for _ in range(100)]
        assert gc.get_freeze_count() == frozen  # not thawed by the hold
        assert id(young) not in {id(o) for o in gc.get_objects(generation=2)}
    finally:
        gc.unfreeze()


def test_a_hold_without_promote_leaves_the_young_generation() -> None:
    gc.enable()
    gc.collect()
    with gc_paused():
        kept = [[float(k)] * 4 for k in range(5000)]
    # the young pass ran (or runs with the next allocations): the block's objects are in a
    # young generation, not promoted
    young = {id(o) for g in (0, 1) for o in gc.get_objects(generation=g)}
    assert id(kept) in young
    assert id(kept) not in {id(o) for o in gc.get_objects(generation=2)}


def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_one_blas_thread_holds_are_counted() -> None:
    from threadpoolctl import threadpool_limits

    from optimizer.collector import one_blas_thread

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        if not before:
            pytest.skip("no BLAS library loaded")
        first = one_blas_thread()
        second = one_blas_thread()
        first.__enter__()
        assert set(blas_threads()) == {1}
        second.__enter__()
        first.__exit__(None, None, None)
        assert set(blas_threads()) == {1}  # the second holder still computes
        second.__exit__(None, None, None)
        assert blas_threads() == before

"""One scheduler per deployment (api/lease.py): the lease row elects one holder, a holder that
lost it can publish nothing (fencing), and two processes never re-plan at the same time."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import api.background as background
from api.background import SchedulerLoop
from api.db import make_engine, make_sessionmaker, migrate, transaction, utcnow
from api.events import Events
from api.lease import (
    SCHEDULER_LEASE,
    LeaseClaim,
    LeaseKeeper,
    LeaseLost,
    confirm,
    current_holder,
    signal,
    try_acquire,
)
from api.models import Profile, ScheduleRun
from api.publish import reoptimise
from tests.api.test_scheduler import NOW, live_settings, seed


def test_one_holder_until_it_expires_or_is_released(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    t = utcnow()
    try:
        with transaction(factory) as db:
            assert try_acquire(db, "x", "a", 10.0, t)
        with transaction(factory) as db:
            assert not try_acquire(db, "x", "b", 10.0, t + timedelta(seconds=5))
            assert try_acquire(db, "x", "a", 10.0, t + timedelta(seconds=5))  # renewed to 15 s
        with transaction(factory) as db:
            assert not try_acquire(db, "x", "b", 10.0, t + timedelta(seconds=14))
            assert current_holder(db, "x", t + timedelta(seconds=14)) == "a"
        with transaction(factory) as db:  # a's lease expired: b takes it over
            assert try_acquire(db, "x", "b", 10.0, t + timedelta(seconds=15))
        with pytest.raises(LeaseLost, match="'x': no longer held by a"), transaction(factory) as db:
            confirm(db, "x", "a", 10.0, t + timedelta(seconds=16))
        with pytest.raises(ValueError, match="ttl_s"), transaction(factory) as db:
            try_acquire(db, "x", "a", 0.0, t)
    finally:
        engine.dispose()


def test_a_keeper_holds_renews_and_releases(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    signals: list[int] = []
    a = LeaseKeeper(factory, "y", 1.5, holder="a", on_signal=lambda: signals.append(1), poll_s=0.05)
    b = LeaseKeeper(factory, "y", 1.5, holder="b", poll_s=0.05)
    try:
        a.start()
        b.start()
        assert a.held and not b.held
        time.sleep(2.0)  # longer than the TTL: a kept renewing it
        assert a.held and not b.held
        with transaction(factory) as db:
            signal(db, "y", utcnow())  # another process saw an event
        deadline = time.monotonic() + 5
        while not signals and time.monotonic() < deadline:
            time.sleep(0.05)
        assert signals, "the holder did not relay the signal"
        a.stop()  # released: b takes over at its next renewal (every TTL / 3)
        deadline = time.monotonic() + 5
        while not b.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.held and not a.held
    finally:
        a.stop()
        b.stop()
        engine.dispose()


def test_a_run_whose_lease_was_taken_publishes_nothing(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    seed(factory)
    try:
        with transaction(factory) as db:
            assert try_acquire(db, SCHEDULER_LEASE, "other", 60.0, utcnow())
        stale = LeaseClaim(SCHEDULER_LEASE, "me", 60.0)
        with pytest.raises(LeaseLost):
            reoptimise(factory, live_settings(db_url), NOW, stale)
        with factory() as db:
            assert db.scalar(select(func.count()).select_from(Profile)) == 0
            assert db.scalar(select(func.count()).select_from(ScheduleRun)) == 0
        holder = LeaseClaim(SCHEDULER_LEASE, "other", 60.0)
        run = reoptimise(factory, live_settings(db_url), NOW, holder)
        assert run.published
    finally:
        engine.dispose()


def _record_runs(log_path: str, name: str) -> Any:
    """A stand-in for the re-optimisation that appends its start and end to ``log_path``."""

    def run(*_args: Any) -> None:
        with open(log_path, "a") as f:
            f.write(f"start {name} {time.time():.6f}\n")
        time.sleep(0.15)
        with open(log_path, "a") as f:
            f.write(f"end {name} {time.time():.6f}\n")

    return run


def _intervals(
    log_path: Path, killed_at: dict[str, float] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Run intervals per process; a run cut short by a kill ends at ``killed_at`` (or at the
    file's last entry)."""
    lines = [ln.split() for ln in log_path.read_text().splitlines()]
    last = max(float(t) for _, _, t in lines)
    killed_at = killed_at or {}
    open_: dict[str, float] = {}
    out: dict[str, list[tuple[float, float]]] = {}
    for kind, name, t in lines:
        if kind == "start":
            open_[name] = float(t)
        else:
            out.setdefault(name, []).append((open_.pop(name), float(t)))
    for name, t0 in open_.items():
        out.setdefault(name, []).append((t0, killed_at.get(name, last)))
    return out


def _assert_no_overlap(runs: dict[str, list[tuple[float, float]]]) -> None:
    spans = sorted((a, b, name) for name, ivs in runs.items() for a, b in ivs)
    for (a0, b0, n0), (a1, _b1, n1) in itertools.pairwise(spans):
        assert a1 >= b0, f"{n0} ran {a0:.3f}-{b0:.3f} while {n1} started at {a1:.3f}"


def test_two_schedulers_in_one_process_never_run_at_once(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    log_path = tmp_path / "runs.log"
    log_path.touch()
    settings = live_settings(db_url, reschedule_every_s=0.2, scheduler_process=False)
    loops = []
    for name in ("a", "b"):
        lease = LeaseKeeper(factory, SCHEDULER_LEASE, 1.5, holder=name, poll_s=0.05).start()
        loop = SchedulerLoop(factory, settings, Events(), lease=lease)
        loops.append(loop)
    monkeypatch.setattr(background, "reoptimise", _record_runs(str(log_path), "shared"))
    runs: dict[str, list[int]] = {}

    def counting(loop: SchedulerLoop, name: str) -> Any:
        original = loop.run_once

        def run_once() -> None:
            before = loop.runs
            original()
            if loop.runs > before:
                runs.setdefault(name, []).append(1)

        return run_once

    try:
        for loop, name in zip(loops, ("a", "b"), strict=True):
            loop.run_once = counting(loop, name)  # type: ignore[method-assign]
            loop.start()
        time.sleep(2.0)
        assert set(runs) == {"a"}, runs  # only the holder re-plans
        loops[0].stop()  # the holder stops: its lease is released, b takes over
        time.sleep(2.0)
        assert len(runs.get("b", [])) > 0
    finally:
        for loop in loops:
            loop.stop()
        engine.dispose()
    _assert_no_overlap(_intervals(log_path))


def _scheduler_process(db_url: str, log_path: str, name: str) -> None:
    """A process with its own scheduler loop and lease, as every uvicorn worker has."""
    background.reoptimise = _record_runs(log_path, name)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    settings = live_settings(db_url, reschedule_every_s=0.05, scheduler_process=False)
    lease = LeaseKeeper(factory, SCHEDULER_LEASE, 1.0, holder=name, poll_s=0.05).start()
    loop = SchedulerLoop(factory, settings, Events(), lease=lease).start()
    threading.Event().wait(60)
    loop.stop()


def test_two_processes_never_replan_at_the_same_time(db_url: str, tmp_path: Path) -> None:
    """Two processes, each with a scheduler loop: only the lease holder runs; when it is killed
    (-9, no release) the other takes over after the TTL, never while the holder still runs."""
    migrate(db_url)
    log_path = tmp_path / "runs.log"
    log_path.touch()
    ctx = multiprocessing.get_context("spawn")
    procs = {
        name: ctx.Process(target=_scheduler_process, args=(db_url, str(log_path), name))
        for name in ("p1", "p2")
    }
    try:
        for p in procs.values():
            p.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(log_path.read_text().splitlines()) < 10:
            time.sleep(0.1)
        time.sleep(1.0)
        first = _intervals(log_path)
        assert len(first) == 1, f"both processes re-planned: {sorted(first)}"
        (holder,) = first
        pid = procs[holder].pid
        assert pid is not None
        os.kill(pid, 9)
        procs[holder].join(10)
        killed = {holder: time.time()}
        other = "p2" if holder == "p1" else "p1"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and other not in _intervals(log_path, killed):
            time.sleep(0.1)
        time.sleep(0.5)
        runs = _intervals(log_path, killed)
        assert other in runs, "the other process did not take over"
        _assert_no_overlap(runs)
        assert min(a for a, _ in runs[other]) >= max(b for _, b in runs[holder])
    finally:
        for p in procs.values():
            if p.is_alive():
                p.kill()
            p.join(10)


def test_a_manual_run_defers_to_the_lease_holder_in_another_process(db_url: str) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.models_lease import Lease
    from tests.api.conftest import auth, make_key

    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    operator = make_key(db_url, "operator")
    try:
        with transaction(factory) as db:
            assert try_acquire(db, SCHEDULER_LEASE, "another process", 60.0, utcnow())
        settings = live_settings(db_url, background=True)
        with TestClient(create_app(settings)) as c:
            r = c.post("/v1/schedule-runs", headers=auth(operator))
            assert r.status_code == 409
            assert r.json()["detail"].startswith("scheduler: re-plans run in another process")
        with factory() as db:
            lease = db.get(Lease, SCHEDULER_LEASE)
            assert lease is not None and lease.signalled_at is not None
            assert lease.holder == "another process"
            assert db.scalar(select(func.count()).select_from(ScheduleRun)) == 0
    finally:
        engine.dispose()


def test_a_lease_of_a_process_that_no_longer_runs_is_taken_at_once(db_url: str) -> None:
    """After ``kill -9`` and a restart on the same host the new process need not wait out the
    TTL: the holder name says the holder ran here, and its process is gone."""
    import socket
    import subprocess

    from api.lease import holder_id, is_dead

    gone = subprocess.Popen(["true"])
    gone.wait()
    me = holder_id()
    host, pidns, _pid, rand = me.split("|")
    dead = f"{host}|{pidns}|{gone.pid}|{rand}"
    assert is_dead(dead)
    assert not is_dead(me)
    assert not is_dead(f"{host}|{pidns}|{os.getppid()}|{rand}")  # runs
    assert not is_dead(f"elsewhere-{socket.gethostname()}|{pidns}|{gone.pid}|{rand}")
    assert not is_dead("not a holder name")
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    keeper = LeaseKeeper(factory, SCHEDULER_LEASE, 600.0)
    try:
        with transaction(factory) as db:
            assert try_acquire(db, SCHEDULER_LEASE, dead, 600.0, utcnow())
        assert keeper.start().held
        with factory() as db:
            assert current_holder(db, SCHEDULER_LEASE, utcnow()) == keeper.holder
    finally:
        keeper.stop()
        engine.dispose()


def test_demand_response_restores_run_only_in_the_lease_holder(db_url: str) -> None:
    from api.dr import RestoreLoop

    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    settings = live_settings(db_url)
    holder = LeaseKeeper(factory, SCHEDULER_LEASE, 30.0, holder="a").start()
    other = LeaseKeeper(factory, SCHEDULER_LEASE, 30.0, holder="b").start()
    steps: dict[str, int] = {"a": 0, "b": 0}
    loops = []
    try:
        for name, lease in (("a", holder), ("b", other)):
            loop = RestoreLoop(factory, settings, tick_s=0.02, lease=lease)

            def step(_now: Any, name: str = name) -> list[int]:
                steps[name] += 1
                return []

            loop.restorer.step = step  # type: ignore[method-assign]
            loops.append(loop.start())
        time.sleep(0.5)
    finally:
        for loop in loops:
            loop.stop()
        holder.stop()
        other.stop()
        engine.dispose()
    assert steps["a"] > 5 and steps["b"] == 0

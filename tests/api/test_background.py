"""The scheduler's child process (:class:`api.background.ChildScheduler`): runs happen in
another process, their metrics are recorded here, and a dead child is replaced."""

from __future__ import annotations

import os
import threading

import pytest
from sqlalchemy import select

from api.background import ChildScheduler
from api.db import make_engine, make_sessionmaker, migrate
from api.metrics import REGISTRY
from api.models import Profile, ScheduleRun
from tests.api.test_scheduler import NOW, live_settings, seed


def test_runs_happen_in_a_child_process_that_is_replaced_when_it_dies(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    seed(factory)
    child = ChildScheduler(live_settings(db_url))
    stop = threading.Event()
    solves0 = REGISTRY.get_sample_value("gridcharge_solve_seconds_count") or 0.0
    try:
        answer = child.reoptimise(NOW, stop)
        assert answer["published"] is True and answer["sessions"] == 4
        first = child._proc
        assert first is not None and first.pid != os.getpid()
        assert REGISTRY.get_sample_value("gridcharge_solve_seconds_count") == solves0 + 1
        assert REGISTRY.get_sample_value("gridcharge_active_sessions") == 4
        with factory() as db:
            assert db.scalars(select(ScheduleRun)).one().published
            assert len(db.scalars(select(Profile)).all()) == 4
        first.kill()
        first.join(10)
        again = child.reoptimise(NOW, stop)  # a new child takes over
        assert again["published"] is True
        assert child._proc is not None and child._proc.pid != first.pid
    finally:
        child.close()
        engine.dispose()
    assert child._proc is None


def test_the_child_process_is_the_default_on_both_databases() -> None:
    from api.settings import Settings

    assert Settings(database_url="sqlite:///x.db").scheduler_in_child is True
    assert Settings(database_url="postgresql+psycopg://u@h/db").scheduler_in_child is True
    thread = Settings(database_url="sqlite:///x.db", scheduler_process=False)
    assert thread.scheduler_in_child is False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_the_child_process_runs_at_lower_priority(db_url: str) -> None:
    """The child adds ``scheduler_nice`` to its niceness: requests win the cores."""
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    seed(factory)
    child = ChildScheduler(live_settings(db_url, scheduler_nice=7))
    try:
        child.reoptimise(NOW, threading.Event())
        assert child._proc is not None and child._proc.pid is not None
        with open(f"/proc/{child._proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[16]) == os.nice(0) + 7  # field 19 of stat: nice
    finally:
        child.close()
        engine.dispose()

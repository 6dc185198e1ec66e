"""Publishing in short transactions (api.publish.publish_in_chunks): every changed profile is
written, lowered limits before raised ones, and a run is "publishing" until all are written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from api.db import make_engine, make_sessionmaker, migrate, transaction
from api.models import Profile, ProfileChange, ScheduleRun
from api.publish import PUBLISHING, publish_in_chunks, raises_limit, reoptimise
from optimizer.profiles import ocpp_forms
from tests.api.test_scheduler import NOW, live_settings, seed

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def ocpi(limits: list[float], start: str = "2026-11-25T08:00:00+00:00") -> dict[str, Any]:
    """An OCPI profile of 15-minute periods with these limits [A]."""
    return {
        "start_date_time": start,
        "duration": 900 * len(limits),
        "charging_rate_unit": "A",
        "min_charging_rate": 6.0,
        "charging_profile_period": [
            {"start_period": 900 * k, "limit": lim} for k, lim in enumerate(limits)
        ],
    }


def forms(
    limits: list[float], start: str = "2026-11-25T08:00:00+00:00", *, session_id: str
) -> dict[str, Any]:
    o = ocpi(limits, start)
    return {**ocpp_forms(o, session_id=session_id, evse_id=1, n_phases=3), "ocpi": o}


def test_raises_limit() -> None:
    assert not raises_limit(ocpi([10, 10]), None)  # no profile before: the car drew its maximum
    assert not raises_limit(ocpi([10, 8]), ocpi([16, 16]))
    assert raises_limit(ocpi([10, 16]), ocpi([16, 10]))
    assert not raises_limit(ocpi([10, 10]), ocpi([10, 10]))
    # the old profile began earlier: only the time from the new start on counts
    later = "2026-11-25T08:15:00+00:00"
    assert not raises_limit(ocpi([8], later), ocpi([16, 8]))
    assert raises_limit(ocpi([9], later), ocpi([16, 8]))
    # where the old profile is not in force the charger is at its maximum: never raised
    assert not raises_limit(ocpi([9], "2026-11-25T09:00:00+00:00"), ocpi([16, 8]))
    assert not raises_limit(ocpi([16, 8]), ocpi([8], "2026-11-25T08:15:00+00:00"))
    assert raises_limit(ocpi([16, 9]), ocpi([8], "2026-11-25T08:15:00+00:00"))


def _run(factory: Any) -> ScheduleRun:
    with transaction(factory) as db:
        run = ScheduleRun(
            grid_start=T0, step_s=900, steps=2, status=PUBLISHING, method="lp", sessions=3
        )
        db.add(run)
    return run


def test_every_changed_profile_is_written_lowered_limits_first(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    settings = live_settings(db_url, publish_chunk_sessions=1)
    try:
        first = {s: forms(lim, session_id=s) for s, lim in (("a", [16, 16]), ("b", [8, 8]))}
        first["d"] = forms([12, 12], session_id="d")
        assert publish_in_chunks(factory, _run(factory), first, settings) == ["a", "b", "d"]
        second = {
            "b": forms([16, 16], session_id="b"),  # raised: last
            "a": forms([10, 10], session_id="a"),  # lowered
            "c": forms([12, 12], session_id="c"),  # new session: lowered from its maximum
            "d": forms([12, 12], session_id="d"),  # unchanged: not written again
        }
        run = _run(factory)
        assert publish_in_chunks(factory, run, second, settings) == ["a", "b", "c"]
        with factory() as db:
            cursors = {
                c.session_id: c.cursor
                for c in db.scalars(select(ProfileChange).where(ProfileChange.run_id == run.id))
            }
            limits = {p.session_id: p.limits_a for p in db.scalars(select(Profile))}
        assert set(cursors) == {"a", "b", "c"}
        assert max(cursors["a"], cursors["c"]) < cursors["b"]
        assert limits == {"a": [10, 10], "b": [16, 16], "c": [12, 12], "d": [12, 12]}
    finally:
        engine.dispose()


def test_a_run_in_small_chunks_publishes_everything(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    seed(factory)
    try:
        run = reoptimise(factory, live_settings(db_url, publish_chunk_sessions=1), NOW)
        assert run.published and run.status != PUBLISHING
        with factory() as db:
            stored = db.get(ScheduleRun, run.id)
            assert stored is not None and stored.published and stored.status == run.status
            changes = db.scalars(select(ProfileChange).where(ProfileChange.run_id == run.id))
            assert sorted(c.session_id for c in changes) == ["s-1", "s-2", "s-3", "s-4"]
    finally:
        engine.dispose()


class _Clock:
    """A stand-in for the ``time`` module: every reading advances 10 ms; sleeps are recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        self.now += 0.01
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_on_sqlite_chunks_are_followed_by_pauses_for_the_write_share(
    db_url: str, monkeypatch: Any
) -> None:
    import api.publish as publish

    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    pauses: dict[float, list[float]] = {}
    try:
        for k, share in enumerate((0.25, 0.5)):
            clock = _Clock()
            monkeypatch.setattr(publish, "time", clock)
            settings = live_settings(db_url, publish_chunk_sessions=1, publish_write_share=share)
            three = {s: forms([10.0 + k], session_id=s) for s in ("a", "b", "c")}
            assert publish_in_chunks(factory, _run(factory), three, settings) == ["a", "b", "c"]
            pauses[share] = clock.sleeps
    finally:
        engine.dispose()
    if engine.dialect.name != "sqlite":
        assert pauses == {0.25: [], 0.5: []}  # one writer at a time is SQLite's limit only
        return
    # a pause before each chunk after the first, (1 / share - 1) times the chunk's duration
    assert len(pauses[0.25]) == len(pauses[0.5]) == 2
    assert pauses[0.5][0] > 0
    assert pauses[0.25] == pytest.approx([3 * p for p in pauses[0.5]])

"""The published profiles kept flattened in memory (api/published.py): a cached profile is used
only while its row keeps the cursor it was read under, cleared profiles leave the cache, the
service reads them at start and follows them in the background, and an activation writes the
same rows with the cache as without it."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from api import dr
from api.db import make_engine, make_sessionmaker, transaction
from api.dr_batch import Published, flatten, published_from_dicts, published_from_flat
from api.main import create_app
from api.models import Profile, ProfileChange
from api.models_dr import DrAuditEntry, DrCurtailment, DrSignal
from api.published import Follower, PublishedProfiles, decode_profiles
from api.settings import Settings
from benchmarks.dr import seed_database
from tests.api.test_dr_batch import random_previous

NOW = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)


def publish(factory: sessionmaker[Session], profiles: dict[str, dict[str, Any] | None]) -> None:
    """Publish ``profiles`` as a publisher does: a new cursor each (None: clear the profile)."""
    with transaction(factory) as db:
        for sid, ocpi in profiles.items():
            change = ProfileChange(session_id=sid, run_id=1, created_at=NOW)
            db.add(change)
            db.flush()
            row = db.get(Profile, sid)
            if ocpi is None:
                assert row is not None
                row.cursor, row.cleared_at = change.cursor, NOW
                continue
            if row is None:
                row = Profile(session_id=sid, evse_id=1, n_phases=3, limits_a=[])
                db.add(row)
            row.cursor, row.ocpi, row.run_id, row.cleared_at = change.cursor, ocpi, 1, None


def stored(factory: sessionmaker[Session], ids: list[str]) -> Published:
    """The reference: every profile read and decoded."""
    with factory() as db:
        texts = dr.published_ocpi_texts(db, ids)
    return published_from_dicts(decode_profiles([texts.get(sid) for sid in ids]))


def assert_same(a: Published, b: Published) -> None:
    for f in fields(Published):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        np.testing.assert_array_equal(x, y, err_msg=f.name)


@contextmanager
def statements(factory: sessionmaker[Session]) -> Iterator[list[str]]:
    """The SQL statements run through ``factory``'s engine meanwhile."""
    engine = factory.kw["bind"]
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def some_profile(rnd: random.Random) -> dict[str, Any]:
    while (p := random_previous(rnd)) is None:
        pass
    return p


def test_lookup_takes_a_cached_profile_only_under_its_cursor(
    factory: sessionmaker[Session],
) -> None:
    rnd = random.Random(5)
    ids = [f"s-{k:03d}" for k in range(80)]
    publish(factory, {sid: some_profile(rnd) for sid in ids})
    publish(factory, {"s-000": {**some_profile(rnd), "charging_profile_period": []}})
    cache = PublishedProfiles()
    assert cache.follow(factory) == 80
    assert len(cache) == 80 and cache.follow(factory) == 0
    # republished, cleared and new since: the cache has not seen them
    changed = {sid: some_profile(rnd) for sid in ids[10:30]}
    publish(factory, {**changed, **{sid: None for sid in ids[30:35]}})
    publish(factory, {f"n-{k}": some_profile(rnd) for k in range(5)})
    # committed after the follower passed its cursor (cursors of concurrent publishers can
    # commit out of order): below the follower's cursor, yet not the one cached
    with transaction(factory) as db:
        row = db.get(Profile, "s-050")
        assert row is not None
        row.cursor, row.ocpi = -50, some_profile(rnd)
    wanted = [*ids, *(f"n-{k}" for k in range(5)), "none"]
    with factory() as db:
        db.connection()
        with statements(factory) as seen:
            found = cache.lookup(db, wanted)
    assert len(seen) == 2  # the scan, and the late row
    late = ["s-050"]
    unchanged = [sid for sid in ids if sid not in changed and sid not in ids[30:35] + late]
    assert sorted(found.flat) == sorted(unchanged)
    assert sorted(found.texts) == sorted(set(wanted) - set(unchanged) - {"none"})
    assert_same(found.published(wanted), stored(factory, wanted))
    for k in (0, 7, 33, 60):  # chunk by chunk, as the activation renders
        assert_same(found.published(wanted[k : k + 17]), stored(factory, wanted[k : k + 17]))
    # following again: the changed and new ones are read, the cleared ones leave
    assert cache.follow(factory) == 30
    assert len(cache) == 80 - 5 + 5
    with factory() as db:
        found = cache.lookup(db, wanted)
    assert sorted(found.texts) == sorted(ids[30:35] + late)  # cleared: read as stored
    assert_same(found.published(wanted), stored(factory, wanted))


def test_an_empty_cache_reads_every_profile_in_one_query(factory: sessionmaker[Session]) -> None:
    rnd = random.Random(6)
    publish(factory, {f"s-{k}": some_profile(rnd) for k in range(30)})
    ids = [f"s-{k}" for k in range(0, 30, 2)]
    with factory() as db:
        db.connection()
        with statements(factory) as seen:
            found = PublishedProfiles().lookup(db, ids)
    assert len(seen) == 1
    assert found.flat == {} and sorted(found.texts) == sorted(ids)
    assert_same(found.published(ids), stored(factory, ids))
    # cached, and some republished since: one scan too, the texts with the newer rows only
    cache = PublishedProfiles()
    cache.follow(factory)
    publish(factory, {sid: some_profile(rnd) for sid in ids[:4]})
    with factory() as db:
        db.connection()
        with statements(factory) as seen:
            found = cache.lookup(db, ids)
    assert len(seen) == 1 and sorted(found.texts) == sorted(ids[:4])
    assert_same(found.published(ids), stored(factory, ids))


def test_the_service_reads_them_at_start_and_follows_them(
    factory: sessionmaker[Session], settings: Settings
) -> None:
    rnd = random.Random(7)
    publish(factory, {f"s-{k}": some_profile(rnd) for k in range(12)})
    publish(factory, {"s-0": None})  # cleared before the start: not read
    with TestClient(create_app(settings)) as client:
        cache: PublishedProfiles = client.app.state.published  # type: ignore[attr-defined]
        assert len(cache) == 11
        follower = Follower(cache, factory, every_s=0.02).start()
        try:
            publish(factory, {"s-1": None, "s-20": some_profile(rnd)})
            with factory() as db:
                top = db.scalar(select(Profile.cursor).order_by(Profile.cursor.desc()).limit(1))
            deadline = time.monotonic() + 10  # the follower's rounds, not this test, read them
            while cache.cursor != top and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cache.cursor == top and len(cache) == 11
            with factory() as db:
                found = cache.lookup(db, ["s-1", "s-2", "s-20"])
            assert sorted(found.flat) == ["s-2", "s-20"]
        finally:
            follower.stop()
        assert not follower.thread.is_alive()


@pytest.fixture
def fleet_url(db_url: str) -> str:
    seed_database(db_url, 300, NOW, distinct=True)
    return db_url


def activation_rows(
    factory: sessionmaker[Session], settings: Settings, cache: PublishedProfiles | None
) -> tuple[dict[str, tuple[Any, ...]], int]:
    """The profiles and curtailments an activation writes (rolled back afterwards)."""
    with factory() as db:
        signal = DrSignal(received_at=NOW, sender="test", status="pending")
        db.add(signal)
        db.flush()
        act = dr.run_activation(db, settings, signal, NOW, "auto", "policy", dr.Spans(), cache)
        rows: dict[str, tuple[Any, ...]] = {
            c.session_id: (c.until, c.planned_kwh) for c in db.scalars(select(DrCurtailment))
        }
        for p in db.scalars(select(Profile).where(Profile.run_id == -act.id)):
            rows[p.session_id] += (p.ocpi, p.limits_a, p.evse_id, p.n_phases)
        entry = db.scalars(select(DrAuditEntry).where(DrAuditEntry.action == "relay")).one()
        cached_counts.append(entry.detail["profiles_cached"])
        db.rollback()
    return rows, act.sessions_curtailed


cached_counts: list[int] = []
"""``profiles_cached`` of each activation's audit entry, in order."""


def test_an_activation_writes_the_same_rows_with_the_cache(
    fleet_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warm, partly stale (some profiles republished since) and without the cache, rendered in
    several chunks: the same rows."""
    monkeypatch.setattr(dr, "RENDER_CHUNKS", (40, 64))
    settings = Settings(database_url=fleet_url, background=False, cpo_url="http://127.0.0.1:9/x")
    engine = make_engine(fleet_url)
    factory = make_sessionmaker(engine)
    try:
        cached_counts.clear()
        reference, n = activation_rows(factory, settings, None)
        assert n > 200 and len(reference) == n
        assert sum(len(r) > 2 for r in reference.values()) > 200  # most profiles change
        cache = PublishedProfiles()
        cache.follow(factory)
        assert activation_rows(factory, settings, cache) == (reference, n)
        assert cached_counts == [0, n]  # every curtailed session's profile from the cache
        with transaction(factory) as db:  # republished as they were: new cursors
            db.execute(
                update(Profile)
                .where(Profile.session_id < "b-000100")
                .values(cursor=Profile.cursor + 100_000)
            )
        with factory() as db:
            found = cache.lookup(db, sorted(reference))
        assert 50 < len(found.texts) < len(reference) - 50
        assert activation_rows(factory, settings, cache) == (reference, n)
        assert cached_counts[-1] == n - len(found.texts)
        # republished with other limits: the cache, not followed since, is not used for it
        with transaction(factory) as db:
            row = db.get(Profile, "b-000200")
            assert row is not None
            periods = [{**p, "limit": 6.5} for p in row.ocpi["charging_profile_period"]]
            row.ocpi = {**row.ocpi, "charging_profile_period": periods}
            row.cursor += 100_000
        republished = activation_rows(factory, settings, cache)
        assert republished[0]["b-000200"] != reference["b-000200"]
        assert republished == activation_rows(factory, settings, None)
    finally:
        engine.dispose()


def test_an_unreadable_profile_is_not_kept_and_the_others_are(
    factory: sessionmaker[Session],
) -> None:
    rnd = random.Random(8)
    publish(factory, {f"s-{k}": some_profile(rnd) for k in range(6)})
    publish(factory, {"s-3": {"start_date_time": "2026-01-15T09:00:00Z"}})  # no periods key
    cache = PublishedProfiles()
    assert cache.follow(factory) == 6
    assert len(cache) == 5
    with factory() as db:
        found = cache.lookup(db, [f"s-{k}" for k in range(6)])
    assert sorted(found.texts) == ["s-3"]  # read as stored, and refused as before
    with pytest.raises(KeyError):
        found.published(["s-3"])


def test_flattened_and_dict_profiles_give_the_same_arrays() -> None:
    """Both ways to :class:`Published` agree on odd but decodable values: integer limits and
    rates, a duration given as text or missing its value, other units, no periods."""
    base = {
        "start_date_time": "2026-01-15T09:00:00Z",
        "duration": 3600,
        "charging_rate_unit": "A",
        "min_charging_rate": 6,
        "charging_profile_period": [
            {"start_period": 0, "limit": 16},
            {"start_period": 900.0, "limit": 8.5},
        ],
    }
    profiles: list[dict[str, Any] | None] = [
        base,
        {**base, "duration": "1800"},
        {**base, "duration": None},
        {**base, "charging_rate_unit": "W", "min_charging_rate": None},
        {k: v for k, v in base.items() if k != "min_charging_rate"},
        {**base, "charging_profile_period": []},
        None,
    ]
    rnd = random.Random(9)
    profiles += [random_previous(rnd) for _ in range(200)]
    assert_same(published_from_flat(flatten(profiles)), published_from_dicts(profiles))
    assert np.isnan(published_from_dicts(profiles).end_s[2])

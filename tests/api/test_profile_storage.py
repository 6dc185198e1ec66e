"""Profile storage (migration 0007_profile_storage): profile texts as text on PostgreSQL, outbox
items that name their profile by cursor; the upgrade keeps every stored value, and so does the
downgrade."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from alembic import command
from sqlalchemy import Table, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.bulk import dumps, insert_columns
from api.db import alembic_config, make_engine, make_sessionmaker, transaction
from api.measure_dr import sent_profiles
from api.models import ChargingSession, OutboxItem, Profile
from api.publish import ocpi_segments, reoptimise
from tests.api.test_scheduler import NOW, live_settings, seed

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
OCPI = {
    "start_date_time": "2026-11-25T08:00:00Z",
    "duration": 3600,
    "charging_rate_unit": "A",
    "min_charging_rate": 8.0,
    "charging_profile_period": [
        {"start_period": 0, "limit": 12.5},
        {"start_period": 900, "limit": 8.0},
    ],
}
OCPP16 = {"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 7, "note": 'é ☃ "q"'}}
OCPP201 = {"evseId": 1, "chargingProfile": {"id": 7, "transactionId": "s-1"}}
LIMITS = [12.5, 8.0, 8.0, 8.0]


def _column_types(url: str, table: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        return {c["name"]: str(c["type"]).lower() for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def _stored_texts(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT CAST(limits_a AS TEXT), CAST(ocpi AS TEXT), CAST(ocpp16 AS TEXT), "
                    "CAST(ocpp201 AS TEXT) FROM profiles WHERE session_id = 's-1'"
                )
            ).one()
            return dict(zip(("limits_a", "ocpi", "ocpp16", "ocpp201"), row, strict=True))
    finally:
        engine.dispose()


def test_the_upgrade_and_the_downgrade_keep_profiles_and_outbox_items(db_url: str) -> None:
    cfg = alembic_config(db_url)
    command.upgrade(cfg, "0006")
    engine = make_engine(db_url)
    texts = {  # as the standard library wrote them before (spaces after separators)
        "limits_a": json.dumps(LIMITS),
        "ocpi": json.dumps(OCPI),
        "ocpp16": json.dumps(OCPP16),
        "ocpp201": json.dumps(OCPP201),
    }
    payload = {"charging_profile": OCPI, "response_url": "https://gc.test/v1/profiles/results/1"}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO profiles (session_id, cursor, run_id, limits_a, ocpi, ocpp16, "
                "ocpp201, updated_at) VALUES ('s-1', 5, 1, :limits_a, :ocpi, :ocpp16, :ocpp201, "
                ":t)"
            ),
            {**texts, "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO outbox (session_id, cursor, payload, status, attempts, "
                "next_attempt_at, created_at, updated_at) VALUES ('s-1', 5, :p, 'sent', 1, :t, "
                ":t, :t)"
            ),
            {"p": json.dumps(payload), "t": T0},
        )
    engine.dispose()
    before = _stored_texts(db_url)

    command.upgrade(cfg, "head")
    assert _stored_texts(db_url) == before  # every text kept as it was, byte for byte
    if db_url.startswith("postgresql"):
        types = _column_types(db_url, "profiles")
        assert {c: types[c] for c in texts} == dict.fromkeys(texts, "text")
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as db:
        p = db.get(Profile, "s-1")
        assert p is not None
        assert (p.limits_a, p.ocpi, p.ocpp16, p.ocpp201) == (LIMITS, OCPI, OCPP16, OCPP201)
        assert list(p.ocpi) == list(OCPI)  # key order kept
        item = db.scalars(select(OutboxItem)).one()
        assert item.payload == payload
        # a new item names its profile by cursor: no payload (SQL NULL, not JSON null)
        db.add(
            OutboxItem(
                session_id="s-1", cursor=5, payload=None, status="pending", next_attempt_at=T0
            )
        )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE payload IS NULL")).scalar() == 1
    engine.dispose()

    command.downgrade(cfg, "0006")
    assert _stored_texts(db_url) == before
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, CAST(payload AS TEXT), status FROM outbox ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert json.loads(rows[0][1]) == payload and rows[0][2] == "sent"
    # the item never claimed gets the payload it would have been pushed with
    composed = json.loads(rows[1][1])
    assert composed["charging_profile"] == OCPI and rows[1][2] == "pending"
    assert composed["response_url"].endswith(f"/v1/profiles/results/{rows[1][0]}")
    command.upgrade(cfg, "head")
    assert _stored_texts(db_url) == before


def test_profile_texts_round_trip_through_the_orm_and_the_bulk_writer(
    factory: sessionmaker[Session], db_url: str
) -> None:
    odd = {"text": 'tab\there, nl\n, quote ", backslash \\', "n": [0.1, 1e-7, -0.0, 3], "ü": None}
    with transaction(factory) as db:
        db.add(
            Profile(
                session_id="s-1",
                cursor=1,
                run_id=1,
                limits_a=LIMITS,
                ocpi=OCPI,
                ocpp16=odd,
                ocpp201=OCPP201,
                updated_at=T0,
            )
        )
        insert_columns(
            db.connection(),
            cast(Table, Profile.__table__),
            {
                "session_id": ["s-2"],
                "cursor": [2],
                "run_id": [1],
                "limits_a": [dumps(LIMITS)],
                "ocpi": [dumps(OCPI)],
                "ocpp16": [dumps(odd)],
                "ocpp201": [dumps(OCPP201)],
                "updated_at": [T0],
            },
            json_text=("limits_a", "ocpi", "ocpp16", "ocpp201"),
        )
    with factory() as db:
        got = {p.session_id: p for p in db.scalars(select(Profile))}
    for sid in ("s-1", "s-2"):
        p = got[sid]
        assert (p.limits_a, p.ocpi, p.ocpp16, p.ocpp201) == (LIMITS, OCPI, odd, OCPP201)
        assert json.dumps(p.ocpi) == json.dumps(OCPI)  # key order too


def test_measurement_reads_unsent_items_through_their_profile(
    factory: sessionmaker[Session], db_url: str
) -> None:
    """An item not pushed yet holds no payload: the measurement takes its profile by cursor, and
    leaves out an item whose session has a newer profile before the worker marked it."""
    seed(factory)
    settings = live_settings(db_url, cpo_url="http://127.0.0.1:9/cpo")
    reoptimise(factory, settings, NOW)
    with transaction(factory) as db:
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    reoptimise(factory, settings, NOW)
    hi = datetime.now(UTC) + timedelta(seconds=1)
    with factory() as db:
        items = list(db.scalars(select(OutboxItem).order_by(OutboxItem.id)))
        published = {p.session_id: p for p in db.scalars(select(Profile))}
        sent = sent_profiles(db, sorted(published), hi)
    assert all(i.payload is None and i.status == "pending" for i in items)
    per_session: dict[str, int] = {}
    for i in items:
        per_session[i.session_id] = per_session.get(i.session_id, 0) + 1
    assert max(per_session.values()) == 2  # some sessions were published twice
    for sid, p in published.items():
        assert len(sent[sid]) == 1  # the out-of-date item is left out
        segments, end_s = ocpi_segments(p.ocpi)
        assert sent[sid][0].starts_s.tolist() == [s for s, _ in segments]
        assert sent[sid][0].limits_a.tolist() == [lim for _, lim in segments]
        assert sent[sid][0].end_s == end_s

"""Profile storage. Migration 0007_profile_storage: profile texts as text on PostgreSQL, outbox
items that name their profile by cursor; the upgrade keeps every stored value, and so does the
downgrade. Migration 0008_ocpp_on_read: the OCPP forms are derived from the OCPI form, the
connector and the phases when read; the upgrade refuses rows where that would change them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Table, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.bulk import dumps, insert_columns
from api.db import alembic_config, make_engine, make_sessionmaker, transaction
from api.measure_dr import sent_profiles
from api.models import ChargingSession, OutboxItem, Profile
from api.publish import ocpi_segments, reoptimise
from optimizer.profiles import ocpp_forms, session_profiles
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


def _stored_texts(url: str, session_id: str = "s-1") -> dict[str, Any]:
    """The profile texts of a session as stored before migration 0008."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT CAST(limits_a AS TEXT), CAST(ocpi AS TEXT), CAST(ocpp16 AS TEXT), "
                    "CAST(ocpp201 AS TEXT) FROM profiles WHERE session_id = :sid"
                ),
                {"sid": session_id},
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

    command.upgrade(cfg, "0007_profile_storage")
    assert _stored_texts(db_url) == before  # every text kept as it was, byte for byte
    if db_url.startswith("postgresql"):
        types = _column_types(db_url, "profiles")
        assert {c: types[c] for c in texts} == dict.fromkeys(texts, "text")
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as db:
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
    command.upgrade(cfg, "0007_profile_storage")
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
                ocpi=odd,
                evse_id=2,
                n_phases=1,
                updated_at=T0,
            )
        )
        insert_columns(
            db.connection(),
            cast(Table, Profile.__table__),
            {
                "session_id": ["s-2", "s-3"],
                "cursor": [2, 3],
                "run_id": [1, 1],
                "limits_a": [dumps(LIMITS), dumps(LIMITS)],
                "ocpi": [dumps(odd), dumps(OCPI)],
                "evse_id": [2, 1],
                "n_phases": [1, 3],
                "updated_at": [T0, T0],
            },
            json_text=("limits_a", "ocpi"),
        )
    with factory() as db:
        got = {p.session_id: p for p in db.scalars(select(Profile))}
    for sid in ("s-1", "s-2"):
        p = got[sid]
        assert (p.limits_a, p.ocpi, p.evse_id, p.n_phases) == (LIMITS, odd, 2, 1)
        assert json.dumps(p.ocpi) == json.dumps(odd)  # key order too
    p = got["s-3"]
    assert json.dumps(p.ocpi) == json.dumps(OCPI)
    assert (p.ocpp16, p.ocpp201) == (
        ocpp_forms(OCPI, session_id="s-3", evse_id=1, n_phases=3)["ocpp16"],
        ocpp_forms(OCPI, session_id="s-3", evse_id=1, n_phases=3)["ocpp201"],
    )
    assert p.ocpp16["connectorId"] == 1 and p.ocpp201["chargingProfile"]["transactionId"] == "s-3"


def _profile_0007(url: str, session_id: str, forms: dict[str, Any]) -> None:
    """A ``profiles`` row as the service wrote it before migration 0008 (all three forms)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO profiles (session_id, cursor, run_id, limits_a, ocpi, ocpp16, "
                    "ocpp201, updated_at) VALUES (:sid, 1, 1, :limits_a, :ocpi, :ocpp16, "
                    ":ocpp201, :t)"
                ),
                {
                    "sid": session_id,
                    "limits_a": json.dumps(LIMITS),
                    **{f: json.dumps(forms[f]) for f in ("ocpi", "ocpp16", "ocpp201")},
                    "t": T0,
                },
            )
    finally:
        engine.dispose()


def _published_forms(session_id: str, evse_id: int, n_phases: int) -> dict[str, Any]:
    return session_profiles(
        session_id=session_id,
        evse_id=evse_id,
        start=T0,
        step_s=900,
        current_a=[16.0, 12.56, 3.0],
        present=[True, True, True],
        min_current_a=8.0,
        n_phases=n_phases,
        pause_consent=False,
    )


def test_ocpp_forms_on_read_upgrade_and_downgrade_keep_every_form(db_url: str) -> None:
    cfg = alembic_config(db_url)
    command.upgrade(cfg, "0007_profile_storage")
    stored = {
        "s-1": _published_forms("s-1", 2, 1),
        'we"ird\\id-é': _published_forms('we"ird\\id-é', 1, 3),
    }
    for sid, forms in stored.items():
        _profile_0007(db_url, sid, forms)

    command.upgrade(cfg, "head")
    assert "ocpp16" not in _column_types(db_url, "profiles")
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with factory() as db:
        got = {p.session_id: p for p in db.scalars(select(Profile))}
    engine.dispose()
    assert (got["s-1"].evse_id, got["s-1"].n_phases) == (2, 1)
    for sid, forms in stored.items():
        p = got[sid]
        for f in ("ocpi", "ocpp16", "ocpp201"):
            assert json.dumps(getattr(p, f)) == json.dumps(forms[f])  # key order too

    command.downgrade(cfg, "0007_profile_storage")
    assert "evse_id" not in _column_types(db_url, "profiles")
    for sid, forms in stored.items():
        texts = _stored_texts(db_url, sid)
        for f in ("ocpi", "ocpp16", "ocpp201"):
            assert json.dumps(json.loads(texts[f])) == json.dumps(forms[f])


def test_ocpp_forms_on_read_refuses_forms_it_could_not_give_back(db_url: str) -> None:
    """A stored OCPP form that is not the form of its OCPI profile (here: another stack level)
    stops the upgrade before anything changes; the error names the session."""
    cfg = alembic_config(db_url)
    command.upgrade(cfg, "0007_profile_storage")
    forms = _published_forms("s-9", 1, 3)
    forms["ocpp16"]["csChargingProfiles"]["stackLevel"] = 3
    _profile_0007(db_url, "s-9", forms)
    before = _stored_texts(db_url, "s-9")
    with pytest.raises(RuntimeError, match="session 's-9'"):
        command.upgrade(cfg, "head")
    assert "ocpp16" in _column_types(db_url, "profiles")
    assert _stored_texts(db_url, "s-9") == before
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert version == "0007_profile_storage"


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

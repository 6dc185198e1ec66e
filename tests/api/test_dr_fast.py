"""What keeps the activation fast without changing what it writes: the collector held while it
runs, per-step timings in the answer and the audit entry, LZ4 compression of the large JSON
columns on PostgreSQL (migration 0005)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from api import dr
from api.db import make_engine, migrate, transaction
from api.models_dr import DrAuditEntry
from tests.api.test_demand_response import BRP, RELEASE_KW, seed, settings_for


def test_activation_reports_its_steps(factory: sessionmaker[Session], db_url: str) -> None:
    now = datetime.now(UTC)
    seed(factory, now)
    settings = settings_for(db_url)
    with transaction(factory) as db:
        dr.set_policy(db, {"auto_relay": True}, "operator:test", now)
    out, relayed = dr.receive_signal(factory, settings, BRP, dr.SignalIn(reason="t"), now)
    assert relayed and out["sessions_curtailed"] == len(RELEASE_KW)
    steps = out["timings_ms"]
    assert list(steps) == [
        "store_signal",
        "read_fleet",
        "decide",
        "read_profiles",
        "render",
        "write_curtailments",
        "write_profiles_outbox",
        "commit",
    ]
    assert all(v >= 0 for v in steps.values())
    assert sum(steps.values()) <= out["committed_s"] * 1e3 + 1.0
    with factory() as db:
        entry = db.scalars(select(DrAuditEntry).where(DrAuditEntry.action == "relay")).one()
    assert set(entry.detail["timings_ms"]) == set(steps) - {"commit"}


def test_large_json_columns_use_lz4_on_postgresql(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite does not compress")
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            try:
                with conn.begin():
                    conn.execute(text("SET LOCAL default_toast_compression = 'lz4'"))
            except Exception:
                pytest.skip("this PostgreSQL server is built without LZ4")
            rows = conn.execute(
                text(
                    "SELECT attrelid::regclass::text, attname, attcompression FROM pg_attribute "
                    "WHERE attrelid IN ('profiles'::regclass, 'outbox'::regclass) "
                    "AND attname IN ('limits_a', 'ocpi', 'payload')"
                )
            ).all()
    finally:
        engine.dispose()
    assert sorted((t, c) for t, c, _ in rows) == [
        ("outbox", "payload"),
        ("profiles", "limits_a"),
        ("profiles", "ocpi"),
    ]
    assert {m for _, _, m in rows} == {"l"}

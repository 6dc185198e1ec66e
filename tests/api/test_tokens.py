"""Token uids stored as a keyed hash (api/tokens.py): the key from the settings or generated
once per database, existing unkeyed hashes re-keyed in place, a changed key refused."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from api.db import make_engine, make_sessionmaker, migrate, transaction
from api.main import create_app
from api.models import ChargingSession, Setting
from api.settings import Settings
from api.tokens import (
    SECRET_KEY,
    TokenKeyMismatch,
    fingerprint,
    rekey_stored_hashes,
    token_hash,
    token_key,
    unkeyed_hash,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _session(sid: str, stored_hash: str | None) -> ChargingSession:
    return ChargingSession(
        id=sid,
        country_code="NL",
        party_id="GCP",
        connector_id="st-1-1",
        start_date_time=T0,
        status="ACTIVE",
        kwh=0.0,
        phases=3,
        token_hash=stored_hash,
        last_updated=T0,
    )


def test_the_hash_is_keyed_and_case_insensitive() -> None:
    a, b = b"key-a", b"key-b"
    assert token_hash("04a1b2c3", a) == token_hash("04A1B2C3", a)
    assert token_hash("04A1B2C3", a) != token_hash("04A1B2C3", b)
    assert token_hash("04A1B2C3", a) != hashlib.sha256(b"04A1B2C3").hexdigest()
    assert len(token_hash("x", a)) == 64  # fits the token_hash column


def test_a_generated_key_is_kept_in_the_database_and_shared(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    try:
        first = token_key(factory, Settings(database_url=db_url))
        again = token_key(factory, Settings(database_url=db_url))  # another worker, a restart
        assert first == again and len(first) == 64  # 256 random bits as hex text
        with factory() as db:
            assert db.get(Setting, SECRET_KEY) is not None
    finally:
        engine.dispose()


def test_a_configured_secret_is_used_and_not_stored(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    try:
        cfg = Settings(database_url=db_url, token_secret=SecretStr("s3cret from a vault"))
        assert token_key(factory, cfg) == b"s3cret from a vault"
        with factory() as db:
            assert db.get(Setting, SECRET_KEY) is None
        assert "s3cret" not in repr(cfg) and "s3cret" not in cfg.model_dump_json()
    finally:
        engine.dispose()


def test_unkeyed_hashes_are_rekeyed_once_in_place(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    key = b"k" * 32
    try:
        with transaction(factory) as db:  # rows as stored before the keyed scheme
            db.add(_session("s-1", unkeyed_hash("04A1B2C3")))
            db.add(_session("s-2", unkeyed_hash("04a1b2c3")))  # the same card
            db.add(_session("s-3", None))
        assert rekey_stored_hashes(factory, key) == 2
        with factory() as db:
            rows = {s.id: s.token_hash for s in db.scalars(select(ChargingSession))}
        assert rows == {
            "s-1": token_hash("04A1B2C3", key),
            "s-2": token_hash("04A1B2C3", key),
            "s-3": None,
        }
        assert rekey_stored_hashes(factory, key) == 0  # done once: a restart changes nothing
        with factory() as db:
            assert {s.id: s.token_hash for s in db.scalars(select(ChargingSession))} == rows
        with pytest.raises(TokenKeyMismatch, match="token_secret") as err:
            rekey_stored_hashes(factory, b"a second secret")
        assert err.value.stored == fingerprint(key)
        assert "a second secret" not in str(err.value)
    finally:
        engine.dispose()


def test_the_service_hashes_with_its_key_and_never_logs_it(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(Settings(database_url=db_url, background=False))) as c:
        key = c.app.state.token_key  # type: ignore[attr-defined]
    assert key.decode() not in caplog.text
    moved = Settings(database_url=db_url, background=False, token_secret=SecretStr(key.decode()))
    with TestClient(create_app(moved)) as c:  # the generated key moved to the environment
        assert c.app.state.token_key == key  # type: ignore[attr-defined]
    other = Settings(database_url=db_url, background=False, token_secret=SecretStr("changed"))
    with pytest.raises(TokenKeyMismatch), TestClient(create_app(other)):
        pass  # a start with another key is refused: every stored hash would stop matching

"""Database engine, sessions and schema migrations (SQLAlchemy 2 + Alembic).

SQLite is the embedded default; PostgreSQL is used through ``postgresql+psycopg://``. The schema
is owned by the Alembic migrations in ``api/migrations`` and applied at start (:func:`migrate`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS = Path(__file__).parent / "migrations"
WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
"""One write lock per SQLite engine (see :func:`transaction`)."""


class Base(DeclarativeBase):
    """Declarative base of every table."""


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given for a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """A JSON value the service writes and reads whole: ``json`` on SQLite (as ``JSON``), plain
    ``text`` holding the JSON on PostgreSQL.

    PostgreSQL's ``json`` type is text that the server parses on the way in only to check it.
    The profile texts are JSON the service encoded itself, and an activation writes some 40 MB
    of them for 13,000 sessions: the check cost about a third of the ``COPY``. Readers see the
    same values (encoded with :func:`api.bulk.dumps`, decoded with :func:`api.bulk.loads`);
    what is lost is only JSON operators in SQL, which nothing uses on these columns."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(JSON())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if dialect.name != "postgresql" or value is None:
            return value
        from api.bulk import dumps

        return dumps(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if dialect.name != "postgresql" or value is None:
            return value
        from api.bulk import loads

        return loads(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        WRITE_LOCKS[engine] = threading.Lock()

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed as a whole, or rolled back on any error.

    On SQLite, write transactions of one process take turns on a lock: SQLite allows one
    writer at a time, and its own busy handler waits by sleeping (up to 100 ms per try), which
    under concurrent requests costs far more than queueing on a lock.
    """
    bind = factory.kw.get("bind")
    lock = WRITE_LOCKS.get(bind) if isinstance(bind, Engine) else None
    with lock if lock is not None else nullcontext(), factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")

"""Fixtures: an app on a fresh database (SQLite file, or PostgreSQL when
GRIDCHARGE_TEST_DATABASE_URL is set), API keys per role, and a real uvicorn server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import make_engine, make_sessionmaker, migrate, transaction
from api.main import create_app
from api.security import create_key
from api.settings import Settings

PG_URL = os.environ.get("GRIDCHARGE_TEST_DATABASE_URL")


def fresh_database_url(tmp_path: Path) -> str:
    """A new empty database: a SQLite file, or a new PostgreSQL database on the test server."""
    if not PG_URL:
        return f"sqlite:///{tmp_path / 'gridcharge.db'}"
    import sqlalchemy as sa

    name = f"gc_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return fresh_database_url(tmp_path)


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Database sessions on a migrated ``db_url`` (modules that need the app's tables made by
    the app itself override it)."""
    migrate(db_url)
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, background=False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def make_key(db_url: str, role: str, regions: list[str] | None = None) -> str:
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        with transaction(make_sessionmaker(engine)) as db:
            return create_key(db, role, regions)
    finally:
        engine.dispose()


@pytest.fixture
def keys(db_url: str, client: TestClient) -> dict[str, str]:
    """One key per role (the DSO key may act on region-01 only)."""
    out = {role: make_key(db_url, role) for role in ("csms", "operator", "data-scientist", "admin")}
    out["dso"] = make_key(db_url, "dso", ["region-01"])
    return out


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``gridcharge serve`` in its own process on a loopback port."""

    def __init__(self, db_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.env = {**os.environ, "GRIDCHARGE_DATABASE_URL": db_url, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "optimizer.cli", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        """kill -9: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def _close(self) -> None:
        if self.proc and self.proc.stderr and not self.proc.stderr.closed:
            self.proc.stderr.close()


@pytest.fixture
def server(db_url: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(db_url).start()
    yield srv
    srv.stop()

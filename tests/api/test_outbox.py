"""The outbox end to end against a real CPO over loopback (:mod:`tests.api.cpo_server`):
retry with backoff, ``sent`` then ``accepted`` through the asynchronous result, nothing lost
while the CPO is down, also across a kill -9 of the service."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.db import transaction, utcnow
from api.main import create_app
from api.models import OutboxItem, Profile
from api.outbox import OutboxWorker, backoff_s, judge, push_due, store_result
from api.publish import reoptimise
from api.settings import Settings
from tests.api.conftest import ServerProcess, auth, free_port, make_key
from tests.api.cpo_server import CpoServer
from tests.api.test_scheduler import NOW, seed

TOKEN = "cpo-secret"


class AppServer:
    """The service in this process, served by uvicorn on a loopback port (a thread)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the app server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def items(factory: sessionmaker[Session]) -> list[OutboxItem]:
    with factory() as db:
        return list(db.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def wait_for(what: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def outbox_settings(db_url: str, app_port: int) -> Iterator[Callable[..., Settings]]:
    def make(cpo: CpoServer, **kw: Any) -> Settings:
        base: dict[str, Any] = {
            "database_url": db_url,
            "background": False,
            "horizon_steps": 16,
            "cpo_url": cpo.url,
            "cpo_token": TOKEN,
            "public_url": f"http://127.0.0.1:{app_port}",
            "outbox_backoff_s": 0.2,
        }
        return Settings(**{**base, **kw})

    yield make


def test_backoff_doubles_from_the_setting_and_is_capped() -> None:
    assert [backoff_s(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(9, 1.0) == 256.0 and backoff_s(10, 1.0) == 300.0
    assert backoff_s(50, 0.05) == 300.0


def test_judge_accepts_only_an_ocpi_accepted_answer() -> None:
    def answer(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body)

    ok = {"status_code": 1000, "data": {"result": "ACCEPTED", "timeout": 30}}
    assert judge(answer(200, ok)) is None
    assert judge(answer(503, ok)) == "HTTP 503"
    assert "REJECTED" in str(
        judge(answer(200, {"status_code": 1000, "data": {"result": "REJECTED"}}))
    )
    assert "2001" in str(judge(answer(200, {"status_code": 2001, "status_message": "bad"})))
    assert "not JSON" in str(judge(httpx.Response(200, content=b"<html>")))


def test_push_retries_with_backoff_then_sent_then_accepted(
    db_url: str, app_port: int, outbox_settings: Callable[..., Settings]
) -> None:
    cpo_key = make_key(db_url, "csms")
    with CpoServer(result_token=cpo_key, fail_first=3) as cpo:
        settings = outbox_settings(cpo)
        with AppServer(settings, app_port) as app, httpx.Client(timeout=10) as client:
            factory = app.app.state.sessionmaker
            seed(factory, only={"s-4"})
            reoptimise(factory, settings, NOW)
            [item] = items(factory)
            assert item.status == "pending" and item.attempts == 0
            t0 = utcnow()
            # three 503s: each waits twice as long as the one before (0.2, 0.4, 0.8 s)
            expected_next = [t0 + timedelta(seconds=s) for s in (0.2, 0.6, 1.4)]
            at = t0
            for attempt, next_at in enumerate(expected_next, start=1):
                assert push_due(factory, settings, client, now=at) == 1
                [item] = items(factory)
                assert (item.status, item.attempts, item.last_error) == (
                    "pending",
                    attempt,
                    "HTTP 503",
                )
                assert item.next_attempt_at == next_at
                # not due before then
                assert (
                    push_due(factory, settings, client, now=next_at - timedelta(seconds=0.01)) == 0
                )
                at = next_at
            assert push_due(factory, settings, client, now=at) == 1
            [item] = items(factory)
            assert item.status in ("sent", "accepted") and item.attempts == 4
            wait_for(lambda: items(factory)[0].status == "accepted")
            [item] = items(factory)
            assert item.result == {"result": "ACCEPTED"} and item.last_error is None
            with factory() as db:
                profile = db.get(Profile, "s-4")
    assert len(cpo.puts) == 4
    assert profile is not None
    for put in cpo.puts:
        assert put.path == "/ocpi/cpo/2.2.1/chargingprofiles/s-4"
        assert put.headers["Authorization"] == f"Token {TOKEN}"
        assert put.body == {
            "charging_profile": profile.ocpi,
            "response_url": f"http://127.0.0.1:{app_port}/v1/profiles/results/{item.id}",
        }
    assert cpo.results == [(item.payload["response_url"], 200)]


def test_worker_thread_delivers_everything_after_an_outage(
    db_url: str, app_port: int, outbox_settings: Callable[..., Settings]
) -> None:
    cpo = CpoServer(result_token=make_key(db_url, "csms"))  # not started: connection refused
    settings = outbox_settings(cpo, outbox_backoff_s=0.05, outbox_max_attempts=1000)
    with AppServer(settings, app_port) as app:
        factory = app.app.state.sessionmaker
        seed(factory)
        reoptimise(factory, settings, NOW)
        worker = OutboxWorker(factory, settings).start()
        try:
            wait_for(lambda: all(i.attempts >= 3 for i in items(factory)))
            assert all(i.status == "pending" for i in items(factory))
            assert all("ConnectError" in (i.last_error or "") for i in items(factory))
            with cpo:
                wait_for(lambda: all(i.status == "accepted" for i in items(factory)))
        finally:
            worker.stop()
    assert not worker.thread.is_alive()
    assert sorted(p.path.rsplit("/", 1)[1] for p in cpo.puts) == ["s-1", "s-2", "s-3", "s-4"]


def test_items_fail_after_the_last_attempt(
    db_url: str, outbox_settings: Callable[..., Settings]
) -> None:
    with CpoServer(fail_first=100) as cpo, httpx.Client(timeout=10) as client:
        settings = outbox_settings(cpo, outbox_max_attempts=3)
        from api.db import make_engine, make_sessionmaker, migrate

        migrate(db_url)
        engine = make_engine(db_url)
        factory = make_sessionmaker(engine)
        try:
            seed(factory, only={"s-4"})
            reoptimise(factory, settings, NOW)
            at = utcnow()
            for _ in range(5):
                push_due(factory, settings, client, now=at)
                at += timedelta(seconds=400)
            [item] = items(factory)
        finally:
            engine.dispose()
    assert (item.status, item.attempts, item.last_error) == ("failed", 3, "HTTP 503")
    assert len(cpo.puts) == 3


def test_result_endpoint_answers_in_ocpi_form(
    db_url: str, app_port: int, outbox_settings: Callable[..., Settings]
) -> None:
    from fastapi.testclient import TestClient

    settings = outbox_settings(CpoServer())
    with TestClient(create_app(settings)) as c:
        factory = c.app.state.sessionmaker  # type: ignore[attr-defined]
        seed(factory)
        reoptimise(factory, settings, NOW)
        first, second = items(factory)[:2]
        key = auth(make_key(db_url, "csms"))
        r = c.post(f"/v1/profiles/results/{first.id}", json={"result": "REJECTED"}, headers=key)
        assert r.status_code == 200 and r.json()["status_code"] == 1000
        assert "timestamp" in r.json()
        r = c.post("/v1/profiles/results/9999", json={"result": "ACCEPTED"}, headers=key)
        assert r.status_code == 404 and r.json()["status_code"] == 2000
        r = c.post(f"/v1/profiles/results/{second.id}", json={"result": "MAYBE"}, headers=key)
        assert r.status_code == 400 and r.json()["status_code"] == 2001
        assert "result" in r.json()["status_message"]
        dso = auth(make_key(db_url, "dso", ["region-01"]))
        r = c.post(f"/v1/profiles/results/{second.id}", json={"result": "ACCEPTED"}, headers=dso)
        assert r.status_code == 403
        with transaction(factory) as db:
            row = db.get(OutboxItem, second.id)
            assert row is not None
            row.status = "superseded"
        r = c.post(f"/v1/profiles/results/{second.id}", json={"result": "ACCEPTED"}, headers=key)
        assert r.status_code == 200
        by_id = {i.id: i for i in items(factory)}
    assert (by_id[first.id].status, by_id[first.id].result) == ("rejected", {"result": "REJECTED"})
    assert (by_id[second.id].status, by_id[second.id].result) == (
        "superseded",
        {"result": "ACCEPTED"},
    )


def test_nothing_is_lost_when_the_cpo_and_the_service_go_down(db_url: str) -> None:
    """The real service (its own process, background loops on) publishes while the CPO is
    down, is killed with -9, and after a restart delivers every session's current profile."""
    from api.db import make_engine, make_sessionmaker, migrate

    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    cpo = CpoServer(result_token=make_key(db_url, "csms"))  # down
    env = {
        "GRIDCHARGE_CPO_URL": cpo.url,
        "GRIDCHARGE_CPO_TOKEN": TOKEN,
        "GRIDCHARGE_OUTBOX_BACKOFF_S": "0.05",
        "GRIDCHARGE_OUTBOX_MAX_ATTEMPTS": "10000",
        "GRIDCHARGE_HORIZON_STEPS": "16",
        "GRIDCHARGE_RESCHEDULE_EVERY_S": "3600",
        "GRIDCHARGE_DEBOUNCE_S": "0",
    }
    srv = ServerProcess(db_url, env)
    srv.env["GRIDCHARGE_PUBLIC_URL"] = srv.url
    try:
        seed(factory, datetime.now(UTC))
        srv.start()
        wait_for(lambda: len(items(factory)) == 4 and all(i.attempts >= 2 for i in items(factory)))
        srv.kill()
        before = items(factory)
        assert [i.status for i in before] == ["pending"] * 4  # kept in the database
        cpo.start()
        again = ServerProcess(db_url, srv.env)
        again.port, again.url = srv.port, srv.url  # the response_urls name this address
        srv = again.start()

        def delivered() -> bool:
            with factory() as db:
                current = {p.session_id: p for p in db.scalars(select(Profile))}
                newest: dict[str, OutboxItem] = {}
                for i in db.scalars(select(OutboxItem).order_by(OutboxItem.id)):
                    newest[i.session_id] = i
            return len(current) == 4 and all(
                newest[s].status == "accepted" and newest[s].payload["charging_profile"] == p.ocpi
                for s, p in current.items()
            )

        # an item the killed process had claimed is due again when its lease (20 s) ends
        wait_for(delivered, timeout_s=60)
        assert all(i.status in ("accepted", "superseded") for i in items(factory))
        last_put = {p.path.rsplit("/", 1)[1]: p.body for p in cpo.puts}
        with factory() as db:
            for p in db.scalars(select(Profile)):
                assert last_put[p.session_id]["charging_profile"] == p.ocpi
    finally:
        srv.stop()
        cpo.stop()
        engine.dispose()


@pytest.fixture
def direct_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    from api.db import make_engine, make_sessionmaker, migrate

    migrate(db_url)
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def metric(name: str, **labels: str) -> float:
    from api.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_failed_item_gets_another_round_after_its_rest_then_is_abandoned(
    direct_factory: sessionmaker[Session], outbox_settings: Callable[..., Settings]
) -> None:
    factory = direct_factory
    with CpoServer(fail_first=100) as cpo, httpx.Client(timeout=10) as client:
        settings = outbox_settings(
            cpo, outbox_max_attempts=2, outbox_max_rounds=2, outbox_failed_retry_s=100.0
        )
        seed(factory, only={"s-4"})
        reoptimise(factory, settings, NOW)
        requeued0 = metric("gridcharge_outbox_requeued_total", why="rested")
        abandoned0 = metric("gridcharge_outbox_abandoned_total")
        at = utcnow()
        assert push_due(factory, settings, client, now=at) == 1
        assert push_due(factory, settings, client, now=at + timedelta(seconds=1)) == 1
        [item] = items(factory)
        assert (item.status, item.attempts) == ("failed", 2)
        assert item.next_attempt_at == at + timedelta(seconds=101)
        # resting: nothing is tried before the rest is over
        assert push_due(factory, settings, client, now=at + timedelta(seconds=60)) == 0
        assert items(factory)[0].status == "failed"
        # the second round
        assert push_due(factory, settings, client, now=at + timedelta(seconds=101)) == 1
        [item] = items(factory)
        assert (item.status, item.attempts) == ("pending", 3)
        assert metric("gridcharge_outbox_requeued_total", why="rested") == requeued0 + 1
        assert push_due(factory, settings, client, now=at + timedelta(seconds=102)) == 1
        [item] = items(factory)
        assert (item.status, item.attempts, item.last_error) == ("abandoned", 4, "HTTP 503")
        assert metric("gridcharge_outbox_abandoned_total") == abandoned0 + 1
        # abandoned is final
        assert push_due(factory, settings, client, now=at + timedelta(days=1)) == 0
    assert len(cpo.puts) == 4


def test_failed_items_are_requeued_at_once_when_the_cpo_is_back(
    direct_factory: sessionmaker[Session], outbox_settings: Callable[..., Settings]
) -> None:
    factory = direct_factory
    with CpoServer(fail_first=2) as cpo, httpx.Client(timeout=10) as client:
        settings = outbox_settings(cpo, outbox_max_attempts=1, outbox_failed_retry_s=3600.0)
        seed(factory, only={"s-1", "s-3", "s-4"})
        reoptimise(factory, settings, NOW)
        back0 = metric("gridcharge_outbox_requeued_total", why="cpo_back")
        at = utcnow()
        # the first two pushes fail (a round of one attempt: failed, resting an hour); the third
        # succeeds: the CPO is back, so the two failed ones go out in the same call
        assert push_due(factory, settings, client, now=at) == 5
    statuses = [(i.status, i.attempts) for i in items(factory)]
    assert statuses == [("sent", 2), ("sent", 2), ("sent", 1)]
    assert metric("gridcharge_outbox_requeued_total", why="cpo_back") == back0 + 2
    assert len(cpo.puts) == 5


def test_only_the_newest_failed_item_of_a_session_is_retried(
    direct_factory: sessionmaker[Session], outbox_settings: Callable[..., Settings]
) -> None:
    factory = direct_factory
    with CpoServer(fail_first=1) as cpo, httpx.Client(timeout=10) as client:
        settings = outbox_settings(cpo, outbox_max_attempts=1, outbox_failed_retry_s=10.0)
        seed(factory, only={"s-4"})
        reoptimise(factory, settings, NOW)
        at = utcnow()
        push_due(factory, settings, client, now=at)
        [old] = items(factory)
        assert old.status == "failed"
        with transaction(factory) as db:  # a newer profile of s-4 was published (and sent)
            db.add(
                OutboxItem(
                    session_id="s-4", cursor=old.cursor + 1, payload=old.payload, status="sent"
                )
            )
        push_due(factory, settings, client, now=at + timedelta(seconds=11))
    assert [i.status for i in items(factory)] == ["superseded", "sent"]
    assert len(cpo.puts) == 1


def test_a_sent_item_without_a_result_times_out(
    direct_factory: sessionmaker[Session], outbox_settings: Callable[..., Settings]
) -> None:
    factory = direct_factory
    # no service listens on the response_url: the CPO's result never arrives
    with CpoServer() as cpo, httpx.Client(timeout=10) as client:
        settings = outbox_settings(cpo, outbox_result_timeout_s=60.0)
        seed(factory, only={"s-4"})
        reoptimise(factory, settings, NOW)
        timeouts0 = metric("gridcharge_outbox_result_timeouts_total")
        at = utcnow()
        assert push_due(factory, settings, client, now=at) == 1
        assert items(factory)[0].status == "sent"
        push_due(factory, settings, client, now=at + timedelta(seconds=59))
        assert items(factory)[0].status == "sent"
        push_due(factory, settings, client, now=at + timedelta(seconds=60))
        [item] = items(factory)
        assert item.status == "no_result"
        assert item.last_error == "no ChargingProfileResult within 60 s"
        assert metric("gridcharge_outbox_result_timeouts_total") == timeouts0 + 1
    # a result that comes late still counts
    with transaction(factory) as db:
        stored = store_result(db, item.id, {"result": "ACCEPTED"})
        assert stored is not None and stored.status == "accepted"

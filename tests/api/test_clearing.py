"""Profiles of ended sessions leave the feed (:mod:`api.clearing`): a new cursor with
``cleared: true`` and the OCPP ClearChargingProfile forms; their unsent pushes are superseded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.models import OutboxItem
from api.publish import reoptimise
from api.settings import Settings
from tests.api.conftest import auth, make_key
from tests.api.test_scheduler import NOW, live_settings, seed

URL = "/ocpi/2.2.1/sessions/NL/GCX"


@pytest.fixture
def live(db_url: str) -> Iterator[tuple[TestClient, Settings, str]]:
    # a CPO URL makes publishing write outbox items; nothing is pushed (no worker runs)
    settings = live_settings(db_url, cpo_url="http://127.0.0.1:9/ocpi/cpo/2.2.1/chargingprofiles")
    key = make_key(db_url, "csms")
    with TestClient(create_app(settings)) as client:
        yield client, settings, key


def feed(client: TestClient, key: str, since: int = 0) -> dict[str, Any]:
    r = client.get("/v1/profiles", params={"changed_since": since}, headers=auth(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def outbox(factory: sessionmaker[Session]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with factory() as db:
        for item in db.scalars(select(OutboxItem).order_by(OutboxItem.id)):
            out.setdefault(item.session_id, []).append(item.status)
    return out


def test_an_ended_session_leaves_the_feed_once(live: tuple[TestClient, Settings, str]) -> None:
    client, settings, key = live
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    seed(factory, only={"s-3", "s-4"})
    reoptimise(factory, settings, NOW)
    first = feed(client, key)
    assert {p["session_id"]: p["cleared"] for p in first["profiles"]} == {
        "s-3": False,
        "s-4": False,
    }
    published = {p["session_id"]: p for p in first["profiles"]}
    assert outbox(factory) == {"s-3": ["pending"], "s-4": ["pending"]}

    r = client.patch(
        f"{URL}/s-4",
        json={"status": "COMPLETED", "kwh": 7.5, "last_updated": "2026-11-25T08:10:00Z"},
        headers=auth(key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["plugged_in"] is False

    later = feed(client, key, first["cursor"])
    [entry] = later["profiles"]
    assert entry["session_id"] == "s-4" and entry["cleared"] is True
    assert entry["cursor"] == later["cursor"] > first["cursor"]
    assert entry["ocpi"] is None and entry["ocpp16"] is None and entry["ocpp201"] is None
    old16 = published["s-4"]["ocpp16"]
    old201 = published["s-4"]["ocpp201"]
    assert entry["clear"] == {
        "ocpp16": {
            "id": old16["csChargingProfiles"]["chargingProfileId"],
            "connectorId": old16["connectorId"],
        },
        "ocpp201": {"chargingProfileId": old201["chargingProfile"]["id"]},
    }
    # the push not made yet is dropped; the other session's is untouched
    assert outbox(factory) == {"s-3": ["pending"], "s-4": ["superseded"]}

    # a repeated (or stale) end changes nothing: no new cursor
    r = client.patch(
        f"{URL}/s-4",
        json={"status": "COMPLETED", "last_updated": "2026-11-25T08:11:00Z"},
        headers=auth(key),
    )
    assert r.status_code == 200, r.text
    assert feed(client, key, later["cursor"])["profiles"] == []

    # the next run leaves the ended session alone
    reoptimise(factory, settings, NOW)
    assert "s-4" not in {p["session_id"] for p in feed(client, key, later["cursor"])["profiles"]}
    assert outbox(factory)["s-4"] == ["superseded"]


def test_end_date_time_alone_ends_the_session_and_clears(
    live: tuple[TestClient, Settings, str],
) -> None:
    client, settings, key = live
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    seed(factory, only={"s-3", "s-4"})
    reoptimise(factory, settings, NOW)
    cursor = feed(client, key)["cursor"]
    r = client.patch(
        f"{URL}/s-3",
        json={"end_date_time": "2026-11-25T08:09:00Z", "last_updated": "2026-11-25T08:09:00Z"},
        headers=auth(key),
    )
    assert r.status_code == 200, r.text
    [entry] = feed(client, key, cursor)["profiles"]
    assert (entry["session_id"], entry["cleared"]) == ("s-3", True)


def test_a_session_without_a_profile_ends_quietly(
    live: tuple[TestClient, Settings, str],
) -> None:
    client, _settings, key = live
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    seed(factory, only={"s-3"})
    r = client.patch(
        f"{URL}/s-3",
        json={"status": "INVALID", "last_updated": "2026-11-25T08:09:00Z"},
        headers=auth(key),
    )
    assert r.status_code == 200, r.text
    assert feed(client, key) == {"profiles": [], "cursor": 0, "more": False}


def test_a_reopened_session_is_published_again(live: tuple[TestClient, Settings, str]) -> None:
    client, settings, key = live
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    seed(factory, only={"s-4"})
    reoptimise(factory, settings, NOW)
    headers = auth(key)
    ended = {"status": "COMPLETED", "last_updated": "2026-11-25T08:08:00Z"}
    assert client.patch(f"{URL}/s-4", json=ended, headers=headers).status_code == 200
    cursor = feed(client, key)["cursor"]
    # the CSMS corrects itself: the session goes on
    body = {"status": "ACTIVE", "end_date_time": None, "last_updated": "2026-11-25T08:09:00Z"}
    assert client.patch(f"{URL}/s-4", json=body, headers=headers).status_code == 200
    reoptimise(factory, settings, NOW)
    [entry] = feed(client, key, cursor)["profiles"]
    assert entry["session_id"] == "s-4" and entry["cleared"] is False
    assert entry["ocpi"] is not None
    assert outbox(factory)["s-4"] == ["superseded", "pending"]

"""The forecasting registry through HTTP: upload and retrain jobs, versions with metrics,
comparison, promotion and rollback, refusal of tampered models, and the scheduler using the
promoted model end to end."""

from __future__ import annotations

import copy
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.db import make_engine, make_sessionmaker, transaction
from api.forecast import live_predictions
from api.live import build_live_scenario
from api.models import ChargingSession
from api.models_forecast import ForecastModelVersion
from api.publish import reoptimise
from api.settings import Settings
from api.tokens import token_hash
from api.topology import upsert_topology
from optimizer.scenario import DEFAULT_STAY_H
from tests.api.conftest import auth

TOKEN_KEY = b"forecast-tests"
"""Key of the token hashes these tests store directly (only equality matters to forecasting)."""

SLICE = Path(__file__).parents[1] / "forecasting" / "data" / "workplace_slice.csv"
NOW = datetime(2026, 11, 25, 8, 7, 30, tzinfo=UTC)
TOPOLOGY: dict[str, Any] = {
    "nodes": [
        {"id": "region-01", "parent": None},
        {"id": "region-01/sc-1", "parent": "region-01", "limit_kw": 40.0},
        {"id": "region-02", "parent": None},
    ],
    "stations": [
        {"id": "st-1", "node": "region-01/sc-1"},
        {"id": "st-2", "node": "region-01/sc-1"},
        {"id": "st-3", "node": "region-01"},
        {"id": "st-9", "node": "region-02"},
    ],
}


def row(
    sid: str,
    connector: str,
    start: datetime,
    *,
    end: datetime | None = None,
    uid: str | None = None,
    kwh: float = 0.0,
) -> ChargingSession:
    return ChargingSession(
        id=sid,
        country_code="NL",
        party_id="GCX",
        connector_id=connector,
        start_date_time=start,
        end_date_time=end,
        status="COMPLETED" if end else "ACTIVE",
        kwh=kwh,
        phases=3,
        token_hash=token_hash(uid, TOKEN_KEY) if uid else None,
        last_updated=end or start,
    )


def habit_sessions(days: int = 28) -> list[ChargingSession]:
    """20 commuters over ``days`` weekdays: each arrives about 08:00 UTC and leaves at their own
    habit (13:00 … 17:45 UTC ± 15 min); energy grows with the stay."""
    rng = np.random.default_rng(3)
    out = []
    connectors = ["st-1-1", "st-1-2", "st-2-1", "st-2-2", "st-3-1", "st-3-2"]
    day0 = NOW.replace(hour=0, minute=0, second=0) - timedelta(days=days + 1)
    for d in range(days):
        day = day0 + timedelta(days=d)
        for u in range(20):
            if rng.random() < 0.25:
                continue
            a = day + timedelta(hours=7.5 + rng.uniform(0, 1.0))
            leave = day + timedelta(hours=13 + 0.25 * u + rng.normal(0, 0.25))
            out.append(
                row(
                    f"h-{d}-{u}",
                    connectors[u % len(connectors)],
                    a,
                    end=leave,
                    uid=f"user-{u}",
                    kwh=round(3.0 * (leave - a).total_seconds() / 3600, 2),
                )
            )
    return out


@pytest.fixture
def seeded(client: TestClient, db_url: str) -> str:
    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as db:
        upsert_topology(db, copy.deepcopy(TOPOLOGY))
        db.add_all(habit_sessions())
    engine.dispose()
    return db_url


@pytest.fixture
def settings(db_url: str) -> Settings:
    """Fewer boosting iterations: these tests check the workflow, not the model's accuracy."""
    return Settings(database_url=db_url, background=False, forecast_max_iter=60)


def wait_ready(client: TestClient, key: str, version: int) -> dict[str, Any]:
    for _ in range(1200):
        body = client.get(f"/v1/forecast/models/{version}", headers=auth(key)).json()
        if body["status"] in ("ready", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"model {version} never finished: {body}")


def retrain(client: TestClient, key: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/forecast/models/retrain", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return wait_ready(client, key, r.json()["id"])


def n_versions(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as db:
            return int(db.scalar(select(func.count()).select_from(ForecastModelVersion)) or 0)
    finally:
        engine.dispose()


def test_retrain_promote_and_the_scheduler_uses_the_model(
    client: TestClient, keys: dict[str, str], seeded: str
) -> None:
    key = keys["data-scientist"]
    done = retrain(client, key)
    assert done["status"] == "ready", done
    assert done["progress"] == 1.0 and done["n_sessions"] > 300
    meta = done["metadata"]
    assert meta["training_data"]["fingerprint_sha256"] == done["fingerprint"]
    assert "user_median_leave_h" in meta["features"] and meta["created_by"].startswith("key ")
    hold = done["holdout"]
    assert hold["model"]["mae_h"] < hold["hour median"]["mae_h"]
    assert 0.0 <= hold["model"]["coverage_80"] <= 1.0

    listed = client.get("/v1/forecast/models", headers=auth(key)).json()["models"]
    assert [m["id"] for m in listed] == [done["id"]] and listed[0]["promoted_for"] == []

    # a car of the user who leaves at 17:45 UTC plugs in at 07:07 UTC, departure not given
    engine = make_engine(seeded)
    factory = make_sessionmaker(engine)
    with transaction(factory) as db:
        db.add(row("live-19", "st-1-1", NOW - timedelta(hours=1), uid="user-19"))
        db.add(row("live-new", "st-2-1", NOW - timedelta(minutes=20), uid="stranger"))
    settings = Settings(database_url=seeded, background=False, horizon_steps=48)

    def departures() -> dict[str, str]:
        with factory() as db:
            sc = build_live_scenario(db, settings, NOW)
        return {s["id"]: s["departure"] for s in sc["sessions"]}

    default = (NOW - timedelta(hours=1) + timedelta(hours=DEFAULT_STAY_H)).isoformat()
    assert departures()["live-19"] == default.replace("+00:00", "Z")  # no model in service yet

    r = client.post("/v1/forecast/promotions", json={"version": done["id"]}, headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "global"

    with factory() as db:
        live = db.scalars(select(ChargingSession).where(ChargingSession.end_date_time.is_(None)))
        pred = live_predictions(db, settings, list(live))
    assert pred["live-19"].version == done["id"]
    with factory() as db:  # predicted once, then served from the cache
        live = list(
            db.scalars(select(ChargingSession).where(ChargingSession.end_date_time.is_(None)))
        )
        assert live_predictions(db, settings, live)["live-19"] is pred["live-19"]
        # without the user's history (ended more than a minute ago) the prediction differs
        short = Settings(database_url=seeded, background=False, forecast_history_days=1 / 1440)
        assert live_predictions(db, short, live)["live-19"].departure != pred["live-19"].departure
    dep = datetime.fromisoformat(departures()["live-19"].replace("Z", "+00:00"))
    assert (
        dep == pred["live-19"].departure.replace(microsecond=0)
        or abs((dep - pred["live-19"].departure).total_seconds()) < 1
    )
    assert (
        datetime(2026, 11, 25, 15, 30, tzinfo=UTC)
        < dep
        < datetime(2026, 11, 25, 18, 30, tzinfo=UTC)
    )
    with factory() as db:
        sc = build_live_scenario(db, settings, NOW)
    by_id = {s["id"]: s for s in sc["sessions"]}
    assert by_id["live-19"]["energy_kwh"] > 0  # the energy model stands in for the need

    # a lower quantile is more conservative (earlier)
    low = Settings(database_url=seeded, background=False, horizon_steps=48, forecast_quantile=0.1)
    high = Settings(database_url=seeded, background=False, horizon_steps=48, forecast_quantile=0.9)
    with factory() as db:
        live = list(
            db.scalars(select(ChargingSession).where(ChargingSession.end_date_time.is_(None)))
        )
        assert (
            live_predictions(db, low, live)["live-19"].departure
            < live_predictions(db, high, live)["live-19"].departure
        )

    run = reoptimise(factory, settings, NOW)  # publishes only what the checker passes
    assert run.published and run.sessions == 2

    # rollback: the default stay serves again
    r = client.post("/v1/forecast/promotions/rollback", json={}, headers=auth(key))
    assert (
        r.status_code == 200 and r.json()["retired"] == done["id"] and r.json()["current"] is None
    )
    assert departures()["live-19"] == default.replace("+00:00", "Z")
    r = client.post("/v1/forecast/promotions/rollback", json={}, headers=auth(key))
    assert r.status_code == 409 and r.json()["detail"].startswith("region:")
    engine.dispose()


def test_tampered_model_is_refused_and_the_previous_stays(
    client: TestClient, keys: dict[str, str], seeded: str
) -> None:
    key = keys["data-scientist"]
    first = retrain(client, key)
    second = retrain(client, key, region="region-01")
    assert first["status"] == second["status"] == "ready"
    assert (
        client.post(
            "/v1/forecast/promotions", json={"version": first["id"]}, headers=auth(key)
        ).status_code
        == 200
    )
    r = client.post(
        "/v1/forecast/promotions",
        json={"version": second["id"], "region": "region-01"},
        headers=auth(key),
    )
    assert r.status_code == 200 and r.json()["scope"] == "region-01"

    cmp = client.post(
        "/v1/forecast/compare", json={"a": first["id"], "b": second["id"]}, headers=auth(key)
    )
    assert cmp.status_code == 200, cmp.text
    res = cmp.json()["results"]
    assert set(res) == {
        f"model {first['id']}",
        f"model {second['id']}",
        "hour median",
        "user median",
    }

    engine = make_engine(seeded)
    factory = make_sessionmaker(engine)
    with transaction(factory) as db:  # flip a byte of the second model
        v = db.get(ForecastModelVersion, second["id"])
        assert v is not None and v.model is not None
        data = bytearray(v.model)
        data[len(data) // 2] ^= 0xFF
        v.model = bytes(data)
        db.add(row("live-3", "st-3-1", NOW - timedelta(hours=1), uid="user-3"))
    settings = Settings(database_url=seeded, background=False)
    with factory() as db:
        live = list(
            db.scalars(select(ChargingSession).where(ChargingSession.end_date_time.is_(None)))
        )
        pred = live_predictions(db, settings, live)
    assert pred["live-3"].version == first["id"]  # the refused model is not used

    r = client.post(
        "/v1/forecast/promotions",
        json={"version": second["id"], "region": "region-01"},
        headers=auth(key),
    )
    assert r.status_code == 422 and "tampered" in r.json()["detail"]
    promos = client.get("/v1/forecast/promotions", headers=auth(key)).json()["promotions"]
    assert promos["global"]["current"]["version"] == first["id"]
    engine.dispose()


def test_upload_trains_a_model(client: TestClient, keys: dict[str, str]) -> None:
    key = keys["data-scientist"]
    r = client.post(
        "/v1/forecast/models?format=csv&holiday_country=US",
        content=SLICE.read_bytes(),
        headers={**auth(key), "Content-Type": "text/csv"},
    )
    assert r.status_code == 202, r.text
    done = wait_ready(client, key, r.json()["id"])
    assert done["status"] == "ready", done
    assert done["source"] == "upload (csv)" and done["n_sessions"] == 1100
    assert done["metadata"]["holiday_country"] == "US"


BAD = {
    "empty": (b"", "data: empty file"),
    "missing column": (b"session_id,user_id,arrival,departure,energy_kwh\n", "column station_id"),
    "no offset": (
        b"session_id,user_id,station_id,arrival,departure,energy_kwh\n"
        b"a,u,s,2026-01-05T08:00:00,2026-01-05T17:00:00+01:00,5\n",
        "row 1 (session a).arrival: time without UTC offset",
    ),
    "departure before arrival": (
        b"session_id,user_id,station_id,arrival,departure,energy_kwh\n"
        b"a,u,s,2026-01-05T08:00:00+01:00,2026-01-05T07:00:00+01:00,5\n",
        "row 1 (session a).departure: departure not after arrival",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_training_files_are_refused(
    client: TestClient, keys: dict[str, str], db_url: str, case: str
) -> None:
    body, message = BAD[case]
    r = client.post(
        "/v1/forecast/models?format=csv",
        content=body,
        headers={**auth(keys["data-scientist"]), "Content-Type": "text/csv"},
    )
    assert r.status_code == 422 and r.json()["detail"].startswith(message), r.text
    assert n_versions(db_url) == 0  # nothing stored


def test_requests_are_checked(client: TestClient, keys: dict[str, str], seeded: str) -> None:
    ds = auth(keys["data-scientist"])
    assert client.get("/v1/forecast/models", headers=auth(keys["operator"])).status_code == 403
    assert client.get("/v1/forecast/models", headers=auth(keys["admin"])).status_code == 200
    r = client.post("/v1/forecast/models?format=xls", content=b"x", headers=ds)
    assert r.status_code == 422 and r.json()["detail"].startswith("format:")
    r = client.post("/v1/forecast/models/retrain", json={"region": "region-01/sc-1"}, headers=ds)
    assert r.status_code == 422 and r.json()["detail"].startswith("region:")
    r = client.post("/v1/forecast/models/retrain", json={"region": "region-02"}, headers=ds)
    assert r.status_code == 422 and "no completed sessions" in r.json()["detail"]
    r = client.post("/v1/forecast/models/retrain", json={"holiday_country": "XX"}, headers=ds)
    assert r.status_code == 422 and r.json()["detail"].startswith("holiday_country:")
    r = client.post("/v1/forecast/promotions", json={"version": 99}, headers=ds)
    assert r.status_code == 404 and r.json()["detail"].startswith("version:")
    r = client.post("/v1/forecast/compare", json={"a": 1, "b": 2}, headers=ds)
    assert r.status_code == 404


def test_jobs_left_by_a_stopped_service_are_marked_failed(db_url: str) -> None:
    from api.db import migrate
    from api.forecast import fail_interrupted, this_worker

    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as db:
        for status, worker in [
            ("running", None),
            ("ready", None),
            ("queued", f"{socket.gethostname()}:999999999:1"),  # a process gone on this host
            ("running", this_worker()),  # a live worker (this process)
            ("running", "another-host:1:1"),  # cannot be checked from here
        ]:
            db.add(
                ForecastModelVersion(source="upload (csv)", status=status, meta={}, worker=worker)
            )
    fail_interrupted(factory)
    with factory() as db:
        rows = db.scalars(select(ForecastModelVersion).order_by(ForecastModelVersion.id)).all()
        assert [r.status for r in rows] == ["failed", "ready", "failed", "running", "running"]
        assert rows[0].error is not None and rows[0].error.startswith("interrupted")
    engine.dispose()

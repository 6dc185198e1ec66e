"""Service core: keys and roles, stateless scheduling (sync and job), topology, ops routes."""

from __future__ import annotations

import copy
import time
from typing import Any

import httpx
from fastapi.testclient import TestClient

from api.routes.schedules import EXAMPLE
from api.settings import Settings
from simulation.random_net import random_scenario
from tests.api.conftest import auth


def test_health_ready_metrics_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    from alembic.script import ScriptDirectory

    from api.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert ready["status"] == "ready" and ready["schema"] == head
    assert "gridcharge_solve_seconds" in client.get("/metrics").text
    spec = client.get("/openapi.json").json()
    assert "/v1/schedules" in spec["paths"] and "/v1/topology" in spec["paths"]


def test_keys_are_required_and_roles_enforced(client: TestClient, keys: dict[str, str]) -> None:
    r = client.post("/v1/schedules", json=EXAMPLE)
    assert r.status_code == 401 and "authorization" in r.json()["detail"]
    r = client.post("/v1/schedules", json=EXAMPLE, headers=auth("gc_not-a-key"))
    assert r.status_code == 401
    r = client.post("/v1/schedules", json=EXAMPLE, headers=auth(keys["dso"]))
    assert r.status_code == 403 and "role" in r.json()["detail"]
    r = client.put("/v1/topology", json={"nodes": []}, headers=auth(keys["csms"]))
    assert r.status_code == 403


def test_schedule_sync_is_checked_and_equals_the_cli(
    client: TestClient, keys: dict[str, str]
) -> None:
    from optimizer.checker import check_schedule
    from optimizer.scenario import parse_scenario
    from optimizer.solve import solve_scenario

    raw = random_scenario(11, stations=3, steps=12)
    r = client.post("/v1/schedules?profiles=true", json=raw, headers=auth(keys["csms"]))
    assert r.status_code == 200, r.text
    sch = r.json()
    assert sch["format"] == "gridcharge.schedule/1"
    assert check_schedule(raw, sch) == [] or sch["violations"]
    local = solve_scenario(parse_scenario(raw), "lp", time_limit_s=30.0)
    assert sch["sessions"] == local["sessions"]
    assert all("ocpp201" in p for p in sch["profiles"].values())


def test_schedule_bad_input_names_the_field(client: TestClient, keys: dict[str, str]) -> None:
    bad = copy.deepcopy(EXAMPLE)
    bad["sessions"][0]["energy_kwh"] = -3
    r = client.post("/v1/schedules", json=bad, headers=auth(keys["csms"]))
    assert r.status_code == 422
    assert r.json()["detail"].startswith("sessions[0].energy_kwh")
    r = client.post(
        "/v1/schedules",
        content=b"{not json",
        headers={**auth(keys["csms"]), "content-type": "application/json"},
    )
    assert r.status_code == 422 and "json" in r.json()["detail"].lower()
    r = client.post("/v1/schedules?method=magic", json=EXAMPLE, headers=auth(keys["csms"]))
    assert r.status_code == 422 and r.json()["detail"].startswith("method")


def test_large_scenario_becomes_a_job(db_url: str, keys: dict[str, str]) -> None:
    from api.main import create_app

    app = create_app(Settings(database_url=db_url, background=False, sync_schedule_max_sessions=1))
    with TestClient(app) as c:
        raw = random_scenario(12, stations=3, steps=8)
        r = c.post("/v1/schedules", json=raw, headers=auth(keys["csms"]))
        assert r.status_code == 202
        location = r.headers["location"]
        for _ in range(200):
            job = c.get(location, headers=auth(keys["csms"])).json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done", job
        assert job["result"]["format"] == "gridcharge.schedule/1"
        assert c.get("/v1/jobs/nope", headers=auth(keys["csms"])).status_code == 404


def test_topology_upsert_is_idempotent_and_atomic(client: TestClient, keys: dict[str, str]) -> None:
    from api.routes.topology import EXAMPLE as TOPO

    h = auth(keys["operator"])
    for _ in range(2):
        r = client.put("/v1/topology", json=TOPO, headers=h)
        assert r.status_code == 200, r.text
    got = client.get("/v1/topology", headers=auth(keys["csms"])).json()
    assert [n["id"] for n in got["nodes"]] == ["region-01", "region-01/sc-001"]
    assert [c["id"] for c in got["stations"][0]["connectors"]] == ["st-00001-1", "st-00001-2"]
    # a station on an unknown node: refused, and the valid part of the request is not stored
    bad: dict[str, Any] = {
        "nodes": [{"id": "region-02", "parent": None}],
        "stations": [{"id": "st-9", "node": "ghost"}],
    }
    r = client.put("/v1/topology", json=bad, headers=h)
    assert r.status_code == 422 and r.json()["detail"].startswith("stations[0].node")
    got = client.get("/v1/topology", headers=h).json()
    assert "region-02" not in [n["id"] for n in got["nodes"]]
    # a cycle through stored nodes
    r = client.put(
        "/v1/topology",
        json={"nodes": [{"id": "region-01", "parent": "region-01/sc-001"}]},
        headers=h,
    )
    assert r.status_code == 422 and "cycle" in r.json()["detail"]


def test_real_server_over_loopback(server: Any, db_url: str) -> None:
    from tests.api.conftest import make_key

    key = make_key(db_url, "csms")
    r = httpx.post(server.url + "/v1/schedules", json=EXAMPLE, headers=auth(key), timeout=30)
    assert r.status_code == 200
    assert r.json()["status"] in ("optimal", "infeasible_limits")

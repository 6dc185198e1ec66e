"""POST /v1/measurement/activation-report: the hand case from stored meter states, roles and
bad input naming the field."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db import transaction
from api.models import ChargingSession, SessionState
from tests.api.conftest import auth, make_key
from tests.measurement import cases

URL = "/v1/measurement/activation-report"
TOPOLOGY: dict[str, Any] = {
    "nodes": [{"id": "region-01", "parent": None}, {"id": "sc-1", "parent": "region-01"}],
    "stations": [
        {
            "id": "st-1",
            "node": "sc-1",
            "min_current_a": 8.0,
            "connectors": [{"id": "st-1-1", "phases": 3}, {"id": "st-1-2", "phases": 3}],
        }
    ],
}


@pytest.fixture
def stored(client: TestClient, keys: dict[str, str]) -> None:
    r = client.put("/v1/topology", json=TOPOLOGY, headers=auth(keys["operator"]))
    assert r.status_code == 200, r.text
    with transaction(client.app.state.sessionmaker) as db:  # type: ignore[attr-defined]
        for sid, conn in (("a", "st-1-1"), ("b", "st-1-2")):
            db.add(
                ChargingSession(
                    id=sid,
                    country_code="NL",
                    party_id="GCP",
                    connector_id=conn,
                    start_date_time=cases.T0,
                    status="ACTIVE",
                    kwh=0.0,
                    phases=3,
                    last_updated=cases.T0,
                )
            )
        for s in cases.states():
            db.add(
                SessionState(
                    session_id=s["session_id"],
                    timestamp=datetime.fromisoformat(s["timestamp"]),
                    kwh=s["kwh"],
                    current_a=[s["current_l1_a"], s["current_l2_a"], s["current_l3_a"]],
                    phases=3,
                )
            )


def test_report_from_stored_states(
    client: TestClient, keys: dict[str, str], db_url: str, stored: None
) -> None:
    brp = make_key(db_url, "brp")
    r = client.post(URL, json={"activations": cases.activation()}, headers=auth(brp))
    assert r.status_code == 200, r.text
    body = r.json()
    (act,) = body["activations"]
    assert act["sessions"] == 2
    assert act["region"] == "region-01"
    assert act["shifted_kwh"] == pytest.approx(0.92, abs=1e-3)
    assert act["value_eur"] == pytest.approx(0.368, abs=1e-3)
    assert act["performance_ratio"] == pytest.approx(0.5, abs=1e-3)
    assert {f["session_id"] for f in body["non_responding"]} == {"b"}
    assert body["stations"][0]["station"] == "st-1"
    # the operator may ask too; prices per ISP apply when the activation has none
    acts = cases.activation(price_eur_per_mwh=None)
    prices = [
        {"start": cases.iso(cases.T0 + (cases.T_SIGNAL - cases.T0) // 2), "price_eur_per_mwh": 0}
    ]
    prices = [{"start": "2026-11-20T10:15:00Z", "price_eur_per_mwh": 100.0}]
    r = client.post(
        URL, json={"activations": acts, "prices": prices}, headers=auth(keys["operator"])
    )
    assert r.status_code == 200, r.text
    assert r.json()["activations"][0]["value_eur"] == pytest.approx(0.092, abs=1e-3)


def test_no_states_around_the_activation(client: TestClient, keys: dict[str, str]) -> None:
    r = client.post(URL, json={"activations": cases.activation()}, headers=auth(keys["operator"]))
    assert r.status_code == 200
    assert r.json()["activations"][0]["sessions"] == 0


def test_roles(client: TestClient, keys: dict[str, str]) -> None:
    for role in ("csms", "dso", "data-scientist"):
        r = client.post(URL, json={"activations": cases.activation()}, headers=auth(keys[role]))
        assert r.status_code == 403 and "role" in r.json()["detail"]
    assert client.post(URL, json={"activations": cases.activation()}).status_code == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"t_signal": "2026-11-20T10:20:00"}, "activations[0].t_signal"),
        ({"t_clear": cases.iso(cases.T0)}, "activations[0].t_clear"),
        ({"id": ""}, "activations[0].id"),
        ({"unknown": 1}, "activations[0].unknown"),
    ],
)
def test_bad_activations_name_the_field(
    client: TestClient, keys: dict[str, str], change: dict[str, Any], field: str
) -> None:
    r = client.post(
        URL, json={"activations": cases.activation(**change)}, headers=auth(keys["operator"])
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith(field), r.json()


def test_empty_activation_list_is_refused(client: TestClient, keys: dict[str, str]) -> None:
    r = client.post(URL, json={"activations": []}, headers=auth(keys["operator"]))
    assert r.status_code == 422 and r.json()["detail"].startswith("activations")

"""OCPI 2.2.1 sessions from the CSMS, charging preferences and the bulk state endpoint: the
envelope, the state semantics (cumulative kWh, duplicates, out of order) and bad input."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.metrics import REGISTRY
from api.models import ChargingSession, SessionState
from api.sessions import SESSION_EXAMPLE
from api.tokens import token_hash
from tests.api.conftest import auth

# all times a few hours in the past: a state from the future is refused
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=6)
BASE = "/ocpi/2.2.1/sessions"
PATH = f"{BASE}/NL/GCP/sess-1"
UID = "04a1b2c3d4e5f6"

TOPOLOGY: dict[str, Any] = {
    "nodes": [{"id": "region-01", "parent": None}],
    "stations": [
        {
            "id": "st-1",
            "node": "region-01",
            "connectors": [{"id": "st-1-1", "phases": 3}, {"id": "st-1-2", "phases": 3}],
        },
        {
            "id": "st-2",
            "node": "region-01",
            "connectors": [{"id": "st-2-1", "phases": 1, "phase": "L2"}],
        },
    ],
}


def at(minutes: float) -> str:
    """T0 + minutes, as OCPI writes it (UTC, 'Z')."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def session_body(session_id: str = "sess-1", evse_uid: str = "st-1-1", **changes: Any) -> Any:
    body = copy.deepcopy(SESSION_EXAMPLE)
    body.update(
        id=session_id,
        evse_uid=evse_uid,
        start_date_time=at(0),
        last_updated=at(0),
        kwh=0.0,
    )
    body["cdr_token"]["uid"] = UID
    body.update(changes)
    return body


def period(minutes: float, *dims: tuple[str, float], **ext: Any) -> dict[str, Any]:
    return {
        "start_date_time": at(minutes),
        "dimensions": [{"type": t, "volume": v} for t, v in dims],
        **ext,
    }


@pytest.fixture
def h(client: TestClient, keys: dict[str, str]) -> dict[str, str]:
    """The topology in place; the CSMS's headers."""
    r = client.put("/v1/topology", json=TOPOLOGY, headers=auth(keys["operator"]))
    assert r.status_code == 200, r.text
    return auth(keys["csms"])


def db_session(client: TestClient, session_id: str = "sess-1") -> ChargingSession | None:
    with client.app.state.sessionmaker() as db:  # type: ignore[attr-defined]
        return db.get(ChargingSession, session_id)


def db_states(client: TestClient, session_id: str = "sess-1") -> list[SessionState]:
    with client.app.state.sessionmaker() as db:  # type: ignore[attr-defined]
        stmt = select(SessionState).where(SessionState.session_id == session_id)
        return list(db.scalars(stmt.order_by(SessionState.timestamp)))


def count_rows(client: TestClient) -> tuple[int, int]:
    with client.app.state.sessionmaker() as db:  # type: ignore[attr-defined]
        sessions = db.scalar(select(func.count()).select_from(ChargingSession))
        states = db.scalar(select(func.count()).select_from(SessionState))
    return int(sessions or 0), int(states or 0)


def assert_envelope(body: dict[str, Any], status_code: int) -> None:
    assert set(body) == {"data", "status_code", "status_message", "timestamp"}
    assert body["status_code"] == status_code
    assert isinstance(body["status_message"], str)
    assert body["timestamp"].endswith("Z") and len(body["timestamp"]) <= 25
    stamp = datetime.fromisoformat(body["timestamp"])
    assert abs((stamp - datetime.now(UTC)).total_seconds()) < 60


def metric(outcome: str) -> float:
    value = REGISTRY.get_sample_value("gridcharge_session_states_total", {"outcome": outcome})
    return value or 0.0


# --------------------------------------------------------------------------------------------
# PUT and PATCH


def test_put_then_patch_appends_periods_and_records_states(
    client: TestClient, h: dict[str, str]
) -> None:
    body = session_body(
        kwh=0.4,
        last_updated=at(2),
        charging_periods=[period(0, ("ENERGY", 0.4), ("CURRENT", 10.0))],
    )
    r = client.put(PATH, json=body, headers=h)
    assert r.status_code == 201, r.text
    assert_envelope(r.json(), 1000)
    data = r.json()["data"]
    assert data["state"] == "stored" and data["plugged_in"] is True
    assert data["kwh"] == 0.4 and data["current_a"] == 10.0

    patch = {
        "kwh": 1.3,
        "charging_periods": [period(5, ("ENERGY", 0.9), ("CURRENT", 16.0), ("MAX_CURRENT", 48.0))],
        "last_updated": at(7),
    }
    r = client.patch(PATH, json=patch, headers=h)
    assert r.status_code == 200, r.text
    assert_envelope(r.json(), 1000)

    row = db_session(client)
    assert row is not None
    assert row.connector_id == "st-1-1" and row.country_code == "NL" and row.party_id == "GCP"
    # kwh is the Session's cumulative kwh, not the sum of the periods' ENERGY (0.4 + 0.9)
    assert row.kwh == pytest.approx(1.3)
    assert row.last_state_at == T0 + timedelta(minutes=7)
    assert row.last_updated == T0 + timedelta(minutes=7)
    assert row.current_a == 16.0 and row.phases == 3
    assert row.status == "ACTIVE" and row.end_date_time is None
    # the periods were appended, not replaced
    starts = [p["start_date_time"] for p in row.raw["charging_periods"]]
    assert starts == [at(0), at(5)]
    # only a keyed hash of the (case-insensitive) token uid is kept (api/tokens.py)
    key = client.app.state.token_key
    assert row.token_hash == token_hash(UID.lower(), key) == token_hash(UID, key)
    assert row.token_hash != hashlib.sha256(UID.upper().encode()).hexdigest()
    raw = json.dumps(row.raw).lower()
    assert UID not in raw and "uid" not in row.raw["cdr_token"]
    # one state per PUT/PATCH: (last_updated, cumulative kwh, per-phase currents, phases)
    states = db_states(client)
    assert [(s.timestamp, s.kwh, s.current_a) for s in states] == [
        (T0 + timedelta(minutes=2), 0.4, [10.0, 10.0, 10.0]),
        (T0 + timedelta(minutes=7), 1.3, [16.0, 16.0, 16.0]),
    ]

    # the same PUT again: 200, an old version (not applied), its state a duplicate
    r = client.put(PATH, json=body, headers=h)
    assert r.status_code == 200
    assert r.json()["data"]["state"] == "duplicate"
    assert r.json()["data"]["session_updated"] is False
    assert len(db_states(client)) == 2
    row = db_session(client)
    assert row is not None and row.kwh == pytest.approx(1.3)


def test_single_phase_current_lands_on_the_connector_phase_and_completed_ends(
    client: TestClient, h: dict[str, str]
) -> None:
    path = f"{BASE}/NL/GCP/sess-2"
    r = client.put(path, json=session_body("sess-2", evse_uid="st-2-1"), headers=h)
    assert r.status_code == 201, r.text
    patch = {"kwh": 0.7, "charging_periods": [period(1, ("CURRENT", 12.0))], "last_updated": at(5)}
    assert client.patch(path, json=patch, headers=h).status_code == 200
    assert db_states(client, "sess-2")[-1].current_a == [0.0, 12.0, 0.0]  # connector phase L2
    # the per-phase extension wins over CURRENT
    patch = {
        "kwh": 1.2,
        "charging_periods": [period(6, ("CURRENT", 99.0), current_a=[0, 0, 11.5], phases=1)],
        "last_updated": at(10),
    }
    assert client.patch(path, json=patch, headers=h).status_code == 200
    last = db_states(client, "sess-2")[-1]
    assert last.current_a == [0.0, 0.0, 11.5] and last.phases == 1

    # COMPLETED without end_date_time: the session ends at last_updated; no kwh, no state
    r = client.patch(path, json={"status": "COMPLETED", "last_updated": at(30)}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["plugged_in"] is False and r.json()["data"]["state"] == "none"
    row = db_session(client, "sess-2")
    assert row is not None and row.end_date_time == T0 + timedelta(minutes=30)
    assert len(db_states(client, "sess-2")) == 3


def test_stale_update_does_not_revert_the_session(client: TestClient, h: dict[str, str]) -> None:
    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    done = {"status": "COMPLETED", "end_date_time": at(60), "kwh": 9.0, "last_updated": at(60)}
    assert client.patch(PATH, json=done, headers=h).status_code == 200
    # an older ACTIVE version arrives late: its state is stored (out of order), nothing reverts
    late = session_body(kwh=4.0, last_updated=at(30), status="ACTIVE")
    r = client.put(PATH, json=late, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["session_updated"] is False
    assert r.json()["data"]["state"] == "out_of_order"
    row = db_session(client)
    assert row is not None
    assert (row.status, row.kwh, row.last_state_at) == ("COMPLETED", 9.0, T0 + timedelta(hours=1))
    assert [s.kwh for s in db_states(client)] == [0.0, 4.0, 9.0]


# --------------------------------------------------------------------------------------------
# Charging preferences


def test_charging_preferences_are_stored_and_accepted(
    client: TestClient, h: dict[str, str]
) -> None:
    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    prefs = {
        "profile_type": "REGULAR",
        "departure_time": at(9 * 60),
        "energy_need": 22.5,
        "discharge_allowed": False,
        "pause_consent": True,
    }
    r = client.put(f"{PATH}/charging_preferences", json=prefs, headers=h)
    assert r.status_code == 200, r.text
    assert_envelope(r.json(), 1000)
    assert r.json()["data"] == "ACCEPTED"
    row = db_session(client)
    assert row is not None
    assert row.departure == T0 + timedelta(hours=9) and row.energy_need_kwh == 22.5
    assert (row.opt_out, row.pause_consent) == (False, True)
    assert row.raw["charging_preferences"]["profile_type"] == "REGULAR"

    # FAST means opt-out; a PUT replaces the preferences (departure now unknown)
    r = client.put(f"{PATH}/charging_preferences", json={"profile_type": "FAST"}, headers=h)
    assert r.status_code == 200 and r.json()["data"] == "ACCEPTED"
    row = db_session(client)
    assert row is not None
    assert (row.opt_out, row.pause_consent, row.departure) == (True, False, None)
    # the preferences survive a later PUT of the Session
    r = client.put(PATH, json=session_body(last_updated=at(1)), headers=h)
    assert r.status_code == 200
    row = db_session(client)
    assert row is not None and row.raw["charging_preferences"]["profile_type"] == "FAST"
    assert row.opt_out is True


@pytest.mark.parametrize(
    ("prefs", "http", "field"),
    [
        ({"profile_type": "REGULAR", "departure_time": at(-30)}, 400, "departure_time"),
        (
            {"profile_type": "REGULAR", "departure_time": "2026-11-25T17:00:00"},
            400,
            "departure_time",
        ),
        ({"profile_type": "REGULAR", "pause_consent": "yes"}, 400, "pause_consent"),
        ({"profile_type": "REGULAR", "energy_need": -1}, 400, "energy_need"),
        ({"profile_type": "REGULAR", "pause_concent": True}, 400, "pause_concent"),
        ({"profile_type": "SLOW"}, 400, "profile_type"),
    ],
)
def test_bad_charging_preferences_name_the_field(
    client: TestClient, h: dict[str, str], prefs: dict[str, Any], http: int, field: str
) -> None:
    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    r = client.put(f"{PATH}/charging_preferences", json=prefs, headers=h)
    assert r.status_code == http, r.text
    assert_envelope(r.json(), 2001)
    assert r.json()["status_message"].startswith(field)
    row = db_session(client)
    assert row is not None
    assert (row.departure, row.energy_need_kwh, row.pause_consent) == (None, None, False)
    assert "charging_preferences" not in row.raw


def test_preferences_of_an_unknown_session_are_404(client: TestClient, h: dict[str, str]) -> None:
    r = client.put(f"{PATH}/charging_preferences", json={"profile_type": "FAST"}, headers=h)
    assert r.status_code == 404
    assert_envelope(r.json(), 2001)
    assert "session_id" in r.json()["status_message"]


# --------------------------------------------------------------------------------------------
# State semantics


def test_duplicates_and_out_of_order_states_do_not_corrupt_kwh(
    client: TestClient, h: dict[str, str]
) -> None:
    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    before = {o: metric(o) for o in ("stored", "duplicate", "out_of_order")}

    def state(minutes: float, kwh: float, amps: float) -> dict[str, Any]:
        return {
            "session_id": "sess-1",
            "timestamp": at(minutes),
            "kwh": kwh,
            "current_a": [amps] * 3,
        }

    r = client.post("/v1/session-states", json=[state(5, 1.0, 16), state(10, 2.0, 16)], headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["stored"], r.json()["duplicates"]) == (2, 0)
    # a duplicate (same timestamp, other values) and an out-of-order state with a larger kwh
    batch = [state(10, 7.5, 30), state(7, 50.0, 32)]
    r = client.post("/v1/session-states", json=batch, headers=h)
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["stored"], got["duplicates"], got["out_of_order"]) == (0, 1, 1)
    row = db_session(client)
    assert row is not None
    assert (row.kwh, row.current_a, row.last_state_at) == (2.0, 16.0, T0 + timedelta(minutes=10))
    # an OCPI PATCH older than the newest state: stored, out of order, kwh untouched
    r = client.patch(PATH, json={"kwh": 40.0, "last_updated": at(8)}, headers=h)
    assert r.status_code == 200 and r.json()["data"]["state"] == "out_of_order"
    # a newer state with a lower kwh: stored and flagged; the session keeps the higher kwh
    r = client.post("/v1/session-states", json=[state(15, 1.5, 8)], headers=h)
    got = r.json()
    assert (got["stored"], got["kwh_decreased"]) == (1, 1)
    assert got["warnings"][0]["field"] == "kwh" and got["warnings"][0]["index"] == 0
    row = db_session(client)
    assert row is not None
    assert (row.kwh, row.current_a, row.last_state_at) == (2.0, 8.0, T0 + timedelta(minutes=15))

    # every state is stored once, as sent
    states = [(s.timestamp, s.kwh) for s in db_states(client)]
    assert states == [
        (T0 + timedelta(minutes=m), kwh)
        for m, kwh in [(0, 0.0), (5, 1.0), (7, 50.0), (8, 40.0), (10, 2.0), (15, 1.5)]
    ]
    after = {o: metric(o) - before[o] for o in before}
    assert after == {"stored": 3, "duplicate": 1, "out_of_order": 2}


def test_bulk_counts_unknown_and_future_states_per_item(
    client: TestClient, h: dict[str, str]
) -> None:
    for sid in ("a", "b"):
        r = client.put(f"{BASE}/NL/GCP/{sid}", json=session_body(sid), headers=h)
        assert r.status_code == 201
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    items = [
        {"session_id": "a", "timestamp": at(5), "kwh": 1.0, "phases": 3},
        {"session_id": "ghost", "timestamp": at(5), "kwh": 1.0},
        {"session_id": "b", "timestamp": at(5), "kwh": 0.5, "current_a": [6, 6, 6]},
        {"session_id": "b", "timestamp": at(5), "kwh": 0.5},
        {"session_id": "b", "timestamp": future, "kwh": 9.0},
    ]
    r = client.post("/v1/session-states", json=items, headers=h)
    assert r.status_code == 200, r.text
    got = r.json()
    counts = {k: got[k] for k in ("stored", "duplicates", "out_of_order", "unknown", "rejected")}
    assert counts == {"stored": 2, "duplicates": 1, "out_of_order": 0, "unknown": 1, "rejected": 1}
    assert [(e["index"], e["field"]) for e in got["errors"]] == [
        (1, "session_id"),
        (4, "timestamp"),
    ]
    assert count_rows(client) == (2, 4)  # two PUT states and two bulk states
    row = db_session(client, "b")
    assert row is not None and row.kwh == 0.5 and row.current_a == 6.0


def test_a_batch_gives_the_same_session_as_states_sent_one_by_one(
    client: TestClient, h: dict[str, str]
) -> None:
    """Metamorphic: the states of a shuffled batch are applied in timestamp order."""
    rng = random.Random(7)
    kwh = 0.0
    items: list[dict[str, Any]] = []
    for k in range(1, 40):
        kwh += rng.choice([0.0, 0.5, 0.9, -0.3])  # a meter that sometimes reads lower
        items.append(
            {
                "timestamp": at(5 * k),
                "kwh": round(max(kwh, 0.0), 3),
                "current_a": [rng.choice([6.0, 8.0, 16.0])] * 3,
            }
        )
    for sid in ("one-by-one", "batched"):
        r = client.put(f"{BASE}/NL/GCP/{sid}", json=session_body(sid), headers=h)
        assert r.status_code == 201
    for item in items:
        r = client.post(
            "/v1/session-states", json=[{"session_id": "one-by-one", **item}], headers=h
        )
        assert r.status_code == 200 and r.json()["stored"] == 1
    shuffled = [{"session_id": "batched", **item} for item in items]
    rng.shuffle(shuffled)
    r = client.post("/v1/session-states", json=shuffled, headers=h)
    assert r.status_code == 200 and r.json()["stored"] == len(items)
    a, b = db_session(client, "one-by-one"), db_session(client, "batched")
    assert a is not None and b is not None
    assert (a.kwh, a.current_a, a.last_state_at) == (b.kwh, b.current_a, b.last_state_at)
    assert a.kwh == max(i["kwh"] for i in items)


# --------------------------------------------------------------------------------------------
# Bad input


BAD_PUTS: list[tuple[str, Any, int, int, str]] = [
    # (name, body or raw bytes, HTTP status, OCPI status, field named first)
    ("naive time", session_body(last_updated="2026-11-25T08:00:00"), 400, 2001, "last_updated"),
    (
        "offset-less period",
        session_body(
            charging_periods=[
                {
                    "start_date_time": "2026-11-25T08:00:00",
                    "dimensions": [{"type": "ENERGY", "volume": 1}],
                }
            ]
        ),
        400,
        2001,
        "charging_periods[0].start_date_time",
    ),
    ("negative kwh", session_body(kwh=-0.1), 400, 2001, "kwh"),
    ("kwh as text", session_body(kwh="1.5"), 400, 2001, "kwh"),
    ("unknown evse", session_body(evse_uid="st-9-9"), 400, 2003, "evse_uid"),
    ("party mismatch", session_body(party_id="XYZ"), 400, 2001, "party_id"),
    ("id mismatch", session_body("sess-2"), 400, 2001, "id"),
    (
        "missing token",
        {k: v for k, v in session_body().items() if k != "cdr_token"},
        400,
        2001,
        "cdr_token",
    ),
    ("unknown status", session_body(status="CHARGING"), 400, 2001, "status"),
    (
        "negative CURRENT",
        session_body(charging_periods=[period(0, ("CURRENT", -6.0))]),
        400,
        2001,
        "charging_periods[0].dimensions[0].volume",
    ),
    ("end before start", session_body(end_date_time=at(-5)), 400, 2001, "end_date_time"),
    (
        "from the future",
        session_body(last_updated=(datetime.now(UTC) + timedelta(hours=2)).isoformat()),
        400,
        2001,
        "last_updated",
    ),
    ("malformed JSON", b'{"country_code": "NL",', 400, 2001, "body"),
    ("not UTF-8", b'{"id": "\xff"}', 400, 2001, "body"),
]


@pytest.mark.parametrize(
    ("body", "http", "ocpi", "field"),
    [case[1:] for case in BAD_PUTS],
    ids=[case[0] for case in BAD_PUTS],
)
def test_bad_session_puts_name_the_field_and_store_nothing(
    client: TestClient, h: dict[str, str], body: Any, http: int, ocpi: int, field: str
) -> None:
    if isinstance(body, bytes):
        r = client.put(PATH, content=body, headers={**h, "content-type": "application/json"})
    else:
        r = client.put(PATH, json=body, headers=h)
    assert r.status_code == http, r.text
    assert_envelope(r.json(), ocpi)
    assert r.json()["status_message"].startswith(f"{field}:"), r.json()["status_message"]
    assert count_rows(client) == (0, 0)


def test_bad_patches_are_refused_whole(client: TestClient, h: dict[str, str]) -> None:
    assert client.put(PATH, json=session_body(kwh=1.0), headers=h).status_code == 201
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"kwh": 2.0}, 400, "last_updated"),  # OCPI 2.2.1: every PATCH carries last_updated
        ({"kwh": None, "last_updated": at(5)}, 400, "kwh"),
        ({"kwh": 2.0, "status": "DONE", "last_updated": at(5)}, 400, "status"),
        ({"kwh": 2.0, "evse_uid": "nope", "last_updated": at(5)}, 400, "evse_uid"),
        ({"kwh": 2.0, "id": "other", "last_updated": at(5)}, 400, "id"),
        (
            {"kwh": 2.0, "charging_periods": [{"start_date_time": at(4)}], "last_updated": at(5)},
            400,
            "charging_periods[0].dimensions",
        ),
    ]
    for patch, http, field in cases:
        r = client.patch(PATH, json=patch, headers=h)
        assert r.status_code == http, (patch, r.text)
        assert r.json()["status_message"].startswith(f"{field}:"), r.json()["status_message"]
    row = db_session(client)
    assert row is not None and (row.kwh, row.last_updated, row.status) == (1.0, T0, "ACTIVE")
    assert len(db_states(client)) == 1
    # a PATCH of a session never PUT, or of another party's session
    for path in (f"{BASE}/NL/GCP/nope", f"{BASE}/DE/GCP/sess-1"):
        r = client.patch(path, json={"kwh": 2.0, "last_updated": at(5)}, headers=h)
        assert r.status_code == 404
        assert_envelope(r.json(), 2001)


def test_session_id_of_another_party_conflicts(client: TestClient, h: dict[str, str]) -> None:
    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    r = client.put(
        f"{BASE}/DE/ABC/sess-1", json=session_body(country_code="DE", party_id="ABC"), headers=h
    )
    assert r.status_code == 409 and r.json()["status_message"].startswith("id:")
    row = db_session(client)
    assert row is not None and row.country_code == "NL"


@pytest.mark.parametrize("role", ["dso", "operator", "data-scientist"])
def test_only_the_csms_may_send_sessions(
    client: TestClient, keys: dict[str, str], h: dict[str, str], role: str
) -> None:
    other = auth(keys[role])
    r = client.put(PATH, json=session_body(), headers=other)
    assert r.status_code == 403
    assert_envelope(r.json(), 2000)
    assert r.json()["status_message"].startswith("role:")
    r = client.post("/v1/session-states", json=[], headers=other)
    assert r.status_code == 403 and r.json()["detail"].startswith("role:")
    assert client.put(PATH, json=session_body(), headers={}).status_code == 401
    assert count_rows(client) == (0, 0)
    # admin may
    assert client.put(PATH, json=session_body(), headers=auth(keys["admin"])).status_code == 201


BAD_STATES: list[tuple[str, Any, str]] = [
    ("naive time", {"timestamp": "2026-11-25T08:00:00"}, "[1].timestamp"),
    ("unix time", {"timestamp": 1764057600}, "[1].timestamp"),
    ("negative kwh", {"kwh": -1.0}, "[1].kwh"),
    ("kwh as text", {"kwh": "2"}, "[1].kwh"),
    ("two currents", {"current_a": [16, 16]}, "[1].current_a"),
    ("two phases", {"phases": 2}, "[1].phases"),
    ("extra field", {"soc": 80}, "[1].soc"),
]


@pytest.mark.parametrize(
    ("change", "field"), [c[1:] for c in BAD_STATES], ids=[c[0] for c in BAD_STATES]
)
def test_bad_bulk_states_name_the_item_and_store_nothing(
    client: TestClient, h: dict[str, str], change: dict[str, Any], field: str
) -> None:
    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    good = {"session_id": "sess-1", "timestamp": at(5), "kwh": 1.0}
    r = client.post("/v1/session-states", json=[good, {**good, **change}], headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{field}:"), r.json()["detail"]
    assert count_rows(client) == (1, 1)  # the PUT's state only


def test_bulk_malformed_json_and_size_limit(client: TestClient, h: dict[str, str]) -> None:
    r = client.post(
        "/v1/session-states", content=b"[{", headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 422 and "json" in r.json()["detail"].lower()
    item = {"session_id": "sess-1", "timestamp": at(5), "kwh": 1.0}
    r = client.post("/v1/session-states", json=[item] * 10_001, headers=h)
    assert r.status_code == 422
    assert count_rows(client) == (0, 0)


def test_openapi_documents_the_routes_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    put = spec["paths"]["/ocpi/2.2.1/sessions/{country_code}/{party_id}/{session_id}"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"]
    assert "201" in put["responses"] and "400" in put["responses"]
    assert "/v1/session-states" in spec["paths"]
    text = json.dumps(spec)
    assert "pause_consent" in text and "st-00001-1" in text


def test_the_session_update_never_moves_a_session_backwards(
    client: TestClient, h: dict[str, str]
) -> None:
    """The guarded UPDATE holds even when a concurrent request advanced the session between our
    read and our write (simulated by writing an older state straight to the UPDATE)."""
    from api.db import transaction
    from api.sessions import _Update, _update_sessions

    r = client.put(PATH, json=session_body(kwh=5.0, last_updated=at(10)), headers=h)
    assert r.status_code == 201
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with transaction(factory) as db:
        _update_sessions(db, {"sess-1": _Update(9.0, T0 + timedelta(minutes=5), 32.0, 1)})
        _update_sessions(db, {"sess-1": _Update(3.0, T0 + timedelta(minutes=20), None, None)})
    row = db_session(client)
    assert row is not None
    # the older update was skipped; the newer one moved the time but not kwh down
    assert (row.kwh, row.last_state_at, row.current_a, row.phases) == (
        5.0,
        T0 + timedelta(minutes=20),
        None,
        3,
    )


def test_a_patch_costs_three_statements(client: TestClient, h: dict[str, str]) -> None:
    """The hot path: read the session (with its connector), insert the state, update the
    session; nothing is read twice."""
    from sqlalchemy import event

    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    engine = client.app.state.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def log(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", log)
    try:
        body = {
            "kwh": 1.5,
            "charging_periods": [period(0, ("CURRENT", 16.0))],
            "last_updated": at(5),
        }
        r = client.patch(PATH, json=body, headers=h)
    finally:
        event.remove(engine, "before_cursor_execute", log)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["kwh"] == 1.5 and r.json()["data"]["state"] == "stored"
    assert seen == ["SELECT", "INSERT", "UPDATE"]


def test_concurrent_patches_of_one_session_keep_the_newest_state(
    client: TestClient, h: dict[str, str]
) -> None:
    """PATCHes racing from several threads in shuffled order: every state is stored once, and
    the session ends at the newest state with the highest energy."""
    from concurrent.futures import ThreadPoolExecutor

    assert client.put(PATH, json=session_body(), headers=h).status_code == 201
    minutes = list(range(1, 41))
    random.Random(7).shuffle(minutes)

    def send(m: int) -> int:
        body = {"kwh": 0.25 * m, "last_updated": at(m)}
        return client.patch(PATH, json=body, headers=h).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(send, minutes + minutes[:10])) == {200}
    row = db_session(client)
    assert row is not None
    assert row.kwh == 10.0
    assert row.last_state_at == T0 + timedelta(minutes=40)
    with client.app.state.sessionmaker() as db:  # type: ignore[attr-defined]
        n = db.scalar(
            select(func.count())
            .select_from(SessionState)
            .where(SessionState.session_id == "sess-1")
        )
    assert n == 41  # the PUT's state at minute 0 and one per minute

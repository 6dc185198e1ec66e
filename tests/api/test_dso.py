"""DSO profiles: REST day profiles, OpenADR 3 capacity-limit events, and compliance."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db import transaction
from api.dso import OADR_EXAMPLE
from api.models import ChargingSession, ScheduleRun, SessionState
from tests.api.conftest import auth


def _station(sid: str, node: str, n: int) -> dict[str, Any]:
    return {
        "id": sid,
        "node": node,
        "limit_a": 25,
        "min_current_a": 8,
        "connectors": [{"id": f"{sid}-{j}", "limit_a": 16, "phases": 3} for j in range(1, n + 1)],
    }


# region-01 ← sc-a ← sc-b ← st-1; region-01 ← st-2; region-02 ← st-3
TOPO: dict[str, Any] = {
    "nodes": [
        {"id": "region-01", "parent": None},
        {"id": "region-02", "parent": None},
        {"id": "sc-a", "parent": "region-01", "limit_kw": 250},
        {"id": "sc-b", "parent": "sc-a"},
    ],
    "stations": [
        _station("st-1", "sc-b", 2),
        _station("st-2", "region-01", 1),
        _station("st-3", "region-02", 1),
    ],
}


@pytest.fixture
def topo(client: TestClient, keys: dict[str, str]) -> dict[str, str]:
    r = client.put("/v1/topology", json=TOPO, headers=auth(keys["operator"]))
    assert r.status_code == 200, r.text
    return keys


def _profile_url(region: str, day: str) -> str:
    return f"/v1/dso/{region}/profiles/{day}"


def _event(**changes: Any) -> dict[str, Any]:
    ev = copy.deepcopy(OADR_EXAMPLE)
    ev.update(changes)
    return ev


def _cap_interval(i: int, value: Any, start: str | None = None) -> dict[str, Any]:
    iv: dict[str, Any] = {
        "id": i,
        "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [value]}],
    }
    if start is not None:
        iv["intervalPeriod"] = {"start": start, "duration": "PT15M"}
    return iv


# --------------------------------------------------------------------------------------------
# REST profiles


def test_put_get_round_trip_is_idempotent_and_notifies(
    client: TestClient, topo: dict[str, str]
) -> None:
    h = auth(topo["dso"])
    cap = [float(100 + k) for k in range(96)]
    target = [50.0] * 96
    client.app.state.events.drain()  # type: ignore[attr-defined]
    for _ in range(2):
        r = client.put(
            _profile_url("region-01", "2026-06-01"),
            json={"cap_kw": cap, "target_kw": target},
            headers=h,
        )
        assert r.status_code == 200, r.text
    assert client.app.state.events.drain()["dso"] == 2  # type: ignore[attr-defined]
    got = client.get(_profile_url("region-01", "2026-06-01"), headers=h).json()
    assert got["cap_kw"] == cap and got["target_kw"] == target
    assert got["start"] == "2026-05-31T22:00:00+00:00"  # local midnight, CEST
    assert got["slot_s"] == 900 and got["slot_count"] == 96
    assert got["source"] == "rest" and got["event_id"] is None
    # a replace: the omitted target is cleared
    r = client.put(_profile_url("region-01", "2026-06-01"), json={"target_kw": target}, headers=h)
    assert r.status_code == 200
    got = client.get(_profile_url("region-01", "2026-06-01"), headers=auth(topo["operator"]))
    assert got.json()["cap_kw"] is None and got.json()["target_kw"] == target
    # admin may act too; another day is another row
    r = client.get(_profile_url("region-01", "2026-06-02"), headers=auth(topo["admin"]))
    assert r.status_code == 404 and r.json()["detail"].startswith("date")


@pytest.mark.parametrize(
    ("day", "slots", "start"),
    [
        ("2026-03-29", 92, "2026-03-28T23:00:00+00:00"),  # spring forward
        ("2026-10-25", 100, "2026-10-24T22:00:00+00:00"),  # fall back
        ("2026-01-15", 96, "2026-01-14T23:00:00+00:00"),
    ],
)
def test_day_length_follows_dst(
    client: TestClient, topo: dict[str, str], day: str, slots: int, start: str
) -> None:
    h = auth(topo["operator"])
    for wrong in (96 if slots != 96 else 92, slots + 1):
        r = client.put(_profile_url("region-01", day), json={"cap_kw": [1.0] * wrong}, headers=h)
        assert r.status_code == 422
        assert r.json()["detail"].startswith("cap_kw") and f"expected {slots} values" in r.text
    r = client.put(_profile_url("region-01", day), json={"cap_kw": [1.0] * slots}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["start"] == start and r.json()["slot_count"] == slots
    r = client.put(
        _profile_url("region-01", day),
        json={"cap_kw": [1.0] * slots, "target_kw": [1.0]},
        headers=h,
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("target_kw")


def test_dso_key_may_act_on_its_own_region_only(client: TestClient, topo: dict[str, str]) -> None:
    dso, op = auth(topo["dso"]), auth(topo["operator"])
    r = client.put(
        _profile_url("region-02", "2026-06-01"), json={"cap_kw": [1.0] * 96}, headers=dso
    )
    assert r.status_code == 403 and "region" in r.json()["detail"]
    assert client.get(_profile_url("region-02", "2026-06-01"), headers=op).status_code == 404
    assert client.get(_profile_url("region-02", "2026-06-01"), headers=dso).status_code == 403
    r = client.get("/v1/dso/region-02/compliance?date=2026-06-01", headers=dso)
    assert r.status_code == 403
    ev = _event(targets=[{"type": "GRID_AREA", "values": ["region-02"]}])
    assert client.post("/openadr3/events", json=ev, headers=dso).status_code == 403
    assert client.get(_profile_url("region-02", "2026-11-26"), headers=op).status_code == 404
    # roles without DSO rights
    for role in ("csms", "data-scientist"):
        h = auth(topo[role])
        r = client.put(
            _profile_url("region-01", "2026-06-01"), json={"cap_kw": [1.0] * 96}, headers=h
        )
        assert r.status_code == 403 and r.json()["detail"].startswith("role")
        assert client.post("/openadr3/events", json=_event(), headers=h).status_code == 403


def test_unknown_region_is_404_naming_region(client: TestClient, topo: dict[str, str]) -> None:
    h = auth(topo["operator"])
    for region in ("region-99", "sc-a"):  # sc-a is a subcluster, not a region
        r = client.put(_profile_url(region, "2026-06-01"), json={"cap_kw": [1.0] * 96}, headers=h)
        assert r.status_code == 404 and r.json()["detail"].startswith("region")
        assert (
            client.get(f"/v1/dso/{region}/compliance?date=2026-06-01", headers=h).status_code == 404
        )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "cap_kw"),
        ({"cap_kw": None, "target_kw": None}, "cap_kw"),
        ({"cap_kw": [1.0] * 95 + [-1.0]}, "cap_kw[95]"),
        ({"target_kw": ["5"] * 96}, "target_kw[0]"),
        ({"target_kw": [True] * 96}, "target_kw[0]"),
        ({"cap": [1.0] * 96}, "cap"),
    ],
)
def test_bad_profile_body_names_the_field(
    client: TestClient, topo: dict[str, str], body: dict[str, Any], field: str
) -> None:
    r = client.put(_profile_url("region-01", "2026-06-01"), json=body, headers=auth(topo["dso"]))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field)
    assert (
        client.get(_profile_url("region-01", "2026-06-01"), headers=auth(topo["dso"])).status_code
        == 404
    )


def test_non_finite_values_and_bad_dates_are_refused(
    client: TestClient, topo: dict[str, str]
) -> None:
    h = {**auth(topo["dso"]), "content-type": "application/json"}
    body = '{"cap_kw": [' + ", ".join(["1.0"] * 95 + ["NaN"]) + "]}"
    r = client.put(_profile_url("region-01", "2026-06-01"), content=body.encode(), headers=h)
    assert r.status_code == 422 and r.json()["detail"].startswith("cap_kw[95]")
    for bad in ("2026-6-01", "2026-02-30", "20260601", "tomorrow"):
        r = client.put(_profile_url("region-01", bad), json={"cap_kw": [1.0] * 96}, headers=h)
        assert r.status_code == 422 and r.json()["detail"].startswith("date"), bad
        assert client.get(_profile_url("region-01", bad), headers=h).status_code == 422
        r = client.get(f"/v1/dso/region-01/compliance?date={bad}", headers=h)
        assert r.status_code == 422 and r.json()["detail"].startswith("date")
    r = client.get("/v1/dso/region-01/compliance", headers=h)
    assert r.status_code == 422 and r.json()["detail"].startswith("date")


# --------------------------------------------------------------------------------------------
# OpenADR 3 events


def test_openadr_event_sets_cap_and_keeps_target(client: TestClient, topo: dict[str, str]) -> None:
    h = auth(topo["dso"])
    target = [20.0] * 96
    r = client.put(
        _profile_url("region-01", "2026-11-26"),
        json={"cap_kw": [500.0] * 96, "target_kw": target},
        headers=h,
    )
    assert r.status_code == 200
    client.app.state.events.drain()  # type: ignore[attr-defined]
    r = client.post("/openadr3/events", json=OADR_EXAMPLE, headers=h)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["objectType"] == "EVENT" and created["id"] and created["createdDateTime"]
    assert created["programID"] == OADR_EXAMPLE["programID"]
    assert created["intervals"][2]["intervalPeriod"]["start"] == "2026-11-26T18:00:00+01:00"
    assert client.app.state.events.drain()["dso"] == 1  # type: ignore[attr-defined]
    got = client.get(_profile_url("region-01", "2026-11-26"), headers=h).json()
    # 17:00 local (CET) is slot 68; the third interval carries its own start 18:00 → slot 72
    expected = [500.0] * 96
    expected[68], expected[69], expected[72] = 400.0, 350.0, 300.0
    assert got["cap_kw"] == expected
    assert got["target_kw"] == target
    assert got["source"] == "openadr" and got["event_id"] == created["id"]


def test_openadr_event_across_local_midnight_fills_two_days(
    client: TestClient, topo: dict[str, str]
) -> None:
    h = auth(topo["operator"])
    ev = _event(
        targets=[
            {"type": "VEN_NAME", "values": ["gridcharge"]},
            {"type": "RESOURCE_NAME", "values": ["region-01"]},
        ],
        intervalPeriod={"start": "2026-06-01T21:30:00Z", "duration": "PT15M"},  # 23:30 CEST
        intervals=[_cap_interval(i, 10.0 * (i + 1)) for i in range(4)],
    )
    r = client.post("/openadr3/events", json=ev, headers=h)
    assert r.status_code == 201, r.text
    day1 = client.get(_profile_url("region-01", "2026-06-01"), headers=h).json()
    day2 = client.get(_profile_url("region-01", "2026-06-02"), headers=h).json()
    assert day1["cap_kw"][:94] == [None] * 94 and day1["cap_kw"][94:] == [10.0, 20.0]
    assert day2["cap_kw"][:2] == [30.0, 40.0] and day2["cap_kw"][2:] == [None] * 94
    assert day1["target_kw"] is None and day2["event_id"] == r.json()["id"]


def test_openadr_event_in_the_repeated_autumn_hour_maps_by_offset(
    client: TestClient, topo: dict[str, str]
) -> None:
    # 02:00 local happens twice on 2026-10-25: at +02:00 (slot 8) and at +01:00 (slot 12)
    h = auth(topo["dso"])
    ev = _event(
        intervalPeriod=None,
        intervals=[
            _cap_interval(0, 1.0, "2026-10-25T02:00:00+02:00"),
            _cap_interval(1, 2.0, "2026-10-25T02:00:00+01:00"),
        ],
    )
    r = client.post("/openadr3/events", json=ev, headers=h)
    assert r.status_code == 201, r.text
    cap = client.get(_profile_url("region-01", "2026-10-25"), headers=h).json()["cap_kw"]
    assert len(cap) == 100 and cap[8] == 1.0 and cap[12] == 2.0
    assert sum(v is not None for v in cap) == 2


def _bad_events() -> list[tuple[str, dict[str, Any], str]]:
    cases: list[tuple[str, dict[str, Any], str]] = []

    def add(name: str, field: str, **changes: Any) -> None:
        cases.append((name, _event(**changes), field))

    desc = OADR_EXAMPLE["payloadDescriptors"][0]
    add(
        "other payloadType",
        "payloadDescriptors[0].payloadType",
        payloadDescriptors=[{**desc, "payloadType": "PRICE"}],
    )
    add("units W", "payloadDescriptors[0].units", payloadDescriptors=[{**desc, "units": "W"}])
    add("no descriptor", "payloadDescriptors", payloadDescriptors=[])
    add(
        "hourly",
        "intervalPeriod.duration",
        intervalPeriod={"start": "2026-11-26T17:00:00+01:00", "duration": "PT1H"},
    )
    add(
        "no offset",
        "intervalPeriod.start",
        intervalPeriod={"start": "2026-11-26T17:00:00", "duration": "PT15M"},
    )
    add(
        "off the slot grid",
        "intervalPeriod.start",
        intervalPeriod={"start": "2026-11-26T17:05:00+01:00", "duration": "PT15M"},
    )
    add("no targets", "targets", targets=[])
    add("other target type only", "targets", targets=[{"type": "VEN_NAME", "values": ["x"]}])
    add(
        "unknown region",
        "targets[0].values[0]",
        targets=[{"type": "GRID_AREA", "values": ["region-99"]}],
    )
    add("subcluster", "targets[0].values[0]", targets=[{"type": "GRID_AREA", "values": ["sc-a"]}])
    add(
        "two regions",
        "targets",
        targets=[{"type": "GRID_AREA", "values": ["region-01", "region-02"]}],
    )
    add(
        "two values",
        "intervals[1].payloads[0].values",
        intervals=[
            _cap_interval(0, 1.0),
            {"id": 1, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1.0, 2.0]}]},
        ],
    )
    add(
        "other payload type",
        "intervals[0].payloads[0].type",
        intervals=[{"id": 0, "payloads": [{"type": "PRICE", "values": [1.0]}]}],
    )
    add("negative", "intervals[0].payloads[0].values[0]", intervals=[_cap_interval(0, -5.0)])
    add("string value", "intervals[0].payloads[0].values[0]", intervals=[_cap_interval(0, "5")])
    add("no intervals", "intervals", intervals=[])
    add(
        "same slot twice",
        "intervals[1].intervalPeriod.start",
        intervals=[_cap_interval(0, 1.0), _cap_interval(1, 2.0, "2026-11-26T16:00:00Z")],
    )
    add(
        "interval of 5 minutes",
        "intervals[0].intervalPeriod.duration",
        intervals=[
            {
                **_cap_interval(0, 1.0),
                "intervalPeriod": {"start": "2026-11-26T17:00:00+01:00", "duration": "PT5M"},
            }
        ],
    )
    add("no programID", "programID", programID=None)
    add("no period at all", "intervals[0].intervalPeriod", intervalPeriod=None)
    add("wrong objectType", "objectType", objectType="PROGRAM")
    # valid first day, invalid interval on the second: nothing of it is stored
    add(
        "second day bad",
        "intervals[3].payloads[0].values[0]",
        intervalPeriod={"start": "2026-11-26T22:30:00Z", "duration": "PT15M"},
        intervals=[
            _cap_interval(0, 1.0),
            _cap_interval(1, 1.0),
            _cap_interval(2, 1.0),
            _cap_interval(3, float("inf")),
        ],
    )
    return cases


@pytest.mark.parametrize(
    ("name", "event", "field"), _bad_events(), ids=[c[0] for c in _bad_events()]
)
def test_bad_openadr_event_is_refused_naming_the_field(
    client: TestClient, topo: dict[str, str], name: str, event: dict[str, Any], field: str
) -> None:
    h = {**auth(topo["admin"]), "content-type": "application/json"}
    r = client.post("/openadr3/events", content=json.dumps(event).encode(), headers=h)
    assert 400 <= r.status_code < 500 and r.status_code != 403, r.text
    assert r.json()["detail"].startswith(field), r.json()["detail"]
    for day in ("2026-11-26", "2026-11-27"):
        assert client.get(_profile_url("region-01", day), headers=h).status_code == 404


# --------------------------------------------------------------------------------------------
# compliance

T0 = datetime(2026, 5, 31, 22, 0, tzinfo=UTC)  # local midnight of 2026-06-01 (CEST)
T_END = T0 + timedelta(days=1)


def _m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _add_session(db: Any, sid: str, connector: str, states: list[tuple[datetime, float]]) -> None:
    db.add(
        ChargingSession(
            id=sid,
            country_code="NL",
            party_id="GCH",
            connector_id=connector,
            start_date_time=states[0][0],
            status="ACTIVE",
            last_updated=states[-1][0],
        )
    )
    for t, kwh in states:
        db.add(SessionState(session_id=sid, timestamp=t, kwh=kwh, current_a=[16.0] * 3, phases=3))


def test_compliance_against_hand_computed_power(client: TestClient, topo: dict[str, str]) -> None:
    h = auth(topo["dso"])
    cap = [11.0] * 96
    cap[1] = 5.0
    r = client.put(_profile_url("region-01", "2026-06-01"), json={"cap_kw": cap}, headers=h)
    assert r.status_code == 200
    with transaction(client.app.state.sessionmaker) as db:  # type: ignore[attr-defined]
        # s1 under region-01 via sc-b → sc-a: 2 kWh in [0,10) min, 1 kWh in [10,20), 2 in [20,40)
        _add_session(
            db, "s1", "st-1-1", [(_m(0), 0.0), (_m(10), 2.0), (_m(20), 3.0), (_m(40), 5.0)]
        )
        # s2 on a station of region-01 itself: 1 kWh over [-5, 5) min, half of it inside the day
        _add_session(db, "s2", "st-2-1", [(_m(-5), 10.0), (_m(5), 11.0)])
        # s3 in region-02: not counted
        _add_session(db, "s3", "st-3-1", [(_m(0), 0.0), (_m(15), 50.0)])
        # s4 crosses the end of the day: 2 kWh over [-5, +5) min around T_END
        _add_session(
            db,
            "s4",
            "st-1-2",
            [(T_END - timedelta(minutes=5), 0.0), (T_END + timedelta(minutes=5), 2.0)],
        )
        # plans: an older run covering slots 0-3 (15-min steps), a newer one slots 1-2 (5-min
        # steps); a newer unpublished run and a newer run without region-01 are ignored
        db.add(
            ScheduleRun(
                created_at=_m(-60),
                grid_start=_m(0),
                step_s=900,
                steps=4,
                status="optimal",
                method="lp",
                published=True,
                region_power_kw={"region-01": [7.0, 7.0, 7.0, 8.0]},
            )
        )
        db.add(
            ScheduleRun(
                created_at=_m(10),
                grid_start=_m(15),
                step_s=300,
                steps=6,
                status="optimal",
                method="lp",
                published=True,
                region_power_kw={"region-01": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]},
            )
        )
        db.add(
            ScheduleRun(
                created_at=_m(20),
                grid_start=_m(0),
                step_s=900,
                steps=96,
                status="optimal",
                method="lp",
                published=False,
                region_power_kw={"region-01": [99.0] * 96},
            )
        )
        db.add(
            ScheduleRun(
                created_at=_m(30),
                grid_start=_m(0),
                step_s=900,
                steps=96,
                status="optimal",
                method="lp",
                published=True,
                region_power_kw={"region-02": [99.0] * 96},
            )
        )
    r = client.get("/v1/dso/region-01/compliance?date=2026-06-01", headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["slot_count"] == 96 and out["start"] == T0.isoformat()
    slots = out["slots"]
    # slot 0: s1 2 + 0.5 kWh, s2 0.5 kWh → 3 kWh in 0.25 h = 12 kW; slot 1: 0.5 + 1 = 1.5 kWh;
    # slot 2: 1 kWh; slot 95: half of s4's 2 kWh
    realised = {0: 12.0, 1: 6.0, 2: 4.0, 95: 4.0}
    for k, slot in enumerate(slots):
        assert slot["realised_kw"] == pytest.approx(realised.get(k, 0.0), abs=1e-9), k
    assert [s["planned_kw"] for s in slots[:5]] == pytest.approx([7.0, 2.0, 5.0, 8.0, None])
    assert all(s["planned_kw"] is None for s in slots[4:])
    assert [s["cap_kw"] for s in slots[:3]] == [11.0, 5.0, 11.0]
    assert all(s["target_kw"] is None for s in slots)
    # exceedance: slot 0 12 − 11 = 1 kW, slot 1 6 − 5 = 1 kW
    assert [s["exceedance_kw"] for s in slots[:3]] == pytest.approx([1.0, 1.0, 0.0])
    assert out["totals"]["slots_over_cap"] == 2
    assert out["totals"]["energy_over_cap_kwh"] == pytest.approx(0.5)
    assert out["totals"]["realised_kwh"] == pytest.approx(3.0 + 1.5 + 1.0 + 1.0)
    # region-02 sees its own session only: 50 kWh in slot 0
    r = client.get("/v1/dso/region-02/compliance?date=2026-06-01", headers=auth(topo["operator"]))
    assert r.json()["slots"][0]["realised_kw"] == pytest.approx(200.0)
    assert r.json()["slots"][0]["exceedance_kw"] is None  # no cap stored


def test_compliance_of_a_future_day_has_no_realised_power(
    client: TestClient, topo: dict[str, str]
) -> None:
    r = client.get("/v1/dso/region-01/compliance?date=2099-10-25", headers=auth(topo["dso"]))
    assert r.status_code == 200
    out = r.json()
    assert out["slot_count"] == 100 and len(out["slots"]) == 100
    assert all(s["realised_kw"] is None and s["planned_kw"] is None for s in out["slots"])
    assert out["totals"] == {"energy_over_cap_kwh": 0.0, "slots_over_cap": 0, "realised_kwh": 0.0}


def test_openapi_lists_the_dso_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/dso/{region}/profiles/{date}" in paths and "/openadr3/events" in paths
    assert "/v1/dso/{region}/compliance" in paths


def test_openadr_start_as_a_number_is_refused(client: TestClient, topo: dict[str, str]) -> None:
    keys = topo
    event = copy.deepcopy(OADR_EXAMPLE)
    event["intervalPeriod"]["start"] = 0
    r = client.post("/openadr3/events", json=event, headers=auth(keys["operator"]))
    assert r.status_code == 422 and "intervalPeriod.start" in r.json()["detail"]

"""Measurement of the logged demand-response activations through the service: topology,
sessions and meter states over HTTP, a relayed signal, states during and after the activation,
then the activation report, the day report and the erasable-power curve."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.measure_dr import RECOVERY, SentProfile, _status, profile_in_force
from api.models_dr import DrActivation
from api.settings import Settings
from tests.api.conftest import auth, make_key

V = 230.0
I_MAX, I_MIN = 16.0, 8.0
P_MAX = I_MAX * 3 * V / 1000  # 11.04 kW
P_MIN = I_MIN * 3 * V / 1000  # 5.52 kW
DELAY_S = 10.0  # chargers follow the profile 10 s after it changes
PRICE = 400.0
TOPOLOGY: dict[str, Any] = {
    "nodes": [{"id": "region-01", "parent": None}, {"id": "sc-1", "parent": "region-01"}],
    "stations": [
        {
            "id": st,
            "node": "sc-1",
            "min_current_a": I_MIN,
            "connectors": [{"id": f"{st}-1", "phases": 3}, {"id": f"{st}-2", "phases": 3}],
        }
        for st in ("st-1", "st-2")
    ],
}
# session: (connector, current before [A], follows the curtailment, own clock offset [s])
SESSIONS = {
    "s-a": ("st-1-1", I_MAX, True, 70),
    "s-b": ("st-1-2", I_MAX, False, 130),  # ignores the curtailment
    "s-c": ("st-2-1", I_MAX, True, 200),
    "s-d": ("st-2-2", I_MIN, True, 20),  # at its minimum: not curtailed
}


@pytest.fixture
def app(db_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=db_url,
        background=False,
        horizon_steps=16,
        cpo_url="http://127.0.0.1:9/ocpi/chargingprofiles",
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keys(db_url: str, app: TestClient) -> dict[str, str]:
    return {r: make_key(db_url, r) for r in ("operator", "brp", "csms")} | {
        "dso": make_key(db_url, "dso", ["region-01"])
    }


def z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Physics:
    """Current of each session over time: 16 A (or 8 A), at the minimum from the signal to
    the restore (each ``DELAY_S`` late) unless the charger ignores it."""

    def __init__(self, t_signal: datetime, t_restore: datetime) -> None:
        self.t0 = t_signal.timestamp() + DELAY_S
        self.t1 = t_restore.timestamp() + DELAY_S

    def current(self, sid: str, t: float) -> float:
        _, i_a, follows, _ = SESSIONS[sid]
        if follows and self.t0 <= t < self.t1:
            return min(i_a, I_MIN)
        return i_a

    def energy(self, sid: str, start: float, t: float) -> float:
        """Energy since ``start`` [kWh] (3 phases at 230 V)."""
        grid = np.linspace(start, t, int(max(t - start, 1.0)) + 1)
        i = np.array([self.current(sid, x) for x in grid[:-1]])
        return float((i * 3 * V / 1000 * np.diff(grid)).sum() / 3600)


def states(phys: Physics, start: datetime, lo: datetime, hi: datetime) -> list[dict[str, Any]]:
    """Every session's states on its own 5-minute clock in ``[lo, hi)``."""
    out = []
    s0 = start.timestamp()
    for sid, (_, _, _, offset) in SESSIONS.items():
        t = s0 + offset
        while t < hi.timestamp():
            if t >= lo.timestamp():
                i = phys.current(sid, t)
                out.append(
                    {
                        "session_id": sid,
                        "timestamp": z(datetime.fromtimestamp(t, UTC)),
                        "kwh": round(phys.energy(sid, s0, t), 3),
                        "current_a": [i, i, i],
                        "phases": 3,
                    }
                )
            t += 300.0
    return out


@pytest.fixture
def flow(app: TestClient, keys: dict[str, str]) -> dict[str, Any]:
    """Topology, sessions and states over HTTP, a relayed signal, the states after it."""
    now = datetime.now(UTC).replace(microsecond=0)
    isp0 = datetime.fromtimestamp((now.timestamp() - 65 * 60) // 900 * 900, UTC)
    start = isp0 - timedelta(minutes=30)
    t_signal = isp0 + timedelta(minutes=5)
    op, csms = auth(keys["operator"]), auth(keys["csms"])
    r = app.put("/v1/topology", json=TOPOLOGY, headers=op)
    assert r.status_code == 200, r.text
    for sid, (conn, *_rest) in SESSIONS.items():
        body = {
            "country_code": "NL",
            "party_id": "GCP",
            "id": sid,
            "start_date_time": z(start),
            "kwh": 0.0,
            "cdr_token": {
                "country_code": "NL",
                "party_id": "EMS",
                "uid": sid,
                "type": "RFID",
                "contract_id": f"NL-EMS-C{sid}",
            },
            "auth_method": "WHITELIST",
            "location_id": "LOC-1",
            "evse_uid": conn,
            "connector_id": "1",
            "currency": "EUR",
            "charging_periods": [],
            "status": "ACTIVE",
            "last_updated": z(start),
        }
        r = app.put(f"/ocpi/2.2.1/sessions/NL/GCP/{sid}", json=body, headers=csms)
        assert r.status_code in (200, 201), r.text
    restore = isp0 + timedelta(minutes=15)  # the end of the ISP
    phys = Physics(t_signal, restore)
    before = states(phys, start, start, t_signal + timedelta(seconds=1))
    r = app.post("/v1/session-states", json=before, headers=csms)
    assert r.status_code == 200 and r.json()["stored"] == len(before), r.text
    r = app.post(
        "/v1/demand-response/signals",
        json={"reason": "BRP short", "imbalance_price_eur_per_mwh": PRICE},
        params={"at": z(t_signal)},
        headers=op,
    )
    assert r.status_code == 201, r.text
    r = app.post(
        f"/v1/demand-response/signals/{r.json()['signal']['id']}/relay",
        params={"at": z(t_signal)},
        headers=op,
    )
    assert r.status_code == 200, r.text
    relayed = r.json()
    assert relayed["sessions_curtailed"] == 3
    assert datetime.fromisoformat(relayed["restore_at"]) == restore
    after = states(phys, start, t_signal + timedelta(seconds=1), isp0 + timedelta(minutes=45))
    r = app.post("/v1/session-states", json=after, headers=csms)
    assert r.status_code == 200 and r.json()["stored"] == len(after), r.text
    true_shift = sum(
        P_MAX * (restore - t_signal).total_seconds() / 3600
        - (
            phys.energy(sid, start.timestamp(), restore.timestamp())
            - phys.energy(sid, start.timestamp(), t_signal.timestamp())
        )
        for sid in ("s-a", "s-c")
    )
    return {
        "id": relayed["activation_id"],
        "t_signal": t_signal,
        "restore": restore,
        "isp0": isp0,
        "start": start,
        "true_shift_kwh": true_shift,
    }


def test_activation_report_from_the_log(
    app: TestClient, keys: dict[str, str], flow: dict[str, Any]
) -> None:
    url = f"/v1/demand-response/activations/{flow['id']}/measurement"
    r = app.get(url, headers=auth(keys["brp"]))
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["status"] == "complete"
    assert rep["t_signal"] == z(flow["t_signal"]) and rep["t_clear"] == z(flow["restore"])
    assert rep["curtailed_sessions"] == 3 and rep["sessions"] == 3
    assert rep["unmeasured_sessions"] == 0
    assert rep["regions"] == ["region-01"]
    # two of the three curtailed sessions followed: 2 x 5.52 kW for 10 minutes, minus the delay
    assert flow["true_shift_kwh"] == pytest.approx(2 * 5.52 * 590 / 3600, rel=1e-3)
    assert rep["shifted_kwh"] == pytest.approx(flow["true_shift_kwh"], rel=0.05)
    assert rep["baseline_kwh"] == pytest.approx(3 * P_MAX / 6, rel=0.02)
    # no profile was sent before the signal: the plan baseline holds each session's power,
    # and the headline stays the trapezoid
    assert rep["plan_sessions_without_plan"] == 3
    assert rep["plan_shifted_kwh"] == pytest.approx(flow["true_shift_kwh"], rel=0.05)
    assert rep["method"] == "trapezoid"
    assert rep["trapezoid_shifted_kwh"] == pytest.approx(rep["shifted_kwh"], abs=1e-6)
    assert rep["theoretical_min_kwh"] == pytest.approx(3 * P_MIN / 6, rel=1e-3)
    assert rep["performance_ratio"] == pytest.approx(2 / 3, abs=0.04)
    assert rep["price_eur_per_mwh"] == PRICE
    assert rep["value_eur"] == pytest.approx(rep["shifted_kwh"] * PRICE / 1000, rel=1e-6)
    # the charger that ignored the curtailment, with evidence from its states and the
    # curtailment profile that was sent
    found = {(f["session_id"], f["kind"]) for f in rep["non_responding"]}
    assert found == {("s-b", "ignored_curtailment"), ("s-b", "exceeded_profile")}
    ev = [f for f in rep["non_responding"] if f["kind"] == "exceeded_profile"]
    assert all(f["current_a"] == I_MAX and f["expected_max_a"] == I_MIN for f in ev)
    assert rep["stations"] == [
        {
            "station": "st-1",
            "findings": len(rep["non_responding"]),
            "sessions": 1,
            "kinds": "exceeded_profile,ignored_curtailment",
        }
    ]
    # the operator may read it as well; the other roles may not
    assert app.get(url, headers=auth(keys["operator"])).status_code == 200
    for role in ("csms", "dso"):
        assert app.get(url, headers=auth(keys[role])).status_code == 403


def test_day_report_and_erasable_curve(
    app: TestClient, keys: dict[str, str], flow: dict[str, Any]
) -> None:
    brp = auth(keys["brp"])
    day = flow["t_signal"].astimezone(ZoneInfo("Europe/Amsterdam")).date().isoformat()
    r = app.get(f"/v1/demand-response/measurement/days/{day}", headers=brp)
    assert r.status_code == 200, r.text
    rep = r.json()
    (act,) = rep["activations"]
    assert act["activation_id"] == flow["id"]
    single = app.get(
        f"/v1/demand-response/activations/{flow['id']}/measurement", headers=brp
    ).json()
    assert rep["totals"]["shifted_kwh"] == pytest.approx(single["shifted_kwh"], abs=1e-6)
    assert rep["totals"]["value_eur"] == pytest.approx(single["value_eur"], abs=1e-6)
    assert rep["totals"]["activations"] == 1 and rep["totals"]["complete"]
    assert rep["stations"][0]["station"] == "st-1"
    other = (flow["t_signal"] - timedelta(days=3)).date().isoformat()
    empty = app.get(f"/v1/demand-response/measurement/days/{other}", headers=brp).json()
    assert empty["activations"] == [] and empty["totals"]["shifted_kwh"] is None
    r = app.get("/v1/demand-response/measurement/days/2026-13-01", headers=brp)
    assert r.status_code == 422 and "date" in r.json()["detail"]

    lo, hi = flow["start"], flow["isp0"] + timedelta(minutes=45)
    url = "/v1/demand-response/measurement/erasable-by-hour"
    r = app.get(url, params={"start": z(lo), "end": z(hi)}, headers=brp)
    assert r.status_code == 200, r.text
    curve = r.json()
    assert len(curve["hours"]) == 24 and curve["sessions"] == 4
    assert sum(h["minutes"] for h in curve["hours"]) == (hi - lo).total_seconds() / 60
    seen = [h for h in curve["hours"] if h["minutes"]]
    # three sessions at 16 A can each give up 5.52 kW; less while curtailed / before states
    assert all(0 < h["mean_kw"] <= 3 * (P_MAX - P_MIN) + 0.01 for h in seen)
    assert max(h["p90_kw"] for h in seen) == pytest.approx(3 * (P_MAX - P_MIN), rel=1e-3)
    bad = app.get(url, params={"start": z(hi), "end": z(lo)}, headers=brp)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("end:")
    long = app.get(url, params={"start": z(hi - timedelta(days=40)), "end": z(hi)}, headers=brp)
    assert long.status_code == 422 and long.json()["detail"].startswith("start:")
    for bad_start in ("0.0", "2026-11-25T10:00:00"):
        r = app.get(url, params={"start": bad_start}, headers=brp)
        assert r.status_code == 422 and r.json()["detail"].startswith("start:"), r.text


def test_unknown_and_running_activations(app: TestClient, keys: dict[str, str]) -> None:
    op = auth(keys["operator"])
    r = app.get("/v1/demand-response/activations/4711/measurement", headers=op)
    assert r.status_code == 404 and "4711" in r.json()["detail"]
    assert r.json()["detail"].startswith("activation_id:")
    r = app.put("/v1/topology", json=TOPOLOGY, headers=op)
    assert r.status_code == 200
    r = app.post("/v1/demand-response/signals", json={}, headers=op)
    assert r.status_code == 201, r.text
    r = app.post(f"/v1/demand-response/signals/{r.json()['signal']['id']}/relay", headers=op)
    assert r.status_code == 200, r.text
    url = f"/v1/demand-response/activations/{r.json()['activation_id']}/measurement"
    r = app.get(url, headers=op)
    assert r.status_code == 409 and "still running" in r.json()["detail"]
    r = app.get(url, params={"tolerance_a": 0}, headers=op)
    assert r.status_code == 422


def test_status_of_an_activation() -> None:
    t = datetime(2026, 11, 25, 17, 15, tzinfo=UTC)
    a = DrActivation(started_at=t - timedelta(minutes=10), restore_at=t)
    assert _status(a, t - timedelta(seconds=1)) == "running"
    assert _status(a, t) == "recovering"
    assert _status(a, t + RECOVERY) == "complete"


def test_profile_in_force() -> None:
    """The last profile sent counts, the previous one's higher limit during the grace, and a
    curtailment's limit inside its window."""
    old = SentProfile(0.0, np.array([0.0, 600.0]), np.array([16.0, 10.0]), 3600.0)
    new = SentProfile(900.0, np.array([900.0]), np.array([6.0]), 1800.0)
    t = np.array([-1.0, 100.0, 700.0, 930.0, 1000.0, 1820.0, 1950.0, 4000.0])
    got = profile_in_force(t, [old, new], [(1850.0, 2000.0, 8.0)], grace_s=60.0)
    want = np.array([np.nan, 16.0, 10.0, 10.0, 6.0, np.nan, 8.0, np.nan])
    np.testing.assert_array_equal(got, want)


def test_activation_report_with_profiles_sent_before_the_signal(
    app: TestClient, keys: dict[str, str], flow: dict[str, Any], db_url: str
) -> None:
    """With the profiles pushed to the CPO before the signal (16 A; 8 A for ``s-d``) the
    headline is the per-session plan baseline: each curtailed car at what it drew under its
    profile for the 10 minutes, the two that followed shifting 2 · 5.52 kW · 590 s."""
    push_profiles(db_url, flow["start"])
    r = app.get(
        f"/v1/demand-response/activations/{flow['id']}/measurement",
        headers=auth(keys["brp"]),
    )
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["method"] == "session" and rep["plan_sessions_without_plan"] == 0
    assert rep["baseline_kwh"] == pytest.approx(3 * P_MAX / 6, rel=0.01)
    assert rep["shifted_kwh"] == pytest.approx(flow["true_shift_kwh"], rel=0.02)
    assert rep["plan_shifted_kwh"] == pytest.approx(rep["shifted_kwh"], abs=1e-6)
    assert rep["trapezoid_shifted_kwh"] == pytest.approx(flow["true_shift_kwh"], rel=0.05)
    assert rep["value_eur"] == pytest.approx(rep["shifted_kwh"] * PRICE / 1000, rel=1e-6)
    assert [s["price_eur_per_mwh"] for s in rep["segments"]] == [PRICE]
    # the ad-hoc report of the same window: the profiles sent before the signal are the plan
    r = app.post(
        "/v1/measurement/activation-report",
        json={
            "activations": [
                {
                    "id": "x",
                    "t_signal": z(flow["t_signal"]),
                    "t_clear": z(flow["restore"]),
                    "region": "region-01",
                    "price_eur_per_mwh": PRICE,
                }
            ]
        },
        headers=auth(keys["operator"]),
    )
    assert r.status_code == 200, r.text
    (adhoc,) = r.json()["activations"]
    assert adhoc["method"] == "session" and adhoc["sessions_without_plan"] == 0
    # s-d, at its minimum, was not curtailed but charges at the signal: it shifts nothing
    assert adhoc["sessions"] == 4
    assert adhoc["shifted_kwh"] == pytest.approx(flow["true_shift_kwh"], rel=0.02)
    assert adhoc["value_eur"] == pytest.approx(adhoc["shifted_kwh"] * PRICE / 1000, rel=1e-6)


def push_profiles(db_url: str, start: datetime) -> None:
    """Profiles as pushed to the CPO at ``start``: each session's own current for 4 hours."""
    from api.db import make_engine, make_sessionmaker, transaction
    from api.models import OutboxItem

    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as db:
        for k, sid in enumerate(SESSIONS):
            limit = SESSIONS[sid][1]
            db.add(
                OutboxItem(
                    session_id=sid,
                    cursor=k,
                    status="sent",
                    created_at=start,
                    payload={
                        "charging_profile": {
                            "start_date_time": z(start),
                            "charging_rate_unit": "A",
                            "duration": 4 * 3600,
                            "charging_profile_period": [{"start_period": 0, "limit": limit}],
                        }
                    },
                )
            )
    engine.dispose()

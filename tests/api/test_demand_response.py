"""Demand response through the service: signals, policy, relay/reject, the one-transaction
activation with profiles and outbox, restore with the optimiser's plan, flexibility and KPIs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api import dr
from api.db import make_engine, make_sessionmaker, transaction
from api.live import build_live_scenario
from api.main import create_app
from api.metrics import REGISTRY
from api.models import ChargingSession, OutboxItem, Profile, ScheduleRun
from api.models_dr import DrActivation, DrAuditEntry, DrCurtailment, DrSignal
from api.publish import reoptimise, same_from_start
from api.security import Principal
from api.settings import Settings
from api.topology import upsert_topology
from optimizer.checker import check_schedule, explained
from optimizer.fastpath import restore_time
from tests.api.conftest import auth, make_key

TOPOLOGY: dict[str, Any] = {
    "nodes": [{"id": "region-01", "parent": None}, {"id": "region-02", "parent": None}],
    "stations": [
        {"id": "st-1", "node": "region-01"},
        {"id": "st-2", "node": "region-01"},
        {"id": "st-3", "node": "region-02", "min_current_a": 6.0},
    ],
}
# current per phase now [A], phases: released = (i - min) * phases * 230 V
SESSIONS = {
    "s-1": ("st-1-1", 12.5, 3),  # 4.5 A * 3 * 230 = 3.105 kW
    "s-2": ("st-1-2", 12.5, 3),  # 3.105 kW
    "s-3": ("st-2-1", 16.0, 1),  # 8 A * 1 * 230 = 1.84 kW
    "s-4": ("st-2-2", 8.0, 3),  # at the minimum: 0
    "s-5": ("st-3-1", 16.0, 3),  # region-02, minimum 6 A: 10 * 3 * 230 = 6.9 kW
}
RELEASE_KW = {"s-1": 3.105, "s-2": 3.105, "s-3": 1.84, "s-5": 6.9}


def settings_for(db_url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": db_url,
        "background": False,
        "horizon_steps": 16,
        "cpo_url": "http://127.0.0.1:9/ocpi/chargingprofiles",
    }
    return Settings(**{**base, **kw})


@pytest.fixture
def app_client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(db_url))) as c:
        yield c


@pytest.fixture
def factory(db_url: str, app_client: TestClient) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def keys(db_url: str, app_client: TestClient) -> dict[str, str]:
    return {r: make_key(db_url, r) for r in ("operator", "brp", "csms", "admin")} | {
        "dso": make_key(db_url, "dso", ["region-01"])
    }


def seed(factory: sessionmaker[Session], now: datetime, **over: dict[str, Any]) -> None:
    with transaction(factory) as db:
        upsert_topology(db, copy.deepcopy(TOPOLOGY))
        for sid, (conn, i_a, phases) in SESSIONS.items():
            extra = over.get(sid, {})
            db.add(
                ChargingSession(
                    id=sid,
                    country_code="NL",
                    party_id="GCX",
                    connector_id=conn,
                    start_date_time=now - timedelta(hours=1),
                    status="ACTIVE",
                    kwh=5.0,
                    current_a=i_a,
                    phases=phases,
                    departure=now + timedelta(hours=3),
                    energy_need_kwh=40.0,
                    last_updated=now,
                    **extra,
                )
            )


def count(factory: sessionmaker[Session], model: Any) -> int:
    with factory() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def profiles(factory: sessionmaker[Session]) -> dict[str, Profile]:
    with factory() as db:
        return {p.session_id: p for p in db.scalars(select(Profile))}


def set_policy(client: TestClient, key: str, **body: Any) -> None:
    r = client.put("/v1/demand-response/policy", json=body, headers=auth(key))
    assert r.status_code == 200, r.text


OPERATOR = Principal(1, "gc_test", "operator", ())
BRP = Principal(2, "gc_brp", "brp", ())


# --------------------------------------------------------------------------------------------
# signal -> activation through HTTP


def test_auto_relayed_signal_curtails_in_one_transaction(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str], db_url: str
) -> None:
    now = datetime.now(UTC)
    seed(factory, now)
    reoptimise(factory, settings_for(db_url), now)  # the plan in force before the signal
    before = profiles(factory)
    set_policy(app_client, keys["operator"], auto_relay=True)
    r = app_client.post(
        "/v1/demand-response/signals",
        json={"reason": "BRP short", "imbalance_price_eur_per_mwh": 412.0},
        headers=auth(keys["brp"]),
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["signal"]["status"] == "relayed" and out["signal"]["sender"].startswith("brp:")
    assert out["sessions_curtailed"] == 4
    assert out["skipped"]["at_minimum"] == 1 and sum(out["skipped"].values()) == 1
    assert out["released_kw"] == pytest.approx(sum(RELEASE_KW.values()), abs=1e-3)
    restore_at = datetime.fromisoformat(out["restore_at"])
    assert restore_at == restore_time(datetime.fromisoformat(out["activation"]["started_at"]))
    assert out["activation"]["released_kw_by_region"] == pytest.approx(
        {"region-01": 8.05, "region-02": 6.9}, abs=1e-3
    )
    after = profiles(factory)
    for sid in RELEASE_KW:
        ocpi = after[sid].ocpi
        first = ocpi["charging_profile_period"][0]
        assert first == {"start_period": 0, "limit": 6.0 if sid == "s-5" else 8.0}
        assert after[sid].cursor > before[sid].cursor
        assert after[sid].run_id == -out["activation_id"]
        # then the plan published before, on absolute time, to its end
        old_end = datetime.fromisoformat(before[sid].ocpi["start_date_time"]) + timedelta(
            seconds=before[sid].ocpi["duration"]
        )
        new_end = datetime.fromisoformat(ocpi["start_date_time"]) + timedelta(
            seconds=ocpi["duration"]
        )
        assert new_end == old_end
    assert after["s-4"].cursor == before["s-4"].cursor  # untouched
    with factory() as db:
        items = db.scalars(
            select(OutboxItem).where(OutboxItem.status == "pending").order_by(OutboxItem.id)
        ).all()
        queued = {i.session_id: i for i in items}  # the newest item of each session
        cur = db.scalars(select(DrCurtailment)).all()
    for sid in RELEASE_KW:
        # the item names the curtailment profile by its cursor (composed when it is claimed)
        assert queued[sid].cursor == after[sid].cursor and queued[sid].payload is None
    assert sorted(c.session_id for c in cur) == sorted(RELEASE_KW)
    assert all(c.until == restore_at for c in cur)


def test_brp_may_signal_but_not_relay_and_a_rejected_signal_changes_nothing(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str]
) -> None:
    seed(factory, datetime.now(UTC))
    r = app_client.post(
        "/v1/demand-response/signals", json={"target_kw": 5.0}, headers=auth(keys["brp"])
    )
    assert r.status_code == 201
    sig = r.json()["signal"]
    assert sig["status"] == "pending" and "auto-relay is off" in sig["decision_reason"]
    n_audit = count(factory, DrAuditEntry)

    r = app_client.post(f"/v1/demand-response/signals/{sig['id']}/relay", headers=auth(keys["brp"]))
    assert r.status_code == 403 and r.json()["detail"].startswith("role:")
    assert count(factory, DrActivation) == 0 and count(factory, DrAuditEntry) == n_audit

    r = app_client.post(
        f"/v1/demand-response/signals/{sig['id']}/reject",
        json={"reason": "price too low"},
        headers=auth(keys["operator"]),
    )
    assert r.status_code == 200 and r.json()["signal"]["status"] == "rejected"
    assert count(factory, DrActivation) == 0 and count(factory, DrCurtailment) == 0
    assert count(factory, Profile) == 0 and count(factory, OutboxItem) == 0
    # decided signals cannot be relayed any more
    r = app_client.post(
        f"/v1/demand-response/signals/{sig['id']}/relay", headers=auth(keys["operator"])
    )
    assert r.status_code == 409 and r.json()["detail"].startswith("signal_id:")
    log = app_client.get("/v1/demand-response/audit", headers=auth(keys["operator"])).json()
    assert [e["action"] for e in log] == ["signal", "reject"]
    assert log[1]["reason"] == "price too low" and log[1]["actor"].startswith("operator:")
    assert log[0]["actor"].startswith("brp:")


def test_manual_relay_of_a_partial_signal(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str]
) -> None:
    seed(factory, datetime.now(UTC))
    sig = app_client.post(
        "/v1/demand-response/signals", json={"target_kw": 7.0}, headers=auth(keys["brp"])
    ).json()["signal"]
    r = app_client.post(
        f"/v1/demand-response/signals/{sig['id']}/relay", headers=auth(keys["operator"])
    )
    assert r.status_code == 200, r.text
    out = r.json()
    # the largest release first among equals: s-5 (6.9 kW), then s-1 (3.105 kW) -> 10.005 kW
    assert out["sessions_curtailed"] == 2
    assert out["released_kw"] == pytest.approx(10.005, abs=1e-3)
    assert out["skipped"]["not_needed"] == 2
    assert out["activation"]["mode"] == "manual"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"end": "2020-01-01T00:00:00Z"}, "end"),
        ({"target_kw": -5.0}, "target_kw"),
        ({"target_kw": 0.0}, "target_kw"),
        ({"end": "2030-01-01T00:00:00"}, "end"),  # no offset
        ({"target": 5.0}, "target"),  # unknown field
        ({"end": 1893456000}, "end"),  # an epoch number is not a date-time
    ],
)
def test_bad_signals_are_refused_and_nothing_is_stored(
    app_client: TestClient,
    factory: sessionmaker[Session],
    keys: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    seed(factory, datetime.now(UTC))
    set_policy(app_client, keys["operator"], auto_relay=True)
    n_audit = count(factory, DrAuditEntry)
    r = app_client.post("/v1/demand-response/signals", json=body, headers=auth(keys["brp"]))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{field}:")
    assert count(factory, DrSignal) == 0 and count(factory, DrActivation) == 0
    assert count(factory, DrAuditEntry) == n_audit and count(factory, Profile) == 0


def test_flexibility_time_must_be_a_date_time_with_offset(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    for bad in ("0.0", "2026-11-25T10:00:00", "0001-01-01T04:00:00Z"):
        r = app_client.get(f"/v1/flexibility?at={bad}", headers=auth(keys["operator"]))
        assert r.status_code == 422, r.text
        assert "at" in r.text


def test_roles_that_may_not_signal_or_set_the_policy(
    app_client: TestClient, keys: dict[str, str]
) -> None:
    for role in ("dso", "csms"):
        r = app_client.post("/v1/demand-response/signals", json={}, headers=auth(keys[role]))
        assert r.status_code == 403 and r.json()["detail"].startswith("role:")
    r = app_client.put(
        "/v1/demand-response/policy", json={"auto_relay": True}, headers=auth(keys["brp"])
    )
    assert r.status_code == 403
    r = app_client.put(
        "/v1/demand-response/policy", json={"allowed_from": "25:00"}, headers=auth(keys["admin"])
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("allowed_from:")


def test_opt_out_and_consent_rules(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str]
) -> None:
    seed(factory, datetime.now(UTC), **{"s-1": {"opt_out": True}})
    op = auth(keys["operator"])
    r = app_client.put(
        "/v1/demand-response/contract-rules/region-01",
        json={"consent_required": True, "max_curtail_min_per_4h": 20},
        headers=op,
    )
    assert r.status_code == 200
    r = app_client.put("/v1/demand-response/contract-rules/nowhere", json={}, headers=op)
    assert r.status_code == 404 and r.json()["detail"].startswith("region:")
    assert (
        app_client.put(
            "/v1/demand-response/consents/s-2", json={"consent": True}, headers=auth(keys["csms"])
        ).status_code
        == 200
    )
    set_policy(app_client, keys["operator"], auto_relay=True)
    out = app_client.post("/v1/demand-response/signals", json={}, headers=op).json()
    # s-1 opted out, s-3 and s-4 have no consent in region-01 (that reason comes before
    # at_minimum); s-2 (consent) and s-5 (other region, no rule) are curtailed
    assert out["skipped"]["opt_out"] == 1 and out["skipped"]["no_consent"] == 2
    assert out["sessions_curtailed"] == 2
    assert out["released_kw"] == pytest.approx(3.105 + 6.9, abs=1e-3)


# --------------------------------------------------------------------------------------------
# policy limits, expiry, overlapping activations (in-process with fixed times)


def test_policy_hours_and_daily_maximum(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient
) -> None:
    now = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)  # 10:00 in Amsterdam
    seed(factory, now)
    s = settings_for(db_url)
    with transaction(factory) as db:
        dr.set_policy(
            db,
            {"auto_relay": True, "allowed_from": "11:00", "allowed_to": "22:00"},
            "operator:x",
            now,
        )
    out, relayed = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now)
    assert (
        not relayed and "outside the allowed hours 11:00-22:00" in out["signal"]["decision_reason"]
    )
    with transaction(factory) as db:
        dr.set_policy(
            db,
            {"allowed_from": "00:00", "allowed_to": "24:00", "max_activations_per_day": 1},
            "operator:x",
            now,
        )
    _, relayed = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now)
    assert relayed
    out, relayed = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now + timedelta(minutes=20))
    assert not relayed and "reach the maximum 1" in out["signal"]["decision_reason"]


def test_a_signal_expires_at_its_end(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient
) -> None:
    now = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    seed(factory, now)
    s = settings_for(db_url)
    out, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(end=now + timedelta(minutes=5)), now)
    with pytest.raises(dr.DrError, match="expired"):
        dr.relay_signal(factory, s, OPERATOR, out["signal"]["id"], now=now + timedelta(minutes=6))


def test_end_earlier_than_the_isp_end_and_overlapping_activations(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient
) -> None:
    now = datetime(2026, 1, 15, 9, 3, tzinfo=UTC)
    seed(factory, now)
    s = settings_for(db_url)
    with transaction(factory) as db:
        dr.set_policy(db, {"auto_relay": True}, "operator:x", now)
    out, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(end=now + timedelta(minutes=5)), now)
    assert out["restore_at"] == "2026-01-15T09:08:00Z"
    # a second signal while the first holds: those sessions are already curtailed
    out2, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now + timedelta(minutes=2))
    assert out2["skipped"]["already_curtailed"] == 4 and out2["sessions_curtailed"] == 0
    # after the first ended, a third until the ISP end 09:15 fits the 30-minute budget
    out3, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now + timedelta(minutes=9))
    assert out3["sessions_curtailed"] == 4 and out3["restore_at"] == "2026-01-15T09:15:00Z"
    # 5 + 3 = 8 minutes used: at 09:30 the ISP (to 09:45) is cut by the budget at 09:52? no:
    # 30 - 8 = 22 minutes left > 15, so the whole ISP
    out4, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now + timedelta(minutes=27))
    assert out4["restore_at"] == "2026-01-15T09:45:00Z"
    with factory() as db:
        rows = db.scalars(
            select(DrCurtailment).where(DrCurtailment.activation_id == out4["activation_id"])
        ).all()
    assert {(r.until - r.start).total_seconds() for r in rows} == {900.0}
    # and at 09:46 only 30 - 8 - 15 = 7 minutes are left: restore at 09:53
    out5, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now + timedelta(minutes=43))
    with factory() as db:
        rows = db.scalars(
            select(DrCurtailment).where(DrCurtailment.activation_id == out5["activation_id"])
        ).all()
    assert {r.until for r in rows} == {datetime(2026, 1, 15, 9, 53, tzinfo=UTC)}
    assert out5["restore_at"] == "2026-01-15T10:00:00Z"


# --------------------------------------------------------------------------------------------
# restore with the optimiser's plan


def test_restore_publishes_the_plan_that_knows_the_curtailment(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient
) -> None:
    now = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    seed(factory, now)
    s = settings_for(db_url)
    reoptimise(factory, s, now)
    out, _ = dr.receive_signal(factory, s, OPERATOR, dr.SignalIn(), now)
    assert out["signal"]["status"] == "pending"
    out = dr.relay_signal(factory, s, OPERATOR, out["signal"]["id"], now=now)
    restore_at = datetime(2026, 1, 15, 9, 15, tzinfo=UTC)
    assert out["restore_at"] == "2026-01-15T09:15:00Z"

    # the live scenario caps the curtailed sessions in the current step, not the others:
    # 8 of the step's 15 minutes at the minimum, the rest at the connector limit
    with factory() as db:
        sc = build_live_scenario(db, s, now + timedelta(minutes=1))
    caps = {e["id"]: e.get("limit_a") for e in sc["sessions"]}
    assert caps["s-4"] is None
    assert caps["s-1"][0] == pytest.approx((8 * 8.0 + 7 * 16.0) / 15, abs=1e-3)
    assert caps["s-1"][1] == pytest.approx(16.0)
    assert caps["s-5"][0] == pytest.approx((8 * 6.0 + 7 * 16.0) / 15, abs=1e-3)

    # a scheduler run meanwhile leaves the held profiles alone
    held_before = {k: p.cursor for k, p in profiles(factory).items()}
    reoptimise(factory, s, now + timedelta(minutes=2))
    mid = profiles(factory)
    for sid in RELEASE_KW:
        assert mid[sid].cursor == held_before[sid]

    restorer = dr.Restorer(factory, s, lead_s=120)
    assert restorer.step(restore_at - timedelta(minutes=5)) == []  # not yet due
    assert restorer.prepared == {}
    assert restorer.step(restore_at - timedelta(seconds=60)) == []  # computed ahead
    assert restore_at in restorer.prepared
    runs_before = count(factory, ScheduleRun)
    assert profiles(factory)["s-1"].cursor == mid["s-1"].cursor  # nothing published yet
    prepared = restorer.prepared[restore_at].choice.schedule
    assert prepared is not None
    restored = restorer.step(restore_at)
    assert restored == [out["activation_id"]]
    with factory() as db:
        act = db.get(DrActivation, out["activation_id"])
        assert act is not None and act.restored and act.restore_run_id is not None
        run = db.get(ScheduleRun, act.restore_run_id)
        assert run is not None and run.published
    assert count(factory, ScheduleRun) == runs_before + 1
    after = profiles(factory)
    for sid in RELEASE_KW:
        # from 09:15 on every curtailed session follows the restore plan: republished where it
        # differs from the tail of its curtailment profile
        new = prepared["profiles"][sid]["ocpi"]
        assert new["start_date_time"] == "2026-01-15T09:15:00Z"
        assert same_from_start(new, after[sid].ocpi)
        assert after[sid].run_id in (act.restore_run_id, -act.id)
    assert any(after[sid].run_id == act.restore_run_id for sid in RELEASE_KW)
    # the restored schedule passes the checker on the scenario it was made for
    with factory() as db:
        sc = build_live_scenario(db, s, restore_at)
    assert all("limit_a" not in e for e in sc["sessions"])
    assert restorer.step(restore_at + timedelta(seconds=1)) == []  # done once


def test_restore_schedule_passes_the_checker(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient
) -> None:
    now = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    seed(factory, now)
    s = settings_for(db_url)
    with transaction(factory) as db:
        dr.set_policy(db, {"auto_relay": True}, "operator:x", now)
    dr.receive_signal(factory, s, BRP, dr.SignalIn(), now)
    # a plan made while the curtailment holds (grid from 09:00) knows it, and passes the checker
    prepared = dr.prepare_restore(factory, s, now + timedelta(minutes=3), now)
    sched = prepared.choice.schedule
    assert sched is not None
    assert explained(check_schedule(prepared.scenario, sched), sched["violations"]) == []
    caps = {e["id"]: e.get("limit_a") for e in prepared.scenario["sessions"]}
    assert caps["s-1"][0] == pytest.approx((8 * 8.0 + 7 * 16.0) / 15, abs=1e-3)
    assert sched["sessions"]["s-1"]["current_a"][0] <= caps["s-1"][0] + 1e-6


# --------------------------------------------------------------------------------------------
# flexibility, KPIs, metrics


def test_flexibility_now_and_ahead(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str], db_url: str
) -> None:
    now = datetime.now(UTC)
    seed(factory, now)
    reoptimise(factory, settings_for(db_url), now)
    r = app_client.get("/v1/flexibility", headers=auth(keys["brp"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["now_kw"] == pytest.approx({"region-01": 8.05, "region-02": 6.9}, abs=1e-3)
    assert out["now_total_kw"] == pytest.approx(14.95, abs=1e-3)
    fc = out["forecast"]
    assert fc["slots"] == 96 and len(fc["total_kw"]) == 96
    # by hand from the published profiles: (limit - min) * phases * V at each slot start
    ps = profiles(factory)
    start = datetime.fromisoformat(fc["start"])
    for k in (0, 4):
        t = start + timedelta(minutes=15 * k)
        want = 0.0
        for sid, (_, _, phases) in SESSIONS.items():
            o = ps[sid].ocpi
            t0 = datetime.fromisoformat(o["start_date_time"])
            if not t0 <= t < t0 + timedelta(seconds=o["duration"]):
                continue
            lim = [
                p["limit"]
                for p in o["charging_profile_period"]
                if t0 + timedelta(seconds=p["start_period"]) <= t
            ][-1]
            floor = 6.0 if sid == "s-5" else 8.0
            want += max(lim - floor, 0.0) * phases * 0.23
        assert fc["total_kw"][k] == pytest.approx(want, abs=1e-2)
    assert fc["total_kw"][-1] == 0.0  # everyone left by then
    assert app_client.get("/v1/flexibility", headers=auth(keys["dso"])).status_code == 403


def test_flexibility_ahead_respects_curtailment_budgets(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str], db_url: str
) -> None:
    """A session whose rolling 4-hour budget is spent adds nothing to the forecast until its
    earlier curtailment leaves the window; a budget shorter than the slot counts pro rata."""
    now = datetime.fromtimestamp(datetime.now(UTC).timestamp() // 900 * 900 - 900 + 440, UTC)
    seed(factory, now)
    reoptimise(factory, settings_for(db_url), now)
    r = app_client.put(
        "/v1/demand-response/contract-rules/region-01",
        json={"max_curtail_min_per_4h": 10},
        headers=auth(keys["operator"]),
    )
    assert r.status_code == 200, r.text
    # s-1 was held for 10 minutes ending 3 h 30 min ago: its whole 10-minute budget stays in
    # the window until 20 minutes from now
    with transaction(factory) as db:
        db.add(
            DrCurtailment(
                activation_id=99,
                session_id="s-1",
                region="region-01",
                start=now - timedelta(minutes=220),
                until=now - timedelta(minutes=210),
                limit_a=8.0,
                current_before_a=12.5,
                released_kw=3.105,
            )
        )
    r = app_client.get(
        "/v1/flexibility",
        params={"at": now.isoformat()},
        headers=auth(keys["operator"]),
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["now_kw"]["region-01"] == pytest.approx(3.105 + 1.84, abs=1e-3)  # not s-1
    fc = out["forecast"]
    start = datetime.fromisoformat(fc["start"])
    ps = profiles(factory)
    s1_counted = []
    for k in range(fc["slots"]):
        t = start + timedelta(minutes=15 * k)
        tau = max((t - now).total_seconds(), 0.0)
        h = (t + timedelta(minutes=15) - now).total_seconds() - tau
        want = {"region-01": 0.0, "region-02": 0.0}
        for sid, (_, _, phases) in SESSIONS.items():
            o = ps[sid].ocpi
            t0 = datetime.fromisoformat(o["start_date_time"])
            if not t0 <= t < min(t0 + timedelta(seconds=o["duration"]), now + timedelta(hours=3)):
                continue
            lim = [
                p["limit"]
                for p in o["charging_profile_period"]
                if t0 + timedelta(seconds=p["start_period"]) <= t
            ][-1]
            region, floor, budget = (
                ("region-02", 6.0, 1800.0) if sid == "s-5" else ("region-01", 8.0, 600.0)
            )
            x = min(budget, h)
            if sid == "s-1" and tau <= 20 * 60:
                x = 0.0
            elif sid == "s-1" and lim > 8.0:
                s1_counted.append(k)
            share = x / h if x >= min(60.0, h) else 0.0
            want[region] += max(lim - floor, 0.0) * phases * 0.23 * share
        for region, kw in want.items():
            assert fc["kw"][region][k] == pytest.approx(kw, abs=1e-2), (k, region)
    assert s1_counted and min(s1_counted) == 2  # slots 0 and 1 start within the 20 minutes


def test_driver_impact_kpis(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient, keys: dict[str, str]
) -> None:
    now = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    seed(factory, now)
    s = settings_for(db_url)
    reoptimise(factory, s, now)
    with transaction(factory) as db:
        dr.set_policy(db, {"auto_relay": True}, "operator:x", now)
    dr.receive_signal(factory, s, BRP, dr.SignalIn(target_kw=6.0), now)  # s-5, 8 minutes
    dr.receive_signal(factory, s, BRP, dr.SignalIn(target_kw=6.0), now + timedelta(minutes=10))
    with transaction(factory) as db:  # s-5 leaves with 12 kWh more
        row = db.get(ChargingSession, "s-5")
        assert row is not None
        row.kwh, row.end_date_time, row.status = 17.0, now + timedelta(hours=2), "COMPLETED"
    r = app_client.get("/v1/demand-response/kpis/2026-01-15", headers=auth(keys["operator"]))
    assert r.status_code == 200, r.text
    k = r.json()
    assert k["activations"] == 2 and k["sessions"] == 5
    # second activation: s-5 was taken once already, so s-1 (3.105) then s-2 (3.105)
    assert k["sessions_curtailed"] == 3
    assert k["never_curtailed_share"] == pytest.approx(2 / 5)
    # s-5 09:07-09:15 (8 min); s-1 and s-2 09:17-09:30 (13 min each)
    assert k["curtailment_min_per_curtailed_session"] == {"mean": 11.333, "max": 13.0}
    assert k["curtailment_min_per_session_mean"] == pytest.approx(34 / 5, abs=1e-3)
    assert k["energy_by_departure"]["sessions"] == 1
    assert k["energy_by_departure"]["delivered_kwh"] == pytest.approx(12.0)
    assert k["energy_by_departure"]["no_activation_plan_kwh"] > 0
    bad = app_client.get("/v1/demand-response/kpis/15-01-2026", headers=auth(keys["operator"]))
    assert bad.status_code == 422 and bad.json()["detail"].startswith("date:")


def test_metrics_count_activations(
    factory: sessionmaker[Session], db_url: str, app_client: TestClient
) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    now = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    seed(factory, now)
    s = settings_for(db_url)
    before = value("gridcharge_dr_activations_total", mode="manual")
    curtailed = value("gridcharge_dr_sessions_curtailed_total")
    out, _ = dr.receive_signal(factory, s, BRP, dr.SignalIn(), now)
    dr.relay_signal(factory, s, OPERATOR, out["signal"]["id"], now=now)
    assert value("gridcharge_dr_activations_total", mode="manual") == before + 1
    assert value("gridcharge_dr_sessions_curtailed_total") == curtailed + 4
    assert value("gridcharge_dr_released_kw") == pytest.approx(14.95, abs=1e-3)


def test_curtailment_profile_continues_the_previous_plan() -> None:
    start = datetime(2026, 1, 15, 9, 7, tzinfo=UTC)
    previous = {
        "start_date_time": "2026-01-15T09:00:00Z",
        "duration": 3600,
        "charging_rate_unit": "A",
        "min_charging_rate": 8.0,
        "charging_profile_period": [
            {"start_period": 0, "limit": 16.0},
            {"start_period": 900, "limit": 12.0},
            {"start_period": 1800, "limit": 10.0},
        ],
    }
    forms = dr.curtailment_forms(
        session_id="s-1",
        evse_id=2,
        n_phases=3,
        start=start,
        until=datetime(2026, 1, 15, 9, 15, tzinfo=UTC),
        limit_a=8.0,
        previous=previous,
    )
    ocpi = forms["ocpi"]
    assert ocpi["start_date_time"] == "2026-01-15T09:07:00Z"
    assert ocpi["duration"] == 3600 - 420
    assert ocpi["charging_profile_period"] == [
        {"start_period": 0, "limit": 8.0},
        {"start_period": 480, "limit": 12.0},
        {"start_period": 1380, "limit": 10.0},
    ]
    p16 = forms["ocpp16"]["csChargingProfiles"]
    assert forms["ocpp16"]["connectorId"] == 2 and p16["stackLevel"] == 0
    assert p16["chargingSchedule"]["chargingSchedulePeriod"][0] == {
        "startPeriod": 0,
        "limit": 8.0,
        "numberPhases": 3,
    }
    assert forms["ocpp201"]["chargingProfile"]["transactionId"] == "s-1"
    # without a previous profile: only the curtailment
    alone = dr.curtailment_forms(
        session_id="s-1",
        evse_id=1,
        n_phases=1,
        start=start,
        until=datetime(2026, 1, 15, 9, 15, tzinfo=UTC),
        limit_a=6.0,
        previous=None,
    )["ocpi"]
    assert alone["duration"] == 480 and alone["charging_profile_period"] == [
        {"start_period": 0, "limit": 6.0}
    ]


def test_replay_time_is_for_operators_and_restore_can_be_triggered(
    app_client: TestClient, factory: sessionmaker[Session], keys: dict[str, str]
) -> None:
    seed(factory, datetime(2026, 1, 15, 9, 0, tzinfo=UTC))
    at = {"at": "2026-01-15T09:07:00+00:00"}
    r = app_client.post(
        "/v1/demand-response/signals", params=at, json={}, headers=auth(keys["brp"])
    )
    assert r.status_code == 403 and r.json()["detail"].startswith("at:")
    assert count(factory, DrSignal) == 0
    op = auth(keys["operator"])
    sig = app_client.post("/v1/demand-response/signals", params=at, json={}, headers=op).json()
    out = app_client.post(
        f"/v1/demand-response/signals/{sig['signal']['id']}/relay", params=at, headers=op
    ).json()
    assert out["restore_at"] == "2026-01-15T09:15:00Z" and out["sessions_curtailed"] == 4
    early = app_client.post(
        "/v1/demand-response/restore", params={"at": "2026-01-15T09:10:00+00:00"}, headers=op
    ).json()
    assert early["restored"] == []
    done = app_client.post(
        "/v1/demand-response/restore", params={"at": "2026-01-15T09:15:00+00:00"}, headers=op
    ).json()
    assert done["restored"] == [out["activation_id"]]
    acts = app_client.get("/v1/demand-response/activations", headers=auth(keys["brp"])).json()
    assert acts[0]["restored"] and acts[0]["restore_run_id"] is not None
    r = app_client.post("/v1/demand-response/restore", params={"at": "yesterday"}, headers=op)
    assert r.status_code == 422 and r.json()["detail"].startswith("at:")


def test_real_server_restores_by_itself(db_url: str) -> None:
    """Over loopback against ``gridcharge serve`` with its background loops: a signal ending in
    a few seconds is relayed, and the restore loop publishes the restore on its own."""
    import time

    import httpx

    from api.db import migrate
    from tests.api.conftest import ServerProcess

    migrate(db_url)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    seed(factory, datetime.now(UTC))
    op, brp = make_key(db_url, "operator"), make_key(db_url, "brp")
    srv = ServerProcess(db_url).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.put("/v1/demand-response/policy", json={"auto_relay": True}, headers=auth(op))
            assert r.status_code == 200
            end = datetime.now(UTC) + timedelta(seconds=4)
            r = c.post(
                "/v1/demand-response/signals",
                json={"end": end.isoformat()},
                headers=auth(brp),
            )
            assert r.status_code == 201, r.text
            out = r.json()
            assert out["sessions_curtailed"] == 4
            deadline = time.monotonic() + 30
            act: dict[str, Any] = {}
            while time.monotonic() < deadline:
                act = c.get(
                    f"/v1/demand-response/activations/{out['activation_id']}", headers=auth(op)
                ).json()
                if act["restored"]:
                    break
                time.sleep(0.25)
            assert act["restored"], act
            assert datetime.fromisoformat(act["restored_at"]) >= datetime.fromisoformat(
                out["restore_at"]
            )
            log = c.get("/v1/demand-response/audit", headers=auth(op)).json()
            assert [e["action"] for e in log][-1] == "restore"
            metrics = c.get("/metrics").text
            assert "gridcharge_dr_activations_total" in metrics
    finally:
        srv.stop()
        engine.dispose()

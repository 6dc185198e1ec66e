"""Live re-optimisation: the live scenario, publishing with the checker gate and the greedy
fallback, the cursor feed, and the background loop."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import api.publish as publish
from api.db import transaction
from api.live import SlotSeries, build_live_scenario, cap_steps, grid_start, target_steps
from api.metrics import REGISTRY
from api.models import ChargingSession, DsoProfile, OutboxItem, Profile, ProfileChange, ScheduleRun
from api.outbox import claim_due, maintain, pending_count
from api.publish import reoptimise, same_from_start
from api.settings import Settings
from api.topology import upsert_topology
from optimizer.checker import check_schedule, explained
from optimizer.solve import solve_network
from tests.api.conftest import auth

NOW = datetime(2026, 11, 25, 8, 7, 30, tzinfo=UTC)
START = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
STEP = timedelta(minutes=15)

TOPOLOGY: dict[str, Any] = {
    "nodes": [
        {"id": "region-01", "parent": None},
        {"id": "region-01/sc-1", "parent": "region-01", "limit_kw": 15.0},
    ],
    "stations": [
        {"id": "st-1", "node": "region-01/sc-1"},
        {
            "id": "st-2",
            "node": "region-01/sc-1",
            "connectors": [
                {"id": "st-2-1", "limit_a": 16, "phases": 3},
                {"id": "st-2-2", "limit_a": 16, "phases": 1, "phase": "L2"},
            ],
        },
        {"id": "st-3", "node": "region-01"},
    ],
}


def live_settings(db_url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": db_url,
        "background": False,
        "horizon_steps": 16,
        "solver_time_limit_s": 30.0,
    }
    return Settings(**{**base, **kw})


def session_row(
    sid: str,
    connector: str,
    start: datetime,
    *,
    need: float | None = None,
    kwh: float = 0.0,
    departure: datetime | None = None,
    phases: int = 3,
    status: str = "ACTIVE",
    end: datetime | None = None,
) -> ChargingSession:
    return ChargingSession(
        id=sid,
        country_code="NL",
        party_id="GCX",
        connector_id=connector,
        start_date_time=start,
        end_date_time=end,
        status=status,
        kwh=kwh,
        phases=phases,
        departure=departure,
        energy_need_kwh=need,
        last_updated=start,
    )


def seed(factory: sessionmaker[Session], now: datetime = NOW, only: set[str] | None = None) -> None:
    """The topology above and four plugged-in sessions (plus two that are not)."""
    rows = [
        session_row(
            "s-1",
            "st-1-1",
            now - timedelta(hours=1),
            need=20,
            kwh=5,
            departure=now + timedelta(hours=3),
        ),
        session_row("s-2", "st-1-2", now - timedelta(minutes=30)),
        session_row("s-3", "st-2-1", now - timedelta(minutes=10), need=10, phases=1),
        session_row("s-4", "st-3-1", now - timedelta(hours=2), departure=now + timedelta(hours=2)),
        session_row(
            "s-5",
            "st-2-2",
            now - timedelta(hours=3),
            status="COMPLETED",
            end=now - timedelta(hours=1),
        ),
        session_row("s-6", "st-3-2", now - timedelta(hours=3), end=now - timedelta(minutes=5)),
    ]
    with transaction(factory) as db:
        upsert_topology(db, copy.deepcopy(TOPOLOGY))
        db.add_all([r for r in rows if only is None or r.id in only])


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def profiles_of(factory: sessionmaker[Session]) -> dict[str, Profile]:
    with factory() as db:
        return {p.session_id: p for p in db.scalars(select(Profile))}


def n_changes(factory: sessionmaker[Session]) -> int:
    with factory() as db:
        return int(db.scalar(select(func.count()).select_from(ProfileChange)) or 0)


class Spy:
    """Records what :func:`api.publish.choose_schedule` chose, with the scenario it was for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[dict[str, Any], publish.Choice]] = []
        real = publish.choose_schedule

        def spy(scenario: Any, net: Any, settings: Settings) -> publish.Choice:
            choice = real(scenario, net, settings)
            self.calls.append((copy.deepcopy(scenario), copy.deepcopy(choice)))
            return choice

        monkeypatch.setattr(publish, "choose_schedule", spy)

    def assert_checker_valid(self) -> dict[str, Any]:
        scenario, choice = self.calls[-1]
        assert choice.schedule is not None
        found = check_schedule(scenario, choice.schedule)
        assert explained(found, choice.schedule["violations"]) == []
        return choice.schedule


# --------------------------------------------------------------------------------------------
# the live scenario


def test_grid_start_floors_to_the_step() -> None:
    assert grid_start(NOW, 900) == START
    assert grid_start(START, 900) == START
    assert grid_start(NOW, 3600) == datetime(2026, 11, 25, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="now"):
        grid_start(datetime(2026, 11, 25, 8), 900)


def test_live_scenario_from_the_database(factory: sessionmaker[Session], db_url: str) -> None:
    seed(factory)
    with transaction(factory) as db:
        # an overstaying car, a car plugged in during the current step, a session on an unknown
        # connector and a stale second session on st-2-1
        db.add_all(
            [
                session_row(
                    "late", "st-2-2", NOW - timedelta(hours=5), departure=NOW - timedelta(hours=1)
                ),
                session_row("fresh", "st-3-2", NOW - timedelta(minutes=2)),
                session_row("ghost", "nowhere-1", NOW - timedelta(hours=1)),
                session_row("stale", "st-2-1", NOW - timedelta(days=2)),
            ]
        )
    settings = live_settings(db_url)
    with factory() as db:
        sc = build_live_scenario(db, settings, NOW)
    assert sc["grid"] == {"start": "2026-11-25T08:00:00Z", "step_s": 900, "steps": 16}
    by_id = {s["id"]: s for s in sc["sessions"]}
    assert sorted(by_id) == ["fresh", "late", "s-1", "s-2", "s-3", "s-4"]
    assert by_id["s-1"]["energy_kwh"] == 15.0
    assert "energy_kwh" not in by_id["s-2"]
    assert by_id["s-2"]["departure"] == "2026-11-25T11:37:30Z"  # default stay of 4 h
    assert by_id["s-3"]["phases"] == 1 and by_id["s-3"]["connector"] == "st-2-1"
    assert by_id["fresh"]["arrival"] == "2026-11-25T08:00:00Z"  # present from the current step
    assert by_id["late"]["departure"] == "2026-11-25T09:00:00Z"  # overstay: one more hour
    from optimizer.network import compile_network
    from optimizer.scenario import parse_scenario

    net = compile_network(parse_scenario(sc))
    assert net.presence()[:, 0].all()  # every plugged-in car is present now


def test_dso_slots_map_onto_the_grid() -> None:
    # a cap on slots 08:30-09:30 of a grid from 08:00 in 15-minute steps: the uncovered steps
    # get the non-binding fill
    series = [SlotSeries(START + 2 * STEP, 900, [20.0, 18.0, None, 22.0])]
    assert cap_steps(series, START, 900, 8, fill_kw=99.0) == [99, 99, 20, 18, 99, 22, 99, 99]
    # 30-minute steps: the lowest cap of the slots in the step holds
    assert cap_steps(series, START, 1800, 4, fill_kw=99.0) == [99, 18, 22, 99]
    assert cap_steps(series, START + 10 * STEP, 900, 4, fill_kw=99.0) is None
    # targets: the overlap-weighted mean; uncovered steps from the same time a day earlier
    yesterday = SlotSeries(START - timedelta(days=1), 900, [float(k) for k in range(96)])
    today = SlotSeries(START + STEP, 900, [50.0, 70.0])
    got = target_steps([yesterday, today], START, 900, 4)
    assert got == [0.0, 50.0, 70.0, 3.0]
    # 30-minute steps: the mean of two slots; the uncovered step takes the nearest covered one
    assert target_steps([SlotSeries(START, 900, [50.0, 70.0])], START, 1800, 2) == [60.0, 60.0]
    assert target_steps([today], START + 20 * STEP, 900, 2) is None


# --------------------------------------------------------------------------------------------
# publishing


def test_reoptimise_publishes_checked_profiles_once(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)
    with transaction(factory) as db:  # a DSO cap on the region from 08:30 to 09:30
        db.add(
            DsoProfile(
                region="region-01",
                day="2026-11-25",
                start=START + 2 * STEP,
                slot_s=900,
                cap_kw=[20.0] * 4,
                target_kw=None,
            )
        )
    spy = Spy(monkeypatch)
    settings = live_settings(db_url)
    run = reoptimise(factory, settings, NOW)
    assert run.published and run.status == "optimal" and run.method == "lp"
    assert run.sessions == 4 and run.grid_start == START
    schedule = spy.assert_checker_valid()
    power = schedule["nodes"]["region-01"]["power_kw"]
    assert max(power[2:6]) <= 20.0 + 1e-3 < max(power)  # the DSO cap binds where it applies
    assert run.region_power_kw == {"region-01": power}
    published = profiles_of(factory)
    assert sorted(published) == ["s-1", "s-2", "s-3", "s-4"]
    assert sorted(p.cursor for p in published.values()) == [1, 2, 3, 4]
    for sid, p in published.items():
        assert p.ocpi == schedule["profiles"][sid]["ocpi"]
        assert p.ocpp201["evseId"] >= 1 and p.ocpp16["csChargingProfiles"]["stackLevel"] == 0
        assert min(p.limits_a) >= 8.0  # never below the minimum while plugged in
    # one limit per step from the current step to the departure rounded down
    assert {s: len(p.limits_a) for s, p in published.items()} == {
        "s-1": 12,
        "s-2": 14,
        "s-3": 15,
        "s-4": 8,
    }
    with factory() as db:
        assert db.scalar(select(func.count()).select_from(OutboxItem)) == 0  # no cpo_url

    # the same data again: nothing changed, nothing re-published
    run2 = reoptimise(factory, settings, NOW)
    assert run2.published and run2.id > run.id
    assert n_changes(factory) == 4
    assert {s: p.cursor for s, p in profiles_of(factory).items()} == {
        s: p.cursor for s, p in published.items()
    }

    # s-1 needs little more: the power it leaves goes to the others, whose profiles change and
    # get new cursors (in session order); s-1 stays at the minimum: its profile is kept
    with transaction(factory) as db:
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    reoptimise(factory, settings, NOW)
    spy.assert_checker_valid()
    after = profiles_of(factory)
    changed = sorted(sid for sid, p in after.items() if p.cursor > 4)
    assert {"s-2", "s-3"} <= set(changed) and "s-1" not in changed
    assert [after[sid].cursor for sid in changed] == list(range(5, 5 + len(changed)))
    assert n_changes(factory) == 4 + len(changed)
    for sid, p in after.items():
        assert (p.ocpi != published[sid].ocpi) == (sid in changed)


def test_unchanged_profile_is_not_republished_when_the_grid_rolls(
    factory: sessionmaker[Session], db_url: str
) -> None:
    seed(factory, only={"s-4"})
    settings = live_settings(db_url)
    reoptimise(factory, settings, NOW)
    first = profiles_of(factory)["s-4"]
    assert first.limits_a == [16.0] * 8  # alone at its station until 10:07:30 -> 8 steps
    reoptimise(factory, settings, NOW + STEP)  # one step later: the same limits from now on
    assert n_changes(factory) == 1
    assert profiles_of(factory)["s-4"].ocpi == first.ocpi
    # the driver now leaves an hour later: the profile is longer, so it is re-published
    with transaction(factory) as db:
        row = db.get(ChargingSession, "s-4")
        assert row is not None and row.departure is not None
        row.departure = row.departure + timedelta(hours=1)
    reoptimise(factory, settings, NOW + STEP)
    again = profiles_of(factory)["s-4"]
    assert again.cursor == 2 and again.ocpi["start_date_time"] == "2026-11-25T08:15:00Z"
    assert again.limits_a == [16.0] * 11


def test_profile_comparison_is_on_absolute_time() -> None:
    old: dict[str, Any] = {
        "start_date_time": "2026-11-25T08:00:00Z",
        "duration": 3600,
        "charging_rate_unit": "A",
        "min_charging_rate": 8.0,
        "charging_profile_period": [
            {"start_period": 0, "limit": 16.0},
            {"start_period": 1800, "limit": 10.0},
        ],
    }
    new: dict[str, Any] = {
        **old,
        "start_date_time": "2026-11-25T08:15:00Z",
        "duration": 2700,
        "charging_profile_period": [
            {"start_period": 0, "limit": 16.0},
            {"start_period": 900, "limit": 10.0},
        ],
    }
    assert same_from_start(new, old)
    assert not same_from_start({**new, "min_charging_rate": 6.0}, old)
    assert not same_from_start({**new, "duration": 1800}, old)  # ends earlier
    shifted = copy.deepcopy(new)
    shifted["charging_profile_period"][1]["start_period"] = 1800
    assert not same_from_start(shifted, old)
    assert not same_from_start(old, new)  # the old one does not reach back to 08:00


def test_declared_infeasible_limits_are_published(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)
    with transaction(factory) as db:  # the minimum currents alone exceed 5 kW
        upsert_topology(
            db, {"nodes": [{"id": "region-01/sc-1", "parent": "region-01", "limit_kw": 5.0}]}
        )
    spy = Spy(monkeypatch)
    run = reoptimise(factory, live_settings(db_url), NOW)
    assert run.published and run.status == "infeasible_limits" and run.violations > 0
    schedule = spy.assert_checker_valid()
    assert {v["kind"] for v in schedule["violations"]} == {"node_power_limit"}
    assert len(profiles_of(factory)) == 4


def test_lp_failure_publishes_the_greedy_fallback(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)

    def broken(net: Any, method: str = "lp", **kw: Any) -> dict[str, Any]:
        if method == "lp":
            raise RuntimeError("boom: solver crashed")
        return solve_network(net, method, **kw)

    monkeypatch.setattr(publish, "solve_network", broken)
    spy = Spy(monkeypatch)
    before = counter("gridcharge_fallbacks_total")
    run = reoptimise(factory, live_settings(db_url, live_engine=False), NOW)
    assert run.published and run.status == "fallback" and run.method == "greedy"
    assert run.reason is not None and "boom: solver crashed" in run.reason
    assert counter("gridcharge_fallbacks_total") == before + 1
    schedule = spy.assert_checker_valid()
    assert schedule["reason"] == run.reason
    assert sorted(profiles_of(factory)) == ["s-1", "s-2", "s-3", "s-4"]


def test_live_engine_failure_publishes_the_greedy_fallback(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)

    class Broken:
        def solve(self, net: Any) -> dict[str, Any]:
            raise RuntimeError("engine lost its worker")

    monkeypatch.setattr(publish, "live_engine", lambda settings: Broken())
    run = reoptimise(factory, live_settings(db_url), NOW)
    assert run.published and run.status == "fallback" and run.method == "greedy"
    assert run.reason is not None and "engine lost its worker" in run.reason


def test_replans_solve_warm_through_the_live_engine(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)
    spy = Spy(monkeypatch)
    settings = live_settings(db_url, database_url=db_url)
    reoptimise(factory, settings, NOW)
    first = spy.assert_checker_valid()["solver"]["parts_by_start"]
    reoptimise(factory, settings, NOW)  # nothing changed: every part keeps its solution
    again = spy.assert_checker_valid()["solver"]["parts_by_start"]
    assert first["reused"] == 0 and again["reused"] == sum(again.values()) >= 1
    with transaction(factory) as db:  # s-1 needs less: its part is re-solved warm
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    reoptimise(factory, settings, NOW)
    changed = spy.assert_checker_valid()["solver"]["parts_by_start"]
    assert changed["inplace"] + changed["mapped"] >= 1 and changed["cold"] == 0
    cold = reoptimise(factory, live_settings(db_url, live_engine=False), NOW)
    assert cold.objective == pytest.approx(spy.calls[-2][1].schedule["solver"]["objective"])


def violating(net: Any, method: str = "lp", **kw: Any) -> dict[str, Any]:
    """The real schedule with s-1 at 40 A in step 0 (above its 16 A connector), undeclared."""
    out = solve_network(net, method, **kw)
    out["sessions"]["s-1"]["current_a"][0] = 40.0
    return out


def test_lp_schedule_the_checker_rejects_falls_back(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)

    def lp_violates(net: Any, method: str = "lp", **kw: Any) -> dict[str, Any]:
        return violating(net, method, **kw) if method == "lp" else solve_network(net, method, **kw)

    monkeypatch.setattr(publish, "solve_network", lp_violates)
    spy = Spy(monkeypatch)
    before = counter("gridcharge_fallbacks_total")
    run = reoptimise(factory, live_settings(db_url, live_engine=False), NOW)
    assert run.status == "fallback" and run.method == "greedy" and run.published
    assert run.reason is not None and "connector_limit s-1 step 0" in run.reason
    assert counter("gridcharge_fallbacks_total") == before + 1
    spy.assert_checker_valid()


def test_schedule_nothing_passes_keeps_the_previous_profiles(
    factory: sessionmaker[Session], db_url: str, monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    seed(factory)
    settings = live_settings(db_url, live_engine=False)
    reoptimise(factory, settings, NOW)
    published = profiles_of(factory)
    with transaction(factory) as db:  # new data that would change s-1's profile
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    monkeypatch.setattr(publish, "solve_network", violating)
    rejected = counter("gridcharge_rejected_schedules_total")
    run = reoptimise(factory, settings, NOW)
    assert not run.published and run.status == "rejected"
    assert run.reason is not None and "greedy schedule was rejected too" in run.reason
    assert counter("gridcharge_rejected_schedules_total") == rejected + 1
    kept = profiles_of(factory)
    assert {s: (p.cursor, p.ocpi) for s, p in kept.items()} == {
        s: (p.cursor, p.ocpi) for s, p in published.items()
    }
    assert n_changes(factory) == 4
    from tests.api.conftest import make_key

    latest = client.get("/v1/schedule-runs/latest", headers=auth(make_key(db_url, "operator")))
    assert latest.status_code == 200
    body = latest.json()
    assert body["published"] is False and body["status"] == "rejected" and body["id"] == run.id
    assert (
        client.get("/v1/schedule-runs/latest", headers=auth(make_key(db_url, "csms"))).status_code
        == 403
    )


# --------------------------------------------------------------------------------------------
# the cursor feed


def test_profiles_feed_pages_by_cursor(
    client: TestClient, keys: dict[str, str], db_url: str
) -> None:
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    h = auth(keys["csms"])
    empty = client.get("/v1/profiles", headers=h).json()
    assert empty == {"profiles": [], "cursor": 0, "more": False}
    seed(factory)
    settings = live_settings(db_url)
    reoptimise(factory, settings, NOW)
    page1 = client.get("/v1/profiles?changed_since=0&limit=3", headers=h).json()
    assert [p["cursor"] for p in page1["profiles"]] == [1, 2, 3] and page1["more"] is True
    assert page1["cursor"] == 3
    assert set(page1["profiles"][0]) >= {"session_id", "cursor", "ocpi", "ocpp16", "ocpp201"}
    page2 = client.get(f"/v1/profiles?changed_since={page1['cursor']}&limit=3", headers=h).json()
    assert [p["cursor"] for p in page2["profiles"]] == [4] and page2["more"] is False
    seen = {p["session_id"] for p in page1["profiles"] + page2["profiles"]}
    assert seen == {"s-1", "s-2", "s-3", "s-4"}
    page3 = client.get(f"/v1/profiles?changed_since={page2['cursor']}", headers=h).json()
    assert page3 == {"profiles": [], "cursor": 4, "more": False}
    # a re-published session moves to its new cursor; the poller sees only it
    with transaction(factory) as db:
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    reoptimise(factory, settings, NOW)
    page4 = client.get("/v1/profiles?changed_since=4", headers=auth(keys["operator"])).json()
    assert [(p["session_id"], p["cursor"]) for p in page4["profiles"]] == [("s-2", 5), ("s-3", 6)]
    assert page4["cursor"] == 6 and page4["more"] is False
    for bad in ("abc", "-1", "1.5"):
        r = client.get(f"/v1/profiles?changed_since={bad}", headers=h)
        assert r.status_code == 422 and "changed_since" in r.json()["detail"]
    assert client.get("/v1/profiles?limit=0", headers=h).status_code == 422
    assert client.get("/v1/profiles", headers=auth(keys["dso"])).status_code == 403
    assert client.get("/v1/profiles").status_code == 401


def test_outbox_items_are_written_with_the_profiles_and_superseded(
    factory: sessionmaker[Session], db_url: str
) -> None:
    seed(factory)
    settings = live_settings(
        db_url, cpo_url="http://127.0.0.1:9/cpo", public_url="https://gc.test/"
    )
    reoptimise(factory, settings, NOW)
    with factory() as db:
        items = list(db.scalars(select(OutboxItem).order_by(OutboxItem.id)))
    assert [i.session_id for i in items] == ["s-1", "s-2", "s-3", "s-4"]
    published = profiles_of(factory)
    for item in items:
        assert item.status == "pending" and item.attempts == 0
        # the item names its profile by cursor; the payload is composed when it is claimed
        assert item.cursor == published[item.session_id].cursor
        assert item.payload is None
    due = datetime.now(UTC)  # publishing queues the items at the wall-clock time
    claimed = claim_due(factory, due, due + timedelta(seconds=20), settings.public_url)
    assert claimed is not None and claimed.id == items[0].id
    expected = {
        "charging_profile": published["s-1"].ocpi,
        "response_url": f"https://gc.test/v1/profiles/results/{claimed.id}",
    }
    assert claimed.payload == expected
    with factory() as db:
        stored = db.get(OutboxItem, claimed.id)
        assert stored is not None and stored.payload == expected  # what is sent is kept
    with transaction(factory) as db:
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    reoptimise(factory, settings, NOW)

    def statuses() -> list[tuple[str, str]]:
        with factory() as db:
            return [
                (i.session_id, i.status)
                for i in db.scalars(select(OutboxItem).order_by(OutboxItem.id))
            ]

    # publishing does not rewrite the older items; they are out of date by cursor
    assert [s for _, s in statuses()] == ["pending"] * 6
    with factory() as db:
        assert pending_count(db) == 4  # s-1 (claimed, leased), s-4, the new s-2 and s-3
    maintain(factory, settings, due)
    assert statuses() == [
        ("s-1", "pending"),
        ("s-2", "superseded"),
        ("s-3", "superseded"),
        ("s-4", "pending"),
        ("s-2", "pending"),
        ("s-3", "pending"),
    ]
    with factory() as db:
        newest = db.scalars(select(OutboxItem).order_by(OutboxItem.id.desc())).first()
    assert newest is not None and newest.payload is None
    assert newest.cursor == profiles_of(factory)["s-3"].cursor


def test_an_out_of_date_item_is_never_claimed(factory: sessionmaker[Session], db_url: str) -> None:
    """Without maintain in between, the claim itself supersedes an item whose session has a
    newer profile: only the newest profile of each session is sent."""
    seed(factory)
    settings = live_settings(db_url, cpo_url="http://127.0.0.1:9/cpo")
    reoptimise(factory, settings, NOW)
    with transaction(factory) as db:
        row = db.get(ChargingSession, "s-1")
        assert row is not None
        row.kwh = 19.0
    reoptimise(factory, settings, NOW)
    claimed = []
    due = datetime.now(UTC)  # publishing queues the items at the wall-clock time
    while item := claim_due(factory, due, due + timedelta(seconds=20), settings.public_url):
        claimed.append(item)
    published = profiles_of(factory)
    assert sorted(c.session_id for c in claimed) == ["s-1", "s-2", "s-3", "s-4"]
    for c in claimed:
        assert c.payload["charging_profile"] == published[c.session_id].ocpi
    with factory() as db:
        items = list(db.scalars(select(OutboxItem).order_by(OutboxItem.id)))
    superseded = [(i.session_id, i.payload) for i in items if i.status == "superseded"]
    assert superseded == [("s-2", None), ("s-3", None)]  # never composed, never sent


# --------------------------------------------------------------------------------------------
# the background loop


def test_background_loop_reacts_to_an_event(db_url: str) -> None:
    from api.main import create_app

    settings = Settings(
        database_url=db_url,
        background=True,
        debounce_s=0.05,
        reschedule_every_s=3600,
        horizon_steps=16,
    )
    with TestClient(create_app(settings)) as c:
        app: Any = c.app
        factory = app.state.sessionmaker

        def runs() -> int:  # finished runs (a run's status is "publishing" while it writes)
            with factory() as db:
                finished = select(func.count()).where(ScheduleRun.status != publish.PUBLISHING)
                return int(db.scalar(finished) or 0)

        deadline = time.monotonic() + 30
        while runs() < 1 and time.monotonic() < deadline:  # the run at start
            time.sleep(0.02)
        assert runs() == 1 and profiles_of(factory) == {}
        now = datetime.now(UTC)
        seed(factory, now)
        app.state.events.notify("sessions")
        while runs() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runs() == 2
        assert sorted(profiles_of(factory)) == ["s-1", "s-2", "s-3", "s-4"]
        # a burst of events is debounced into one run
        for _ in range(5):
            app.state.events.notify("sessions")
        while runs() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert runs() == 3


@pytest.mark.parametrize(
    ("at", "needle"),
    [
        ("yesterday", "not an ISO-8601 date-time"),
        ("2026-11-25T08:00:00", "needs a UTC offset"),
        ("0001-01-01T00:00:00Z", "must lie in 2000-2100"),
    ],
)
def test_a_re_plan_at_a_bad_time_is_a_422_naming_at(
    client: TestClient, keys: dict[str, str], at: str, needle: str
) -> None:
    r = client.post("/v1/schedule-runs", params={"at": at}, headers=auth(keys["operator"]))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("at: ") and needle in r.json()["detail"]
    latest = client.get("/v1/schedule-runs/latest", headers=auth(keys["operator"]))
    assert latest.status_code == 404  # nothing was run or stored

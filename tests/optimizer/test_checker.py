"""Tests of the independent schedule checker (``optimizer/checker.py``).

Every rule of ``docs/formats.md`` is shown to be detected when broken and to stay silent when the
schedule is right. Scenarios and schedules are tiny dicts built by hand; :func:`make_schedule`
fills the reported numbers (energies, node powers) with plain Python loops, independently of the
checker's numpy code.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from optimizer.checker import Violation, check_schedule, explained

START = datetime.fromisoformat("2026-11-25T08:00:00+01:00")
STEP_S = 900
V = 230.0
KWH_3PH_16A = 16 * 3 * V / 1000 * 0.25  # 2.76 kWh in one 15-minute step


def at(minutes: float, start: datetime = START) -> str:
    """ISO time ``minutes`` after the grid start, with the start's offset."""
    return (start + timedelta(minutes=minutes)).isoformat()


def make_scenario(
    stations: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    nodes: list[dict[str, Any]] | None = None,
    steps: int = 4,
    **extra: Any,
) -> dict[str, Any]:
    """A scenario dict on a 15-minute grid from :data:`START`; one root node ``n`` by default."""
    return {
        "format": "gridcharge.scenario/1",
        "grid": {"start": START.isoformat(), "step_s": STEP_S, "steps": steps},
        "nodes": nodes if nodes is not None else [{"id": "n", "parent": None}],
        "stations": stations,
        "sessions": sessions,
        **extra,
    }


def ses(sid: str, connector: str, arrive: int = 0, leave: int | None = 4, **kw: Any) -> dict:
    """A session arriving at step ``arrive`` and leaving at step ``leave`` (None: no departure)."""
    out: dict[str, Any] = {"id": sid, "connector": connector, "arrival": at(15 * arrive)}
    if leave is not None:
        out["departure"] = at(15 * leave)
    out.update(kw)
    return out


def make_schedule(sc: dict[str, Any], currents: dict[str, list[float]]) -> dict[str, Any]:
    """A schedule whose reported energies and node powers are consistent with ``currents``.

    Written with plain loops and the defaults of docs/formats.md, independently of the checker.
    """
    volt = sc.get("voltage_v", 230.0)
    dt_h = sc["grid"]["step_s"] / 3600
    steps = sc["grid"]["steps"]
    conn: dict[str, tuple[str, int]] = {}
    for st in sc["stations"]:
        cs = st.get("connectors") or [{"id": f"{st['id']}-1"}, {"id": f"{st['id']}-2"}]
        for c in cs:
            conn[c["id"]] = (st["id"], c.get("phases", 3))
    station_node = {st["id"]: st["node"] for st in sc["stations"]}
    parent = {n["id"]: n["parent"] for n in sc["nodes"]}
    power = {i: [0.0] * steps for i in [*parent, *station_node]}
    sessions = {}
    for s in sc["sessions"]:
        i_a = currents.get(s["id"], [0.0] * steps)
        st_id, conn_phases = conn[s["connector"]]
        kw_per_a = min(s.get("phases", 3), conn_phases) * volt / 1000
        e = sum(i * kw_per_a * dt_h for i in i_a)
        need = s.get("energy_kwh")
        sessions[s["id"]] = {
            "current_a": list(i_a),
            "energy_kwh": e,
            "unmet_kwh": None if need is None else max(0.0, need - e),
        }
        above: list[str] = [st_id]
        node: str | None = station_node[st_id]
        while node is not None:
            above.append(node)
            node = parent[node]
        for target in above:
            for t in range(steps):
                power[target][t] += i_a[t] * kw_per_a
    return {
        "format": "gridcharge.schedule/1",
        "status": "feasible",
        "grid": dict(sc["grid"]),
        "sessions": sessions,
        "nodes": {k: {"power_kw": v} for k, v in power.items()},
        "violations": [],
    }


def kinds(found: list[Violation]) -> set[str]:
    return {v.kind for v in found}


def of_kind(found: list[Violation], kind: str) -> list[tuple[str, int | None, float]]:
    return [(v.subject, v.step, round(v.amount, 6)) for v in found if v.kind == kind]


ONE_STATION = [{"id": "st", "node": "n"}]


# --- the seed rule: 16 A alone, 12.5 A each when two cars share a 25 A station --------------


def test_one_car_alone_gets_16_a() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1")])
    assert check_schedule(sc, make_schedule(sc, {"a": [16.0] * 4})) == []


def test_two_cars_at_16_a_break_the_station_limit_on_every_phase() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1"), ses("b", "st-2")])
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0] * 4, "b": [16.0] * 4}))
    assert kinds(found) == {"station_phase_limit"}
    expected = [(f"st:{ph}", t, 7.0) for ph in ("L1", "L2", "L3") for t in range(4)]
    assert of_kind(found, "station_phase_limit") == expected
    assert all(v.unit == "A" for v in found)


def test_two_cars_at_12_5_a_each_are_fine() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1"), ses("b", "st-2")])
    assert check_schedule(sc, make_schedule(sc, {"a": [12.5] * 4, "b": [12.5] * 4})) == []


def test_one_phase_car_on_l2_counts_only_on_l2() -> None:
    stations = [
        {
            "id": "st",
            "node": "n",
            "limit_a": 20,
            "connectors": [{"id": "c1", "phase": "L2"}, {"id": "c2"}],
        }
    ]
    sc = make_scenario(stations, [ses("one", "c1", phases=1), ses("three", "c2")])
    found = check_schedule(sc, make_schedule(sc, {"one": [10.0] * 4, "three": [14.0] * 4}))
    # L2 carries 10 + 14 = 24 A > 20 A; L1 and L3 carry only the 3-phase car's 14 A.
    assert of_kind(found, "station_phase_limit") == [("st:L2", t, 4.0) for t in range(4)]
    assert kinds(found) == {"station_phase_limit"}


def test_one_phase_connector_limits_a_three_phase_car_to_its_phase() -> None:
    stations = [
        {
            "id": "st",
            "node": "n",
            "limit_a": 10,
            "connectors": [{"id": "c1", "phases": 1, "phase": "L3"}],
        }
    ]
    sc = make_scenario(stations, [ses("a", "c1", phases=3)])
    sched = make_schedule(sc, {"a": [12.0] * 4})
    found = check_schedule(sc, sched)
    assert of_kind(found, "station_phase_limit") == [("st:L3", t, 2.0) for t in range(4)]
    # n_s = 1, so the power is 12 A · 230 V, not three times that.
    assert sched["nodes"]["st"]["power_kw"][0] == pytest.approx(12 * 0.23)
    assert kinds(found) == {"station_phase_limit"}
    sched["nodes"]["st"]["power_kw"] = [12 * 3 * 0.23] * 4
    assert ("st", 0, round(2 * 12 * 0.23, 6)) in of_kind(
        check_schedule(sc, sched), "report_mismatch"
    )


# --- per-session current rules --------------------------------------------------------------


def test_connector_limit() -> None:
    stations = [{"id": "st", "node": "n", "connectors": [{"id": "c1", "limit_a": 10}]}]
    sc = make_scenario(stations, [ses("a", "c1")])
    assert check_schedule(sc, make_schedule(sc, {"a": [10.0] * 4})) == []
    found = check_schedule(sc, make_schedule(sc, {"a": [10.0, 11.5, 10.0, 10.0]}))
    assert of_kind(found, "connector_limit") == [("a", 1, 1.5)]
    assert kinds(found) == {"connector_limit"}


def test_default_connector_limit_is_16_a() -> None:
    stations = [{"id": "st", "node": "n", "limit_a": 40}]
    sc = make_scenario(stations, [ses("a", "st-1")])
    found = check_schedule(sc, make_schedule(sc, {"a": [17.0] * 4}))
    assert of_kind(found, "connector_limit") == [("a", t, 1.0) for t in range(4)]


def test_negative_current() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=2 * KWH_3PH_16A)])
    ok = make_schedule(sc, {"a": [16.0, 16.0, 0.0, 0.0]})
    assert check_schedule(sc, ok) == []
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0, 16.0, 16.0, -16.0]}))
    assert of_kind(found, "negative_current") == [("a", 3, 16.0)]


def test_not_present() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", arrive=1, leave=3)])
    assert check_schedule(sc, make_schedule(sc, {"a": [0.0, 16.0, 16.0, 0.0]})) == []
    found = check_schedule(sc, make_schedule(sc, {"a": [5.0, 16.0, 16.0, 2.0]}))
    assert of_kind(found, "not_present") == [("a", 0, 5.0), ("a", 3, 2.0)]
    assert kinds(found) == {"not_present"}


def test_length_rules() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1"), ses("b", "st-2")])
    sched = make_schedule(sc, {"a": [12.5] * 4, "b": [12.5] * 4})
    assert check_schedule(sc, sched) == []
    sched["sessions"]["a"]["current_a"] = [12.5] * 3
    del sched["sessions"]["b"]
    sched["sessions"]["ghost"] = {"current_a": [0.0] * 4}
    found = check_schedule(sc, sched)
    assert of_kind(found, "length") == [("a", None, 1.0), ("b", None, 4.0), ("ghost", None, 4.0)]


def test_non_number_current_is_a_length_violation() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1")])
    sched = make_schedule(sc, {"a": [16.0] * 4})
    sched["sessions"]["a"]["current_a"][2] = None
    assert ("a", None, 1.0) in of_kind(check_schedule(sc, sched), "length")


def test_schedule_grid_must_match() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1")])
    sched = make_schedule(sc, {"a": [16.0] * 4})
    sched["grid"] = {"start": "2026-11-25T07:00:00Z", "step_s": 900, "steps": 4}  # same instant
    assert check_schedule(sc, sched) == []
    sched["grid"] = {"start": "2026-11-25T08:00:00Z", "step_s": 900, "steps": 4}
    assert of_kind(check_schedule(sc, sched), "length") == [("grid", None, 0.0)]


# --- node and DSO limits --------------------------------------------------------------------

TREE = [
    {"id": "dso", "parent": None},
    {"id": "feeder", "parent": "dso"},
    {"id": "cable", "parent": "feeder"},
    {"id": "other", "parent": "dso"},
]
TREE_STATIONS = [
    {"id": "sa", "node": "cable"},
    {"id": "sb", "node": "feeder"},
    {"id": "sc", "node": "other"},
]


def tree_sessions(*names: str) -> list[dict[str, Any]]:
    """Sessions "a" (under dso/feeder/cable), "b" (dso/feeder) and "c" (dso/other)."""
    return [ses(n, f"s{n}-1") for n in names]


P16 = 16 * 3 * V / 1000  # 11.04 kW


def test_dso_cap_on_parent_counts_nested_subclusters() -> None:
    cap = [2 * P16 + 1.0] * 4
    profiles = [{"node": "dso", "cap_kw": cap}]
    sc2 = make_scenario(TREE_STATIONS, tree_sessions("a", "b"), nodes=TREE, dso_profiles=profiles)
    two = make_schedule(sc2, {"a": [16.0] * 4, "b": [16.0] * 4})
    assert check_schedule(sc2, two) == []
    # The session under dso/feeder/cable counts at the root: three cars exceed the cap.
    sc3 = make_scenario(
        TREE_STATIONS, tree_sessions("a", "b", "c"), nodes=TREE, dso_profiles=profiles
    )
    three = make_schedule(sc3, {"a": [16.0] * 4, "b": [16.0] * 4, "c": [16.0] * 4})
    found = check_schedule(sc3, three)
    assert of_kind(found, "dso_cap") == [("dso", t, round(P16 - 1.0, 6)) for t in range(4)]
    assert {v.unit for v in found} == {"kW"}
    assert kinds(found) == {"dso_cap"}


def test_dso_cap_on_deep_node_is_transitive() -> None:
    profiles = [{"node": "feeder", "cap_kw": [P16 + 0.5] * 4, "target_kw": [0.0] * 4}]
    # Only "c" (under "other") charges: the feeder is empty.
    sc_c = make_scenario(TREE_STATIONS, tree_sessions("c"), nodes=TREE, dso_profiles=profiles)
    assert check_schedule(sc_c, make_schedule(sc_c, {"c": [16.0] * 4})) == []
    # "a" is two levels below the feeder, "b" one: both count.
    sc = make_scenario(TREE_STATIONS, tree_sessions("a", "b"), nodes=TREE, dso_profiles=profiles)
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0] * 4, "b": [8.0] * 4}))
    amount = round(P16 * 1.5 - P16 - 0.5, 6)
    assert of_kind(found, "dso_cap") == [("feeder", t, amount) for t in range(4)]
    assert kinds(found) == {"dso_cap"}


def test_node_power_limit_with_per_step_list() -> None:
    nodes = [dict(n) for n in TREE]
    nodes[1]["limit_kw"] = [100.0, 100.0, 5.0, 100.0]
    sc = make_scenario(TREE_STATIONS, tree_sessions("a", "c"), nodes=nodes)
    currents = {"a": [8.0] * 4, "c": [16.0] * 4}
    found = check_schedule(sc, make_schedule(sc, currents))
    # "a" (8 A · 3 · 230 V = 5.52 kW) is under the feeder, "c" (11.04 kW) is not.
    assert of_kind(found, "node_power_limit") == [("feeder", 2, 0.52)]
    assert kinds(found) == {"node_power_limit"}
    nodes[1]["limit_kw"] = [5.6, 5.6, 5.6, 5.6]
    assert check_schedule(sc, make_schedule(sc, currents)) == []


def test_node_phase_limit_is_per_phase_and_transitive() -> None:
    nodes = [dict(n) for n in TREE]
    nodes[1]["limit_a"] = 20
    stations = [
        {"id": "sa", "node": "cable", "connectors": [{"id": "a1", "phase": "L2"}]},
        {"id": "sb", "node": "feeder", "connectors": [{"id": "b1", "phase": "L2"}]},
        {"id": "sc", "node": "other", "connectors": [{"id": "c1", "phase": "L2"}]},
    ]
    sessions = [
        ses("a", "a1", phases=1),
        ses("b", "b1", phases=1),
        ses("c", "c1", phases=1),
    ]
    sc = make_scenario(stations, sessions, nodes=nodes)
    fine = make_schedule(sc, {"a": [10.0] * 4, "b": [10.0] * 4, "c": [16.0] * 4})
    assert check_schedule(sc, fine) == []
    # "c" (under "other") does not count for the feeder; "a" (under the cable) does.
    found = check_schedule(
        sc, make_schedule(sc, {"a": [12.0] * 4, "b": [10.0] * 4, "c": [16.0] * 4})
    )
    assert of_kind(found, "node_phase_limit") == [("feeder:L2", t, 2.0) for t in range(4)]
    assert kinds(found) == {"node_phase_limit"}


def test_station_limit_per_step_list() -> None:
    stations = [{"id": "st", "node": "n", "limit_a": [25, 10, 25, 25]}]
    sc = make_scenario(stations, [ses("a", "st-1")])
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0] * 4}))
    assert of_kind(found, "station_phase_limit") == [
        (f"st:{ph}", 1, 6.0) for ph in ("L1", "L2", "L3")
    ]
    ok = make_schedule(sc, {"a": [16.0, 10.0, 16.0, 16.0]})
    assert check_schedule(sc, ok) == []


# --- energy and the minimum current ---------------------------------------------------------


def test_energy_exceeded() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=5.0)])
    over = make_schedule(sc, {"a": [16.0, 16.0, 0.0, 0.0]})  # 5.52 kWh
    found = check_schedule(sc, over)
    assert of_kind(found, "energy_exceeded") == [("a", None, 0.52)]
    assert found[0].unit == "kWh"
    # Exactly the need: 16 A then the rest (2.24 kWh = 16·2.24/2.76 A) in the second step.
    exact = make_schedule(sc, {"a": [16.0, 16.0 * (5.0 - KWH_3PH_16A) / KWH_3PH_16A, 0.0, 0.0]})
    assert check_schedule(sc, exact) == []


def test_min_current_dip_while_not_full_is_flagged() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=10.0)])
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0, 5.0, 16.0, 8.0]}))
    assert of_kind(found, "min_current") == [("a", 1, 3.0)]
    assert kinds(found) == {"min_current"}
    assert check_schedule(sc, make_schedule(sc, {"a": [16.0, 8.0, 16.0, 8.0]})) == []


def test_min_current_allows_the_step_in_which_the_car_becomes_full() -> None:
    need = KWH_3PH_16A + 3 * 3 * V / 1000 * 0.25  # 16 A then 3 A
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=need)])
    assert check_schedule(sc, make_schedule(sc, {"a": [16.0, 3.0, 0.0, 0.0]})) == []
    # The same 3 A while the car is not full in that step is a dip.
    sc2 = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=need + 1.0)])
    found = check_schedule(sc2, make_schedule(sc2, {"a": [16.0, 3.0, 0.0, 0.0]}))
    assert of_kind(found, "min_current") == [("a", 1, 5.0), ("a", 2, 8.0), ("a", 3, 8.0)]


def test_min_current_uses_station_minimum() -> None:
    stations = [{"id": "st", "node": "n", "min_current_a": 6}]
    sc = make_scenario(stations, [ses("a", "st-1")])
    assert check_schedule(sc, make_schedule(sc, {"a": [6.0] * 4})) == []
    found = check_schedule(sc, make_schedule(sc, {"a": [6.0, 5.5, 6.0, 6.0]}))
    assert of_kind(found, "min_current") == [("a", 1, 0.5)]


def test_no_need_session_must_always_get_the_minimum_while_present() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", arrive=1, leave=4)])
    found = check_schedule(sc, make_schedule(sc, {"a": [0.0, 8.0, 0.0, 8.0]}))
    assert of_kind(found, "min_current") == [("a", 2, 8.0)]
    # Not present at step 0, so 0 A there is right.
    assert check_schedule(sc, make_schedule(sc, {"a": [0.0, 8.0, 8.0, 8.0]})) == []


def test_zero_need_session_may_stay_at_zero() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=0.0)])
    assert check_schedule(sc, make_schedule(sc, {"a": [0.0] * 4})) == []


def test_pause_consent_allows_zero_but_not_a_low_current() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=20.0, pause_consent=True)])
    assert check_schedule(sc, make_schedule(sc, {"a": [16.0, 0.0, 16.0, 0.0]})) == []
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0, 3.0, 16.0, 0.0]}))
    assert of_kind(found, "pause_current") == [("a", 1, 5.0)]
    assert kinds(found) == {"pause_current"}


def test_pause_consent_low_current_in_the_completing_step_is_fine() -> None:
    need = KWH_3PH_16A + 3 * 3 * V / 1000 * 0.25
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=need, pause_consent=True)])
    assert check_schedule(sc, make_schedule(sc, {"a": [0.0, 16.0, 3.0, 0.0]})) == []


def test_without_consent_zero_is_a_pause() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=20.0)])
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0, 0.0, 16.0, 0.0]}))
    assert of_kind(found, "min_current") == [("a", 1, 8.0), ("a", 3, 8.0)]


# --- opt-out --------------------------------------------------------------------------------


def test_opt_out_gets_the_uncontrolled_share() -> None:
    sc = make_scenario(
        ONE_STATION, [ses("o", "st-1", opt_out=True), ses("b", "st-2", arrive=2, leave=4)]
    )
    # Alone at steps 0-1: 16 A; sharing at steps 2-3: min(16, 25/2) = 12.5 A.
    ok = make_schedule(sc, {"o": [16.0, 16.0, 12.5, 12.5], "b": [0.0, 0.0, 12.5, 12.5]})
    assert check_schedule(sc, ok) == []
    low = make_schedule(sc, {"o": [12.5, 16.0, 10.0, 12.5], "b": [0.0, 0.0, 12.5, 12.5]})
    found = check_schedule(sc, low)
    assert of_kind(found, "opt_out") == [("o", 0, 3.5), ("o", 2, 2.5)]
    assert kinds(found) == {"opt_out"}


def test_opt_out_share_counts_only_the_phases_it_draws_on() -> None:
    connectors = [{"id": "c1", "phase": "L2"}, {"id": "c2"}, {"id": "c3"}]
    stations = [{"id": "st", "node": "n", "connectors": connectors}]
    # Two 1-phase cars share L1; the 1-phase opt-out car on L2 is alone on its phase: 16 A.
    sessions = [
        ses("o", "c1", phases=1, opt_out=True),
        ses("b", "c2", phases=1),
        ses("b2", "c3", phases=1),
    ]
    sc = make_scenario(stations, sessions)
    others = {"b": [12.5] * 4, "b2": [12.5] * 4}
    assert check_schedule(sc, make_schedule(sc, {"o": [16.0] * 4, **others})) == []
    found = check_schedule(sc, make_schedule(sc, {"o": [12.5] * 4, **others}))
    assert of_kind(found, "opt_out") == [("o", t, 3.5) for t in range(4)]
    # A 3-phase neighbour does share L2: the share drops to 12.5 A.
    sc3 = make_scenario(stations, [ses("o", "c1", phases=1, opt_out=True), ses("b", "c2")])
    assert check_schedule(sc3, make_schedule(sc3, {"o": [12.5] * 4, "b": [12.5] * 4})) == []
    found3 = check_schedule(sc3, make_schedule(sc3, {"o": [10.0] * 4, "b": [12.5] * 4}))
    assert of_kind(found3, "opt_out") == [("o", t, 2.5) for t in range(4)]


def test_opt_out_may_stop_when_full() -> None:
    need = KWH_3PH_16A + 0.5
    sc = make_scenario(ONE_STATION, [ses("o", "st-1", energy_kwh=need, opt_out=True)])
    last = 16.0 * 0.5 / KWH_3PH_16A
    assert check_schedule(sc, make_schedule(sc, {"o": [16.0, last, 0.0, 0.0]})) == []


# --- report_mismatch ------------------------------------------------------------------------


def test_report_mismatch_of_session_energy_and_unmet() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=10.0), ses("b", "st-2")])
    sched = make_schedule(sc, {"a": [12.5] * 4, "b": [12.5] * 4})
    assert sched["sessions"]["a"]["energy_kwh"] == pytest.approx(4 * 12.5 * 0.69 * 0.25)
    assert check_schedule(sc, sched) == []
    sched["sessions"]["a"]["energy_kwh"] += 0.25
    sched["sessions"]["a"]["unmet_kwh"] = None  # a has a need, so unmet is a number
    sched["sessions"]["b"]["unmet_kwh"] = 0.0  # b has none, so unmet must be null
    found = check_schedule(sc, sched)
    assert of_kind(found, "report_mismatch") == [
        ("a", None, 0.25),
        ("a:unmet_kwh", None, round(10.0 - 8.625, 6)),
        ("b:unmet_kwh", None, 0.0),
    ]


def test_report_mismatch_of_node_power() -> None:
    sc = make_scenario(TREE_STATIONS, tree_sessions("a"), nodes=TREE)
    sched = make_schedule(sc, {"a": [16.0] * 4})
    assert sched["nodes"]["dso"]["power_kw"] == pytest.approx([P16] * 4)
    assert check_schedule(sc, sched) == []
    sched["nodes"]["feeder"]["power_kw"][2] = 0.0
    del sched["nodes"]["sb"]
    found = check_schedule(sc, sched)
    assert of_kind(found, "report_mismatch") == [("feeder", 2, round(P16, 6)), ("sb", None, 0.0)]
    assert all(v.unit == "kW" for v in found)


def test_report_within_tolerance_is_fine() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1")])
    sched = make_schedule(sc, {"a": [16.0] * 4})
    sched["sessions"]["a"]["energy_kwh"] += 5e-4
    sched["nodes"]["st"]["power_kw"][0] -= 5e-4
    assert check_schedule(sc, sched) == []


# --- defaults, the grid and time zones ------------------------------------------------------


def test_voltage_default_and_override() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1")])
    sched = make_schedule(sc, {"a": [10.0] * 4})
    sc_400 = make_scenario(ONE_STATION, [ses("a", "st-1")], voltage_v=400)
    # The 230 V report is wrong at 400 V: 10 A · 3 · 170 V = 5.1 kW per step.
    found = check_schedule(sc_400, sched)
    assert ("st", 0, 5.1) in of_kind(found, "report_mismatch")
    assert check_schedule(sc, sched) == []


def test_rounding_of_arrival_and_departure() -> None:
    session = {"id": "a", "connector": "st-1", "arrival": at(5), "departure": at(130)}
    sc = make_scenario(ONE_STATION, [session], steps=10)
    # 08:05 rounds up to 08:15 (step 1); 10:10 rounds down to 10:00 (steps 1..7).
    ok = make_schedule(sc, {"a": [0.0] + [8.0] * 7 + [0.0, 0.0]})
    assert check_schedule(sc, ok) == []
    bad = make_schedule(sc, {"a": [8.0] * 9 + [0.0]})
    assert of_kind(check_schedule(sc, bad), "not_present") == [("a", 0, 8.0), ("a", 8, 8.0)]


def test_stay_shorter_than_a_step_is_present_nowhere() -> None:
    session = {"id": "a", "connector": "st-1", "arrival": at(5), "departure": at(25)}
    sc = make_scenario(ONE_STATION, [session])
    assert check_schedule(sc, make_schedule(sc, {"a": [0.0] * 4})) == []
    assert of_kind(
        check_schedule(sc, make_schedule(sc, {"a": [0.0, 8.0, 0.0, 0.0]})), "not_present"
    )


def test_presence_is_clipped_to_the_grid() -> None:
    session = {"id": "a", "connector": "st-1", "arrival": at(-60), "departure": at(600)}
    sc = make_scenario(ONE_STATION, [session])
    assert check_schedule(sc, make_schedule(sc, {"a": [8.0] * 4})) == []
    found = check_schedule(sc, make_schedule(sc, {"a": [8.0, 0.0, 8.0, 8.0]}))
    assert of_kind(found, "min_current") == [("a", 1, 8.0)]


def test_default_stay_is_four_hours() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", arrive=0, leave=None)], steps=20)
    ok = make_schedule(sc, {"a": [8.0] * 16 + [0.0] * 4})
    assert check_schedule(sc, ok) == []
    late = make_schedule(sc, {"a": [8.0] * 17 + [0.0] * 3})
    assert of_kind(check_schedule(sc, late), "not_present") == [("a", 16, 8.0)]


def test_z_and_plus_one_offsets_give_the_same_result() -> None:
    utc = START.astimezone(UTC)
    z = utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    def build(start: str, arrival: str) -> dict[str, Any]:
        sc = make_scenario(ONE_STATION, [{"id": "a", "connector": "st-1", "arrival": arrival}])
        sc["grid"]["start"] = start
        return sc

    local = build(START.isoformat(), at(10))
    zulu = build(z, (utc + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert local["grid"]["start"].endswith("+01:00") and zulu["grid"]["start"].endswith("Z")
    currents = {"a": [4.0, 4.0, 8.0, 8.0]}
    found_local = check_schedule(local, make_schedule(local, currents))
    found_zulu = check_schedule(zulu, make_schedule(zulu, currents))
    assert found_local == found_zulu
    assert of_kind(found_local, "not_present") == [("a", 0, 4.0)]
    assert of_kind(found_local, "min_current") == [("a", 1, 4.0)]


def test_time_without_offset_is_refused() -> None:
    sc = make_scenario(
        ONE_STATION, [{"id": "a", "connector": "st-1", "arrival": "2026-11-25T08:00"}]
    )
    with pytest.raises(ValueError, match="offset"):
        check_schedule(sc, make_schedule(sc, {}))


def test_node_cycle_is_refused() -> None:
    nodes = [{"id": "x", "parent": "y"}, {"id": "y", "parent": "x"}]
    sc = make_scenario([{"id": "st", "node": "x"}], [], nodes=nodes)
    with pytest.raises(ValueError, match="cycle"):
        check_schedule(sc, {"sessions": {}, "nodes": {}})


# --- result form and explained() ------------------------------------------------------------


def test_to_dict_uses_node_or_session_key() -> None:
    station = Violation("station_phase_limit", "st:L1", 3, 7.0, "A")
    assert station.to_dict() == {
        "kind": "station_phase_limit",
        "node": "st:L1",
        "step": 3,
        "amount": 7.0,
        "unit": "A",
    }
    assert Violation("min_current", "a", 1, 3.0, "A").to_dict()["session"] == "a"
    assert "node" in Violation("report_mismatch", "n", 0, 1.0, "kW").to_dict()
    assert "session" in Violation("report_mismatch", "a", None, 1.0, "kWh").to_dict()


def test_result_is_sorted_by_kind_subject_step() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1"), ses("b", "st-2", arrive=1)])
    found = check_schedule(sc, make_schedule(sc, {"a": [20.0, 16.0, 16.0, 5.0], "b": [9.0] * 4}))
    keys = [(v.kind, v.subject, -1 if v.step is None else v.step) for v in found]
    assert keys == sorted(keys)
    assert {"connector_limit", "min_current", "not_present", "station_phase_limit"} <= kinds(found)


def test_explained_accepts_declared_limit_violations_only() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1"), ses("b", "st-2")])
    sched = make_schedule(sc, {"a": [16.0] * 4, "b": [16.0] * 4})
    found = check_schedule(sc, sched)
    assert len(found) == 12
    declared = [v.to_dict() for v in found]
    assert explained(found, declared) == []
    # An understated amount, a wrong step or a missing entry does not explain.
    declared[0] = {**declared[0], "amount": 6.0}
    declared[1] = {**declared[1], "step": 99}
    del declared[2]
    assert explained(found, declared) == found[:3]


def test_explained_never_excuses_non_limit_kinds() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", energy_kwh=1.0)])
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0, 0.0, 0.0, -1.0]}))
    assert {"energy_exceeded", "negative_current"} <= kinds(found)
    declared = [v.to_dict() for v in found]
    assert explained(found, declared) == found


def test_explained_with_infeasible_minimums() -> None:
    stations = [{"id": "st", "node": "n", "limit_a": 12}]
    sc = make_scenario(stations, [ses("a", "st-1"), ses("b", "st-2")])
    sched = make_schedule(sc, {"a": [8.0] * 4, "b": [8.0] * 4})
    found = check_schedule(sc, sched)
    assert of_kind(found, "station_phase_limit")[0] == ("st:L1", 0, 4.0)
    sched["violations"] = [
        {"kind": "station_phase_limit", "node": f"st:{ph}", "step": t, "amount": 4.0, "unit": "A"}
        for ph in ("L1", "L2", "L3")
        for t in range(4)
    ]
    assert explained(found, sched["violations"]) == []
    assert explained(found, []) == found


# --- the vectorised grouping against plain loops --------------------------------------------


def test_random_network_sums_match_plain_loops() -> None:
    rng = random.Random(7)
    steps = 6
    nodes = [{"id": "root", "parent": None}]
    for i in range(30):
        nodes.append({"id": f"n{i}", "parent": rng.choice(nodes)["id"]})
    stations, sessions, currents = [], [], {}
    for k in range(60):
        limit = rng.choice([25.0, 30.0, 40.0])
        stations.append(
            {
                "id": f"s{k}",
                "node": rng.choice(nodes)["id"],
                "limit_a": limit,
                "connectors": [
                    {"id": f"s{k}-1", "phase": rng.choice(["L1", "L2", "L3"])},
                    {"id": f"s{k}-2", "phase": rng.choice(["L1", "L2", "L3"])},
                ],
            }
        )
        for j in (1, 2):
            sid = f"s{k}-{j}x"
            sessions.append(ses(sid, f"s{k}-{j}", arrive=0, leave=steps, phases=rng.choice([1, 3])))
            currents[sid] = [rng.choice([8.0, 12.0, 16.0]) for _ in range(steps)]
    sc = make_scenario(stations, sessions, nodes=nodes, steps=steps)
    sched = make_schedule(sc, currents)
    found = check_schedule(sc, sched)

    expected = set()
    by_conn = {s["connector"]: s for s in sessions}
    for st in stations:
        for ph in ("L1", "L2", "L3"):
            for t in range(steps):
                total = 0.0
                for c in st["connectors"]:
                    s = by_conn[c["id"]]
                    if s.get("phases", 3) == 3 or c["phase"] == ph:
                        total += currents[s["id"]][t]
                if total > st["limit_a"] + 1e-3:
                    expected.add((f"{st['id']}:{ph}", t, round(total - st["limit_a"], 6)))
    assert expected, "the random case should break some station limits"
    assert set(of_kind(found, "station_phase_limit")) == expected
    assert kinds(found) == {"station_phase_limit"}  # the reported powers all match

    # The root carries every session.
    root_kw = sum(currents[s["id"]][0] * s.get("phases", 3) * V / 1000 for s in sessions)
    assert math.isclose(sched["nodes"]["root"]["power_kw"][0], root_kw)

    # A single wrong entry deep in the tree is caught, and only that one.
    parent = {n["id"]: n["parent"] for n in nodes}

    def depth(n: str | None) -> int:
        return 0 if n is None else 1 + depth(parent[n])

    deep = max(parent, key=depth)
    sched["nodes"][deep]["power_kw"][3] += 1.0
    assert of_kind(check_schedule(sc, sched), "report_mismatch") == [(deep, 3, 1.0)]

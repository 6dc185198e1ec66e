"""A per-session current cap (``session.limit_a``): parsed, honoured by every method, checked."""

from __future__ import annotations

from typing import Any

import pytest
from test_checker import make_scenario, make_schedule, ses

from optimizer.checker import check_schedule, explained
from optimizer.errors import ScenarioError
from optimizer.network import compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network

ONE_STATION = [{"id": "st", "node": "n"}]
CAP = [8.0, 8.0, 16.0, 16.0]  # curtailed to the minimum for the first two steps


def capped(**kw: Any) -> dict[str, Any]:
    return make_scenario(ONE_STATION, [ses("a", "st-1", limit_a=CAP, **kw)])


def test_checker_finds_current_above_the_session_cap() -> None:
    sc = capped()
    found = check_schedule(sc, make_schedule(sc, {"a": [16.0, 8.0, 16.0, 16.0]}))
    assert [(v.kind, v.subject, v.step, v.amount) for v in found] == [
        ("session_limit", "a", 0, 8.0)
    ]
    assert check_schedule(sc, make_schedule(sc, {"a": [8.0, 8.0, 16.0, 16.0]})) == []


def test_scalar_cap_applies_to_every_step() -> None:
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", limit_a=10.0)])
    found = check_schedule(sc, make_schedule(sc, {"a": [10.0, 10.0, 10.0, 11.0]}))
    assert [(v.kind, v.step) for v in found] == [("session_limit", 3)]


@pytest.mark.parametrize("method", ["greedy", "lp"])
def test_methods_honour_the_cap(method: str) -> None:
    sc = capped()
    net = compile_network(parse_scenario(sc))
    sch = solve_network(net, method)
    cur = sch["sessions"]["a"]["current_a"]
    assert cur[:2] == pytest.approx([8.0, 8.0], abs=1e-3)
    assert cur[2:] == pytest.approx([16.0, 16.0], abs=1e-3)
    assert explained(check_schedule(sc, sch), sch["violations"]) == []


@pytest.mark.parametrize("method", ["greedy", "lp"])
def test_need_moves_after_the_curtailment(method: str) -> None:
    # 6 kWh: 2 steps at 8 A = 2 × 1.38 kWh, the rest (3.24 kWh) after the curtailment
    sc = capped(energy_kwh=6.0)
    sch = solve_network(compile_network(parse_scenario(sc)), method)
    assert sch["sessions"]["a"]["energy_kwh"] == pytest.approx(6.0, abs=1e-3)
    assert max(sch["sessions"]["a"]["current_a"][:2]) <= 8.0 + 1e-6
    assert explained(check_schedule(sc, sch), sch["violations"]) == []


def test_cap_below_the_station_minimum_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"sessions\[0\]\.limit_a"):
        parse_scenario(make_scenario(ONE_STATION, [ses("a", "st-1", limit_a=[6.0, 8, 8, 8])]))


def test_cap_list_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"sessions\[0\]\.limit_a"):
        parse_scenario(make_scenario(ONE_STATION, [ses("a", "st-1", limit_a=[8.0, 8.0])]))


def test_schedule_reports_its_own_cap_breach() -> None:
    # opt-out session whose share (16 A) is above the cap: the cap wins, no violation
    sc = make_scenario(ONE_STATION, [ses("a", "st-1", limit_a=CAP, opt_out=True)])
    sch = solve_network(compile_network(parse_scenario(sc)), "greedy")
    assert sch["violations"] == []
    assert check_schedule(sc, sch) == []

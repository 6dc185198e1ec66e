"""Scenario validation: every refusal names the field and the value."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from optimizer.errors import (
    BadLength,
    BadTime,
    NodeCycle,
    OverlappingSessions,
    ScenarioError,
    UnknownReference,
)
from optimizer.network import compile_network
from optimizer.scenario import parse_scenario


def base() -> dict[str, Any]:
    return {
        "format": "gridcharge.scenario/1",
        "grid": {"start": "2026-11-25T00:00:00+01:00", "step_s": 900, "steps": 8},
        "nodes": [{"id": "r", "parent": None}, {"id": "sc", "parent": "r", "limit_kw": 30}],
        "stations": [{"id": "st", "node": "sc"}],
        "sessions": [
            {
                "id": "a",
                "connector": "st-1",
                "arrival": "2026-11-25T00:05:00+01:00",
                "departure": "2026-11-25T01:10:00+01:00",
                "energy_kwh": 5,
            }
        ],
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    sc = copy.deepcopy(base())
    target: Any = sc
    parts = path.split(".")
    for p in parts[:-1]:
        target = target[int(p)] if p.isdigit() else target[p]
    last = parts[-1]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return sc


def test_base_is_valid_and_defaults_apply() -> None:
    sc = parse_scenario(base())
    net = compile_network(sc)
    assert sc.voltage_v == 230
    assert [c.id for c in sc.stations[0].connector_list()] == ["st-1", "st-2"]
    assert net.max_a[0] == 16 and net.min_a[0] == 8 and net.station_limit_a[0, 0] == 25
    # arrival 00:05 rounds up to 00:15 (step 1); departure 01:10 rounds down to 01:00 (step 4)
    assert (net.first[0], net.end[0]) == (1, 4)


@pytest.mark.parametrize(
    ("path", "value", "error", "field"),
    [
        ("sessions.0.connector", "nope", UnknownReference, "sessions[0].connector"),
        ("sessions.0.departure", "2026-11-25T00:00:00+01:00", BadTime, "sessions[0].departure"),
        ("sessions.0.energy_kwh", -5, ScenarioError, "sessions[0].energy_kwh"),
        ("sessions.0.arrival", "2026-11-25T00:05:00", BadTime, "sessions[0].arrival"),
        ("sessions.0.phases", 2, ScenarioError, "sessions[0].phases"),
        ("nodes.0.parent", "sc", NodeCycle, "nodes[0].parent"),
        ("nodes.1.limit_kw", [1, 2, 3], BadLength, "nodes[1].limit_kw"),
        ("nodes.1.limit_kw", -1, ScenarioError, "nodes[1].limit_kw"),
        ("stations.0.node", "ghost", UnknownReference, "stations[0].node"),
        ("stations.0.min_current_a", 3, ScenarioError, "stations[0].min_current_a"),
        ("prices_eur_per_mwh", [1.0], BadLength, "prices_eur_per_mwh"),
        ("format", "gridcharge.scenario/9", ScenarioError, "format"),
        ("grid.step_s", 0, ScenarioError, "grid.step_s"),
    ],
)
def test_bad_input_names_field_and_value(
    path: str, value: Any, error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as exc:
        parse_scenario(with_change(path, value))
    message = str(exc.value)
    assert message.startswith(field), message
    assert "\n" not in message


def test_overlapping_sessions_on_one_connector() -> None:
    sc = base()
    sc["sessions"].append(
        {
            "id": "b",
            "connector": "st-1",
            "arrival": "2026-11-25T01:00:00+01:00",
            "departure": "2026-11-25T02:00:00+01:00",
        }
    )
    with pytest.raises(OverlappingSessions, match=r"sessions\[1\].arrival.*overlaps session 'a'"):
        parse_scenario(sc)
    # back to back is fine
    sc["sessions"][1]["arrival"] = "2026-11-25T01:10:00+01:00"
    parse_scenario(sc)


def test_dso_profile_wrong_length_and_unknown_node() -> None:
    sc = base()
    sc["dso_profiles"] = [{"node": "r", "cap_kw": [1.0] * 7}]
    with pytest.raises(BadLength, match=r"dso_profiles\[0\].cap_kw"):
        parse_scenario(sc)
    sc["dso_profiles"] = [{"node": "x", "cap_kw": [1.0] * 8}]
    with pytest.raises(UnknownReference, match=r"dso_profiles\[0\].node"):
        parse_scenario(sc)


def test_missing_departure_uses_default_stay() -> None:
    sc = base()
    del sc["sessions"][0]["departure"]
    net = compile_network(parse_scenario(sc))
    # 00:05 + 4 h = 04:05 -> present until 04:00, which is past the 8-step grid
    assert net.end[0] == 8


def test_seed_rule_emerges_from_limits() -> None:
    """16 A alone, 12.5 A each when both connectors charge: from the limits, not a rule."""
    from optimizer.solve import solve_network

    sc = base()
    sc["sessions"] = [
        {
            "id": "a",
            "connector": "st-1",
            "arrival": "2026-11-25T00:00:00+01:00",
            "departure": "2026-11-25T02:00:00+01:00",
        },
        {
            "id": "b",
            "connector": "st-2",
            "arrival": "2026-11-25T01:00:00+01:00",
            "departure": "2026-11-25T02:00:00+01:00",
        },
    ]
    sc["nodes"][1].pop("limit_kw")
    net = compile_network(parse_scenario(sc))
    cur = solve_network(net, "uncontrolled")["sessions"]
    assert cur["a"]["current_a"][:4] == pytest.approx([16.0] * 4, abs=1e-3)
    assert cur["a"]["current_a"][4:8] == pytest.approx([12.5] * 4, abs=1e-3)
    assert cur["b"]["current_a"][4:8] == pytest.approx([12.5] * 4, abs=1e-3)
    for method in ("lp", "greedy"):
        # steered: the split may differ, but alone it is 16 A and together exactly 25 A
        cur = solve_network(net, method)["sessions"]
        assert cur["a"]["current_a"][:4] == pytest.approx([16.0] * 4, abs=1e-3)
        both = [x + y for x, y in zip(cur["a"]["current_a"], cur["b"]["current_a"], strict=True)]
        assert both[4:8] == pytest.approx([25.0] * 4, abs=1e-3)
        assert min(cur["b"]["current_a"][4:8]) >= 8.0 - 1e-6

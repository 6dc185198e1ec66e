"""Decomposition into independent parts: same optimum as the monolithic LP, region independence,
and the fallback on a tiny budget."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from optimizer import decompose
from optimizer.checker import check_schedule, explained
from optimizer.decompose import PartitionedTwin, session_components
from optimizer.greedy import greedy_currents_a
from optimizer.lp_highs import HighsTwin
from optimizer.network import compile_network
from optimizer.problem import build_problem
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.random_net import random_regions


@pytest.fixture
def no_packing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every component its own part, however small."""
    monkeypatch.setattr(decompose, "MIN_PART_VARS", 0)


def checked(raw: dict[str, Any], sch: dict[str, Any]) -> dict[str, Any]:
    found = check_schedule(raw, sch)
    assert explained(found, sch["violations"]) == [], found
    return sch


@pytest.mark.parametrize("seed", range(6))
def test_parts_reach_the_monolithic_optimum(seed: int, no_packing: None) -> None:
    raw = random_regions(seed, regions=3, stations=5, steps=16)
    net = compile_network(parse_scenario(raw))
    problem = build_problem(net, anchor_a=greedy_currents_a(net))
    whole = HighsTwin(problem).solve()
    parts = PartitionedTwin(problem, workers=2)
    split = parts.solve()
    parts.close()
    assert parts.n_parts >= 3  # at least one per region
    assert split.status == whole.status == "optimal"
    assert split.objective == pytest.approx(whole.objective, rel=1e-7, abs=1e-6)
    # every column and row sits in exactly one part
    assert sorted(np.concatenate([pt.var for pt in parts.parts])) == list(range(problem.n_vars))
    rows = np.concatenate([pt.limit_rows for pt in parts.parts])
    assert sorted(rows) == list(range(problem.limit_rhs.size))


def test_components_follow_the_regions() -> None:
    raw = random_regions(3, regions=4, stations=4, steps=12)
    net = compile_network(parse_scenario(raw))
    problem = build_problem(net)
    labels = session_components(problem)
    region = np.array([sid.split(".")[0] for sid in net.session_ids])
    for r in np.unique(region):
        # no component spans two regions
        assert set(labels[region == r]).isdisjoint(labels[region != r])


def test_greedy_of_one_region_ignores_the_others() -> None:
    raw = random_regions(5, regions=3, stations=5, steps=16)
    changed = copy.deepcopy(raw)
    for s in changed["sessions"]:
        if s["id"].startswith("r0.") and s.get("energy_kwh") is not None:
            s["energy_kwh"] = s["energy_kwh"] * 0.5 + 1.0
    a, b = (compile_network(parse_scenario(r)) for r in (raw, changed))
    ga, gb = greedy_currents_a(a), greedy_currents_a(b)
    others = np.array([not sid.startswith("r0.") for sid in a.session_ids])
    assert np.array_equal(ga[others], gb[others])
    assert not np.array_equal(ga[~others], gb[~others])


@pytest.mark.parametrize("seed", range(4))
def test_decomposed_schedule_passes_the_checker_and_names_its_parts(
    seed: int, no_packing: None
) -> None:
    raw = random_regions(10 + seed, regions=3, stations=4, steps=12)
    sch = checked(raw, solve_network(compile_network(parse_scenario(raw)), "lp", workers=2))
    # random limits may be out of reach for the minimum currents: then the excess is reported
    assert sch["status"] in ("optimal", "infeasible_limits")
    assert sch["solver"]["termination"] == "optimal"
    assert sch["solver"]["parts"] >= 3


def test_worker_count_does_not_change_the_schedule(no_packing: None) -> None:
    raw = random_regions(21, regions=3, stations=5, steps=16)
    net = compile_network(parse_scenario(raw))
    one = solve_network(net, "lp", workers=1)
    two = solve_network(net, "lp", workers=2)
    assert one["sessions"] == two["sessions"]


def test_tiny_budget_falls_back_to_greedy_for_every_part(no_packing: None) -> None:
    raw = random_regions(8, regions=3, stations=5, steps=16)
    net = compile_network(parse_scenario(raw))
    sch = checked(raw, solve_network(net, "lp", time_limit_s=1e-9, workers=2))
    assert sch["status"] == "fallback"
    assert sch["reason"]
    assert sch["sessions"] == solve_network(net, "greedy")["sessions"]

"""What a live engine reuses from its previous solve: the greedy schedule up to the first step a
change touches, and the schedule rows that did not change. Both must give exactly what a fresh
computation gives."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from optimizer.checker import check_schedule, explained
from optimizer.engine import LiveEngine
from optimizer.greedy import first_changed_step, greedy_run
from optimizer.network import Network, compile_network
from optimizer.result import build_schedule
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.random_net import random_regions

STEPS = 16


def base(seed: int = 4) -> dict[str, Any]:
    raw = random_regions(seed, regions=3, stations=5, steps=STEPS, opt_out=False)
    raw["sessions"][0]["limit_a"] = [32.0] * STEPS  # session caps in every network
    return raw


def net_of(raw: dict[str, Any]) -> Network:
    return compile_network(parse_scenario(raw))


def step_of(raw: dict[str, Any], when: str) -> int:
    start = datetime.fromisoformat(raw["grid"]["start"])
    return int((datetime.fromisoformat(when) - start).total_seconds() // raw["grid"]["step_s"])


def late_session(raw: dict[str, Any]) -> dict[str, Any]:
    """The session with a need that arrives last, but a few steps before the end."""
    with_need = [
        s
        for s in raw["sessions"]
        if s.get("energy_kwh") and 2 <= step_of(raw, s["arrival"]) <= STEPS - 4
    ]
    return max(with_need, key=lambda s: step_of(raw, s["arrival"]))


def cap_step(k: int) -> Callable[[dict[str, Any]], int]:
    def change(raw: dict[str, Any]) -> int:
        prof = next(p for p in raw["dso_profiles"] if p.get("cap_kw"))
        prof["cap_kw"][k] *= 0.5
        return k

    return change


def first_step(raw: dict[str, Any], session: dict[str, Any]) -> int:
    """The first step the session is plugged in, in the network of ``raw``."""
    net = net_of(raw)
    return int(net.first[net.session_ids.index(session["id"])])


def later_need(raw: dict[str, Any]) -> int:
    s = late_session(raw)
    s["energy_kwh"] = 0.5  # less than any stay delivers
    return first_step(raw, s)


def late_station_limit(raw: dict[str, Any]) -> int:
    """A station limit that drops in the last step only: the greedy differs from there on."""
    s = late_session(raw)
    station = next(
        st for st in raw["stations"] for c in st["connectors"] if c["id"] == s["connector"]
    )
    limit = station.get("limit_a", 25.0)
    steps = [float(limit)] * STEPS if not isinstance(limit, list) else list(limit)
    steps[-1] = 0.0
    station["limit_a"] = steps
    return STEPS - 1


def late_session_cap(raw: dict[str, Any]) -> int:
    """A session that takes all it gets is capped to its minimum in its last step: what its stay can
    deliver shrinks, so the greedy differs from its arrival on, not only in that step."""
    s = next(
        s for s in raw["sessions"] if not s.get("energy_kwh") and step_of(raw, s["arrival"]) > 2
    )
    net = net_of(raw)
    k = net.session_ids.index(s["id"])
    cap = [32.0] * STEPS
    cap[int(net.end[k]) - 1] = 8.0
    s["limit_a"] = cap
    return int(net.first[k])


def need_and_cap(raw: dict[str, Any]) -> int:
    """Both at once: the cap of a session plugged in before the other change's step still
    counts from its arrival (the cap itself is later)."""
    return min(later_need(raw), late_session_cap(raw))


@pytest.mark.parametrize(
    "change",
    [cap_step(9), cap_step(0), later_need, late_station_limit, late_session_cap, need_and_cap],
)
def test_a_resumed_greedy_equals_a_fresh_one_to_the_last_bit(
    change: Callable[[dict[str, Any]], int],
) -> None:
    raw = base()
    old = net_of(raw)
    prior = greedy_run(old)
    changed = copy.deepcopy(raw)
    at_most = change(changed)
    new = net_of(changed)
    start = first_changed_step(old, new)
    assert 0 <= start <= max(at_most, 0)
    fresh = greedy_run(new)
    resumed = greedy_run(new, resume=(start, prior))
    assert np.array_equal(resumed.current_a, fresh.current_a)
    assert np.array_equal(resumed.remaining_kwh, fresh.remaining_kwh)


def test_the_first_changed_step_is_the_step_of_the_change() -> None:
    raw = base()
    old = net_of(raw)
    assert first_changed_step(old, net_of(copy.deepcopy(raw))) == STEPS
    changed = copy.deepcopy(raw)
    cap_step(9)(changed)
    assert first_changed_step(old, net_of(changed)) == 9
    changed = copy.deepcopy(raw)
    arrival = later_need(changed)
    assert arrival > 0
    assert first_changed_step(old, net_of(changed)) == arrival
    # another session list: nothing can be taken over
    changed = copy.deepcopy(raw)
    changed["sessions"].pop()
    assert first_changed_step(old, net_of(changed)) == 0


def test_the_engine_resumes_its_greedy_and_still_equals_a_cold_solve() -> None:
    raw = base()
    engine = LiveEngine(workers=2)
    engine.solve(net_of(raw))
    changed = copy.deepcopy(raw)
    cap_step(9)(changed)
    warm = engine.solve(net_of(changed))
    assert warm["solver"]["greedy_from_step"] == 9
    cold = solve_network(net_of(changed), "lp")
    assert cold["solver"]["greedy_from_step"] == 0
    assert warm["solver"]["objective"] == pytest.approx(
        cold["solver"]["objective"], rel=1e-7, abs=1e-6
    )
    assert engine.live.greedy_run is not None
    assert np.array_equal(engine.live.greedy_run.current_a, greedy_run(net_of(changed)).current_a)


def test_schedule_rows_taken_over_equal_freshly_converted_ones() -> None:
    raw = base()
    net = net_of(raw)
    cur = greedy_run(net).current_a.copy()
    memo: list[Any] = []
    build_schedule(net, cur, method="lp", status="optimal", solver={}, memo=memo)
    kept = memo[0].lists
    cur[3, :] *= 0.5  # one session's row changes
    cur[:, 5] *= 0.9  # and one step of every session charging in it
    again = build_schedule(net, cur, method="lp", status="optimal", solver={}, memo=memo)
    fresh = build_schedule(net, cur, method="lp", status="optimal", solver={})
    assert again == fresh
    # unchanged rows are taken over, changed ones converted; the schedule holds copies
    same = [k for k in range(net.n_sessions) if not cur[k, 5] and k != 3]
    assert same, "some session must not charge in step 5"
    assert all(memo[0].lists[k] is kept[k] for k in same)
    assert memo[0].lists[3] is not kept[3]
    sid = net.session_ids[same[0]]
    assert again["sessions"][sid]["current_a"] is not memo[0].lists[same[0]]
    # another session order, and another grid, are matched by id or not at all
    rolled = copy.deepcopy(raw)
    rolled["sessions"].reverse()
    net2 = net_of(rolled)
    order = [net.session_ids.index(s) for s in net2.session_ids]
    cur2 = cur[order]
    again = build_schedule(net2, cur2, method="lp", status="optimal", solver={}, memo=memo)
    assert again == build_schedule(net2, cur2, method="lp", status="optimal", solver={})


def test_the_engine_schedule_equals_one_built_without_its_memory() -> None:
    raw = base(9)
    engine = LiveEngine(workers=2)
    engine.solve(net_of(raw))
    changed = copy.deepcopy(raw)
    cap_step(5)(changed)
    net = net_of(changed)
    warm = engine.solve(net)
    cur = np.array([warm["sessions"][sid]["current_a"] for sid in net.session_ids])
    plain = build_schedule(
        net, cur, method=warm["method"], status=warm["status"], solver=warm["solver"]
    )
    assert warm["sessions"] == plain["sessions"]
    assert warm["nodes"] == plain["nodes"]
    assert warm["violations"] == plain["violations"]


def test_a_live_fallback_publishes_the_greedy_anchor_of_the_same_network() -> None:
    raw = base()
    engine = LiveEngine(workers=2)
    engine.solve(net_of(raw))
    changed = copy.deepcopy(raw)
    cap_step(9)(changed)
    engine.time_limit_s = 1e-9  # no time to solve: the greedy schedule goes out
    net = net_of(changed)
    out = engine.solve(net)
    assert out["status"] == "fallback"
    assert out["sessions"] == solve_network(net_of(changed), "greedy")["sessions"]
    found = check_schedule(changed, out)
    assert explained(found, out["violations"]) == [], found

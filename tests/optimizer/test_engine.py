"""The live engine: every warm re-solve equals a cold solve of the changed problem, and it
re-solves only what changed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from optimizer import decompose
from optimizer.checker import check_schedule, explained
from optimizer.engine import LiveEngine
from optimizer.network import compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.random_net import random_regions

Change = Callable[[dict[str, Any]], None]


@pytest.fixture(autouse=True)
def no_packing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decompose, "MIN_PART_VARS", 0)


def base(seed: int = 4) -> dict[str, Any]:
    return random_regions(seed, regions=3, stations=5, steps=16, opt_out=False)


def capped(raw: dict[str, Any]) -> str:
    """Id prefix of a region under a DSO cap (all its sessions share one part)."""
    return str(next(p["node"] for p in raw["dso_profiles"] if p.get("cap_kw"))).split(".")[0] + "."


def first(raw: dict[str, Any]) -> dict[str, Any]:
    region = capped(raw)
    return next(s for s in raw["sessions"] if s["id"].startswith(region) and s.get("energy_kwh"))


def more_energy(raw: dict[str, Any]) -> None:
    first(raw)["energy_kwh"] += 5.0


def earlier_departure(raw: dict[str, Any]) -> None:
    """A new departure prediction, 45 minutes earlier (the stay loses steps)."""
    s = next(
        s
        for s in raw["sessions"]
        if s["id"].startswith(capped(raw))
        and datetime.fromisoformat(s["departure"]) - datetime.fromisoformat(s["arrival"])
        > timedelta(hours=2)
    )
    s["departure"] = (datetime.fromisoformat(s["departure"]) - timedelta(minutes=45)).isoformat()


def later_departure(raw: dict[str, Any]) -> None:
    """A new departure prediction, 15 minutes later than the current one (the stay gains
    steps), for a session whose connector is free that long."""
    later = timedelta(minutes=15)
    end = datetime.fromisoformat(raw["grid"]["start"]) + timedelta(
        seconds=raw["grid"]["step_s"] * raw["grid"]["steps"]
    )

    def free(s: dict[str, Any]) -> bool:
        dep = datetime.fromisoformat(s["departure"])
        return dep + later < end and not any(
            o["connector"] == s["connector"]
            and dep <= datetime.fromisoformat(o["arrival"]) < dep + later
            for o in raw["sessions"]
        )

    s = next(s for s in raw["sessions"] if s["id"].startswith(capped(raw)) and free(s))
    s["departure"] = (datetime.fromisoformat(s["departure"]) + later).isoformat()


def arrival(raw: dict[str, Any]) -> None:
    busy = {s["connector"] for s in raw["sessions"]}
    free = next(
        c["id"]
        for st in raw["stations"]
        for c in st["connectors"]
        if c["id"].startswith(capped(raw)) and c["id"] not in busy
    )
    start = datetime.fromisoformat(raw["grid"]["start"])
    raw["sessions"].append(
        {
            "id": capped(raw) + "new",
            "connector": free,
            "arrival": (start + timedelta(hours=1)).isoformat(),
            "departure": (start + timedelta(hours=3)).isoformat(),
            "energy_kwh": 12.0,
        }
    )


def departure(raw: dict[str, Any]) -> None:
    raw["sessions"].remove(first(raw))


def cap_step(raw: dict[str, Any]) -> None:
    prof = next(p for p in raw["dso_profiles"] if p.get("cap_kw"))
    prof["cap_kw"][5] *= 0.5


def roll(raw: dict[str, Any]) -> None:
    start = datetime.fromisoformat(raw["grid"]["start"])
    raw["grid"]["start"] = (start + timedelta(seconds=raw["grid"]["step_s"])).isoformat()


def solved(engine: LiveEngine, raw: dict[str, Any]) -> dict[str, Any]:
    sch = engine.solve(compile_network(parse_scenario(raw)))
    found = check_schedule(raw, sch)
    assert explained(found, sch["violations"]) == [], found
    return sch


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (more_energy, "inplace"),
        (earlier_departure, "inplace"),
        (later_departure, "mapped"),
        (arrival, "mapped"),
        (departure, "mapped"),
        (cap_step, "warm"),
        (roll, "mapped"),
    ],
)
def test_warm_resolve_equals_a_cold_solve(change: Change, expect: str) -> None:
    raw = base()
    assert any(p.get("cap_kw") for p in raw["dso_profiles"])
    engine = LiveEngine(workers=2, map_bases=True)
    solved(engine, raw)
    changed = copy.deepcopy(raw)
    change(changed)
    warm = solved(engine, changed)
    cold = solve_network(compile_network(parse_scenario(changed)), "lp")
    assert warm["solver"]["termination"] == "optimal"
    assert warm["solver"]["objective"] == pytest.approx(
        cold["solver"]["objective"], rel=1e-7, abs=1e-6
    )
    assert warm["kpis"]["energy_delivered_kwh"] == pytest.approx(
        cold["kpis"]["energy_delivered_kwh"], rel=1e-6, abs=1e-3
    )
    by_start = warm["solver"]["parts_by_start"]
    if expect == "warm":  # in place, or mapped when another limit row became bindable
        assert by_start["inplace"] + by_start["mapped"] >= 1
    else:
        assert by_start[expect] >= 1
    if change is not roll:
        # only the touched region is solved again
        assert by_start["reused"] >= 1


def test_same_network_again_reuses_every_part() -> None:
    raw = base()
    engine = LiveEngine(workers=2)
    first_ = solved(engine, raw)
    again = solved(engine, raw)
    assert again["solver"]["parts_by_start"]["reused"] == again["solver"]["parts"]
    assert again["sessions"] == first_["sessions"]


@pytest.mark.parametrize("map_bases", [False, True])
def test_a_chain_of_changes_stays_equal_to_cold_solves(map_bases: bool) -> None:
    raw = base(9)
    engine = LiveEngine(workers=2, map_bases=map_bases)
    solved(engine, raw)
    for change in (
        more_energy,
        cap_step,
        arrival,
        earlier_departure,
        later_departure,
        roll,
        earlier_departure,
        departure,
    ):
        change(raw)
        warm = solved(engine, raw)
        cold = solve_network(compile_network(parse_scenario(raw)), "lp")
        assert warm["solver"]["objective"] == pytest.approx(
            cold["solver"]["objective"], rel=1e-7, abs=1e-6
        ), change.__name__


def test_reset_forgets_the_state() -> None:
    raw = base()
    engine = LiveEngine()
    solved(engine, raw)
    engine.reset()
    again = solved(engine, raw)
    assert again["solver"]["parts_by_start"]["cold"] == again["solver"]["parts"]


def test_the_engine_starts_afresh_when_it_remembers_too_many_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from optimizer import engine as engine_module

    raw = base()
    engine = LiveEngine()
    solved(engine, raw)
    monkeypatch.setattr(engine_module, "MAX_NAMES", 1)
    again = solved(engine, raw)
    assert again["solver"]["parts_by_start"]["cold"] == again["solver"]["parts"]
    assert len(engine.live.book.ids) > 1  # the new book holds this solve's names


def test_by_default_a_reshaped_part_is_solved_cold_and_a_rebounded_one_in_place() -> None:
    raw = base()
    engine = LiveEngine(workers=2)
    solved(engine, raw)
    arrival(raw)  # a new shape in the capped region
    by_start = solved(engine, raw)["solver"]["parts_by_start"]
    assert by_start["mapped"] == 0 and by_start["cold"] >= 1 and by_start["reused"] >= 1
    more_energy(raw)  # same shape, other bounds
    by_start = solved(engine, raw)["solver"]["parts_by_start"]
    assert by_start["inplace"] >= 1 and by_start["mapped"] == 0


def _shortened(raw: dict[str, Any], minutes: float, share: float) -> dict[str, Any]:
    """Every session of the capped region with an energy need: departure ``minutes`` earlier
    (where the stay allows) and the need times ``share``."""
    out = copy.deepcopy(raw)
    for s in out["sessions"]:
        if not s["id"].startswith(capped(raw)) or not s.get("energy_kwh"):
            continue
        s["energy_kwh"] = round(share * s["energy_kwh"], 3)
        arr, dep = (datetime.fromisoformat(s[f]) for f in ("arrival", "departure"))
        if dep - timedelta(minutes=minutes) > arr:
            s["departure"] = (dep - timedelta(minutes=minutes)).isoformat()
    return out


@pytest.mark.parametrize("seed", [4, 9, 17])
def test_new_departures_and_needs_are_applied_in_place_and_equal_a_cold_solve(seed: int) -> None:
    """A departure that moves earlier keeps the session's columns (idle ones fixed at 0 A):
    the part is updated in place, not rebuilt, and the optimum is the cold one."""
    raw = base(seed)
    engine = LiveEngine(workers=2)
    solved(engine, raw)
    for minutes, share in ((45, 0.8), (90, 1.1), (0, 0.5)):
        # the last round moves departures back later, still inside the columns kept
        changed = _shortened(raw, minutes, share)
        warm = solved(engine, changed)
        cold = solve_network(compile_network(parse_scenario(changed)), "lp")
        assert warm["solver"]["objective"] == pytest.approx(
            cold["solver"]["objective"], rel=1e-7, abs=1e-6
        )
        assert warm["kpis"] == cold["kpis"] or warm["kpis"]["energy_delivered_kwh"] == (
            pytest.approx(cold["kpis"]["energy_delivered_kwh"], rel=1e-6, abs=1e-3)
        )
        by_start = warm["solver"]["parts_by_start"]
        assert by_start["inplace"] >= 1, by_start
        assert by_start["cold"] == by_start["mapped"] == 0, by_start
        # idle columns carry no current
        net = compile_network(parse_scenario(changed))
        present = net.presence()
        for k, sid in enumerate(net.session_ids):
            assert all(
                a == 0
                for a, p in zip(warm["sessions"][sid]["current_a"], present[k], strict=True)
                if not p
            )


def test_a_stay_that_shrinks_to_nothing_keeps_the_shape() -> None:
    """A session whose predicted departure moves into its arrival step has no stay left; its
    columns and energy row stay (idle), so its part is still updated in place."""
    raw = base(4)
    engine = LiveEngine(workers=2)
    solved(engine, raw)
    s = first(raw)
    arr = datetime.fromisoformat(s["arrival"])
    assert arr.second or arr.microsecond  # not on the grid: arrival rounds up past departure
    s["departure"] = (arr + timedelta(seconds=1)).isoformat()
    warm = solved(engine, raw)
    cold = solve_network(compile_network(parse_scenario(raw)), "lp")
    assert warm["solver"]["objective"] == pytest.approx(
        cold["solver"]["objective"], rel=1e-7, abs=1e-6
    )
    assert warm["sessions"][s["id"]]["energy_kwh"] == 0.0
    assert warm["solver"]["parts_by_start"]["cold"] == 0


def test_an_unchanged_layout_shares_the_matrices_and_parts() -> None:
    """A new energy need changes bounds only: the next problem shares the previous one's
    matrices (not rebuilt), its parts are re-cut from the previous ones, and the result is the
    cold one."""
    raw = base(4)
    engine = LiveEngine(workers=2)
    solved(engine, raw)
    assert engine.live.warm is not None and engine.live.warm.problem is not None
    before = engine.live.warm.problem
    more_energy(raw)
    warm = solved(engine, raw)
    after = engine.live.warm.problem
    assert after is not before
    assert after.limit_rows is before.limit_rows and after.energy_rows is before.energy_rows
    assert after.need_eff_kwh.tolist() != before.need_eff_kwh.tolist()
    assert warm["solver"]["parts_by_start"]["cold"] == 0
    cold = solve_network(compile_network(parse_scenario(raw)), "lp")
    assert warm["solver"]["objective"] == pytest.approx(
        cold["solver"]["objective"], rel=1e-7, abs=1e-6
    )
    # a new session changes the layout: new matrices
    arrival(raw)
    solved(engine, raw)
    assert engine.live.warm.problem.limit_rows is not after.limit_rows


def test_build_problem_shares_matrices_only_for_the_same_layout() -> None:
    from optimizer.greedy import greedy_currents_a
    from optimizer.problem import build_problem

    raw = base(4)
    net = compile_network(parse_scenario(raw))
    first_ = build_problem(net, anchor_a=greedy_currents_a(net))
    changed = copy.deepcopy(raw)
    more_energy(changed)
    net2 = compile_network(parse_scenario(changed))
    shared = build_problem(net2, anchor_a=greedy_currents_a(net2), like=first_)
    fresh = build_problem(net2, anchor_a=greedy_currents_a(net2))
    assert shared.limit_rows is first_.limit_rows
    for name in ("energy_rows", "limit_rows", "target_rows"):
        assert (getattr(shared, name) != getattr(fresh, name)).nnz == 0, name
    for name in ("i_lo_a", "i_hi_a", "i_cost_per_a", "need_eff_kwh", "limit_rhs", "target_kw"):
        assert getattr(shared, name).tolist() == getattr(fresh, name).tolist(), name
    arrival(changed)
    net3 = compile_network(parse_scenario(changed))
    other = build_problem(net3, anchor_a=greedy_currents_a(net3), like=first_)
    assert other.limit_rows is not first_.limit_rows


def test_an_update_in_place_passes_changes_and_equals_a_fresh_model() -> None:
    """HighsTwin.update sends only the changed bounds, costs and right-hand sides; after a
    repair bound and an update, the model solves to the optimum of a fresh model."""
    import numpy as np

    from optimizer.greedy import greedy_currents_a
    from optimizer.lp_highs import HighsTwin
    from optimizer.problem import build_problem

    raw = base(4)
    net = compile_network(parse_scenario(raw))
    a = build_problem(net, anchor_a=greedy_currents_a(net))
    twin = HighsTwin(a)
    twin.solve()
    var = np.nonzero(a.i_hi_a > a.i_lo_a + 1.0)[0][:3]
    twin.set_current_lower(var, a.i_lo_a[var] + 0.5)  # the model's bounds move
    more_energy(raw)
    net2 = compile_network(parse_scenario(raw))
    b = build_problem(net2, anchor_a=greedy_currents_a(net2), like=a)
    assert b.limit_rows is a.limit_rows
    twin.update(b)  # the repair bound goes back to b's bound: a change too
    warm = twin.solve()
    fresh = HighsTwin(b).solve()
    assert warm.status == fresh.status == "optimal"
    assert warm.objective == pytest.approx(fresh.objective, rel=1e-9, abs=1e-7)


def test_columns_fixed_at_zero_leave_the_model_and_come_back() -> None:
    """The live model holds only the columns that can be nonzero. An update drops the ones
    that became fixed at 0 (non-basic), takes back the ones that may be nonzero again, keeps
    the basis, and solves to the optimum of a fresh model; the cold model reaches the
    objective of the full pyomo model."""
    import numpy as np

    from optimizer.greedy import greedy_currents_a
    from optimizer.lp_highs import HighsTwin
    from optimizer.lp_pyomo import PyomoTwin
    from optimizer.problem import build_problem

    raw = base(4)
    for s in raw["sessions"]:  # small needs: the anchor fills most cars early
        if s.get("energy_kwh"):
            s["energy_kwh"] = round(s["energy_kwh"] * 0.3, 3)
    net = compile_network(parse_scenario(raw))
    a = build_problem(net, anchor_a=greedy_currents_a(net))
    twin = HighsTwin(a)
    zero = (a.i_lo_a == 0) & (a.i_hi_a == 0)
    assert zero.sum() > 0.2 * a.n_vars  # cells after the anchor's fill step: fixed at 0 A
    assert twin.h.getNumCol() <= twin.ncol - zero.sum()
    cold = twin.solve()
    full = PyomoTwin(build_problem(net, anchor_a=greedy_currents_a(net))).solve()
    assert cold.objective == pytest.approx(full.objective, rel=1e-7, abs=1e-7)

    # half of the sessions need more energy (their cars fill later: columns come back), the
    # other half less (they fill earlier: columns become fixed at 0)
    for k, s in enumerate(raw["sessions"]):
        if s.get("energy_kwh"):
            s["energy_kwh"] = round(s["energy_kwh"] * (1.6 if k % 2 else 0.5), 3)
    net2 = compile_network(parse_scenario(raw))
    b = build_problem(net2, anchor_a=greedy_currents_a(net2), like=a)
    assert b.limit_rows is a.limit_rows  # the same layout: an update in place
    before = set(twin.cols.tolist())
    assert twin.update(b)
    after = set(twin.cols.tolist())
    assert before - after and after - before  # columns left and came back
    assert twin.h.getBasis().valid  # the basis survived
    zero_b = np.flatnonzero((b.i_lo_a == 0) & (b.i_hi_a == 0))
    assert not (set(np.flatnonzero(~((b.i_lo_a == 0) & (b.i_hi_a == 0)))) - after)
    assert len(after & set(zero_b.tolist())) < zero_b.size  # most zero columns are out
    warm = twin.solve()
    fresh = HighsTwin(b).solve()
    assert warm.status == fresh.status == "optimal"
    assert warm.objective == pytest.approx(fresh.objective, rel=1e-9, abs=1e-7)
    assert np.all(warm.x >= b.i_lo_a - 1e-7) and np.all(warm.x <= b.i_hi_a + 1e-7)
    assert np.all(warm.x[zero_b] == 0.0)


def test_a_model_without_columns_is_optimal_only_when_its_rows_hold_at_zero() -> None:
    """With every column fixed at 0 the model has no columns (HiGHS calls it empty whatever
    its rows say): a row that 0 cannot meet makes the solve fail, not an optimum."""
    import dataclasses

    import numpy as np
    import scipy.sparse as sp

    from optimizer.lp_highs import HighsTwin
    from optimizer.problem import build_problem

    net = compile_network(parse_scenario(base(4)))
    p = build_problem(net)
    nv = p.n_vars
    none = {
        "i_lo_a": np.zeros(nv),
        "i_hi_a": np.zeros(nv),
        "u_hi_kwh": np.zeros_like(p.u_hi_kwh),
        "limit_rows": sp.csr_matrix((0, nv)),
        "limit_rhs": np.zeros(0),
        "limit_group": np.zeros(0, dtype=np.int64),
        "limit_step": np.zeros(0, dtype=np.int64),
        "target_rows": sp.csr_matrix((0, nv)),
        "target_kw": np.zeros(0),
    }
    assert (p.need_eff_kwh > 0).any()
    stuck = HighsTwin(dataclasses.replace(p, **none))
    assert stuck.h.getNumCol() == 0
    assert stuck.solve().status == "failed"  # the cars' energy rows cannot hold
    full = dataclasses.replace(p, **none, need_eff_kwh=np.zeros_like(p.need_eff_kwh))
    done = HighsTwin(full).solve()
    assert done.status == "optimal" and done.objective == 0.0


def test_a_column_brought_back_by_a_repair_bound_forgets_the_old_reduced_costs() -> None:
    """A lower bound on a column that had left the model puts it back; the reduced costs of
    the last optimum no longer match the model's columns and are not used for dropping."""
    import numpy as np

    from optimizer.greedy import greedy_currents_a
    from optimizer.lp_highs import HighsTwin
    from optimizer.problem import build_problem

    raw = base(4)
    for s in raw["sessions"]:
        if s.get("energy_kwh"):
            s["energy_kwh"] = round(s["energy_kwh"] * 0.3, 3)
    net = compile_network(parse_scenario(raw))
    a = build_problem(net, anchor_a=greedy_currents_a(net))
    twin = HighsTwin(a)
    assert twin.solve().status == "optimal"
    absent = int(np.flatnonzero((a.i_lo_a == 0) & (a.i_hi_a == 0))[0])
    n = twin.h.getNumCol()
    twin.set_current_lower(np.array([absent]), np.array([1.0]))  # above its upper bound 0
    assert twin.h.getNumCol() == n + 1 and absent in twin.cols.tolist()
    b = build_problem(net, anchor_a=greedy_currents_a(net), like=a)
    twin.update(b)  # before any solve: the bound goes back, nothing stale is used
    fresh = HighsTwin(b).solve()
    warm = twin.solve()
    assert warm.status == fresh.status == "optimal"
    assert warm.objective == pytest.approx(fresh.objective, rel=1e-9, abs=1e-7)

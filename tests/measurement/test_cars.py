"""What each car takes, learned from its own states (``estimate_cars``), and the per-session
baseline built on it (``plan_shifted(..., cars=...)``): hand-computed cases.

Three-phase sessions at 230 V: 1 A on each phase is 0.69 kW. States every 5 minutes from
``T0``; the activation runs from ``TS`` to ``TC`` (10 minutes).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from measurement.io import load_activations, load_prices, load_states
from measurement.reconstruct import reconstruct
from measurement.shifted import CarModel, Plan, estimate_cars, plan_energy, plan_shifted

T0 = datetime(2026, 11, 25, 16, 0, tzinfo=UTC).timestamp()
TS = T0 + 1800.0
TC = TS + 600.0
KW_PER_A = 3 * 230.0 / 1000.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def session(
    sid: str,
    amps: Callable[[float], float],
    limit: Callable[[float], float],
    start: float = T0,
    end: float = T0 + 3600.0,
    need: float | None = None,
    every_s: float = 300.0,
) -> list[dict]:
    """States of a session drawing ``amps(t)`` [A] (constant within whole minutes) under the
    profile ``limit(t)`` [A]; energy integrated exactly."""
    rows, e = [], 0.0
    for t in np.arange(start, end + 1, 60.0):
        if (t - start) % every_s == 0 or t == end:
            i = amps(t)
            rows.append(
                {
                    "session_id": sid,
                    "timestamp": iso(t),
                    "kwh": round(e, 6),
                    "current_l1_a": i,
                    "current_l2_a": i,
                    "current_l3_a": i,
                    "min_current_a": 8,
                    "profile_a": limit(t),
                    "energy_need_kwh": "" if need is None else need,
                }
            )
        e += amps(t) * KW_PER_A / 60.0
    return rows


def curtailed(i: float, ts: float = TS, tc: float = TC) -> Callable[[float], float]:
    return lambda t: 8.0 if ts <= t < tc else i


def const(i: float) -> Callable[[float], float]:
    return lambda t: i


def activation_table(ts: float = TS, tc: float = TC) -> pd.DataFrame:
    return load_activations([{"id": "x", "t_signal": iso(ts), "t_clear": iso(tc)}])


def test_car_maximum_known_unknown_and_fleet_ratio() -> None:
    """``a`` draws 14 A under a 16 A profile: its maximum is known (14 A) and the fleet ratio
    is 14 / 16 = 0.875. ``b`` always draws its 8 A limit: 8 A is only a lower bound."""
    rows = session("a", curtailed(14.0), const(16.0)) + session("b", const(8.0), const(8.0))
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    cars = estimate_cars(states, rec, activation_table())
    k = {s: i for i, s in enumerate(rec.session_ids)}
    assert cars.i_max_a[k["a"]] == pytest.approx(14.0)
    assert cars.known[k["a"]] and not cars.known[k["b"]]
    assert cars.i_max_a[k["b"]] == pytest.approx(8.0)
    assert cars.fleet_ratio == pytest.approx(0.875)
    # the typical car on three phases: the median known maximum (a's 14 A)
    assert cars.typical_a is not None and cars.typical_a[k["b"]] == pytest.approx(14.0)
    assert cars.current_a(np.array([k["b"]]), np.array([[8.0, 16.0]])).tolist() == [[14.0, 14.0]]
    assert np.isnan(cars.need_kwh).all()
    assert cars.taper_kwh == 0.0


def test_curtailed_states_do_not_count_as_the_cars_maximum() -> None:
    """A session plugged in at the signal draws 8 A under its curtailment while the published
    profile says 16 A: that 8 A is the curtailment, not what the car takes."""
    rows = session("c", lambda t: 8.0 if t < TC else 0.0, const(np.nan), start=TS, end=TC)
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    plan = Plan(np.array(["c"], dtype=object), np.array([T0, T0 + 7200.0]), np.array([[16.0]]))
    without = estimate_cars(states, rec, None, plan)
    assert without.known[0] and without.i_max_a[0] == pytest.approx(8.0)
    with_log = estimate_cars(states, rec, activation_table(), plan)
    assert not with_log.known[0] and with_log.i_max_a[0] == 0.0


def test_need_stated_or_seen_full() -> None:
    """``d`` states its need (20 kWh); ``f`` stops drawing at 2.3 kWh while its profile still
    allows 16 A (two states at 0 A): it was full, its need is what it took."""
    p16 = 16 * KW_PER_A
    full_at = T0 + 2.3 / p16 * 3600.0
    rows = session("d", const(16.0), const(16.0), need=20.0) + session(
        "f", lambda t: 16.0 if t < np.floor(full_at / 60) * 60 else 0.0, const(16.0)
    )
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    cars = estimate_cars(states, rec)
    k = {s: i for i, s in enumerate(rec.session_ids)}
    assert cars.need_kwh[k["d"]] == 20.0
    assert cars.need_kwh[k["f"]] == pytest.approx(states["e_kwh"][states.session_id == "f"].max())


def test_taper_learned_from_the_states() -> None:
    """Cars drawing ``min(16, 14 · clip(R / 2 kWh, 0.3, 1))`` [A] with a stated need give back
    a taper of about 2 kWh (``T = median(R / ρ)``) and a floor near 0.3."""
    rows: list[dict] = []
    rng = np.random.default_rng(3)
    for n in range(30):
        need = float(rng.uniform(4.0, 8.0))
        start = T0 + 60.0 * int(rng.integers(0, 30))
        e, t, i_at = 0.0, start, {}
        while e < need - 1e-9 and t < start + 4 * 3600:
            i = 14.0 * float(np.clip((need - e) / 2.0, 0.3, 1.0))
            i_at[t] = round(i, 1)
            e += min(i * KW_PER_A / 60.0, need - e)
            t += 60.0
        end = t + 1800.0
        rows += session(
            f"t{n:02d}",
            lambda t, i_at=i_at: i_at.get(t, 0.0),
            const(16.0),
            start=start,
            end=end,
            need=round(need, 3),
        )
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    cars = estimate_cars(states, rec)
    assert cars.known.all()
    assert cars.taper_kwh == pytest.approx(2.0, rel=0.1)
    assert 0.15 <= cars.taper_floor <= 0.35


def _model(rec, **per: tuple[float, bool, float]) -> CarModel:  # type: ignore[no-untyped-def]
    """A CarModel with ``sid=(i_max_a, known, need_kwh)`` per session."""
    n = rec.n_sessions
    i_max, known, need = np.zeros(n), np.zeros(n, bool), np.full(n, np.nan)
    for k, sid in enumerate(rec.session_ids):
        i_max[k], known[k], need[k] = per[str(sid)]
    return CarModel(i_max, known, 0.875, need, 0.0, 1.0)


def test_session_baseline_with_the_cars_own_maximum() -> None:
    """Plan 16 A for ``a`` (a 14 A car, known): counterfactual 14 A, not the plan's 16 A.
    ``b`` (plan 8 A, then 16 A from ``TS + 5 min``; its maximum unknown, 8 A seen): 8 A for
    5 minutes, then ``min(16, max(8, 0.875 · 16)) = 14`` A for 5 minutes."""
    rows = session("a", curtailed(14.0), const(16.0)) + session("b", curtailed(8.0), const(8.0))
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    edges = T0 + 300.0 * np.arange(13)
    lim = np.full((2, 12), 16.0)
    lim[1, edges[:-1] < TS + 300.0] = 8.0
    plan = Plan(np.array(["a", "b"], dtype=object), edges, lim)
    cars = _model(rec, a=(14.0, True, np.nan), b=(8.0, False, np.nan))
    got = plan_shifted(rec, TS, TC, plan, cars=cars)
    base_a = 14 * KW_PER_A * 10 / 60
    base_b = 8 * KW_PER_A * 5 / 60 + 14 * KW_PER_A * 5 / 60
    delivered = 2 * 8 * KW_PER_A * 10 / 60
    assert got.baseline_kwh == pytest.approx(base_a + base_b, abs=2e-3)
    assert got.delivered_kwh == pytest.approx(delivered, abs=2e-3)
    assert got.shifted_kwh == pytest.approx(base_a + base_b - delivered, abs=3e-3)
    # without the car model b would take the plan's 16 A once it rises
    k_b = np.array([list(rec.session_ids).index("b")])
    plain = plan_shifted(rec, TS, TC, plan, sessions=k_b)
    assert plain.baseline_kwh == pytest.approx((8 + 16) * KW_PER_A * 5 / 60, abs=2e-3)
    only_b = plan_shifted(rec, TS, TC, plan, sessions=k_b, cars=cars)
    assert only_b.baseline_kwh == pytest.approx(base_b, abs=2e-3)
    # with the fleet's typical three-phase car at 15 A: min(16, max(8, 14, 15)) = 15 A
    typical = CarModel(cars.i_max_a, cars.known, 0.875, cars.need_kwh, 0.0, 1.0, np.full(2, 15.0))
    with_typical = plan_shifted(rec, TS, TC, plan, sessions=k_b, cars=typical)
    assert with_typical.baseline_kwh == pytest.approx((8 + 15) * KW_PER_A * 5 / 60, abs=2e-3)


def test_session_baseline_tapers_the_cars_maximum_and_stops_at_the_need() -> None:
    """A 14 A car under a 16 A plan with 0.5 kWh left at the signal and a taper of 2 kWh down
    to 30 %: minute by minute ``I = min(16, 14 · clip((R − E) / 2, 0.3, 1))`` until ``R`` is
    reached."""
    rows = session("c", curtailed(14.0), const(16.0))
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    plan = Plan(np.array(["c"], dtype=object), np.array([T0, T0 + 7200.0]), np.array([[16.0]]))
    e_sig = float(rec.energy_kwh(np.array([TS]))[0, 0])
    cars = CarModel(np.array([14.0]), np.array([True]), 0.875, np.array([e_sig + 0.5]), 2.0, 0.3)
    got = plan_shifted(rec, TS, TC, plan, cars=cars)
    e = 0.0
    for _ in range(10):
        rem = 0.5 - e
        i = min(16.0, 14.0 * min(max(rem / 2.0, 0.3), 1.0))
        e += min(i * KW_PER_A / 60.0, rem)
    assert e < 0.5  # still tapering at the clear: the cap does not bind here
    assert got.baseline_kwh == pytest.approx(e, abs=1e-9)


def test_session_baseline_value_per_isp_across_a_boundary() -> None:
    """Activation 16:40-16:50 across the 16:45 ISP boundary, prices 100 and 300 EUR/MWh: each
    5-minute piece shifts (14 − 8) A · 0.69 kW/A · 5/60 h = 0.345 kWh; value 0.345 · 0.1 +
    0.345 · 0.3 = 0.138 EUR."""
    ts, tc = T0 + 2400.0, T0 + 3000.0
    rows = session("a", curtailed(14.0, ts, tc), const(16.0))
    states = load_states(rows)
    rec = reconstruct(states, np.array([ts, tc]))
    plan = Plan(np.array(["a"], dtype=object), np.array([T0, T0 + 7200.0]), np.array([[16.0]]))
    cars = CarModel(np.array([14.0]), np.array([True]), 0.875, np.array([np.nan]), 0.0, 1.0)
    prices = load_prices(
        [
            {"start": iso(T0 + 1800.0), "price_eur_per_mwh": 100.0},
            {"start": iso(T0 + 2700.0), "price_eur_per_mwh": 300.0},
        ]
    )
    got = plan_shifted(rec, ts, tc, plan, cars=cars, prices=prices)
    piece = 6 * KW_PER_A * 5 / 60
    assert [s["isp_start"] for s in got.segments] == [iso(T0 + 1800.0), iso(T0 + 2700.0)]
    for seg, price in zip(got.segments, (100.0, 300.0), strict=True):
        assert seg["shifted_kwh"] == pytest.approx(piece, abs=2e-3)
        assert seg["price_eur_per_mwh"] == price
    assert got.value_eur == pytest.approx(piece * 0.1 + piece * 0.3, abs=1e-3)
    # one price for the whole activation overrides the ISPs'
    flat = plan_shifted(rec, ts, tc, plan, cars=cars, prices=prices, price_eur_per_mwh=50.0)
    assert flat.value_eur == pytest.approx(2 * piece * 0.05, abs=1e-3)


def test_need_from_the_plan_when_none_is_stated() -> None:
    """``g`` has no stated need; its plan gives 16 A for 30 minutes and ends 30 minutes before
    it leaves: its need is the plan's energy, 16 · 0.69 kW · 0.5 h = 5.52 kWh. ``h``'s plan
    still gives 16 A at its end: no need can be read from it."""
    rows = session("g", lambda t: 16.0 if t < T0 + 1800 else 0.0, const(np.nan)) + session(
        "h", const(16.0), const(np.nan)
    )
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    edges = T0 + 1800.0 * np.arange(3)
    plan = Plan(np.array(["g", "h"], dtype=object), edges, np.array([[16.0, 0.0], [16.0, 16.0]]))
    energy, ends = plan_energy(plan, rec)
    k = {s: i for i, s in enumerate(rec.session_ids)}
    assert energy[k["g"]] == pytest.approx(5.52) and ends[k["g"]] == T0 + 1800.0
    assert energy[k["h"]] == pytest.approx(11.04) and np.isnan(ends[k["h"]])  # never ends
    cars = estimate_cars(states, rec, None, plan)
    assert cars.need_kwh[k["g"]] == pytest.approx(5.52)
    assert np.isnan(cars.need_kwh[k["h"]])


def test_a_plan_cut_at_its_grid_says_nothing_about_the_need() -> None:
    """The service's plan at a signal covers only the minutes around it; its limit is still
    16 A at the grid's end, so it gives no need and the car (14 A, taper 2 kWh) is not
    tapered: 14 A for the 10 minutes."""
    rows = session("c", curtailed(14.0), const(16.0))
    states = load_states(rows)
    rec = reconstruct(states, np.array([TS, TC]))
    edges = np.arange(TS - 300.0, TC + 660.0, 60.0)
    plan = Plan(np.array(["c"], dtype=object), edges, np.full((1, edges.size - 1), 16.0))
    cars = CarModel(np.array([14.0]), np.array([True]), 0.875, np.array([np.nan]), 2.0, 0.3)
    got = plan_shifted(rec, TS, TC, plan, cars=cars)
    assert got.baseline_kwh == pytest.approx(14 * KW_PER_A * 10 / 60, abs=1e-6)

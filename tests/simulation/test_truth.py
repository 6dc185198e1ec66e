"""The ground-truth day: physics, the states and meters it emits, the counterfactual and the
injected misbehaving stations; and the measurement against it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from measurement.flexibility import non_responding
from measurement.io import load_activations, load_meters, load_states
from measurement.reconstruct import compare_meters, isp_edges_s, reconstruct, station_isp_energy
from measurement.shifted import measure_activations
from optimizer.network import compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.fleet import generate_scenario
from simulation.truth import ISP_S, TruthDay, plan_activations, simulate_day


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    sc = generate_scenario(stations=60, seed=5)
    schedule = solve_network(compile_network(parse_scenario(sc)), "greedy")
    return sc, schedule, plan_activations(sc, 5)


@pytest.fixture(scope="module")
def day(setup: Any) -> TruthDay:
    sc, schedule, acts = setup
    return simulate_day(sc, schedule, acts, seed=5, misbehaving_share=0.1)


def test_activations_are_spaced_and_on_whole_minutes(setup: Any) -> None:
    _, _, acts = setup
    assert len(acts) >= 6
    t = np.array([a["t_signal_s"] for a in acts])
    c = np.array([a["t_clear_s"] for a in acts])
    assert (t % 60 == 0).all() and (c % 60 == 0).all() and (c > t).all()
    assert (c - t <= 20 * 60).all()
    assert (np.diff(t) >= 8400).all()  # at most 30 minutes in any 4 hours
    spans = np.floor(t / ISP_S) != np.floor((c - 1) / ISP_S)
    assert spans.any() and (~spans).any()


def test_same_seed_same_day(setup: Any, day: TruthDay) -> None:
    sc, schedule, acts = setup
    again = simulate_day(sc, schedule, acts, seed=5, misbehaving_share=0.1)
    pd.testing.assert_frame_equal(again.states, day.states)
    pd.testing.assert_frame_equal(again.meters, day.meters)


def test_power_respects_profile_and_connector_except_injected(setup: Any, day: TruthDay) -> None:
    sc, schedule, _ = setup
    net = compile_network(parse_scenario(sc))
    sched = np.array([schedule["sessions"][s]["current_a"] for s in net.session_ids])
    per_step = net.grid.step_s // 60
    i = day.power_cf_kw / net.kw_per_a[:, None]
    limit = np.repeat(sched, per_step, axis=1)
    exceed = np.isin(
        day.station, day.injected.loc[day.injected["kind"] == "exceed_profile", "station"]
    )
    assert (i[~exceed] <= limit[~exceed] + 1e-6).all()
    assert (i <= net.max_a[:, None] + 1e-6).all()
    need = np.array([s["energy_kwh"] for s in sc["sessions"]])
    assert (day.power_cf_kw.sum(axis=1) / 60 <= need + 1e-6).all()


def test_counterfactual_differs_only_around_activations(day: TruthDay) -> None:
    none = (day.power_kw == day.power_cf_kw).all(axis=0)
    m = (
        day.activations["t_signal"].map(pd.Timestamp).map(lambda t: t.timestamp()) - day.start_s
    ) // 60
    assert none[: int(m.min())].all()
    assert (day.truth["shifted_kwh"] > 0).all()
    assert (day.truth["counterfactual_kwh"] >= day.truth["delivered_kwh"]).all()


def test_states_on_each_sessions_clock_with_jitter_gaps_and_duplicates(day: TruthDay) -> None:
    st = load_states(day.states)
    inner = st[st.groupby("session_id").cumcount(ascending=False) > 0]  # not the final state
    gaps = inner.groupby("session_id")["t_s"].diff().dropna().to_numpy()
    regular = gaps[(gaps > 200) & (gaps < 400)]
    assert np.abs(regular - 300).max() <= 16.0 + 1e-6
    assert np.abs(regular - 300).max() > 0.5  # jitter is there
    assert (gaps == 0).sum() > 0  # duplicates
    assert ((gaps > 550) & (gaps < 650)).sum() > 0  # a missing state
    # cumulative energy agrees with the truth at the final state of sessions leaving in the day
    last = st.groupby("session_id").tail(1)
    pos = {s: k for k, s in enumerate(day.session_ids)}
    k = np.array([pos[s] for s in last["session_id"]])
    truth = np.array(
        [day.energy_kwh(np.array([t]))[j, 0] for t, j in zip(last["t_s"], k, strict=True)]
    )
    assert np.abs(truth - last["e_kwh"].to_numpy()).max() <= 0.0005 + 1e-9


def test_meters_hold_the_charging_energy_plus_idle(day: TruthDay) -> None:
    m = load_meters(day.meters)
    total = m.groupby("start_s")["e_kwh"].sum().to_numpy()
    truth = day.isp_energy_kwh().sum(axis=0)
    stations = m["station"].nunique()
    idle = total - truth
    assert (idle > stations * 0.0035 / 4 - 0.01 * truth - 0.002 * stations).all()
    assert np.median(idle / stations * 4) == pytest.approx(0.0045, abs=0.0008)


def test_measurement_against_the_truth(day: TruthDay) -> None:
    st = load_states(day.states)
    ac = load_activations(day.activations)
    rec = reconstruct(st, np.r_[ac["t_signal_s"], ac["t_clear_s"]])
    # energy per ISP over the region, leaving out the day's first and last hour
    edges = isp_edges_s(day.start_s, day.start_s + day.minutes * 60 - 1)
    pos = {s: k for k, s in enumerate(rec.session_ids)}
    idx = np.array([pos[s] for s in day.session_ids if s in pos])
    rec_isp = np.diff(rec.total_energy_kwh(edges, idx))[4:-4]
    true_isp = day.isp_energy_kwh().sum(axis=0)[4:-4]
    ok = true_isp > 1.0
    err = np.abs(rec_isp[ok] - true_isp[ok]) / true_isp[ok]
    assert np.mean(err) < 0.005
    # shifted energy: the estimate is of the right size for the median activation
    res = measure_activations(rec, ac)
    ratio = np.array([r.shifted_kwh for r in res]) / day.truth["shifted_kwh"].to_numpy()
    assert 0.6 < np.median(ratio) < 1.4
    # meters: idle correction lowers the error
    cmp = compare_meters(load_meters(day.meters), station_isp_energy(rec, edges))
    assert float(cmp["mape_pct_after"]) < float(cmp["mape_pct_before"])
    # non-responding: no good station is flagged
    _, flagged = non_responding(st, rec, ac)
    assert set(flagged["station"]) <= set(day.injected["station"])


def test_write_round_trips(tmp_path: Any, day: TruthDay) -> None:
    paths = day.write(tmp_path)
    assert sorted(paths) == ["activations", "injected", "meters", "prices", "states", "truth"]
    again = load_states(paths["states"])
    assert len(again) == len(day.states)

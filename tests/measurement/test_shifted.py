"""Shifted energy, baseline, value, theoretical minimum and non-responders on hand cases."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from measurement.flexibility import non_responding
from measurement.io import load_activations, load_prices, load_states
from measurement.reconstruct import reconstruct
from measurement.shifted import (
    isp_segments,
    line_at,
    measure_activation,
    measure_activations,
    recovery_time,
)
from tests.measurement import cases
from tests.measurement.cases import P8, P16, T0


def _measure(recs: list[dict], acts: list[dict] | None = None, prices=None):
    st = load_states(recs)
    ac = load_activations(acts or cases.activation())
    rec = reconstruct(st, np.r_[ac["t_signal_s"], ac["t_clear_s"]])
    return st, ac, rec, measure_activations(rec, ac, prices)


def test_hand_case_delivered_baseline_shifted_value_and_ratio() -> None:
    _, _, _, (r,) = _measure(cases.states())
    assert r.sessions == 2
    assert r.delivered_kwh == pytest.approx(P8 / 6 + P16 / 6, abs=1e-4)  # 2.76
    assert r.p_signal_kw == pytest.approx(2 * P16, abs=1e-3)
    assert r.p_clear_kw == pytest.approx(2 * P16, abs=1e-3)
    assert r.baseline_kwh == pytest.approx(2 * P16 / 6, abs=1e-4)  # 3.68
    assert r.shifted_kwh == pytest.approx(0.92, abs=1e-4)
    assert r.value_eur == pytest.approx(0.92 * 400 / 1000, abs=1e-4)
    assert r.theoretical_min_kwh == pytest.approx(2 * P8 / 6, abs=1e-4)
    assert r.performance_ratio == pytest.approx(0.5, abs=1e-3)
    assert r.t_recovery_s >= r.t_clear_s


def test_missing_and_duplicated_states_give_the_same_result() -> None:
    full = cases.states()
    _, _, _, (ref,) = _measure(full)
    # lose the states at 12 and 37 minutes, send those at 22 and 27 twice
    lossy = [s for s in full if not s["timestamp"].endswith(("10:12:00Z", "10:37:00Z"))]
    lossy += [s for s in full if s["timestamp"].endswith(("10:22:00Z", "10:27:00Z"))]
    st, _, _, (r,) = _measure(lossy)
    assert len(st) == len(full) - 4 + 4
    assert r.shifted_kwh == pytest.approx(ref.shifted_kwh, abs=1e-3)
    assert r.delivered_kwh == pytest.approx(ref.delivered_kwh, abs=1e-3)


def test_no_state_inside_the_activation_uses_the_dip_model() -> None:
    # states at 17 and 33 minutes only around the activation: the dip model recovers it
    ticks = (2.0, 7.0, 12.0, 17.0, 33.0, 38.0, 43.0, 48.0, 53.0, 58.0)
    _, _, rec, (r,) = _measure(cases.states(ticks))
    assert rec.models["dip"] >= 1
    assert r.delivered_kwh == pytest.approx(P8 / 6 + P16 / 6, abs=1e-3)
    assert r.shifted_kwh == pytest.approx(0.92, abs=1e-3)


def test_activation_spanning_an_isp_boundary_splits_and_values_per_isp() -> None:
    # 10:12–10:22 crosses the ISP boundary 10:15; prices differ per ISP
    recs = cases.states()
    acts = cases.activation(
        t_signal=cases.iso(T0 + timedelta(minutes=12)),
        t_clear=cases.iso(T0 + timedelta(minutes=22)),
        price_eur_per_mwh="",
    )
    # session a follows from 12 to 22 instead: rebuild its states
    for s in recs:
        if s["session_id"] == "a":
            m = (
                int(s["timestamp"][14:16]) + int(s["timestamp"][17:19]) / 60
                if s["timestamp"][11:13] == "10"
                else 60.0
            )
            i = 8.0 if 12 <= m < 22 else 16.0
            e = P16 * m / 60 - (P16 - P8) * max(0.0, min(m, 22) - 12) / 60
            s.update(current_l1_a=i, current_l2_a=i, current_l3_a=i, kwh=round(e, 6))
    prices = load_prices(
        [
            {"start": cases.iso(T0), "price_eur_per_mwh": 100.0},
            {"start": cases.iso(T0 + timedelta(minutes=15)), "price_eur_per_mwh": -50.0},
        ]
    )
    _, _, _, (r,) = _measure(recs, acts, prices)
    assert [s["isp_start"] for s in r.segments] == ["2026-11-20T10:00:00Z", "2026-11-20T10:15:00Z"]
    assert r.shifted_kwh == pytest.approx(0.92, abs=1e-3)
    # 3 minutes in the first ISP, 7 in the second: 0.276 and 0.644 kWh
    parts = [s["shifted_kwh"] for s in r.segments]
    assert parts == pytest.approx([0.276, 0.644], abs=1e-3)
    assert r.value_eur == pytest.approx(0.276 * 0.1 - 0.644 * 0.05, abs=1e-4)


def test_sessions_arriving_and_leaving_during_the_activation() -> None:
    recs = cases.states()
    # c arrives at 25 minutes (not active at the signal: not counted)
    for k, m in enumerate((25.0, 30.0, 35.0, 40.0, 45.0, 50.0)):
        recs.append(
            {
                "session_id": "c",
                "timestamp": cases.iso(T0 + timedelta(minutes=m)),
                "kwh": round(P16 * 5 * k / 60, 6),
                "current_l1_a": 16.0,
                "current_l2_a": 16.0,
                "current_l3_a": 16.0,
                "station": "st-2",
                "region": "region-01",
            }
        )
    # d charges at 16 A from the start and leaves at 25 minutes (during the activation),
    # following the curtailment until it leaves
    for m in (2.0, 7.0, 12.0, 17.0, 22.0, 25.0):
        i = 8.0 if m >= 20 else 16.0
        e = P16 * min(m, 20) / 60 + P8 * max(0.0, m - 20) / 60
        recs.append(
            {
                "session_id": "d",
                "timestamp": cases.iso(T0 + timedelta(minutes=m)),
                "kwh": round(e, 6),
                "current_l1_a": i,
                "current_l2_a": i,
                "current_l3_a": i,
                "station": "st-3",
                "region": "region-01",
            }
        )
    _, _, _, (r,) = _measure(recs)
    assert r.sessions == 3  # a, b, d
    assert r.stopped_sessions == 1
    # d's baseline: 11.04 kW for the 5 minutes it stayed; delivered 5.52 · 5/60
    assert r.stopped_baseline_kwh == pytest.approx(P16 * 5 / 60, abs=1e-3)
    assert r.delivered_kwh == pytest.approx(P8 / 6 + P16 / 6 + P8 * 5 / 60, abs=1e-3)
    assert r.shifted_kwh == pytest.approx(0.92 + (P16 - P8) * 5 / 60, abs=2e-3)


def test_region_filter_and_empty_activation() -> None:
    st = load_states(cases.states())
    rec = reconstruct(st)
    r = measure_activation(
        rec, "x", cases.T_SIGNAL.timestamp(), cases.T_CLEAR.timestamp(), region="region-99"
    )
    assert r.sessions == 0 and r.shifted_kwh == 0.0 and np.isnan(r.performance_ratio)


def test_non_responding_names_the_session_with_evidence() -> None:
    st, ac, rec, _ = _measure(cases.states())
    evidence, stations = non_responding(st, rec, ac)
    assert set(evidence["session_id"]) == {"b"}
    assert set(evidence["kind"]) == {"ignored_curtailment"}
    assert list(evidence["timestamp"]) == ["2026-11-20T10:22:00Z", "2026-11-20T10:27:00Z"]
    assert (evidence["current_a"] == 16.0).all() and (evidence["expected_max_a"] == 8.0).all()
    assert list(stations["station"]) == ["st-1"]


def test_opted_out_session_is_not_a_non_responder() -> None:
    recs = cases.states()
    for s in recs:
        s["opt_out"] = "true" if s["session_id"] == "b" else "false"
    st, ac, rec, _ = _measure(recs)
    evidence, _ = non_responding(st, rec, ac)
    assert evidence.empty


def test_exceeding_the_profile_needs_two_states() -> None:
    recs = cases.states()
    for s in recs:
        s["profile_a"] = 16.0
    # b's profile was 10 A in two states: it drew 16 A
    hits = [s for s in recs if s["session_id"] == "b" and s["timestamp"][14:16] in ("42", "47")]
    for s in hits:
        s["profile_a"] = 10.0
    st, ac, rec, _ = _measure(recs)
    evidence, _ = non_responding(st, rec, ac)
    over = evidence[evidence["kind"] == "exceeded_profile"]
    assert list(over["session_id"]) == ["b", "b"]
    hits[1]["profile_a"] = 16.0
    st, ac, rec, _ = _measure(recs)
    evidence, _ = non_responding(st, rec, ac)
    assert (evidence["kind"] != "exceeded_profile").all()


def test_line_fit_and_recovery_edge_on_hand_series() -> None:
    t = np.array([0.0, 60.0, 120.0])
    assert line_at(t, np.array([1.0, 2.0, 3.0]), 180.0) == pytest.approx(4.0)
    assert line_at(t[:1], np.array([5.0]), 99.0) == 5.0
    assert np.isnan(line_at(t[:0], t[:0], 0.0))
    edges = np.arange(0.0, 11 * 60.0, 60.0)  # 10 minutes
    p = np.array([5, 5, 5, 5, 6, 9, 10, 10, 10, 10.0])  # rises at 4-6 min
    assert recovery_time(edges, p, 240.0) == 420.0  # rise ends at minute 7
    assert recovery_time(edges, np.full(10, 5.0), 240.0) == 240.0


def test_isp_segments() -> None:
    assert list(isp_segments(600.0, 1200.0)) == [600.0, 900.0, 1200.0]
    assert list(isp_segments(0.0, 900.0)) == [0.0, 900.0]


def test_row_order_and_session_names_change_nothing() -> None:
    recs = cases.states()
    _, _, _, (ref,) = _measure(recs)
    rng = np.random.default_rng(3)
    shuffled = [recs[k] for k in rng.permutation(len(recs))]
    for r in shuffled:
        r["session_id"] = {"a": "zz", "b": "aa"}[r["session_id"]]
    _, _, _, (r,) = _measure(shuffled)
    assert r.shifted_kwh == pytest.approx(ref.shifted_kwh, abs=1e-9)
    assert r.baseline_kwh == pytest.approx(ref.baseline_kwh, abs=1e-9)


def test_states_every_minute_give_the_same_answer() -> None:
    dense = tuple(float(m) for m in range(2, 60))
    _, _, _, (r,) = _measure(cases.states(dense))
    assert r.shifted_kwh == pytest.approx(0.92, abs=1e-3)

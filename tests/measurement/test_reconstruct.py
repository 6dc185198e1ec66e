"""Reconstruction: the interval models, exact energy at states, aggregation, meters and idle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from measurement.io import load_meters, load_states
from measurement.reconstruct import (
    clean_states,
    compare_meters,
    estimate_idle_kw,
    group_isp_energy,
    interval_models,
    isp_edges_s,
    reconstruct,
    station_isp_energy,
)
from tests.measurement import cases
from tests.measurement.cases import P8, P16, T0


def one(x: float) -> np.ndarray:
    return np.array([x], dtype=float)


def test_step_model_places_the_step_from_the_energy() -> None:
    # 11.04 kW then 5.52 kW over 300 s with 0.644 kWh: the step is at 120 s
    de = P16 * 120 / 3600 + P8 * 180 / 3600
    ta, ea, tb, eb, model = interval_models(
        one(300), one(de), one(P16), one(P8), one(0), one(0), np.array([0])
    )
    assert model[0] == 1
    assert ta[0] == pytest.approx(120.0)
    assert ea[0] == pytest.approx(P16 * 120 / 3600)
    assert eb[0] == pytest.approx(ea[0] + P8 * (tb[0] - ta[0]) / 3600)


def test_dip_model_solves_the_level_between_known_instants() -> None:
    # 11.04 kW, a dip to x between 60 s and 240 s, 11.04 kW again; x = 5.52 kW
    de = P16 * 60 / 3600 + P8 * 180 / 3600 + P16 * 60 / 3600
    ta, ea, tb, eb, model = interval_models(
        one(300), one(de), one(P16), one(P16), one(60), one(240), np.array([2])
    )
    assert model[0] == 0
    assert (ta[0], tb[0]) == (60.0, 240.0)
    assert (eb[0] - ea[0]) * 3600 / 180 == pytest.approx(P8)


def test_constant_model_when_nothing_else_fits() -> None:
    ta, ea, _tb, _eb, model = interval_models(
        one(300), one(0.5), one(P16), one(P16), one(0), one(0), np.array([0])
    )
    assert model[0] == 2
    assert ea[0] == pytest.approx(0.5 / 3) and ta[0] == pytest.approx(100)


def test_energy_is_exact_at_states_flat_outside_and_monotone() -> None:
    st = load_states(cases.states())
    rec = reconstruct(st)
    t = st["t_s"].to_numpy()
    a = (st["session_id"] == "a").to_numpy()
    e = rec.energy_kwh(t[a], np.array([0]))[0]
    assert e == pytest.approx(st["e_kwh"].to_numpy()[a], abs=1e-9)
    grid = np.arange(t.min() - 600, t.max() + 600, 7.0)
    ee = rec.energy_kwh(grid)
    assert (np.diff(ee, axis=1) >= -1e-12).all()
    assert ee[0, 0] == pytest.approx(st["e_kwh"].iloc[0])  # flat before the first state


def test_power_follows_the_curtailment_at_one_minute() -> None:
    st = load_states(cases.states())
    rec = reconstruct(st)
    edges = T0.timestamp() + 60 * np.arange(5, 50)
    p = rec.power_kw(edges, np.array([0]))[0]  # session a
    minutes = np.arange(5, 49)
    expect = np.where((minutes >= 20) & (minutes < 30), P8, P16)
    assert p == pytest.approx(expect, abs=1e-6)
    assert rec.total_power_kw(edges) == pytest.approx(expect + P16, abs=1e-6)


def test_duplicates_dropped_and_decreasing_energy_raised() -> None:
    recs = cases.states()
    recs.append(dict(recs[4]))
    recs[6]["kwh"] = recs[5]["kwh"] - 0.01
    clean, counts = clean_states(load_states(recs))
    assert counts == {"duplicates": 1, "raised": 1}
    assert clean.groupby("session_id")["e_kwh"].apply(lambda s: s.is_monotonic_increasing).all()


def test_station_isp_energy_and_meters_with_idle() -> None:
    st = load_states(cases.states())
    rec = reconstruct(st)
    edges = isp_edges_s(T0.timestamp(), T0.timestamp() + 3600)
    table = station_isp_energy(rec, edges)
    assert list(table.index) == ["st-1"]
    region = group_isp_energy(rec, edges, "region")
    assert list(region["region"].unique()) == ["region-01"]
    assert region["e_kwh"].to_numpy() == pytest.approx(table.iloc[0].to_numpy())
    # ISP 10:15–10:30: a at 16 A 5 min + 8 A 10 min, b at 16 A all along
    assert table.iloc[0, 1] == pytest.approx(P16 * 5 / 60 + P8 * 10 / 60 + P16 / 4, abs=1e-6)
    # meters: the true energy plus 4 W idle; an idle station shows only the idle
    idle_kwh = 0.004 / 4
    rows = [
        {
            "station": "st-1",
            "start": cases.iso(pd.Timestamp(s, unit="s", tz="UTC")),
            "kwh": v + idle_kwh,
        }
        for s, v in zip(table.columns, table.iloc[0], strict=True)
    ]
    rows += [{"station": "st-9", "start": r["start"], "kwh": idle_kwh} for r in rows]
    meters = load_meters(rows)
    table.loc["st-9"] = 0.0
    idle = estimate_idle_kw(meters, table)
    assert idle["st-9"] == pytest.approx(0.004)
    assert idle["st-1"] == pytest.approx(0.004)  # never idle: the fleet's value
    cmp = compare_meters(meters, table)
    assert cmp["mape_pct_after"] == pytest.approx(0.0, abs=1e-9)
    assert cmp["mape_pct_before"] > 0.0

"""Loaders: clear errors naming the table, row and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from measurement.errors import (
    BadActivation,
    MeasurementError,
    MissingColumn,
    NaiveTimestamp,
    NegativeEnergy,
)
from measurement.io import load_activations, load_meters, load_prices, load_states
from tests.measurement import cases


def test_states_load_with_units_and_power_from_currents() -> None:
    st = load_states(cases.states())
    assert list(st.columns[:4]) == ["session_id", "t_s", "e_kwh", "i_l1_a"]
    assert st["t_s"].iloc[0] == cases.T0.timestamp() + 120
    assert st["p_kw"].iloc[0] == pytest.approx(cases.P16)
    assert (st["phases"] == 3).all()
    assert not st["opt_out"].any()


def test_phases_are_counted_from_the_currents_when_absent() -> None:
    recs = cases.states()
    for r in recs:
        r.update(current_l2_a=0.0, current_l3_a=0.0)
    st = load_states(recs)
    assert (st["phases"] == 1).all()
    assert st["p_kw"].iloc[0] == pytest.approx(16 * 0.23)


def test_state_without_offset_names_the_row() -> None:
    recs = cases.states()
    recs[3]["timestamp"] = "2026-11-20T10:17:00"
    with pytest.raises(NaiveTimestamp, match=r"states\[3\]\.timestamp: needs a UTC offset"):
        load_states(recs)


def test_state_not_a_date_names_the_row() -> None:
    recs = cases.states()
    recs[1]["timestamp"] = "yesterday+01:00"
    with pytest.raises(NaiveTimestamp, match=r"states\[1\]\.timestamp: not an ISO-8601"):
        load_states(recs)


def test_negative_energy_and_current_are_refused() -> None:
    recs = cases.states()
    recs[5]["kwh"] = -0.5
    with pytest.raises(NegativeEnergy, match=r"states\[5\]\.kwh: must be >= 0 \(got -0\.5\)"):
        load_states(recs)
    recs = cases.states()
    recs[2]["current_l2_a"] = -1
    with pytest.raises(NegativeEnergy, match=r"states\[2\]\.current_l2_a"):
        load_states(recs)


def test_missing_column_bad_number_bad_flag_and_empty() -> None:
    recs = [{k: v for k, v in r.items() if k != "kwh"} for r in cases.states()]
    with pytest.raises(MissingColumn, match=r"states\.kwh: column missing"):
        load_states(recs)
    recs = cases.states()
    recs[0]["kwh"] = "lots"
    with pytest.raises(MeasurementError, match=r"states\[0\]\.kwh: not a number"):
        load_states(recs)
    recs = cases.states(opt_out="maybe")
    with pytest.raises(MeasurementError, match=r"states\[0\]\.opt_out: not true or false"):
        load_states(recs)
    with pytest.raises(MeasurementError, match="states: holds no states"):
        load_states([])


def test_activation_checks() -> None:
    ac = load_activations(cases.activation())
    assert ac["t_clear_s"].iloc[0] - ac["t_signal_s"].iloc[0] == 600
    assert ac["price_eur_per_mwh"].iloc[0] == 400.0
    ac = load_activations(
        [{"id": "x", "t_signal": cases.iso(cases.T0), "end": cases.iso(cases.T_CLEAR)}]
    )
    assert ac["region"].iloc[0] == "" and np.isnan(ac["price_eur_per_mwh"].iloc[0])
    with pytest.raises(BadActivation, match=r"activations\[0\]\.t_clear: must be after t_signal"):
        load_activations(cases.activation(t_clear=cases.iso(cases.T0)))
    with pytest.raises(NaiveTimestamp, match=r"activations\[0\]\.t_signal: needs a UTC offset"):
        load_activations(cases.activation(t_signal="2026-11-20T10:20:00"))
    with pytest.raises(BadActivation, match="duplicate activation id"):
        load_activations(cases.activation() + cases.activation())
    with pytest.raises(MissingColumn, match=r"activations\.t_clear"):
        load_activations([{"id": "x", "t_signal": cases.iso(cases.T0)}])


def test_files_csv_and_json(tmp_path: Path) -> None:
    import pandas as pd

    csv = tmp_path / "states.csv"
    pd.DataFrame(cases.states()).to_csv(csv, index=False)
    js = tmp_path / "states.json"
    js.write_text(json.dumps(cases.states()))
    a, b = load_states(csv), load_states(js)
    assert np.allclose(a["e_kwh"], b["e_kwh"]) and np.allclose(a["t_s"], b["t_s"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MeasurementError, match="states: is not valid JSON"):
        load_states(bad)
    with pytest.raises(MeasurementError, match="cannot be read"):
        load_states(tmp_path / "absent.csv")
    meters = load_meters([{"station": "st-1", "start": "2026-11-20T10:00:00+01:00", "kwh": 1.5}])
    assert meters["start_s"].iloc[0] == cases.T0.timestamp() - 3600
    with pytest.raises(NegativeEnergy, match=r"meters\[0\]\.kwh"):
        load_meters([{"station": "st-1", "start": cases.iso(cases.T0), "kwh": -1}])
    prices = load_prices([{"start": cases.iso(cases.T0), "price_eur_per_mwh": -20}])
    assert prices["price_eur_per_mwh"].iloc[0] == -20

"""Models: quantiles never cross, the model learns a departure habit better than both
baselines, files round-trip through skops, and tampered or untrusted files are refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from forecasting.data import load_csv
from forecasting.errors import ForecastDataError, ModelFileError
from forecasting.evaluate import HOUR, MODEL, USER, compare, evaluate, pinball, time_split
from forecasting.features import build_features
from forecasting.model import META_FILE, MODEL_FILE, ForecastModel, load, save, sha256, train
from forecasting.workflow import train_model
from tests.forecasting.conftest import commuter_csv


@pytest.fixture(scope="module")
def sessions() -> pd.DataFrame:
    return load_csv(commuter_csv().encode(), salt="m")


@pytest.fixture(scope="module")
def model(sessions: pd.DataFrame) -> ForecastModel:
    return train_model(sessions, created_by="test", source="generated", max_iter=60)


def test_quantiles_are_ordered_and_positive(model: ForecastModel, sessions: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    X = build_features(sessions)
    noisy = X.copy()  # out-of-distribution inputs: quantiles must still not cross
    for col in ("tod_sin", "tod_cos", "user_median_stay_h", "user_leave_gap_h"):
        noisy[col] = rng.normal(0, 5, len(X))
    for features in (X, noisy):
        q = model.predict_stay(sessions, features)
        assert q.shape == (len(sessions), 5)
        assert (np.diff(q, axis=1) >= 0).all() and (q > 0).all()
    pred = model.predict(sessions.iloc[:5])
    assert (pred["departure_q10"] <= pred["departure_q90"]).all()
    assert (pred["departure"] == pred["departure_q50"]).all()
    assert (pred["energy_kwh"] >= 0).all()


def test_model_learns_the_habit_better_than_both_baselines(
    model: ForecastModel, sessions: pd.DataFrame
) -> None:
    hold = model.metadata["metrics"]["holdout"]
    assert hold[MODEL]["mae_h"] < hold[USER]["mae_h"] < hold[HOUR]["mae_h"]
    assert hold[MODEL]["n_known"] > 0 and hold[MODEL]["mae_known_h"] is not None
    assert set(hold[MODEL]["pinball_h"]) == {"q10", "q20", "q50", "q80", "q90"}
    meta = model.metadata
    assert meta["training_data"]["sessions"] == len(sessions) and meta["created_by"] == "test"
    assert len(meta["training_data"]["fingerprint_sha256"]) == 64


def test_rolling_origin_evaluation(sessions: pd.DataFrame) -> None:
    ev = evaluate(sessions, folds=2, max_iter=30)
    assert len(ev.rolling) == 2 and ev.n_train + ev.n_test == len(sessions)
    k, _ = time_split(sessions, 0.2)
    assert ev.n_train == k
    mean = ev.rolling_mean()
    assert set(mean) == {MODEL, HOUR, USER} and "coverage_80" in mean[MODEL]
    with pytest.raises(ForecastDataError, match="test_fraction"):
        time_split(sessions, 1.5)


def test_pinball_by_hand() -> None:
    y = np.array([1.0, 3.0])
    assert pinball(y, np.array([2.0, 2.0]), 0.1) == pytest.approx((0.9 * 1 + 0.1 * 1) / 2)
    assert pinball(y, y, 0.5) == 0.0


def test_too_few_sessions(sessions: pd.DataFrame) -> None:
    with pytest.raises(ForecastDataError, match="data: too few sessions"):
        train(sessions.iloc[:5])
    with pytest.raises(ForecastDataError, match="quantiles"):
        train(sessions, quantiles=(0.0, 0.5))


def test_files_round_trip(model: ForecastModel, sessions: pd.DataFrame, tmp_path: Path) -> None:
    save(model, tmp_path / "m")
    back = load(tmp_path / "m")
    assert np.array_equal(back.predict_stay(sessions), model.predict_stay(sessions))
    assert back.metadata["features"] == model.features
    assert json.loads((tmp_path / "m" / META_FILE).read_text())["model_sha256"] == sha256(
        (tmp_path / "m" / MODEL_FILE).read_bytes()
    )
    # the evaluation of a loaded model is the same
    X = build_features(sessions)
    assert compare(back, sessions, X)[MODEL] == compare(model, sessions, X)[MODEL]


def test_tampered_file_is_refused(model: ForecastModel, tmp_path: Path) -> None:
    d = save(model, tmp_path / "m")
    data = bytearray((d / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load(d)
    (d / META_FILE).unlink()
    with pytest.raises(ModelFileError, match="is missing"):
        load(d)


class Payload:
    """A type no model file may hold (loading it would run arbitrary code paths)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def _resign(d: Path, data: bytes) -> None:
    """Write ``data`` as the model with a matching metadata hash (a forged directory)."""
    (d / MODEL_FILE).write_bytes(data)
    meta = json.loads((d / META_FILE).read_text())
    meta["model_sha256"] = sha256(data)
    (d / META_FILE).write_text(json.dumps(meta))


def test_untrusted_types_and_corrupt_files_are_refused(
    model: ForecastModel, tmp_path: Path
) -> None:
    d = save(model, tmp_path / "m")
    forged = sio.dumps({"format": "gridcharge.forecast/1", "evil": Payload()})
    _resign(d, forged)
    with pytest.raises(ModelFileError, match="untrusted type"):
        load(d)
    _resign(d, b"not a zip file at all")
    with pytest.raises(ModelFileError, match="not a readable skops file"):
        load(d)
    _resign(d, sio.dumps({"format": "something else"}))
    with pytest.raises(ModelFileError, match=r"not a gridcharge\.forecast/1 file"):
        load(d)
    # a valid zip whose schema JSON is broken
    p = tmp_path / "broken.skops"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("schema.json", "{")
    _resign(d, p.read_bytes())
    with pytest.raises(ModelFileError):
        load(d)

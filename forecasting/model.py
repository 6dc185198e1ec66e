"""Departure (stay quantiles) and energy-need models: scikit-learn pipelines, baselines, and
their files (skops, never pickle).

The departure model predicts the *stay* ``departure − arrival`` [h]: one
``HistGradientBoostingRegressor(loss="quantile")`` per quantile behind a station target
encoder. The quantiles of one session are sorted (rearrangement), so they never cross, and
floored at :data:`MIN_STAY_H`. The point prediction is the 50 % quantile (the median minimises
the mean absolute error). The energy model is one ``loss="absolute_error"`` booster on the
delivered energy.

Baselines (reported beside the model): the median stay by local arrival hour of the training
data, and the user's past median stay (sessions ended before the arrival; new users fall back
to the hour median).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import TargetEncoder

from forecasting.errors import ForecastDataError, ModelFileError
from forecasting.features import (
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    build_features,
    local_hour,
    stay_h,
)

QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.5, 0.8, 0.9)
MIN_STAY_H = 5.0 / 60.0
"""Lowest predicted stay [h]."""
MODEL_FORMAT = "gridcharge.forecast/1"
MODEL_FILE = "model.skops"
META_FILE = "metadata.json"
MIN_TRAIN_SESSIONS = 20
MIN_CALIBRATION_SESSIONS = 200

TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn._loss.loss.PinballLoss",
        "sklearn._loss.loss.AbsoluteError",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.Interval",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._target_encoder.TargetEncoder",
        "sklearn.utils._bunch.Bunch",
        "sklearn.model_selection._split.KFold",
        "sklearn.compose._column_transformer._RemainderColsList",
        "numpy.dtypes.ObjectDType",
        "numpy.dtypes.Float64DType",
        "numpy.dtypes.Int64DType",
        "numpy.dtypes.UInt8DType",
        "numpy.dtypes.UInt32DType",
        "numpy.dtypes.StrDType",
        "builtins.slice",
    }
)
"""Types a model file may hold beyond skops' defaults; any other type is refused."""

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    return None


def quantile_key(q: float) -> str:
    """Column/key name of a quantile, e.g. ``q10`` for 0.1."""
    return f"q{round(q * 100):02d}"


def used_features(X: pd.DataFrame) -> list[str]:
    """The features a model is fitted on: :data:`FEATURES` minus numeric columns without a
    single value in the training data (e.g. user history where no user ids exist)."""
    return CATEGORICAL + [c for c in NUMERIC if X[c].notna().any()]


def _pipeline(
    loss: str, quantile: float | None, max_iter: int, seed: int, numeric: list[str]
) -> Pipeline:
    folds = KFold(n_splits=5, shuffle=True, random_state=seed)
    encode = ColumnTransformer(
        [
            ("station", TargetEncoder(target_type="continuous", cv=folds), CATEGORICAL),
            ("numeric", "passthrough", numeric),
        ],
        remainder="drop",
    )
    kwargs: dict[str, Any] = {"loss": loss}
    if quantile is not None:
        kwargs["quantile"] = quantile
    boost = HistGradientBoostingRegressor(
        max_iter=max_iter,
        learning_rate=0.1,
        max_leaf_nodes=15,
        min_samples_leaf=20,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
        **kwargs,
    )
    return Pipeline([("encode", encode), ("boost", boost)])


@dataclass
class HourBaseline:
    """Stay quantiles and median energy by local arrival hour, from training data."""

    quantiles: tuple[float, ...]
    stay_h: list[list[float]]  # [hour][quantile]
    median_stay_h: list[float]  # [hour]
    median_energy_kwh: list[float]  # [hour]

    @classmethod
    def fit(cls, df: pd.DataFrame, quantiles: Sequence[float]) -> HourBaseline:
        hour = np.floor(local_hour(df)).astype(int) % 24
        stay = stay_h(df)
        kwh = df["energy_kwh"].to_numpy(dtype=float)
        all_q = np.quantile(stay, quantiles).tolist()
        all_med = float(np.median(stay))
        finite_kwh = kwh[np.isfinite(kwh)]
        all_kwh = float(np.median(finite_kwh)) if finite_kwh.size else 0.0
        qs, meds, kwhs = [], [], []
        for h in range(24):
            m = hour == h
            if m.sum() >= 5:
                qs.append(np.quantile(stay[m], quantiles).tolist())
                meds.append(float(np.median(stay[m])))
            else:
                qs.append(all_q)
                meds.append(all_med)
            k = kwh[m & np.isfinite(kwh)]
            kwhs.append(float(np.median(k)) if k.size >= 5 else all_kwh)
        return cls(tuple(quantiles), qs, meds, kwhs)

    def stay(self, df: pd.DataFrame) -> np.ndarray:
        """Median stay by arrival hour [h] per session."""
        hour = np.floor(local_hour(df)).astype(int) % 24
        return np.asarray(self.median_stay_h)[hour]

    def stay_quantiles(self, df: pd.DataFrame) -> np.ndarray:
        hour = np.floor(local_hour(df)).astype(int) % 24
        return np.asarray(self.stay_h)[hour]

    def energy(self, df: pd.DataFrame) -> np.ndarray:
        hour = np.floor(local_hour(df)).astype(int) % 24
        return np.asarray(self.median_energy_kwh)[hour]


@dataclass
class ForecastModel:
    """A trained departure and energy-need model with its hour baseline and metadata."""

    quantiles: tuple[float, ...]
    departure: dict[str, Pipeline]
    energy: Pipeline | None
    baseline: HourBaseline
    holiday_country: str = "NL"
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    shift_h: list[float] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- prediction -------------------------------------------------------------------------

    def predict_stay(self, df: pd.DataFrame, X: pd.DataFrame | None = None) -> np.ndarray:
        """Stay quantiles [h], one row per session, one column per :attr:`quantiles`
        (non-decreasing along a row, each ≥ :data:`MIN_STAY_H`)."""
        if X is None:
            X = build_features(df, self.holiday_country)
        if len(X) == 0:
            return np.zeros((0, len(self.quantiles)))
        cols = [self.departure[quantile_key(q)].predict(X) for q in self.quantiles]
        raw = np.column_stack(cols)
        if self.shift_h:
            raw = raw + np.asarray(self.shift_h)[None, :]
        out = np.sort(raw, axis=1)
        return np.maximum(out, MIN_STAY_H)

    def predict_energy(self, df: pd.DataFrame, X: pd.DataFrame | None = None) -> np.ndarray:
        """Energy need [kWh] per session (the hour baseline without an energy model)."""
        if X is None:
            X = build_features(df, self.holiday_country)
        if self.energy is None or len(X) == 0:
            return self.baseline.energy(df)
        return np.maximum(self.energy.predict(X), 0.0)

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """Predictions per session: ``session_id``, ``arrival``, ``departure`` (point, the
        median), ``departure_qNN`` per quantile, ``stay_h`` (point) [h], ``stay_qNN_h`` [h] and
        ``energy_kwh`` [kWh]."""
        X = build_features(df, self.holiday_country)
        q = self.predict_stay(df, X)
        out = pd.DataFrame({"session_id": df["session_id"].to_numpy(), "arrival": df["arrival"]})
        median = q[:, self.quantiles.index(0.5)] if 0.5 in self.quantiles else q.mean(axis=1)
        out["departure"] = df["arrival"] + pd.to_timedelta(median, unit="h")
        for j, qq in enumerate(self.quantiles):
            out[f"departure_{quantile_key(qq)}"] = df["arrival"] + pd.to_timedelta(
                q[:, j], unit="h"
            )
        out["stay_h"] = median
        for j, qq in enumerate(self.quantiles):
            out[f"stay_{quantile_key(qq)}_h"] = q[:, j]
        out["energy_kwh"] = self.predict_energy(df, X)
        return out.reset_index(drop=True)

    def stay_at(self, df: pd.DataFrame, quantile: float) -> np.ndarray:
        """Stay [h] at the model quantile nearest to ``quantile``."""
        q = self.predict_stay(df)
        j = int(np.argmin([abs(x - quantile) for x in self.quantiles]))
        return q[:, j]

    # -- files --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The model as skops bytes (metadata is kept apart, see :func:`save`)."""
        payload = {
            "format": MODEL_FORMAT,
            "quantiles": list(self.quantiles),
            "departure": dict(self.departure),
            "energy": self.energy,
            "baseline": {
                "quantiles": list(self.baseline.quantiles),
                "stay_h": self.baseline.stay_h,
                "median_stay_h": self.baseline.median_stay_h,
                "median_energy_kwh": self.baseline.median_energy_kwh,
            },
            "holiday_country": self.holiday_country,
            "features": list(self.features),
            "shift_h": [float(x) for x in self.shift_h],
        }
        return bytes(sio.dumps(payload, compression=zipfile.ZIP_DEFLATED))

    @classmethod
    def from_bytes(cls, data: bytes, metadata: dict[str, Any] | None = None) -> ForecastModel:
        """A model of skops bytes, loaded only if every type in it is trusted.

        Raises
        ------
        ModelFileError
            Not a skops file, corrupt, an untrusted type, or not a gridcharge model.
        """
        try:
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as e:  # zip/JSON errors of a corrupt file
            raise ModelFileError(f"model: not a readable skops file ({type(e).__name__})") from None
        bad = sorted(set(untrusted) - TRUSTED_TYPES)
        if bad:
            raise ModelFileError(f"model: refused, untrusted type(s) in the file: {', '.join(bad)}")
        try:
            payload = sio.loads(data, trusted=sorted(set(untrusted)))
        except Exception as e:
            raise ModelFileError(f"model: corrupt skops file ({type(e).__name__}: {e})") from None
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"model: not a {MODEL_FORMAT} file")
        try:
            b = payload["baseline"]
            quantiles = tuple(float(q) for q in payload["quantiles"])
            departure = payload["departure"]
            if set(departure) != {quantile_key(q) for q in quantiles} or not all(
                isinstance(p, Pipeline) for p in departure.values()
            ):
                raise ModelFileError("model: departure pipelines do not match the quantiles")
            energy = payload["energy"]
            if energy is not None and not isinstance(energy, Pipeline):
                raise ModelFileError("model: energy is not a pipeline")
            return cls(
                quantiles=quantiles,
                departure=departure,
                energy=energy,
                baseline=HourBaseline(
                    tuple(b["quantiles"]), b["stay_h"], b["median_stay_h"], b["median_energy_kwh"]
                ),
                holiday_country=str(payload["holiday_country"]),
                features=list(payload["features"]),
                shift_h=[float(x) for x in payload.get("shift_h", [])],
                metadata=dict(metadata or {}),
            )
        except (KeyError, TypeError) as e:
            raise ModelFileError(f"model: incomplete file (missing {e})") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(model: ForecastModel, directory: str | Path) -> Path:
    """Write ``model.skops`` and ``metadata.json`` (with the file's SHA-256) to ``directory``.

    The files are written to temporary names and renamed: no half-written model is left.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = model.to_bytes()
    meta = dict(model.metadata)
    meta["model_sha256"] = sha256(data)
    tmp_model = d / (MODEL_FILE + ".tmp")
    tmp_meta = d / (META_FILE + ".tmp")
    tmp_model.write_bytes(data)
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
    tmp_model.replace(d / MODEL_FILE)
    tmp_meta.replace(d / META_FILE)
    return d


def load(directory: str | Path) -> ForecastModel:
    """The model of a directory written by :func:`save`.

    Raises
    ------
    ModelFileError
        A file is missing, the model's SHA-256 differs from the metadata's (tampered or
        corrupt), or the skops file is refused (see :meth:`ForecastModel.from_bytes`).
    """
    d = Path(directory)
    if not d.is_dir():
        raise ModelFileError(f"model: {d} is not a model directory")
    model_path, meta_path = d / MODEL_FILE, d / META_FILE
    for p in (model_path, meta_path):
        if not p.is_file():
            raise ModelFileError(f"model: {p} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"model: {meta_path} is not valid JSON") from None
    data = model_path.read_bytes()
    if not isinstance(meta, dict) or meta.get("model_sha256") != sha256(data):
        raise ModelFileError(
            f"model: {model_path} does not match the SHA-256 in {META_FILE} (tampered or corrupt)"
        )
    return ForecastModel.from_bytes(data, meta)


def train(
    df: pd.DataFrame,
    *,
    quantiles: Sequence[float] = QUANTILES,
    holiday_country: str = "NL",
    max_iter: int = 150,
    seed: int = 0,
    progress: Progress = _no_progress,
    X: pd.DataFrame | None = None,
    calibrate: bool = True,
) -> ForecastModel:
    """Fit the departure quantile models and the energy model on sessions ``df``.

    Parameters
    ----------
    df : DataFrame
        Completed sessions (``forecasting.data``), at least :data:`MIN_TRAIN_SESSIONS`.
    quantiles : sequence of float
        Quantiles in (0, 1); 0.5 is added when absent (the point prediction).
    holiday_country : str
        Public-holiday calendar of the features.
    X : DataFrame, optional
        Features of ``df`` if already built (:func:`build_features`).
    calibrate : bool
        Calibrate the quantiles on time (conformalised quantile regression): fit on the first
        80 % of the sessions by arrival, take for each quantile ``q`` the shift ``c_q`` = the
        ``q``-quantile of ``y − ŷ_q`` on the last 20 %, then refit on all sessions and add
        ``c_q`` to every prediction. Quantile boosters alone tend to give too narrow
        intervals on the future. Skipped below :data:`MIN_CALIBRATION_SESSIONS`.

    Raises
    ------
    ForecastDataError
        Too few sessions, a session without departure, or a quantile outside (0, 1).
    """
    if max_iter < 1:
        raise ForecastDataError("max_iter", max_iter, "must be ≥ 1")
    qs = sorted({float(q) for q in quantiles} | {0.5})
    for q in qs:
        if not 0.0 < q < 1.0:
            raise ForecastDataError("quantiles", q, "must lie in (0, 1)")
    if len(df) < MIN_TRAIN_SESSIONS:
        raise ForecastDataError(
            "data", len(df), f"too few sessions to train (need ≥ {MIN_TRAIN_SESSIONS})"
        )
    y = stay_h(df)
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ForecastDataError(
            f"session {df['session_id'].iat[i]}.departure", None, "missing (training needs it)"
        )
    if X is None:
        progress(0.0, "features")
        X = build_features(df, holiday_country)
    numeric = [c for c in used_features(X) if c in NUMERIC]
    steps = len(qs) + 1
    shift: list[float] = []
    if calibrate and len(df) >= MIN_CALIBRATION_SESSIONS:
        k = int(len(df) * 0.8)
        steps += len(qs)
        for j, q in enumerate(qs):
            progress(j / steps, f"calibrating quantile {q:.2f}")
            pipe = _pipeline("quantile", q, max_iter, seed, numeric).fit(X.iloc[:k], y[:k])
            shift.append(float(np.quantile(y[k:] - pipe.predict(X.iloc[k:]), q)))
    done = len(shift)
    departure: dict[str, Pipeline] = {}
    for k, q in enumerate(qs):
        progress((done + k) / steps, f"departure quantile {q:.2f}")
        departure[quantile_key(q)] = _pipeline("quantile", q, max_iter, seed, numeric).fit(X, y)
    progress((done + len(qs)) / steps, "energy need")
    kwh = df["energy_kwh"].to_numpy(dtype=float)
    ok = np.isfinite(kwh)
    energy = None
    if ok.sum() >= MIN_TRAIN_SESSIONS:
        energy = _pipeline("absolute_error", None, max_iter, seed, numeric).fit(X[ok], kwh[ok])
    progress(1.0, "done")
    return ForecastModel(
        quantiles=tuple(qs),
        departure=departure,
        energy=energy,
        baseline=HourBaseline.fit(df, qs),
        holiday_country=holiday_country,
        features=CATEGORICAL + numeric,
        shift_h=shift,
    )

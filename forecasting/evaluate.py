"""Evaluation on time-ordered splits: the model against the baselines.

Metrics (``docs/FORECASTING.md``): mean absolute error of the departure [h]; the pinball loss
per quantile [h]; the coverage of the 80 % interval (share of actual departures between the
10 % and 90 % quantiles; target 80 ± 5 %); the MAE by user-history bucket (``new``: no
session of the user ended before the arrival, ``known``: at least one; sessions without user
id count as new); the energy MAE [kWh].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from forecasting.errors import ForecastDataError
from forecasting.features import build_features, stay_h
from forecasting.model import (
    QUANTILES,
    ForecastModel,
    HourBaseline,
    Progress,
    _no_progress,
    quantile_key,
    train,
)

MODEL = "model"
"""Names of the predictors in results: the model, the median stay by local arrival hour, the
user's past median stay (new users: the hour median)."""
HOUR = "hour median"
USER = "user median"


def pinball(y: np.ndarray, pred: np.ndarray, q: float) -> float:
    """Mean pinball loss [h]: ``mean(max(q·(y − ŷ), (q − 1)·(y − ŷ)))``."""
    d = y - pred
    return float(np.mean(np.maximum(q * d, (q - 1.0) * d)))


def metrics(
    y_h: np.ndarray,
    point_h: np.ndarray,
    quantiles: Sequence[float] | None = None,
    q_h: np.ndarray | None = None,
    known: np.ndarray | None = None,
    energy_kwh: np.ndarray | None = None,
    energy_pred_kwh: np.ndarray | None = None,
) -> dict[str, Any]:
    """The metrics of one predictor on one test set (stays [h], energies [kWh])."""
    out: dict[str, Any] = {"n": len(y_h), "mae_h": float(np.mean(np.abs(y_h - point_h)))}
    if quantiles is not None and q_h is not None:
        out["pinball_h"] = {
            quantile_key(q): pinball(y_h, q_h[:, j], q) for j, q in enumerate(quantiles)
        }
        if 0.1 in quantiles and 0.9 in quantiles:
            lo, hi = q_h[:, list(quantiles).index(0.1)], q_h[:, list(quantiles).index(0.9)]
            out["coverage_80"] = float(np.mean((y_h >= lo) & (y_h <= hi)))
            out["width_80_h"] = float(np.mean(hi - lo))
    if known is not None:
        for name, m in (("new", ~known), ("known", known)):
            out[f"mae_{name}_h"] = float(np.mean(np.abs(y_h - point_h)[m])) if m.any() else None
            out[f"n_{name}"] = int(m.sum())
    if energy_kwh is not None and energy_pred_kwh is not None:
        ok = np.isfinite(energy_kwh)
        out["energy_mae_kwh"] = (
            float(np.mean(np.abs(energy_kwh[ok] - energy_pred_kwh[ok]))) if ok.any() else None
        )
    return out


def compare(
    model: ForecastModel,
    test: pd.DataFrame,
    X_test: pd.DataFrame | None = None,
    baseline: HourBaseline | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of the model and of both baselines on ``test`` (whose history features may use
    every session of the frame they were built from that ended before each arrival).

    ``baseline`` is the hour table of the training data (default: the model's own).
    """
    if X_test is None:
        X_test = build_features(test, model.holiday_country)
    if len(test) == 0:
        raise ForecastDataError("test", 0, "no sessions to evaluate on")
    y = stay_h(test)
    ok = np.isfinite(y)
    if not ok.all():
        test, X_test, y = test[ok], X_test[ok], y[ok]
    base = baseline or model.baseline
    known = X_test["user_count"].to_numpy() > 0
    kwh = test["energy_kwh"].to_numpy(dtype=float)
    q = model.predict_stay(test, X_test)
    point = q[:, model.quantiles.index(0.5)]
    out = {
        MODEL: metrics(y, point, model.quantiles, q, known, kwh, model.predict_energy(test, X_test))
    }
    hour_point = base.stay(test)
    out[HOUR] = metrics(
        y, hour_point, base.quantiles, base.stay_quantiles(test), known, kwh, base.energy(test)
    )
    user_med = X_test["user_median_stay_h"].to_numpy(dtype=float)
    user_point = np.where(np.isfinite(user_med), user_med, hour_point)
    user_kwh = X_test["user_median_energy_kwh"].to_numpy(dtype=float)
    out[USER] = metrics(
        y,
        user_point,
        None,
        None,
        known,
        kwh,
        np.where(np.isfinite(user_kwh), user_kwh, base.energy(test)),
    )
    return out


def time_split(df: pd.DataFrame, test_fraction: float = 0.2) -> tuple[int, pd.Timestamp]:
    """Index and arrival of the first test session when the last ``test_fraction`` of the
    sessions (by arrival) is held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ForecastDataError("test_fraction", test_fraction, "must lie in (0, 1)")
    n = len(df)
    k = round(n * (1.0 - test_fraction))
    k = min(max(k, 1), n - 1)
    return k, df["arrival"].iat[k]


@dataclass
class Evaluation:
    """Hold-out and rolling-origin metrics of a training set."""

    holdout: dict[str, dict[str, Any]]
    rolling: list[dict[str, dict[str, Any]]]
    n_train: int
    n_test: int
    test_from: str

    def rolling_mean(self) -> dict[str, dict[str, float]]:
        """Mean over the rolling-origin folds of each predictor's scalar metrics."""
        out: dict[str, dict[str, float]] = {}
        for name in self.rolling[0] if self.rolling else {}:
            keys = [
                k
                for k, v in self.rolling[0][name].items()
                if isinstance(v, float | int) and k != "n"
            ]
            out[name] = {
                k: float(np.mean([f[name][k] for f in self.rolling if f[name].get(k) is not None]))
                for k in keys
            }
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "holdout": self.holdout,
            "rolling_origin": self.rolling,
            "rolling_origin_mean": self.rolling_mean(),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "test_from": self.test_from,
        }


def evaluate(
    df: pd.DataFrame,
    *,
    test_fraction: float = 0.2,
    folds: int = 3,
    quantiles: Sequence[float] = QUANTILES,
    holiday_country: str = "NL",
    max_iter: int = 150,
    progress: Progress = _no_progress,
) -> Evaluation:
    """Train on the past and test on the future: one hold-out split (the last
    ``test_fraction`` by arrival) and ``folds`` rolling origins (the data after the first half
    cut into ``folds`` consecutive blocks; each block is tested with a model trained on
    everything before it).

    Features are built once on the whole frame: each one uses only sessions that ended before
    its own arrival, so a test session's history may include earlier test sessions (as it
    would in service), never later ones.
    """
    X = build_features(df, holiday_country)
    k, t0 = time_split(df, test_fraction)
    total = 1 + folds
    progress(0.0, "hold-out")

    def fit_test(a: int, b: int, c: int, step: int) -> dict[str, dict[str, Any]]:
        def sub(frac: float, msg: str) -> None:
            progress((step + frac) / total, msg)

        m = train(
            df.iloc[a:b],
            quantiles=quantiles,
            holiday_country=holiday_country,
            max_iter=max_iter,
            progress=sub,
            X=X.iloc[a:b],
        )
        return compare(m, df.iloc[b:c], X.iloc[b:c])

    holdout = fit_test(0, k, len(df), 0)
    rolling: list[dict[str, dict[str, Any]]] = []
    n = len(df)
    edges: list[int] = np.linspace(n // 2, n, folds + 1).astype(int).tolist() if folds > 0 else []
    for f in range(folds):
        lo, hi = int(edges[f]), int(edges[f + 1])
        if hi - lo < 1 or lo < 20:
            continue
        rolling.append(fit_test(0, lo, hi, 1 + f))
    progress(1.0, "done")
    return Evaluation(holdout, rolling, k, n - k, t0.isoformat())

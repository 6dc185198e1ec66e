"""Train with metadata, evaluate a saved model, write predictions: the steps the command line
and the service share."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops

from forecasting.data import fingerprint
from forecasting.evaluate import compare, time_split
from forecasting.features import build_features
from forecasting.model import (
    QUANTILES,
    ForecastModel,
    Progress,
    _no_progress,
    quantile_key,
    train,
)

DEFAULT_TEST_FRACTION = 0.2


def train_model(
    df: pd.DataFrame,
    *,
    created_by: str,
    source: str,
    quantiles: Sequence[float] = QUANTILES,
    holiday_country: str = "NL",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_iter: int = 150,
    progress: Progress = _no_progress,
) -> ForecastModel:
    """A model trained on all of ``df``, with metadata: the hold-out metrics of the same
    recipe trained on the first ``1 − test_fraction`` of the sessions (by arrival) and tested
    on the rest, beside both baselines; the training-data fingerprint, features, quantiles,
    creator, time and library versions.
    """
    X = build_features(df, holiday_country)
    k, t0 = time_split(df, test_fraction)

    def first(f: float, msg: str) -> None:
        progress(0.5 * f, f"hold-out: {msg}")

    def second(f: float, msg: str) -> None:
        progress(0.5 + 0.5 * f, f"final: {msg}")

    held = train(
        df.iloc[:k],
        quantiles=quantiles,
        holiday_country=holiday_country,
        max_iter=max_iter,
        progress=first,
        X=X.iloc[:k],
    )
    holdout = compare(held, df.iloc[k:], X.iloc[k:])
    model = train(
        df,
        quantiles=quantiles,
        holiday_country=holiday_country,
        max_iter=max_iter,
        progress=second,
        X=X,
    )
    model.metadata = {
        "format": "gridcharge.forecast-metadata/1",
        "created_at": datetime.now(UTC).isoformat(),
        "created_by": created_by,
        "source": source,
        "training_data": {
            "fingerprint_sha256": fingerprint(df),
            "sessions": len(df),
            "first_arrival": df["arrival"].iat[0].isoformat(),
            "last_arrival": df["arrival"].iat[-1].isoformat(),
            "users": int(df["user_id"].dropna().nunique()),
        },
        "features": list(model.features),
        "quantiles": list(model.quantiles),
        "quantile_shift_h": list(model.shift_h),
        "holiday_country": holiday_country,
        "metrics": {
            "holdout": holdout,
            "test_fraction": test_fraction,
            "n_train": k,
            "n_test": len(df) - k,
            "test_from": t0.isoformat(),
        },
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "skops": skops.__version__,
        },
    }
    return model


def after_training(model: ForecastModel, df: pd.DataFrame) -> pd.DataFrame:
    """The sessions of ``df`` that arrived after the model's last training arrival (all of
    them when the model has no such record or none did)."""
    last = model.metadata.get("training_data", {}).get("last_arrival")
    if not last:
        return df
    later = df[df["arrival"] > pd.Timestamp(last)]
    return later if len(later) else df


def predictions_frame(model: ForecastModel, df: pd.DataFrame) -> pd.DataFrame:
    """Predictions for every session, times as ISO 8601 UTC text, with the actual departure
    and energy where the input had them (``departure_actual``, ``energy_kwh_actual``)."""
    pred = model.predict(df)
    out = pd.DataFrame({"session_id": pred["session_id"]})
    for col in pred.columns:
        if col == "session_id":
            continue
        if str(pred[col].dtype).startswith("datetime64"):
            out[col] = pred[col].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            out[col] = np.round(pred[col].to_numpy(dtype=float), 4)
    out["departure_actual"] = (
        df["departure"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna("").to_numpy()
    )
    out["energy_kwh_actual"] = df["energy_kwh"].to_numpy(dtype=float)
    return out


def metric_rows(result: dict[str, dict[str, Any]], quantiles: Sequence[float]) -> list[list[str]]:
    """Rows of a metrics table: predictor, MAE, MAE new/known users, pinball per quantile,
    80 % coverage, energy MAE (``–`` where a predictor has no such figure)."""

    def f(x: Any, fmt: str = "{:.2f}") -> str:
        return "–" if x is None else fmt.format(x)

    rows = []
    for name, m in result.items():
        pin = m.get("pinball_h", {})
        rows.append(
            [
                name,
                str(m["n"]),
                f(m["mae_h"]),
                f(m.get("mae_new_h")),
                f(m.get("mae_known_h")),
                *[f(pin.get(quantile_key(q))) for q in quantiles],
                f(m.get("coverage_80"), "{:.1%}"),
                f(m.get("energy_mae_kwh"), "{:.2f}"),
            ]
        )
    return rows


def metric_header(quantiles: Sequence[float]) -> list[str]:
    return [
        "predictor",
        "n",
        "MAE h",
        "new",
        "known",
        *[f"pb {quantile_key(q)}" for q in quantiles],
        "cov 80",
        "kWh MAE",
    ]

"""Measurement reports from the stored meter states: shifted energy per activation, its value,
the performance ratio and the non-responding chargers (``docs/MEASUREMENT.md``).

``POST /v1/measurement/activation-report`` takes the activations in the body; the
``/v1/demand-response/...`` routes measure the activations of the stored activation log
(:mod:`api.measure_dr`). Computation runs in a plain ``def`` endpoint,
so it never blocks the event loop.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from api.db import utcnow
from api.deps import DbDep, SettingsDep, instant, require
from api.measure_dr import (
    MeasureError,
    day_report,
    erasable_report,
    plan_at_signal,
    profiles_at_states,
    sent_profiles,
    states_frame,
)
from api.measure_dr import (
    activation_report as logged_report,
)
from api.security import Principal
from api.sessions import UtcDateTime
from measurement.errors import MeasurementError
from measurement.flexibility import non_responding
from measurement.io import load_activations, load_prices, load_states
from measurement.reconstruct import reconstruct
from measurement.shifted import (
    estimate_cars,
    measure_activations,
    plan_shifted,
    with_session_baseline,
)

router = APIRouter(tags=["measurement"])

MARGIN = timedelta(hours=1)
"""States read before the first signal and after the last clear."""
MAX_ACTIVATIONS = 500


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActivationIn(_Model):
    id: str = Field(min_length=1, max_length=200)
    t_signal: UtcDateTime
    t_clear: UtcDateTime
    region: str | None = Field(default=None, description="Region signalled (default: all).")
    price_eur_per_mwh: float | None = Field(
        default=None, description="Imbalance price of the activation [EUR/MWh]."
    )


class PriceIn(_Model):
    start: UtcDateTime = Field(description="Start of the ISP.")
    price_eur_per_mwh: float


class ReportRequest(_Model):
    activations: list[ActivationIn] = Field(min_length=1, max_length=MAX_ACTIVATIONS)
    prices: list[PriceIn] | None = Field(
        default=None, description="Imbalance price per ISP, for activations without a price."
    )
    tolerance_a: float = Field(default=1.0, gt=0, le=16)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "activations": [
                        {
                            "id": "act-1",
                            "t_signal": "2026-11-25T17:05:00Z",
                            "t_clear": "2026-11-25T17:15:00Z",
                            "region": "region-01",
                            "price_eur_per_mwh": 412.0,
                        }
                    ]
                }
            ]
        },
    )


@router.post(
    "/v1/measurement/activation-report",
    summary="Shifted energy and non-responders per activation",
)
def activation_report(
    body: ReportRequest,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("operator", "brp"))],
) -> dict[str, Any]:
    """Measure each activation of the body from the stored meter states: delivered, baseline
    and shifted energy [kWh], value [EUR], theoretical minimum and performance ratio, and the
    sessions/stations that did not follow the curtailment, with evidence."""
    for k, a in enumerate(body.activations):
        if a.t_clear <= a.t_signal:
            raise HTTPException(
                422, f"activations[{k}].t_clear: must be after t_signal (got {a.t_clear})"
            )
        if a.t_clear - a.t_signal > timedelta(hours=4):
            raise HTTPException(
                422, f"activations[{k}].t_clear: activation longer than 4 h (got {a.t_clear})"
            )
    acts = [
        {
            "id": a.id,
            "t_signal": a.t_signal.isoformat(),
            "t_clear": a.t_clear.isoformat(),
            "region": a.region or "",
            "price_eur_per_mwh": "" if a.price_eur_per_mwh is None else a.price_eur_per_mwh,
        }
        for a in body.activations
    ]
    try:
        activations = load_activations(acts)
        prices = (
            load_prices(
                [
                    {"start": p.start.isoformat(), "price_eur_per_mwh": p.price_eur_per_mwh}
                    for p in body.prices
                ]
            )
            if body.prices
            else None
        )
    except MeasurementError as exc:
        raise HTTPException(422, str(exc)) from None
    lo = min(a.t_signal for a in body.activations) - MARGIN
    hi = max(a.t_clear for a in body.activations) + MARGIN
    frame = states_frame(db, lo, hi)
    if frame.empty:
        return {
            "activations": [
                {"id": a.id, "sessions": 0, "note": "no meter states around the activation"}
                for a in body.activations
            ],
            "non_responding": [],
            "stations": [],
        }
    try:
        states = load_states(frame)
    except MeasurementError as exc:  # stored data is validated on the way in; be safe
        raise HTTPException(409, f"stored states cannot be measured: {exc}") from None
    rec = reconstruct(states, np.r_[activations["t_signal_s"], activations["t_clear_s"]])
    results = measure_activations(rec, activations, prices)
    evidence, stations = non_responding(states, rec, activations, tolerance_a=body.tolerance_a)
    # with the profiles sent to the CPO before each signal, the per-session baseline is the
    # headline (each car's maximum, need and taper learned from the states)
    ids = [str(s) for s in rec.session_ids]
    sent = sent_profiles(db, ids, hi)
    if sent:
        limits = profiles_at_states(states, sent)
        given = states["profile_a"].to_numpy(float)
        states["profile_a"] = np.where(np.isnan(given), limits, given)
        cars = estimate_cars(states, rec, activations)
        for k, a in enumerate(activations.itertuples(index=False)):
            ts, tc = float(a.t_signal_s), float(a.t_clear_s)
            est = plan_shifted(
                rec,
                ts,
                tc,
                plan_at_signal(ids, sent, ts, tc),
                str(a.region),
                cars=cars,
                price_eur_per_mwh=float(a.price_eur_per_mwh),
                prices=prices,
            )
            if est.without_plan < est.sessions:
                results[k] = with_session_baseline(results[k], est)
    return {
        "activations": [r.to_dict() for r in results],
        "non_responding": evidence.to_dict(orient="records"),
        "stations": stations.to_dict(orient="records"),
    }


Reader = Annotated[Principal, Depends(require("operator", "brp"))]
ActivationId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Activation id.")]
Tolerance = Annotated[
    float, Query(gt=0, le=16, description="Current above the expected maximum [A] tolerated.")
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown activation"},
    409: {"description": "The activation is still running"},
    422: {"description": "Invalid input; the message names the field"},
}


def _measured(work: Any) -> dict[str, Any]:
    try:
        out: dict[str, Any] = work()
    except MeasureError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return out


@router.get(
    "/v1/demand-response/activations/{activation_id}/measurement",
    summary="Shifted energy, value, performance and non-responders of a logged activation",
    responses=_ERRORS,
)
def logged_activation_report(
    activation_id: ActivationId, db: DbDep, principal: Reader, tolerance_a: Tolerance = 1.0
) -> dict[str, Any]:
    """Measured from the stored meter states of the sessions the activation curtailed:
    ``t_signal`` = activation start, ``t_clear`` = its restore time, value at the imbalance
    price sent with the signal. ``status`` is ``recovering`` (the report may still change) for
    20 minutes after the restore, then ``complete``; a running activation answers 409."""
    return _measured(lambda: logged_report(db, activation_id, utcnow(), tolerance_a))


@router.get(
    "/v1/demand-response/measurement/days/{date}",
    summary="Measurement of every activation of a local day, with totals",
    responses=_ERRORS,
)
def day_measurement(
    date: str, db: DbDep, settings: SettingsDep, principal: Reader, tolerance_a: Tolerance = 1.0
) -> dict[str, Any]:
    """Every activation that started on the local day ``YYYY-MM-DD`` (service time zone),
    its report, the day's totals and the non-responding stations."""
    return _measured(lambda: day_report(db, settings, date, utcnow(), tolerance_a))


@router.get(
    "/v1/demand-response/measurement/erasable-by-hour",
    summary="Erasable power by hour of day from the stored meter states",
    responses=_ERRORS,
)
def erasable_by_hour_curve(
    db: DbDep,
    settings: SettingsDep,
    principal: Reader,
    start: Annotated[
        str | None,
        Query(description="Default: end − 7 days.", json_schema_extra={"format": "date-time"}),
    ] = None,
    end: Annotated[
        str | None, Query(description="Default: now.", json_schema_extra={"format": "date-time"})
    ] = None,
) -> dict[str, Any]:
    """``P_erasable = Σ_i max(p_i − p_min,i, 0)`` per minute over the stored history, grouped
    by local hour of day: mean, 10 %, 50 % and 90 % [kW]. At most 31 days."""
    hi = instant(end, "end") or utcnow()
    lo = instant(start, "start") or hi - timedelta(days=7)
    return _measured(lambda: erasable_report(db, settings, lo, hi))

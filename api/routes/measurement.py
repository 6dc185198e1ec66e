"""Measurement reports from the stored meter states: shifted energy per activation, its value,
the performance ratio and the non-responding chargers (``docs/MEASUREMENT.md``).

The activations come in the request body (the activation log); the route reads the states of
the sessions that were plugged in around them. Computation runs in a plain ``def`` endpoint,
so it never blocks the event loop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import DbDep, require
from api.models import ChargingSession, Connector, SessionState, Station, TopologyNode
from api.security import Principal
from api.sessions import UtcDateTime
from measurement.errors import MeasurementError
from measurement.flexibility import non_responding
from measurement.io import load_activations, load_prices, load_states
from measurement.reconstruct import reconstruct
from measurement.shifted import measure_activations

router = APIRouter(prefix="/v1/measurement", tags=["measurement"])

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


def _regions(db: Any) -> dict[str, str]:
    parent = dict(db.execute(select(TopologyNode.id, TopologyNode.parent)).all())

    def root(node: str) -> str:
        seen = set()
        while parent.get(node) is not None and node not in seen:
            seen.add(node)
            node = parent[node]
        return node

    return {n: root(n) for n in parent}


def states_frame(db: Any, lo: datetime, hi: datetime) -> pd.DataFrame:
    """The stored states between ``lo`` and ``hi`` with their session's topology, in the
    columns of :func:`measurement.io.load_states`."""
    stmt = (
        select(
            SessionState.session_id,
            SessionState.timestamp,
            SessionState.kwh,
            SessionState.current_a,
            SessionState.phases,
            ChargingSession.phases,
            ChargingSession.opt_out,
            Connector.station_id,
            Station.node,
            Station.min_current_a,
        )
        .join(ChargingSession, ChargingSession.id == SessionState.session_id)
        .join(Connector, Connector.id == ChargingSession.connector_id, isouter=True)
        .join(Station, Station.id == Connector.station_id, isouter=True)
        .where(SessionState.timestamp >= lo, SessionState.timestamp <= hi)
    )
    rows = db.execute(stmt).all()
    region = _regions(db)
    records = []
    for sid, ts, kwh, cur, ph, sph, opt, station, node, min_a in rows:
        i = list(cur) if cur else [0.0, 0.0, 0.0]
        records.append(
            {
                "session_id": sid,
                "timestamp": ts.isoformat(),
                "kwh": kwh,
                "current_l1_a": i[0],
                "current_l2_a": i[1],
                "current_l3_a": i[2],
                "phases": ph or sph or 3,
                "station": station or "",
                "subcluster": node or "",
                "region": region.get(node, node or "") if node else "",
                "min_current_a": min_a if min_a is not None else 8.0,
                "opt_out": "true" if opt else "false",
            }
        )
    return pd.DataFrame.from_records(records)


@router.post("/activation-report", summary="Shifted energy and non-responders per activation")
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
    return {
        "activations": [r.to_dict() for r in results],
        "non_responding": evidence.to_dict(orient="records"),
        "stations": stations.to_dict(orient="records"),
    }

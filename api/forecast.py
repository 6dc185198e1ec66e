"""The forecasting registry in the service: training jobs, stored model versions, promotions,
and the promoted model's predictions for the live scenario.

- **Storage.** A version's skops bytes and their SHA-256 are stored in the database
  (``forecast_models``), so every worker and a PostgreSQL deployment share them. Bytes whose
  SHA-256 differs, or that hold an untrusted type, are refused when loaded.
- **Promotion.** One model in service per scope: a region (a topology root node) or
  ``global``. A session takes its region's model, else the global one. A promotion is refused
  unless the version loads. A rollback retires the current promotion; the previous one serves
  again.
- **In service.** The scheduler asks :func:`live_predictions` on every run: the promoted
  versions are looked up in the database each time (no restart needed) and loaded once per
  process (cached by id and SHA-256). If a promoted version no longer loads (its bytes were
  altered), it is logged and the previous promotion of that scope serves instead.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import psutil
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from threadpoolctl import threadpool_limits

from api.db import transaction
from api.models import ChargingSession, Connector, Station, TopologyNode
from api.models_forecast import ForecastModelVersion, ForecastPromotion
from api.settings import Settings
from forecasting.data import from_records
from forecasting.errors import ForecastDataError, ModelFileError
from forecasting.model import ForecastModel, sha256
from forecasting.workflow import train_model

log = logging.getLogger(__name__)

GLOBAL = "global"
"""Scope of the model serving sessions whose region has none of its own."""

_cache: dict[tuple[int, str], ForecastModel] = {}
_cache_lock = threading.Lock()


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- data from stored sessions --------------------------------------------------------------


def region_of_nodes(db: Session) -> dict[str, str]:
    """Topology node → its root (the DSO region)."""
    parent = {n.id: n.parent for n in db.scalars(select(TopologyNode))}
    out: dict[str, str] = {}
    for node in parent:
        cur, seen = node, set()
        while parent.get(cur) is not None and cur not in seen:
            seen.add(cur)
            cur = parent[cur]  # type: ignore[assignment]
        out[node] = cur
    return out


def connector_places(db: Session) -> dict[str, tuple[str, str]]:
    """Connector → (station, region)."""
    regions = region_of_nodes(db)
    station_node = {s.id: s.node for s in db.scalars(select(Station))}
    return {
        c.id: (c.station_id, regions.get(station_node.get(c.station_id, ""), ""))
        for c in db.scalars(select(Connector))
    }


def _record(s: ChargingSession, station: str, *, ended: bool) -> dict[str, Any]:
    return {
        "session_id": s.id,
        "user": s.token_hash,
        "station_id": station,
        "arrival": s.start_date_time,
        "departure": s.end_date_time if ended else None,
        "energy_kwh": float(s.kwh) if ended and s.kwh is not None else None,
        "stated_departure": s.departure,
        "stated_energy_kwh": s.energy_need_kwh,
    }


def stored_sessions(
    db: Session, settings: Settings, region: str | None = None, since: datetime | None = None
) -> pd.DataFrame:
    """The completed sessions (an end after the start) as a training frame, optionally only
    those of ``region`` and arriving from ``since``.

    Raises
    ------
    ForecastDataError
        No completed session matches.
    """
    places = connector_places(db)
    q = select(ChargingSession).where(ChargingSession.end_date_time.is_not(None))
    if since is not None:
        q = q.where(ChargingSession.start_date_time >= since)
    records = []
    for s in db.scalars(q.order_by(ChargingSession.start_date_time, ChargingSession.id)):
        station, reg = places.get(s.connector_id, (s.connector_id, ""))
        if region is not None and reg != region:
            continue
        if s.end_date_time is None or s.end_date_time <= s.start_date_time:
            continue
        records.append(_record(s, station, ended=True))
    if not records:
        where = f" in region {region!r}" if region else ""
        raise ForecastDataError("sessions", 0, f"no completed sessions stored{where}")
    return from_records(records, local_tz=settings.timezone)


# -- training jobs ---------------------------------------------------------------------------


def this_worker() -> str:
    """``host:pid:start time`` of this process (a reused pid has another start time)."""
    proc = psutil.Process()
    return f"{socket.gethostname()}:{proc.pid}:{int(proc.create_time())}"


def _alive(worker: str | None) -> bool:
    """Whether the process named by ``worker`` still runs; ``True`` for another host's (it
    cannot be checked from here)."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except (psutil.Error, ValueError):
        return False


def fail_interrupted(factory: sessionmaker[Session]) -> None:
    """Mark training jobs left queued or running by a process of this host that no longer runs
    as failed (jobs of live workers, and of other hosts, are left alone)."""
    with transaction(factory) as db:
        for row in db.scalars(
            select(ForecastModelVersion).where(
                ForecastModelVersion.status.in_(["queued", "running"])
            )
        ):
            if _alive(row.worker):
                continue
            row.status = "failed"
            row.error = "interrupted: the service stopped before training finished"
            row.finished_at = now_utc()


def run_training(
    factory: sessionmaker[Session],
    version_id: int,
    df: pd.DataFrame,
    created_by: str,
    source: str,
    holiday_country: str,
    max_iter: int = 150,
) -> None:
    """Train version ``version_id`` on ``df`` and store the result (status, progress and
    errors are written to its row as it goes)."""
    last = [-1.0]

    def progress(fraction: float, message: str) -> None:
        if fraction - last[0] < 0.02 and fraction < 1.0:
            return
        last[0] = fraction
        with transaction(factory) as db:
            row = db.get(ForecastModelVersion, version_id)
            if row is not None:
                row.progress = round(float(fraction), 4)
                row.message = message

    with transaction(factory) as db:
        row = db.get(ForecastModelVersion, version_id)
        assert row is not None
        row.status = "running"
    try:
        # one OpenMP thread: the scheduler's solves keep the other cores
        with threadpool_limits(limits=1):
            model = train_model(
                df,
                created_by=created_by,
                source=source,
                holiday_country=holiday_country,
                max_iter=max_iter,
                progress=progress,
            )
        data = model.to_bytes()
    except Exception as exc:  # a failed job is reported on its row, never lost
        log.exception("training of forecast model %s failed", version_id)
        with transaction(factory) as db:
            row = db.get(ForecastModelVersion, version_id)
            assert row is not None
            row.status = "failed"
            row.error = f"{type(exc).__name__}: {exc}"
            row.finished_at = now_utc()
        return
    with transaction(factory) as db:
        row = db.get(ForecastModelVersion, version_id)
        assert row is not None
        row.model = data
        row.model_sha256 = sha256(data)
        row.meta = model.metadata
        row.fingerprint = model.metadata["training_data"]["fingerprint_sha256"]
        row.n_sessions = len(df)
        row.status = "ready"
        row.progress = 1.0
        row.message = "done"
        row.finished_at = now_utc()


# -- loading, promotion ----------------------------------------------------------------------


def load_version(row: ForecastModelVersion) -> ForecastModel:
    """The model of a stored version (cached per process by id and SHA-256).

    Raises
    ------
    ModelFileError
        Not ready, bytes that do not match the stored SHA-256, or a refused skops file.
    """
    if row.status != "ready" or row.model is None or row.model_sha256 is None:
        raise ModelFileError(f"version: model {row.id} is not ready (status {row.status})")
    data = bytes(row.model)
    digest = sha256(data)
    if digest != row.model_sha256:
        raise ModelFileError(
            f"version: model {row.id} refused, its bytes do not match the stored SHA-256 "
            "(tampered or corrupt)"
        )
    key = (row.id, digest)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    model = ForecastModel.from_bytes(data, {**(row.meta or {}), "model_sha256": digest})
    with _cache_lock:
        if len(_cache) > 16:
            _cache.clear()
        _cache[key] = model
    return model


def active_promotions(db: Session) -> dict[str, list[ForecastPromotion]]:
    """Per scope, its promotions not retired, newest first."""
    out: dict[str, list[ForecastPromotion]] = {}
    for p in db.scalars(
        select(ForecastPromotion)
        .where(ForecastPromotion.retired_at.is_(None))
        .order_by(ForecastPromotion.id.desc())
    ):
        out.setdefault(p.scope, []).append(p)
    return out


def serving_models(db: Session) -> dict[str, tuple[int, ForecastModel]]:
    """Per scope, the version that serves and its model: the newest active promotion that
    loads (a refused one is logged and the one before serves)."""
    out: dict[str, tuple[int, ForecastModel]] = {}
    for scope, promos in active_promotions(db).items():
        for p in promos:
            row = db.get(ForecastModelVersion, p.version_id)
            if row is None:
                continue
            try:
                out[scope] = (row.id, load_version(row))
                break
            except ModelFileError as exc:
                log.error("forecast model for %s not used: %s", scope, exc)
    return out


# -- predictions for the live scenario -------------------------------------------------------


@dataclass(frozen=True)
class LivePrediction:
    """What the promoted model predicts for one plugged-in session."""

    departure: datetime
    energy_kwh: float
    version: int


_live_cache: dict[tuple[str, float, float, str], LivePrediction] = {}
_LIVE_CACHE_MAX = 200_000


def _key(model: ForecastModel) -> str:
    return str(model.metadata.get("model_sha256", id(model)))


def live_predictions(
    db: Session, settings: Settings, sessions: Sequence[ChargingSession]
) -> dict[str, LivePrediction]:
    """Predicted departure (at quantile ``settings.forecast_quantile``) and energy need of the
    plugged-in ``sessions``, from the model promoted for each session's region (else the
    global one). Empty when no model is promoted or ``forecast_quantile`` is 0.

    The per-user history comes from the stored completed sessions with the same token hash
    that ended in the last ``settings.forecast_history_days``. A session is predicted once per
    version and quantile (at its first run; the features are those of its arrival) and the
    prediction is kept in a per-process cache, so a run predicts only new sessions.
    """
    if not sessions or settings.forecast_quantile <= 0:
        return {}
    models = serving_models(db)
    if not models:
        return {}
    places = connector_places(db)
    q = settings.forecast_quantile
    scope_of: dict[str, str] = {}
    out: dict[str, LivePrediction] = {}
    todo: list[ChargingSession] = []
    for s in sessions:
        region = places.get(s.connector_id, (s.connector_id, ""))[1]
        scope = region if region in models else GLOBAL
        if scope not in models:
            continue
        scope_of[s.id] = scope
        hit = _live_cache.get((_key(models[scope][1]), q, settings.forecast_history_days, s.id))
        if hit is not None:
            out[s.id] = hit
        else:
            todo.append(s)
    if not todo:
        return out
    tokens = {s.token_hash for s in todo if s.token_hash}
    records: list[dict[str, Any]] = []
    live_ids = {s.id for s in sessions}
    if tokens:
        since = now_utc() - timedelta(days=settings.forecast_history_days)
        for s in db.scalars(
            select(ChargingSession).where(
                ChargingSession.token_hash.in_(sorted(tokens)),
                ChargingSession.end_date_time.is_not(None),
                ChargingSession.end_date_time >= since,
            )
        ):
            if s.id in live_ids or s.end_date_time is None:
                continue
            if s.end_date_time > s.start_date_time:
                station = places.get(s.connector_id, (s.connector_id, ""))[0]
                records.append(_record(s, station, ended=True))
    for s in todo:
        records.append(_record(s, places.get(s.connector_id, (s.connector_id, ""))[0], ended=False))
    try:
        frame = from_records(records, local_tz=settings.timezone, require_departure=False)
    except ForecastDataError as exc:
        log.error("forecast skipped: %s", exc)
        return out
    wanted = {s.id for s in todo}
    for scope in sorted({scope_of[s.id] for s in todo}):
        version, model = models[scope]
        try:
            stay = model.stay_at(frame, q)
            kwh = model.predict_energy(frame)
        except Exception:  # a model that fails on live data must not stop the scheduler
            log.exception("forecast model %s failed on live sessions", version)
            continue
        for i, sid in enumerate(frame["session_id"]):
            if sid not in wanted or scope_of.get(sid) != scope:
                continue
            arrival = frame["arrival"].iat[i].to_pydatetime()
            pred = LivePrediction(
                departure=arrival + timedelta(hours=float(stay[i])),
                energy_kwh=float(max(kwh[i], 0.0)) if np.isfinite(kwh[i]) else 0.0,
                version=version,
            )
            out[sid] = pred
            if len(_live_cache) >= _LIVE_CACHE_MAX:
                _live_cache.clear()
            _live_cache[(_key(model), q, settings.forecast_history_days, sid)] = pred
    return out


def summary(row: ForecastModelVersion, scopes: Iterable[str] = ()) -> dict[str, Any]:
    """A version as the API lists it."""
    metrics = (row.meta or {}).get("metrics", {})
    return {
        "id": row.id,
        "status": row.status,
        "progress": row.progress,
        "message": row.message,
        "error": row.error,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "created_by": row.created_by,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "source": row.source,
        "region": row.region,
        "n_sessions": row.n_sessions,
        "fingerprint": row.fingerprint,
        "model_sha256": row.model_sha256,
        "holdout": metrics.get("holdout"),
        "promoted_for": sorted(scopes),
    }

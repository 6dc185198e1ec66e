"""Forecasting models for data scientists: upload a training set or retrain from stored
sessions (background jobs), list versions with metrics, compare two versions on a hold-out,
promote (global or per region) and roll back. Formats and rules: ``docs/FORECASTING.md``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api import forecast as fc
from api.db import transaction
from api.deps import DbDep, SettingsDep, get_sessionmaker, require
from api.models import TopologyNode
from api.models_forecast import ForecastModelVersion, ForecastPromotion
from api.security import Principal
from forecasting.data import FORMATS, load_sessions
from forecasting.errors import ForecastDataError, ModelFileError
from forecasting.evaluate import compare as compare_models
from forecasting.evaluate import time_split
from forecasting.features import build_features
from forecasting.model import MIN_TRAIN_SESSIONS

router = APIRouter(prefix="/v1/forecast", tags=["forecast"])
Scientist = Annotated[Principal, Depends(require("data-scientist"))]
MAX_ID = 2**31 - 1
REGION_PATTERN = r"^[^\x00-\x1f]+$"
VersionId = Annotated[int, Path(ge=1, le=MAX_ID, description="Model version id.")]


def _who(p: Principal) -> str:
    return f"key {p.prefix}… ({p.role})"


def _jobs(request: Request) -> ThreadPoolExecutor:
    jobs: ThreadPoolExecutor | None = getattr(request.app.state, "forecast_jobs", None)
    if jobs is None:  # an app without the lifespan's executor (e.g. routers wired directly)
        jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast")
        request.app.state.forecast_jobs = jobs
    return jobs


def _holiday(country: str) -> str:
    import holidays

    code = country.strip().upper()
    if code not in holidays.list_supported_countries():
        raise HTTPException(422, f"holiday_country: unknown country code {country!r}")
    return code


def _queue(
    request: Request,
    principal: Principal,
    df: Any,
    source: str,
    region: str | None,
    holiday_country: str,
) -> dict[str, Any]:
    if len(df) < MIN_TRAIN_SESSIONS:
        raise HTTPException(
            422, f"data: too few sessions to train (need ≥ {MIN_TRAIN_SESSIONS}, got {len(df)})"
        )
    factory = get_sessionmaker(request)
    with transaction(factory) as db:
        row = ForecastModelVersion(
            created_by=_who(principal),
            source=source,
            region=region,
            status="queued",
            progress=0.0,
            message="queued",
            n_sessions=len(df),
            meta={},
            worker=fc.this_worker(),
        )
        db.add(row)
        db.flush()
        version_id = row.id
    _jobs(request).submit(
        fc.run_training,
        factory,
        version_id,
        df,
        _who(principal),
        source,
        holiday_country,
        request.app.state.settings.forecast_max_iter,
    )
    return {
        "id": version_id,
        "status": "queued",
        "n_sessions": len(df),
        "links": {"status": f"/v1/forecast/models/{version_id}"},
    }


@router.post(
    "/models",
    status_code=202,
    summary="Upload a training set; a model is trained in the background",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload(
    request: Request,
    settings: SettingsDep,
    principal: Scientist,
    fmt: Annotated[str, Query(alias="format", description="csv | ocpi | acn")] = "csv",
    holiday_country: Annotated[str, Query(description="Holiday calendar (ISO code)")] = "NL",
    local_tz: Annotated[
        str | None, Query(description="Local time zone of UTC-only formats (ocpi, acn JSON)")
    ] = None,
) -> dict[str, Any]:
    """The body is the file itself (generic CSV, OCPI 2.2.1 CDRs/Sessions JSON, ACN-Data),
    gzip allowed. It is checked at once (422 naming the row and field); training runs in the
    background: poll ``GET /v1/forecast/models/{id}``. The file is not kept; user ids are
    hashed on ingest."""
    if fmt not in FORMATS:
        raise HTTPException(422, f"format: must be one of {', '.join(FORMATS)} (got {fmt!r})")
    country = _holiday(holiday_country)
    limit = int(settings.forecast_max_upload_mb * 1024 * 1024)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"body: larger than {settings.forecast_max_upload_mb} MB")
    from starlette.concurrency import run_in_threadpool

    try:
        df = await run_in_threadpool(
            load_sessions, bytes(body), fmt, local_tz=local_tz, require_departure=True
        )
    except ForecastDataError as exc:
        raise HTTPException(422, str(exc)) from None
    return _queue(request, principal, df, f"upload ({fmt})", None, country)


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str | None = Field(
        default=None,
        max_length=200,
        pattern=REGION_PATTERN,
        description="Only sessions of this DSO region.",
    )
    since: datetime | None = Field(default=None, description="Only sessions arriving from then.")
    holiday_country: str = Field(
        default="NL", max_length=10, description="Holiday calendar (ISO code)."
    )


@router.post("/models/retrain", status_code=202, summary="Retrain from the stored sessions")
def retrain(
    request: Request,
    body: RetrainRequest,
    db: DbDep,
    settings: SettingsDep,
    principal: Scientist,
) -> dict[str, Any]:
    """Train a new version on the completed sessions stored by the service (optionally one
    region's, from ``since``), in the background."""
    if body.since is not None and body.since.tzinfo is None:
        raise HTTPException(422, f"since: needs a UTC offset (got {body.since.isoformat()})")
    if body.region is not None:
        _check_region(db, body.region)
    country = _holiday(body.holiday_country)
    try:
        df = fc.stored_sessions(db, settings, body.region, body.since)
    except ForecastDataError as exc:
        raise HTTPException(422, str(exc)) from None
    source = "stored sessions" + (f" of {body.region}" if body.region else "")
    return _queue(request, principal, df, source, body.region, country)


def _scopes(db: Any) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for scope, promos in fc.active_promotions(db).items():
        out.setdefault(promos[0].version_id, []).append(scope)
    return out


@router.get("/models", summary="Model versions with their hold-out metrics")
def list_models(db: DbDep, principal: Scientist) -> dict[str, Any]:
    scopes = _scopes(db)
    rows = db.scalars(select(ForecastModelVersion).order_by(ForecastModelVersion.id.desc()))
    return {"models": [fc.summary(r, scopes.get(r.id, [])) for r in rows]}


def _version(db: Any, version_id: int, field: str = "id") -> ForecastModelVersion:
    row = db.get(ForecastModelVersion, version_id)
    if row is None:
        raise HTTPException(404, f"{field}: no model version {version_id}")
    return row


@router.get("/models/{version_id}", summary="One version: status, progress, metadata")
def get_model(version_id: VersionId, db: DbDep, principal: Scientist) -> dict[str, Any]:
    row = _version(db, version_id)
    out = fc.summary(row, _scopes(db).get(row.id, []))
    out["metadata"] = row.meta
    return out


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = Field(ge=1, le=MAX_ID, description="First version id.")
    b: int = Field(ge=1, le=MAX_ID, description="Second version id.")
    region: str | None = Field(
        default=None,
        max_length=200,
        pattern=REGION_PATTERN,
        description="Only sessions of this region.",
    )
    test_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Latest share of stored sessions held out."
    )


@router.post("/compare", summary="Compare two versions on a hold-out of stored sessions")
def compare(
    body: CompareRequest, db: DbDep, settings: SettingsDep, principal: Scientist
) -> dict[str, Any]:
    """Both versions and the baselines on the latest ``test_fraction`` of the stored completed
    sessions (by arrival); the baselines' hour table is version ``a``'s."""
    if body.region is not None:
        _check_region(db, body.region)
    models = {}
    for field, vid in (("a", body.a), ("b", body.b)):
        try:
            models[field] = fc.load_version(_version(db, vid, field))
        except ModelFileError as exc:
            raise HTTPException(409, f"{field}: {exc}") from None
    try:
        df = fc.stored_sessions(db, settings, body.region)
        if len(df) < 2:
            raise ForecastDataError("sessions", len(df), "need at least 2 completed sessions")
        k, t0 = time_split(df, body.test_fraction)
    except ForecastDataError as exc:
        raise HTTPException(422, str(exc)) from None
    out: dict[str, Any] = {"n_test": len(df) - k, "test_from": t0.isoformat(), "results": {}}
    for field, vid in (("a", body.a), ("b", body.b)):
        model = models[field]
        X = build_features(df, model.holiday_country)
        res = compare_models(model, df.iloc[k:], X.iloc[k:], baseline=models["a"].baseline)
        out["results"][f"model {vid}"] = res["model"]
        if field == "a":
            out["results"].update({name: m for name, m in res.items() if name != "model"})
    return out


def _check_region(db: Any, region: str) -> None:
    node = db.get(TopologyNode, region)
    if node is None or node.parent is not None:
        raise HTTPException(422, f"region: {region!r} is not a DSO region of the topology")


def _scope(db: Any, region: str | None) -> str:
    if region is None:
        return fc.GLOBAL
    _check_region(db, region)
    return region


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_ID, description="Version id to put in service.")
    region: str | None = Field(
        default=None,
        max_length=200,
        pattern=REGION_PATTERN,
        description="A DSO region; omitted: global.",
    )


def _promotion(p: ForecastPromotion) -> dict[str, Any]:
    return {
        "scope": p.scope,
        "version": p.version_id,
        "promoted_at": p.promoted_at.isoformat(),
        "promoted_by": p.promoted_by,
    }


@router.post("/promotions", summary="Put a version in service (global or for one region)")
def promote(request: Request, body: PromoteRequest, principal: Scientist) -> dict[str, Any]:
    """The version is loaded and checked first: a version that is not ready (409) or whose
    file is refused (422: tampered, corrupt, untrusted types) is not promoted, and the model in
    service stays."""
    with transaction(get_sessionmaker(request)) as db:
        scope = _scope(db, body.region)
        row = _version(db, body.version, "version")
        if row.status != "ready":
            raise HTTPException(409, f"version: model {row.id} is {row.status}, not ready")
        try:
            fc.load_version(row)
        except ModelFileError as exc:
            raise HTTPException(422, str(exc)) from None
        promo = ForecastPromotion(
            scope=scope, version_id=row.id, promoted_by=_who(principal), promoted_at=fc.now_utc()
        )
        db.add(promo)
        db.flush()
        return _promotion(promo)


@router.get("/promotions", summary="The version in service per scope, with earlier ones")
def promotions(db: DbDep, principal: Scientist) -> dict[str, Any]:
    return {
        "promotions": {
            scope: {"current": _promotion(p[0]), "previous": [_promotion(x) for x in p[1:]]}
            for scope, p in sorted(fc.active_promotions(db).items())
        }
    }


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str | None = Field(
        default=None,
        max_length=200,
        pattern=REGION_PATTERN,
        description="A DSO region; omitted: global.",
    )


@router.post("/promotions/rollback", summary="Retire the version in service; the previous serves")
def rollback(request: Request, body: RollbackRequest, principal: Scientist) -> dict[str, Any]:
    with transaction(get_sessionmaker(request)) as db:
        scope = _scope(db, body.region)
        promos = fc.active_promotions(db).get(scope, [])
        if not promos:
            raise HTTPException(409, f"region: no model in service for {scope!r}")
        current = promos[0]
        current.retired_at = fc.now_utc()
        current.retired_by = _who(principal)
        return {
            "scope": scope,
            "retired": current.version_id,
            "current": _promotion(promos[1]) if len(promos) > 1 else None,
        }

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.metrics import REGISTRY

router = APIRouter(tags=["ops"])


@router.get("/health", summary="The process is alive")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="The database answers and the schema is current")
def ready(request: Request) -> JSONResponse:
    try:
        with request.app.state.sessionmaker() as session:
            version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:  # any database failure means not ready
        return JSONResponse({"status": "not ready", "reason": str(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ready", "schema": version})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

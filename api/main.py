"""The FastAPI application: ``create_app()`` (uvicorn factory) wires settings, database,
migrations, routers and the background loops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.db import make_engine, make_sessionmaker, migrate
from api.events import Events
from api.forecast import fail_interrupted
from api.published import PublishedProfiles
from api.routes import (
    demand_response,
    dso,
    forecast,
    health,
    measurement,
    ocpi_sessions,
    profiles,
    runs,
    schedules,
    topology,
)
from api.settings import Settings, get_settings
from api.tokens import rekey_stored_hashes, token_key

DESCRIPTION = """
gridcharge schedules EV charging under every grid limit. CSMS platforms send OCPI 2.2.1
sessions and receive OCPP/OCPI charging profiles; DSOs submit daily aggregate profiles (also as
OpenADR 3 events); operators manage the topology. Authenticate with `Authorization: Token <key>`
(keys: `gridcharge keys create --role ROLE`).
"""


VALIDATION_ERROR_SCHEMA: dict[str, Any] = {
    "title": "HTTPValidationError",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "description": "The first error: 'field: message'."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; ``settings`` default to the environment's."""
    cfg = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(cfg.database_url)
        engine = make_engine(cfg.database_url)
        app.state.settings = cfg
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        try:  # api/tokens.py; a refused key stops the start
            app.state.token_key = token_key(app.state.sessionmaker, cfg)
            rekey_stored_hashes(app.state.sessionmaker, app.state.token_key)
        except Exception:
            engine.dispose()
            raise
        app.state.key_cache = {}
        app.state.events = Events()
        app.state.jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs")
        schedules.resume_jobs(app.state.sessionmaker, app.state.jobs)
        app.state.forecast_jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast")
        fail_interrupted(app.state.sessionmaker)  # forecast training left by a stopped process
        app.state.published = PublishedProfiles()  # api/published.py: read once now, then
        app.state.published.follow(app.state.sessionmaker)  # followed in the background
        loops = _start_background(app, cfg) if cfg.background else []
        try:
            yield
        finally:
            for loop in loops:
                loop.stop()
            app.state.jobs.shutdown(wait=False, cancel_futures=True)
            app.state.forecast_jobs.shutdown(wait=False, cancel_futures=True)
            engine.dispose()

    app = FastAPI(
        title="gridcharge",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    # routes read the settings from app.state (api.deps.app_settings), not through a
    # dependency override, which would slow every request down
    app.state.settings = cfg

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        message = f"{_field_of(tuple(first['loc']))}: {first['msg']}"
        return JSONResponse(
            status_code=422,
            content={
                "detail": message,
                "errors": [
                    {"field": _field_of(tuple(e["loc"])), "message": e["msg"]} for e in errors
                ],
            },
        )

    def openapi() -> dict[str, Any]:
        """The spec, with validation errors declared as the app sends them."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["HTTPValidationError"] = VALIDATION_ERROR_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for module in (
        health,
        schedules,
        topology,
        ocpi_sessions,
        profiles,
        dso,
        runs,
        measurement,
        forecast,
    ):
        app.include_router(module.router)
    app.include_router(demand_response.router)
    return app


def _start_background(app: FastAPI, cfg: Settings) -> list[Any]:
    """Start the scheduler and outbox loops."""
    from api.background import start_loops

    return list(start_loops(app, cfg))

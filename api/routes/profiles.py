"""Published charging profiles (cursor feed), the CPO's asynchronous results, the latest run."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.clearing import clear_forms
from api.db import transaction, utcnow
from api.deps import DbDep, require
from api.models import Profile, ScheduleRun
from api.outbox import store_result
from api.security import Principal

router = APIRouter(prefix="/v1", tags=["profiles"])

MAX_LIMIT = 1000


@router.get(
    "/profiles",
    summary="Profiles published after a cursor (poll with the returned cursor)",
    responses={422: {"description": "changed_since or limit is not a valid number"}},
)
def list_profiles(
    db: DbDep,
    principal: Annotated[Principal, Depends(require("csms", "operator"))],
    changed_since: Annotated[
        int,
        Query(
            ge=0, le=2**31 - 1, description="Return profiles whose cursor is above this (0: all)."
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Profiles per page.")] = 100,
) -> dict[str, Any]:
    """Every session whose current profile has a cursor above ``changed_since``, by cursor.

    A session appears once, with its newest profile; when it is re-published later it moves to
    its new, higher cursor. When the session ends its profile is cleared: it moves to a new
    cursor once more, with `cleared: true`, no profile forms and the OCPP ClearChargingProfile
    commands in `clear`. ``cursor`` is the highest cursor returned (or ``changed_since`` when
    nothing is); ``more`` tells that another page follows.
    """
    rows = db.scalars(
        select(Profile)
        .where(Profile.cursor > changed_since)
        .order_by(Profile.cursor)
        .limit(limit + 1)
    ).all()
    page = rows[:limit]
    return {
        "profiles": [_entry(p) for p in page],
        "cursor": page[-1].cursor if page else changed_since,
        "more": len(rows) > limit,
    }


def _entry(p: Profile) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "session_id": p.session_id,
        "cursor": p.cursor,
        "run_id": p.run_id,
        "updated_at": p.updated_at.isoformat() if p.updated_at else None,
        "cleared": p.cleared_at is not None,
    }
    forms = p.ocpp_forms()  # derived from the stored OCPI form and the session's ids
    if p.cleared_at is None:
        entry.update(ocpi=p.ocpi, **forms)
    else:
        entry.update(
            ocpi=None,
            ocpp16=None,
            ocpp201=None,
            cleared_at=p.cleared_at.isoformat(),
            clear=clear_forms(forms["ocpp16"], forms["ocpp201"]),
        )
    return entry


def _ocpi(status_code: int, message: str, http_status: int = 200) -> JSONResponse:
    return JSONResponse(
        {
            "status_code": status_code,
            "status_message": message,
            "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        },
        status_code=http_status,
    )


@router.post(
    "/profiles/results/{item_id}",
    summary="The CPO's asynchronous result of a pushed profile (OCPI ChargingProfileResult)",
    responses={
        400: {"description": "OCPI status 2001: result missing or not a known value"},
        404: {"description": "OCPI status 2000: no such outbox item"},
    },
)
def post_result(
    item_id: Annotated[int, Path(ge=1, le=2**31 - 1, description="Outbox item id.")],
    request: Request,
    principal: Annotated[Principal, Depends(require("csms"))],
    body: Annotated[dict[str, Any], Body(examples=[{"result": "ACCEPTED"}])],
) -> JSONResponse:
    try:
        with transaction(request.app.state.sessionmaker) as db:
            item = store_result(db, item_id, body)
            status = item.status if item is not None else None
    except ValueError as exc:
        return _ocpi(2001, str(exc), 400)
    if status is None:
        return _ocpi(2000, f"item_id: unknown outbox item {item_id}", 404)
    return _ocpi(1000, f"result stored; item {item_id} is {status}")


@router.get("/schedule-runs/latest", summary="The newest re-optimisation run")
def latest_run(
    db: DbDep,
    principal: Annotated[Principal, Depends(require("operator"))],
) -> dict[str, Any]:
    run = db.scalars(select(ScheduleRun).order_by(ScheduleRun.id.desc()).limit(1)).first()
    if run is None:
        raise HTTPException(404, "schedule-runs: no run yet")
    return {
        "id": run.id,
        "created_at": run.created_at.isoformat(),
        "published": run.published,
        "status": run.status,
        "method": run.method,
        "reason": run.reason,
        "grid": {"start": run.grid_start.isoformat(), "step_s": run.step_s, "steps": run.steps},
        "sessions": run.sessions,
        "violations": run.violations,
        "time_s": run.time_s,
        "objective": run.objective,
        "kpis": run.kpis,
    }

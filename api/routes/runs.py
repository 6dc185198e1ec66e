"""Re-optimise on request: "re-plan now", or at a given instant for simulations and replays."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from api.deps import SettingsDep, instant, require
from api.security import Principal
from optimizer.errors import ScenarioError

router = APIRouter(prefix="/v1", tags=["schedules"])


@router.post("/schedule-runs", summary="Re-optimise the live sessions now (or at `at`)")
def run_now(
    request: Request,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require("operator"))],
    at: Annotated[
        str | None,
        Query(
            description="ISO-8601 instant with offset to plan from (default: now)",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> dict[str, Any]:
    from api.publish import reoptimise

    when = instant(at, "at")
    try:
        run = reoptimise(request.app.state.sessionmaker, settings, when)
    except ScenarioError as exc:
        raise HTTPException(409, f"live data does not form a valid scenario: {exc}") from None
    return {
        "run": run.id,
        "published": run.published,
        "status": run.status,
        "method": run.method,
        "reason": run.reason,
        "sessions": run.sessions,
        "violations": run.violations,
        "time_s": run.time_s,
        "grid_start": run.grid_start.isoformat(),
        "kpis": run.kpis,
    }

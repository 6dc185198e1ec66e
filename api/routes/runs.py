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
    """With the background scheduler on, the run takes turns with it and works under its lease:
    when another process of the deployment holds the lease, that process is asked to re-plan
    and the answer is 409 (two processes never publish at once)."""
    from api.background import SchedulerLoop
    from api.db import transaction, utcnow
    from api.lease import LeaseLost, signal
    from api.publish import reoptimise

    when = instant(at, "at")
    factory = request.app.state.sessionmaker
    loop: SchedulerLoop | None = getattr(request.app.state, "scheduler_loop", None)
    try:
        if loop is None:
            run = reoptimise(factory, settings, when)
        elif loop.lease is not None and not loop.lease.held:
            with transaction(factory) as db:
                signal(db, loop.lease.name, utcnow())
            raise HTTPException(
                409,
                "scheduler: re-plans run in another process of this deployment (the holder of "
                "the scheduler lease); it was asked to re-plan now",
            )
        else:
            with loop.run_lock:
                claim = loop.lease.claim() if loop.lease is not None else None
                run = reoptimise(factory, settings, when, claim)
    except ScenarioError as exc:
        raise HTTPException(409, f"live data does not form a valid scenario: {exc}") from None
    except LeaseLost as exc:
        raise HTTPException(409, f"scheduler: {exc}") from None
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

"""Stateless scheduling for CSMSs that keep their own state: scenario in, schedule out."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response, status
from sqlalchemy.orm import Session, sessionmaker

from api.db import transaction, utcnow
from api.deps import DbDep, SettingsDep, require
from api.models import Job
from api.security import Principal
from optimizer.errors import ScenarioError
from optimizer.scenario import parse_scenario
from optimizer.solve import METHODS, solve_scenario

router = APIRouter(prefix="/v1", tags=["schedules"])

EXAMPLE = {
    "format": "gridcharge.scenario/1",
    "grid": {"start": "2026-11-25T00:00:00+01:00", "step_s": 900, "steps": 8},
    "nodes": [{"id": "region-01", "parent": None}],
    "stations": [{"id": "st-1", "node": "region-01"}],
    "sessions": [
        {
            "id": "s-1",
            "connector": "st-1-1",
            "arrival": "2026-11-25T00:00:00+01:00",
            "departure": "2026-11-25T02:00:00+01:00",
            "energy_kwh": 10,
        }
    ],
    "dso_profiles": [{"node": "region-01", "cap_kw": [11.04] * 8}],
}


def run_job(factory: sessionmaker[Session], job_id: str) -> None:
    """Solve a stored job and store its result (or its error); safe to call again."""
    with transaction(factory) as db:
        job = db.get(Job, job_id)
        if job is None or job.status in ("done", "failed"):
            return
        job.status = "running"
        request, options = job.request, dict(job.options)
    try:
        result: dict[str, Any] | None = solve_scenario(parse_scenario(request), **options)
        error = None
    except Exception as exc:  # the job records any failure for the caller to read
        result, error = None, f"{type(exc).__name__}: {exc}"
    with transaction(factory) as db:
        job = db.get(Job, job_id)
        if job is not None:
            job.status = "done" if error is None else "failed"
            job.result, job.error, job.finished_at = result, error, utcnow()


def resume_jobs(factory: sessionmaker[Session], pool: ThreadPoolExecutor) -> int:
    """Re-queue jobs a previous process accepted but did not finish."""
    from sqlalchemy import select

    with factory() as db:
        ids = list(db.scalars(select(Job.id).where(Job.status.in_(("queued", "running")))))
    for job_id in ids:
        pool.submit(run_job, factory, job_id)
    return len(ids)


@router.post(
    "/schedules",
    summary="Schedule a scenario (gridcharge.scenario/1)",
    responses={
        202: {"description": "Large scenario: accepted as a job; poll the Location"},
        422: {"description": "Invalid scenario; the message names the field"},
    },
)
def create_schedule(
    request: Request,
    response: Response,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require("csms", "operator"))],
    scenario: Annotated[dict[str, Any], Body(examples=[EXAMPLE])],
    method: Annotated[str, Query(description="lp | milp | greedy | uncontrolled")] = "lp",
    time_limit_s: Annotated[float | None, Query(gt=0)] = None,
    profiles: Annotated[bool, Query(description="Attach OCPP/OCPI profiles")] = False,
) -> dict[str, Any]:
    if method not in METHODS:
        raise HTTPException(422, f"method: unknown method {method!r} (choose from {METHODS})")
    try:
        sc = parse_scenario(scenario)
    except ScenarioError as exc:
        raise HTTPException(422, str(exc)) from None
    options: dict[str, Any] = {
        "method": method,
        "time_limit_s": time_limit_s or settings.solver_time_limit_s,
    }
    if len(sc.sessions) > settings.sync_schedule_max_sessions:
        job_id = str(uuid.uuid4())
        with transaction(request.app.state.sessionmaker) as db:
            db.add(Job(id=job_id, status="queued", request=scenario, options=options))
        request.app.state.jobs.submit(run_job, request.app.state.sessionmaker, job_id)
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        return {"job": job_id, "status": "queued", "location": f"/v1/jobs/{job_id}"}
    result = solve_scenario(sc, **options)
    if profiles:
        from optimizer.emit import attach_profiles
        from optimizer.network import compile_network

        attach_profiles(compile_network(sc), result, ("ocpp16", "ocpp201", "ocpi"))
    return result


@router.get("/jobs/{job_id}", summary="Status and result of a scheduling job")
def get_job(
    job_id: str,
    db: DbDep,
    principal: Annotated[Principal, Depends(require("csms", "operator"))],
) -> dict[str, Any]:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job_id: unknown job {job_id!r}")
    return {
        "job": job.id,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
        "result": job.result,
    }

"""DSO profiles per region and local day (REST and OpenADR 3 events) and their compliance."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db import transaction, utcnow
from api.deps import DbDep, SettingsDep, check_region, require
from api.dso import (
    OADR_EXAMPLE,
    DsoError,
    DsoProfileIn,
    OadrEvent,
    apply_event,
    check_region_exists,
    compliance,
    event_region,
    event_region_field,
    event_slots,
    local_day,
    parse_day,
    profile_json,
    put_profile,
)
from api.models import DsoProfile
from api.security import Principal

router = APIRouter(tags=["dso"])

DsoPrincipal = Annotated[Principal, Depends(require("dso", "operator"))]
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Role not allowed, or a DSO key acting on another region"},
    404: {"description": "Unknown region (or no profile stored for that day)"},
    422: {"description": "Invalid input; the message names the field"},
}


def _http(exc: DsoError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _write(request: Request, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction (all or nothing); retried once after a lost insert race."""
    for attempt in (1, 2):
        try:
            with transaction(request.app.state.sessionmaker) as db:
                result = work(db)
        except DsoError as exc:
            raise _http(exc) from None
        except IntegrityError:
            if attempt == 2:
                raise HTTPException(409, "region: concurrent change of this day; retry") from None
            continue
        request.app.state.events.notify("dso")
        return result
    raise AssertionError("unreachable")


@router.put(
    "/v1/dso/{region}/profiles/{date}",
    summary="Replace a region's cap and/or target for one local day (idempotent)",
    responses=_ERRORS,
)
def put_dso_profile(
    region: str,
    date: str,
    request: Request,
    settings: SettingsDep,
    principal: DsoPrincipal,
    body: Annotated[DsoProfileIn, Body(examples=[{"cap_kw": [400.0] * 96}])],
) -> dict[str, Any]:
    """One value per 15-minute slot of the local day ``date`` in the service time zone (96; 92
    on the spring DST day, 100 in autumn). An omitted list is cleared."""
    try:
        day = local_day(parse_day(date), ZoneInfo(settings.timezone))
    except DsoError as exc:
        raise _http(exc) from None
    check_region(principal, region)

    def work(db: Session) -> dict[str, Any]:
        check_region_exists(db, region)
        return profile_json(put_profile(db, region, day, body.cap_kw, body.target_kw))

    return _write(request, work)


@router.get(
    "/v1/dso/{region}/profiles/{date}",
    summary="A region's stored cap and target for one local day",
    responses=_ERRORS,
)
def get_dso_profile(region: str, date: str, db: DbDep, principal: DsoPrincipal) -> dict[str, Any]:
    try:
        day = parse_day(date)
        check_region(principal, region)
        check_region_exists(db, region)
        row = db.get(DsoProfile, (region, day.isoformat()))
        if row is None:
            raise DsoError("date", f"no profile stored for {region!r} on {day.isoformat()}", 404)
    except DsoError as exc:
        raise _http(exc) from None
    return profile_json(row)


@router.get(
    "/v1/dso/{region}/compliance",
    summary="Cap, target, planned and realised power per 15-minute slot of a local day",
    responses=_ERRORS,
)
def get_compliance(
    region: str,
    db: DbDep,
    settings: SettingsDep,
    principal: DsoPrincipal,
    date: Annotated[str, Query(description="Local day YYYY-MM-DD", examples=["2026-11-24"])],
) -> dict[str, Any]:
    try:
        day = local_day(parse_day(date), ZoneInfo(settings.timezone))
        check_region(principal, region)
        check_region_exists(db, region)
        out = compliance(db, region, day, now=utcnow())
    except DsoError as exc:
        raise _http(exc) from None
    out["timezone"] = settings.timezone
    return out


@router.post(
    "/openadr3/events",
    status_code=status.HTTP_201_CREATED,
    summary="An OpenADR 3.0 IMPORT_CAPACITY_LIMIT event: sets a region's cap per 15 minutes",
    responses=_ERRORS,
)
def post_openadr_event(
    request: Request,
    settings: SettingsDep,
    principal: DsoPrincipal,
    event: Annotated[OadrEvent, Body(examples=[OADR_EXAMPLE])],
) -> dict[str, Any]:
    """The region is the event's `GRID_AREA` (or `RESOURCE_NAME`) target; each interval's one
    value [kW] becomes the cap of the 15-minute slot it covers, merged into the stored day."""
    try:
        region = event_region(event)
    except DsoError as exc:
        raise _http(exc) from None
    check_region(principal, region)
    tz = ZoneInfo(settings.timezone)
    event_id = uuid.uuid4().hex
    created = utcnow().isoformat().replace("+00:00", "Z")

    def work(db: Session) -> None:
        check_region_exists(db, region, field=event_region_field(event), status=422)
        apply_event(db, region, event_slots(event, tz), event_id)

    _write(request, work)
    sent = event.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for readonly in ("id", "createdDateTime", "modificationDateTime", "objectType"):
        sent.pop(readonly, None)
    return {
        "id": event_id,
        "createdDateTime": created,
        "modificationDateTime": created,
        "objectType": "EVENT",
        **sent,
    }

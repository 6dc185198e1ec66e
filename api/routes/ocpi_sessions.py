"""Sessions from the CSMS: the OCPI 2.2.1 Sessions receiver interface (PUT, PATCH, charging
preferences, all in the OCPI response envelope) and a bulk endpoint for meter states."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from api.clearing import clear_ended_profile
from api.db import transaction, utcnow
from api.deps import require
from api.metrics import STATES_RECEIVED
from api.security import Principal
from api.sessions import (
    MAX_BULK_STATES,
    OCPI_CLIENT_ERROR,
    OCPI_INVALID_PARAMETERS,
    OCPI_SUCCESS,
    PATCH_EXAMPLE,
    PREFERENCES_EXAMPLE,
    SESSION_EXAMPLE,
    STATES_EXAMPLE,
    ChargingPreferences,
    OcpiSession,
    OcpiSessionPatch,
    Outcome,
    SessionInputError,
    SessionResult,
    StateIn,
    StateReport,
    StatesResult,
    iso_z,
    meter_states,
    patch_session,
    put_session,
    set_charging_preferences,
    states_result,
    store_states,
)


class OcpiResponse(BaseModel):
    """The OCPI 2.2.1 response envelope (transport_and_format: Response format)."""

    data: Any = None
    status_code: int
    status_message: str | None = None
    timestamp: str


def ocpi_response(
    data: Any,
    *,
    http_status: int = 200,
    status_code: int = OCPI_SUCCESS,
    message: str = "Success",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "data": data,
        "status_code": status_code,
        "status_message": message,
        # OCPI DateTime is string(25): whole seconds, 'Z'
        "timestamp": iso_z(utcnow().replace(microsecond=0)),
    }
    return JSONResponse(body, status_code=http_status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    described = []
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "")
            described.append({"field": "body", "message": f"invalid JSON: {reason}".strip()})
        else:
            described.append({"field": _field(tuple(e["loc"])), "message": str(e["msg"])})
    first = described[0] if described else {"field": "body", "message": "invalid request"}
    return ocpi_response(
        {"errors": described},
        http_status=400,
        status_code=OCPI_INVALID_PARAMETERS,
        message=f"{first['field']}: {first['message']}",
    )


class OcpiRoute(APIRoute):
    """Answers every error of the route in the OCPI envelope: request validation (malformed
    JSON, wrong types, naive times) and an unreadable body (not UTF-8) → HTTP 400 / 2001;
    :class:`SessionInputError` → its HTTP and OCPI status; other HTTP errors (401, 403) → their
    status / 2000. (Starlette's HTTPException is caught: FastAPI raises that one itself.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def ocpi_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_response(exc)
            except SessionInputError as exc:
                return ocpi_response(
                    {"field": exc.field},
                    http_status=exc.http_status,
                    status_code=exc.ocpi_status,
                    message=str(exc),
                )
            except HTTPException as exc:
                unreadable = exc.status_code == 400
                return ocpi_response(
                    None,
                    http_status=exc.status_code,
                    status_code=OCPI_INVALID_PARAMETERS if unreadable else OCPI_CLIENT_ERROR,
                    message=f"body: {exc.detail}" if unreadable else str(exc.detail),
                    headers=dict(exc.headers) if exc.headers else None,
                )

        return ocpi_handler


ENVELOPE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": OcpiResponse, "description": "OCPI status_code 1000"},
    400: {
        "model": OcpiResponse,
        "description": "2001 invalid or missing parameter (status_message names the field), "
        "2003 unknown location (evse_uid)",
    },
    401: {"model": OcpiResponse, "description": "Missing or unknown key"},
    403: {"model": OcpiResponse, "description": "Role other than csms or admin"},
    404: {"model": OcpiResponse, "description": "Unknown session of this party"},
}

CountryPath = Annotated[str, Path(pattern=r"^[A-Za-z]{2}$", description="CPO country code")]
PartyPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9]{3}$", description="CPO party id")]
SessionPath = Annotated[
    str, Path(min_length=1, max_length=36, pattern=r"^[\x20-\x7E]+$", description="Session.id")
]
Csms = Annotated[Principal, Depends(require("csms"))]
METRIC_OUTCOMES: tuple[Outcome, ...] = ("stored", "duplicate", "out_of_order")

ocpi = APIRouter(prefix="/ocpi/2.2.1/sessions", tags=["ocpi sessions"], route_class=OcpiRoute)
bulk = APIRouter(prefix="/v1", tags=["ocpi sessions"])


def _count_states(report: StateReport) -> None:
    """STATES_RECEIVED by outcome (stored, duplicate, out_of_order), after the commit."""
    for outcome in METRIC_OUTCOMES:
        n = report.count(outcome)
        if n:
            STATES_RECEIVED.labels(outcome=outcome).inc(n)


def _after_change(request: Request, result: SessionResult) -> None:
    if result.state in METRIC_OUTCOMES:
        STATES_RECEIVED.labels(outcome=result.state).inc()
    # the ACTIVE_SESSIONS gauge is set by every re-optimisation, not by a count per request
    request.app.state.events.notify("sessions")


@ocpi.put(
    "/{country_code}/{party_id}/{session_id}",
    summary="Create or replace a session (OCPI 2.2.1 Session)",
    response_model=None,
    responses={**ENVELOPE_RESPONSES, 201: {"model": OcpiResponse, "description": "Created"}},
)
def put_ocpi_session(
    request: Request,
    principal: Csms,
    country_code: CountryPath,
    party_id: PartyPath,
    session_id: SessionPath,
    body: Annotated[OcpiSession, Body(examples=[SESSION_EXAMPLE])],
) -> JSONResponse:
    """The whole Session object. `evse_uid` is our connector id in the topology; `kwh` is the
    cumulative energy at `last_updated` and is recorded as a meter state."""
    now = utcnow()
    with transaction(request.app.state.sessionmaker) as db:
        result = put_session(
            db,
            country_code,
            party_id,
            session_id,
            body,
            now,
            token_key=request.app.state.token_key,
        )
        if result.ended:
            clear_ended_profile(db, session_id, now)
        data = result.as_data()
    _after_change(request, result)
    return ocpi_response(data, http_status=201 if result.created else 200)


@ocpi.patch(
    "/{country_code}/{party_id}/{session_id}",
    summary="Update a session (partial OCPI 2.2.1 Session)",
    response_model=None,
    responses=ENVELOPE_RESPONSES,
)
def patch_ocpi_session(
    request: Request,
    principal: Csms,
    country_code: CountryPath,
    party_id: PartyPath,
    session_id: SessionPath,
    body: Annotated[OcpiSessionPatch, Body(examples=[PATCH_EXAMPLE])],
) -> JSONResponse:
    """Only the fields that changed, with `last_updated`. New `charging_periods` are merged in
    by `start_date_time`; a `kwh` is recorded as a meter state at `last_updated`. An update
    that ends the session (`COMPLETED`, `INVALID`, `end_date_time`) clears its profile."""
    now = utcnow()
    with transaction(request.app.state.sessionmaker) as db:
        result = patch_session(
            db,
            country_code,
            party_id,
            session_id,
            body,
            now,
            token_key=request.app.state.token_key,
        )
        if result.ended:
            clear_ended_profile(db, session_id, now)
        data = result.as_data()
    _after_change(request, result)
    return ocpi_response(data)


@ocpi.put(
    "/{country_code}/{party_id}/{session_id}/charging_preferences",
    summary="Set the driver's charging preferences (OCPI 2.2.1 ChargingPreferences)",
    response_model=None,
    responses=ENVELOPE_RESPONSES,
)
def put_charging_preferences(
    request: Request,
    principal: Csms,
    country_code: CountryPath,
    party_id: PartyPath,
    session_id: SessionPath,
    body: Annotated[ChargingPreferences, Body(examples=[PREFERENCES_EXAMPLE])],
) -> JSONResponse:
    """Answers the ChargingPreferencesResponse `ACCEPTED`. Extensions: `opt_out`,
    `pause_consent` (booleans); `profile_type` FAST means opt-out."""
    with transaction(request.app.state.sessionmaker) as db:
        answer = set_charging_preferences(db, country_code, party_id, session_id, body, utcnow())
    request.app.state.events.notify("sessions")
    return ocpi_response(answer)


@bulk.post(
    "/session-states",
    summary="Store many meter states of known sessions at once",
    response_model=StatesResult,
    responses={422: {"description": "Invalid item; the message names it, e.g. [3].timestamp"}},
)
def post_session_states(
    request: Request,
    principal: Csms,
    body: Annotated[
        list[StateIn],
        Body(examples=[STATES_EXAMPLE], max_length=MAX_BULK_STATES),
    ],
) -> StatesResult:
    """Up to 10,000 compact states in one transaction. Unknown sessions and states from the
    future are reported per item and not stored; everything else is stored (duplicates once)."""
    states = meter_states(body)
    with transaction(request.app.state.sessionmaker) as db:
        report = store_states(db, states, utcnow())
    _count_states(report)
    if report.written:
        request.app.state.events.notify("sessions")
    return states_result(report, states)


router = APIRouter()
router.include_router(ocpi)
router.include_router(bulk)

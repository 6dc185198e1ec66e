"""Demand response: signals, relay/reject, the relay policy, contract rules, consent, the audit
log, flexibility and driver-impact KPIs (``docs/demand-response.md``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api import dr
from api.db import transaction, utcnow
from api.deps import DbDep, SettingsDep, in_range, instant, require
from api.models_dr import DrActivation, DrContractRule, DrSignal
from api.published import PublishedProfiles
from api.security import Principal
from api.sessions import UtcDateTime

router = APIRouter(tags=["demand-response"])

Signaller = Annotated[Principal, Depends(require("operator", "brp"))]
Operator = Annotated[Principal, Depends(require("operator"))]
T = TypeVar("T")
RowId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Row id.")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Role not allowed (a brp key may only signal)"},
    404: {"description": "Unknown signal, activation, region or session"},
    409: {"description": "The signal was already decided, or expired"},
    422: {"description": "Invalid input; the message names the field"},
}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignalBody(_In):
    end: UtcDateTime | None = Field(
        default=None, description="Restore no later than this (aware time in the future)."
    )
    target_kw: float | None = Field(
        default=None, description="Release only this much power [kW] (partial activation); > 0."
    )
    reason: str | None = Field(default=None, max_length=2000)
    imbalance_price_eur_per_mwh: float | None = None


class DecisionBody(_In):
    reason: str | None = Field(default=None, max_length=2000)


class PolicyBody(_In):
    auto_relay: bool | None = None
    allowed_from: str | None = Field(default=None, description="Local HH:MM, inclusive.")
    allowed_to: str | None = Field(default=None, description="Local HH:MM, exclusive (24:00).")
    max_activations_per_day: int | None = Field(default=None, ge=0, le=96)


class ContractRuleBody(_In):
    consent_required: bool = False
    max_curtail_min_per_4h: float = Field(default=30.0, ge=0, le=240)


class ConsentBody(_In):
    consent: bool


def _factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    return factory


def _published(request: Request) -> PublishedProfiles | None:
    """The service's flattened published profiles (:mod:`api.published`)."""
    return getattr(request.app.state, "published", None)


def _http(exc: dr.DrError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


AtQuery = Annotated[
    str | None,
    Query(
        description="Act as of this ISO-8601 instant with offset, for simulations and replays "
        "(operator only; default: now)",
        json_schema_extra={"format": "date-time"},
    ),
]


def _at(at: str | None, principal: Principal) -> datetime | None:
    if at is not None and principal.role not in ("operator", "admin"):
        raise HTTPException(403, f"at: role {principal.role!r} may not act at another time")
    return instant(at, "at")


def _call(work: Callable[[], T]) -> T:
    try:
        return work()
    except dr.DrError as exc:
        raise _http(exc) from None


@router.post(
    "/v1/demand-response/signals",
    status_code=status.HTTP_201_CREATED,
    summary="Send a demand-response signal (relayed at once when the policy allows)",
    responses=_ERRORS,
)
def post_signal(
    request: Request,
    settings: SettingsDep,
    principal: Signaller,
    body: Annotated[
        SignalBody,
        Body(examples=[{"target_kw": 500.0, "reason": "short position", "end": None}]),
    ],
    at: AtQuery = None,
) -> dict[str, Any]:
    when = _at(at, principal)
    signal = dr.SignalIn(
        end=body.end,
        target_kw=body.target_kw,
        reason=body.reason,
        imbalance_price_eur_per_mwh=body.imbalance_price_eur_per_mwh,
    )
    out, _ = _call(
        lambda: dr.receive_signal(
            _factory(request), settings, principal, signal, when, _published(request)
        )
    )
    return out


@router.get("/v1/demand-response/signals", summary="Signals, newest first", responses=_ERRORS)
def list_signals(
    db: DbDep,
    principal: Signaller,
    status_: Annotated[str | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    q = select(DrSignal).order_by(DrSignal.id.desc()).limit(limit)
    if status_ is not None:
        q = q.where(DrSignal.status == status_)
    return [dr.signal_json(s) for s in db.scalars(q)]


@router.get("/v1/demand-response/signals/{signal_id}", summary="One signal", responses=_ERRORS)
def get_signal(signal_id: RowId, db: DbDep, principal: Signaller) -> dict[str, Any]:
    s = db.get(DrSignal, signal_id)
    if s is None:
        raise HTTPException(404, f"signal_id: unknown signal {signal_id}")
    a = db.get(DrActivation, s.activation_id) if s.activation_id is not None else None
    return dr.response_of(s, a)


@router.post(
    "/v1/demand-response/signals/{signal_id}/relay",
    summary="Relay a pending signal: curtail now",
    responses=_ERRORS,
)
def relay(
    signal_id: RowId,
    request: Request,
    settings: SettingsDep,
    principal: Operator,
    body: Annotated[DecisionBody | None, Body()] = None,
    at: AtQuery = None,
) -> dict[str, Any]:
    reason = body.reason if body else None
    when = _at(at, principal)
    return _call(
        lambda: dr.relay_signal(
            _factory(request), settings, principal, signal_id, reason, when, _published(request)
        )
    )


@router.post(
    "/v1/demand-response/signals/{signal_id}/reject",
    summary="Reject a pending signal (nothing else changes)",
    responses=_ERRORS,
)
def reject(
    signal_id: RowId,
    request: Request,
    settings: SettingsDep,
    principal: Operator,
    body: Annotated[DecisionBody | None, Body()] = None,
    at: AtQuery = None,
) -> dict[str, Any]:
    reason = body.reason if body else None
    when = _at(at, principal)
    return _call(
        lambda: dr.reject_signal(_factory(request), settings, principal, signal_id, reason, when)
    )


@router.post(
    "/v1/demand-response/restore",
    summary="Publish the restores due now (or at `at`); the background loop does this itself",
    responses=_ERRORS,
)
def restore_now(
    request: Request, settings: SettingsDep, principal: Operator, at: AtQuery = None
) -> dict[str, Any]:
    when = _at(at, principal) or utcnow()
    restorer = dr.Restorer(_factory(request), settings)
    return {"restored": restorer.step(when), "at": dr.iso_z(when)}


@router.get(
    "/v1/demand-response/activations", summary="Activations, newest first", responses=_ERRORS
)
def list_activations(
    db: DbDep, principal: Signaller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    q = select(DrActivation).order_by(DrActivation.id.desc()).limit(limit)
    return [dr.activation_json(a) for a in db.scalars(q)]


@router.get(
    "/v1/demand-response/activations/{activation_id}", summary="One activation", responses=_ERRORS
)
def get_activation(activation_id: RowId, db: DbDep, principal: Signaller) -> dict[str, Any]:
    a = db.get(DrActivation, activation_id)
    if a is None:
        raise HTTPException(404, f"activation_id: unknown activation {activation_id}")
    return dr.activation_json(a)


@router.get("/v1/demand-response/policy", summary="The relay policy", responses=_ERRORS)
def get_policy(db: DbDep, principal: Operator) -> dict[str, Any]:
    return dr.policy_json(dr.get_policy(db))


@router.put("/v1/demand-response/policy", summary="Set the relay policy", responses=_ERRORS)
def put_policy(request: Request, principal: Operator, body: PolicyBody) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with transaction(_factory(request)) as db:
            row = dr.set_policy(db, body.model_dump(), dr.actor_of(principal), utcnow())
            return dr.policy_json(row)

    return _call(work)


@router.get(
    "/v1/demand-response/contract-rules", summary="Contract rules per region", responses=_ERRORS
)
def list_rules(db: DbDep, principal: Operator) -> list[dict[str, Any]]:
    return [
        dr.rule_json(r) for r in db.scalars(select(DrContractRule).order_by(DrContractRule.region))
    ]


@router.put(
    "/v1/demand-response/contract-rules/{region}",
    summary="Set a region's consent rule and curtailment budget",
    responses=_ERRORS,
)
def put_rule(
    region: str, request: Request, principal: Operator, body: ContractRuleBody
) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with transaction(_factory(request)) as db:
            row = dr.set_contract_rule(
                db, region, body.model_dump(), dr.actor_of(principal), utcnow()
            )
            return dr.rule_json(row)

    return _call(work)


@router.put(
    "/v1/demand-response/consents/{session_id}",
    summary="Record a driver's consent to curtailment for a session",
    responses=_ERRORS,
)
def put_consent(
    session_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require("csms", "operator"))],
    body: ConsentBody,
) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with transaction(_factory(request)) as db:
            dr.set_consent(db, session_id, body.consent, dr.actor_of(principal), utcnow())
        return {"session_id": session_id, "consent": body.consent}

    return _call(work)


@router.get("/v1/demand-response/audit", summary="The decision audit log", responses=_ERRORS)
def get_audit(
    db: DbDep,
    principal: Operator,
    since: Annotated[UtcDateTime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    return dr.audit_log(db, since, limit)


@router.get(
    "/v1/flexibility",
    summary="Power that can be released now per region, and a 24 h forecast per 15 minutes",
    responses=_ERRORS,
)
def get_flexibility(
    db: DbDep,
    settings: SettingsDep,
    principal: Signaller,
    at: Annotated[
        UtcDateTime | None, Query(description="RFC 3339 date-time with offset. Default: now.")
    ] = None,
) -> dict[str, Any]:
    now: datetime = in_range("at", at) if at is not None else utcnow()
    return dr.flexibility(db, settings, now)


@router.get(
    "/v1/demand-response/kpis/{date}",
    summary="Driver-impact KPIs of one local day",
    responses=_ERRORS,
)
def get_kpis(date: str, db: DbDep, settings: SettingsDep, principal: Operator) -> dict[str, Any]:
    return _call(lambda: dr.day_kpis(db, settings, date))

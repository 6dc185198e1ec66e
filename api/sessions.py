"""Charging sessions from the CSMS (OCPI 2.2.1 Session, ChargingPreferences) and their meter
states: validation schemas, state semantics and bulk storage.

State semantics (also in ``docs/api-sessions.md``):

* Every state is stored in ``session_states`` (the measurement input), once per
  ``(session_id, timestamp)``: a second state with the same timestamp is a *duplicate* and is
  ignored, whatever its values.
* ``kwh`` of a state is the **cumulative** energy of the session at ``timestamp`` [kWh]. In an
  OCPI Session that is the Session's own ``kwh`` at its ``last_updated``; the ENERGY dimension of
  a ChargingPeriod is the energy *within* that period and is only kept in ``raw``.
* A state older than the session's ``last_state_at`` is *out of order*: stored, but it changes
  nothing on the session.
* A newer state moves ``last_state_at`` (and the currents and phases), but the session's
  cumulative ``kwh`` never decreases: ``kwh = max(kwh, state kwh)``. A newer state with a lower
  ``kwh`` than the session is stored as sent and reported as ``kwh_decreased``.
* States of one request are applied in timestamp order, in one conditional ``UPDATE`` per
  session, so concurrent requests cannot move a session backwards either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Select,
    String,
    Table,
    Update,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from api.db import UTCDateTime
from api.models import ChargingSession, Connector, SessionState
from api.tokens import token_hash

MAX_BULK_STATES = 10_000
"""Most states one ``POST /v1/session-states`` may carry."""

MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future (by our clock) a state or ``last_updated`` may be. A state from the
future would make every real state after it look out of order, freezing the session."""

ENDED_STATUSES = ("COMPLETED", "INVALID")
PHASE_INDEX = {"L1": 0, "L2": 1, "L3": 2}

# OCPI 2.2.1 status codes (status_codes.asciidoc)
OCPI_SUCCESS = 1000
OCPI_CLIENT_ERROR = 2000
OCPI_INVALID_PARAMETERS = 2001
OCPI_UNKNOWN_LOCATION = 2003


# ---------------------------------------------------------------------------------------------
# Errors


class SessionInputError(ValueError):
    """A session request that cannot be applied; the message names the field and the value.

    ``http_status`` and ``ocpi_status`` say how the OCPI boundary answers it.
    """

    http_status = 400
    ocpi_status = OCPI_INVALID_PARAMETERS

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class UnknownEvse(SessionInputError):
    """``evse_uid`` is not a connector of the topology (OCPI 2003 unknown location)."""

    ocpi_status = OCPI_UNKNOWN_LOCATION


class UnknownSession(SessionInputError):
    """No session with this id (of this party) is stored."""

    http_status = 404


class SessionConflict(SessionInputError):
    """The session id is already used by another party."""

    http_status = 409


# ---------------------------------------------------------------------------------------------
# Field types

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?$"
)


def _rfc3339_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime_type", "must be an RFC 3339 date-time string, e.g. 2026-11-25T08:00:00Z"
        )
    match = _RFC3339.match(value)
    if match is None:
        raise PydanticCustomError(
            "datetime_format",
            "{value} is not an RFC 3339 date-time (e.g. 2026-11-25T08:00:00Z)",
            {"value": repr(value[:40])},
        )
    if match.group("offset") is None:
        raise PydanticCustomError(
            "datetime_offset",
            "{value} has no UTC offset; send UTC with 'Z' (a naive time is refused, "
            "although OCPI 2.2.1 reads it as UTC)",
            {"value": repr(value[:40])},
        )
    return value


def _as_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_range", "{value} is out of range", {"value": value.isoformat()}
        ) from None


UtcDateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_as_utc)]
"""An RFC 3339 date-time with an explicit offset, converted to UTC."""


def _one_or_three(value: int) -> int:
    if value not in (1, 3):
        raise PydanticCustomError("phases", "must be 1 or 3 (got {value})", {"value": value})
    return value


Phases = Annotated[
    int, Field(strict=True, json_schema_extra={"enum": [1, 3]}), AfterValidator(_one_or_three)
]
NonNegative = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# OCPI CiString: printable ASCII, case-insensitive
_CI = r"^[\x20-\x7E]+$"
CiString36 = Annotated[str, Field(min_length=1, max_length=36, pattern=_CI)]
CountryCode = Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]
PartyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{3}$")]
# our connector ids are up to 200 characters (models.Connector.id)
EvseUid = Annotated[str, Field(min_length=1, max_length=200, pattern=_CI)]
CurrentsA = Annotated[list[NonNegative], Field(min_length=3, max_length=3)]

SessionStatus = Literal["ACTIVE", "COMPLETED", "INVALID", "PENDING", "RESERVATION"]
AuthMethod = Literal["AUTH_REQUEST", "COMMAND", "WHITELIST"]
TokenType = Literal["AD_HOC_USER", "APP_USER", "OTHER", "RFID"]
ProfileType = Literal["CHEAP", "FAST", "GREEN", "REGULAR"]
CdrDimensionType = Literal[
    "CURRENT",
    "ENERGY",
    "ENERGY_EXPORT",
    "ENERGY_IMPORT",
    "MAX_CURRENT",
    "MIN_CURRENT",
    "MAX_POWER",
    "MIN_POWER",
    "PARKING_TIME",
    "POWER",
    "RESERVATION_TIME",
    "STATE_OF_CHARGE",
    "TIME",
]


# ---------------------------------------------------------------------------------------------
# OCPI 2.2.1 objects (mod_sessions, mod_cdrs) and our compact state


class CdrToken(BaseModel):
    """OCPI 2.2.1 CdrToken. Only ``sha256(uid.upper())`` is kept, never the uid."""

    model_config = ConfigDict(extra="allow")
    country_code: CountryCode
    party_id: PartyId
    uid: CiString36
    type: TokenType
    contract_id: CiString36


class CdrDimension(BaseModel):
    """OCPI 2.2.1 CdrDimension: ``volume`` in the unit of ``type`` (kWh, A, kW, h, %)."""

    type: CdrDimensionType
    volume: Finite


class ChargingPeriod(BaseModel):
    """OCPI 2.2.1 ChargingPeriod, with two documented non-standard extensions:
    ``phases`` (1 or 3, the phases the car draws on) and ``current_a`` ([L1, L2, L3] in A)."""

    model_config = ConfigDict(extra="allow")
    start_date_time: UtcDateTime
    dimensions: Annotated[list[CdrDimension], Field(min_length=1)]
    tariff_id: CiString36 | None = None
    phases: Phases | None = Field(default=None, description="Extension: phases in use (1 or 3).")
    current_a: CurrentsA | None = Field(
        default=None, description="Extension: current per phase [L1, L2, L3] [A]."
    )


class Price(BaseModel):
    model_config = ConfigDict(extra="allow")
    excl_vat: Finite
    incl_vat: Finite | None = None


SESSION_EXAMPLE: dict[str, Any] = {
    "country_code": "NL",
    "party_id": "GCP",
    "id": "sess-0001",
    "start_date_time": "2026-11-25T08:00:00Z",
    "kwh": 0.0,
    "cdr_token": {
        "country_code": "NL",
        "party_id": "EMS",
        "uid": "012345678",
        "type": "RFID",
        "contract_id": "NL-EMS-C12345678-X",
    },
    "auth_method": "WHITELIST",
    "location_id": "LOC-00001",
    "evse_uid": "st-00001-1",
    "connector_id": "1",
    "currency": "EUR",
    "charging_periods": [],
    "status": "ACTIVE",
    "last_updated": "2026-11-25T08:00:00Z",
}

PATCH_EXAMPLE: dict[str, Any] = {
    "kwh": 0.9,
    "charging_periods": [
        {
            "start_date_time": "2026-11-25T08:00:00Z",
            "dimensions": [{"type": "ENERGY", "volume": 0.9}, {"type": "CURRENT", "volume": 16.0}],
            "phases": 3,
        }
    ],
    "last_updated": "2026-11-25T08:05:00Z",
}

PREFERENCES_EXAMPLE: dict[str, Any] = {
    "profile_type": "REGULAR",
    "departure_time": "2026-11-25T17:30:00Z",
    "energy_need": 25.0,
    "discharge_allowed": False,
    "pause_consent": True,
}

STATES_EXAMPLE: list[dict[str, Any]] = [
    {
        "session_id": "sess-0001",
        "timestamp": "2026-11-25T08:10:00Z",
        "kwh": 1.8,
        "current_a": [16.0, 16.0, 16.0],
        "phases": 3,
    }
]


class OcpiSession(BaseModel):
    """OCPI 2.2.1 Session object (PUT: the whole object). Unknown fields are kept in ``raw``."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [SESSION_EXAMPLE]})
    country_code: CountryCode
    party_id: PartyId
    id: CiString36
    start_date_time: UtcDateTime
    end_date_time: UtcDateTime | None = None
    kwh: NonNegative = Field(description="Cumulative energy of the session at last_updated [kWh].")
    cdr_token: CdrToken
    auth_method: AuthMethod
    authorization_reference: CiString36 | None = None
    location_id: CiString36
    evse_uid: EvseUid = Field(description="Our connector id in the topology.")
    connector_id: CiString36
    meter_id: Annotated[str, Field(max_length=255)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
    charging_periods: list[ChargingPeriod] = Field(default_factory=list)
    total_cost: Price | None = None
    status: SessionStatus
    last_updated: UtcDateTime


class OcpiSessionPatch(BaseModel):
    """A partial OCPI 2.2.1 Session (PATCH). ``last_updated`` is required (OCPI 2.2.1: every PATCH
    SHALL contain it); new ``charging_periods`` are merged in by ``start_date_time``."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [PATCH_EXAMPLE]})
    country_code: CountryCode | None = None
    party_id: PartyId | None = None
    id: CiString36 | None = None
    start_date_time: UtcDateTime | None = None
    end_date_time: UtcDateTime | None = None
    kwh: NonNegative | None = None
    cdr_token: CdrToken | None = None
    auth_method: AuthMethod | None = None
    authorization_reference: CiString36 | None = None
    location_id: CiString36 | None = None
    evse_uid: EvseUid | None = None
    connector_id: CiString36 | None = None
    meter_id: Annotated[str, Field(max_length=255)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] | None = None
    charging_periods: list[ChargingPeriod] | None = None
    total_cost: Price | None = None
    status: SessionStatus | None = None
    last_updated: UtcDateTime


# fields a PATCH may leave out but may not set to null (required in the Session object)
_NOT_NULL = (
    "country_code",
    "party_id",
    "id",
    "start_date_time",
    "kwh",
    "cdr_token",
    "auth_method",
    "location_id",
    "evse_uid",
    "connector_id",
    "currency",
    "charging_periods",
    "status",
)


class ChargingPreferences(BaseModel):
    """OCPI 2.2.1 ChargingPreferences, with two documented non-standard extensions:
    ``opt_out`` (never curtail this session) and ``pause_consent`` (it may be paused at 0 A)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PREFERENCES_EXAMPLE]})
    profile_type: ProfileType = Field(description="FAST means opt_out.")
    departure_time: UtcDateTime | None = None
    energy_need: NonNegative | None = Field(default=None, description="Energy wanted [kWh].")
    discharge_allowed: Annotated[bool, Field(strict=True)] | None = None
    opt_out: Annotated[bool, Field(strict=True)] | None = Field(
        default=None, description="Extension: never curtail this session."
    )
    pause_consent: Annotated[bool, Field(strict=True)] | None = Field(
        default=None, description="Extension: the driver consents to pauses (0 A)."
    )


class StateIn(BaseModel):
    """One compact meter state of an already known session (``POST /v1/session-states``)."""

    model_config = ConfigDict(extra="forbid")
    session_id: CiString36
    timestamp: UtcDateTime
    kwh: NonNegative = Field(description="Cumulative energy of the session [kWh].")
    current_a: CurrentsA | None = Field(default=None, description="[L1, L2, L3] [A].")
    phases: Phases | None = None


class StateError(BaseModel):
    index: int
    session_id: str
    field: str
    message: str


class StatesResult(BaseModel):
    """Counts of a bulk request. ``stored + out_of_order`` rows were written."""

    stored: int
    duplicates: int
    out_of_order: int
    unknown: int
    rejected: int
    kwh_decreased: int
    errors: list[StateError]
    warnings: list[StateError]


# ---------------------------------------------------------------------------------------------
# States


@dataclass(frozen=True)
class MeterState:
    """One meter state: cumulative energy [kWh] at an aware UTC time, currents per phase [A]."""

    session_id: str
    timestamp: datetime
    kwh: float
    current_a: tuple[float, float, float] | None = None
    phases: int | None = None


Outcome = Literal["stored", "duplicate", "out_of_order", "unknown", "rejected"]


@dataclass
class StateReport:
    """What happened to each state of a request, in request order."""

    outcomes: list[Outcome]
    kwh_decreased: set[int] = field(default_factory=set)
    errors: list[StateError] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o == outcome)

    @property
    def written(self) -> int:
        return self.count("stored") + self.count("out_of_order")


@dataclass(frozen=True)
class _Known:
    kwh: float
    last_state_at: datetime | None


@dataclass
class _Update:
    kwh: float
    timestamp: datetime
    current_a: float | None
    phases: int | None


def _sessions_table() -> Table:
    return cast(Table, ChargingSession.__table__)


def _states_table() -> Table:
    return cast(Table, SessionState.__table__)


def _connectors_table() -> Table:
    return cast(Table, Connector.__table__)


def _build_patch_statements() -> tuple[Select[Any], Select[Any], Update, Update]:
    """The prebuilt statements of :func:`patch_session` (built once: SQLAlchemy memoises
    their cache keys, so executing them costs no statement construction)."""
    s, c = _sessions_table(), _connectors_table()
    row = (
        select(
            s.c.country_code,
            s.c.party_id,
            s.c.connector_id,
            s.c.start_date_time,
            s.c.end_date_time,
            s.c.status,
            s.c.token_hash,
            s.c.last_updated,
            s.c.kwh,
            s.c.last_state_at,
            s.c.current_a,
            s.c.phases,
            s.c.raw,
            c.c.phase.label("connector_phase"),
        )
        .select_from(s.outerjoin(c, c.c.id == s.c.connector_id))
        .where(s.c.id == bindparam("b_id", type_=String()))
        .with_for_update(of=s)
    )
    connector = select(c.c.id, c.c.phases, c.c.phase).where(
        c.c.id == bindparam("b_id", type_=String())
    )
    state_values = {
        "kwh": bindparam("b_kwh", type_=Float()),
        "last_state_at": bindparam("b_ts", type_=UTCDateTime()),
        "current_a": bindparam("b_i", type_=Float()),
        "phases": bindparam("b_ph", type_=Integer()),
    }
    by_id = s.c.id == bindparam("b_id", type_=String())
    state_update = update(s).where(by_id).values(**state_values)
    full_update = (
        update(s)
        .where(by_id)
        .values(
            **state_values,
            connector_id=bindparam("b_connector", type_=String()),
            start_date_time=bindparam("b_start", type_=UTCDateTime()),
            end_date_time=bindparam("b_end", type_=UTCDateTime()),
            status=bindparam("b_status", type_=String()),
            token_hash=bindparam("b_token", type_=String()),
            last_updated=bindparam("b_updated", type_=UTCDateTime()),
            raw=bindparam("b_raw", type_=s.c.raw.type),
        )
    )
    return row, connector, full_update, state_update


_PATCH_SELECT, _CONNECTOR_SELECT, _PATCH_UPDATE, _STATE_UPDATE = _build_patch_statements()
_INSERT_STATE: dict[str, Any] = {}


def _insert_state_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (session_id, timestamp) DO NOTHING RETURNING id`` of one state,
    built once per dialect."""
    stmt = _INSERT_STATE.get(dialect)
    if stmt is None:
        table = _states_table()
        stmt = _insert_new_states(table, dialect).returning(table.c.id)
        _INSERT_STATE[dialect] = stmt
    return stmt


def _insert_new_states(table: Table, dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (session_id, timestamp) DO NOTHING`` in the database's dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        base: Any = pg_insert(table)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        base = sqlite_insert(table)
    else:  # pragma: no cover - the service supports SQLite and PostgreSQL only
        raise NotImplementedError(f"database dialect {dialect!r} is not supported")
    return base.on_conflict_do_nothing(index_elements=["session_id", "timestamp"])


def _load_known(db: Session, ids: Sequence[str], chunk: int = 900) -> dict[str, _Known]:
    t = _sessions_table()
    out: dict[str, _Known] = {}
    for i in range(0, len(ids), chunk):
        rows = db.execute(
            select(t.c.id, t.c.kwh, t.c.last_state_at).where(t.c.id.in_(ids[i : i + chunk]))
        )
        for sid, kwh, last in rows:
            out[sid] = _Known(float(kwh), last)
    return out


def _insert_states(
    db: Session, states: Sequence[MeterState], received_at: datetime
) -> set[tuple[str, datetime]]:
    """Insert, skipping (session_id, timestamp) pairs already stored; return the inserted pairs.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` executed for all rows at once
    (SQLAlchemy batches it into multi-row VALUES on SQLite and PostgreSQL).
    """
    if not states:
        return set()
    table = _states_table()
    stmt = _insert_new_states(table, db.get_bind().dialect.name).returning(
        table.c.session_id, table.c.timestamp
    )
    rows = [
        {
            "session_id": s.session_id,
            "timestamp": s.timestamp,
            "kwh": s.kwh,
            "current_a": list(s.current_a) if s.current_a is not None else None,
            "phases": s.phases,
            "received_at": received_at,
        }
        for s in states
    ]
    result = db.execute(stmt, rows)
    return {(sid, ts.astimezone(UTC)) for sid, ts in result}


def _update_sessions(db: Session, updates: dict[str, _Update]) -> None:
    """Apply the newest in-order state per session, in one executemany conditional UPDATE.

    The WHERE clause skips a session whose ``last_state_at`` moved past the state meanwhile, and
    ``kwh`` is raised only (``CASE WHEN kwh < :kwh``), so the update is safe under concurrency.
    """
    if not updates:
        return
    t = _sessions_table()
    b_kwh = bindparam("b_kwh", type_=Float())
    b_ts = bindparam("b_ts", type_=UTCDateTime())
    b_i = bindparam("b_i", type_=Float())
    b_ph = bindparam("b_ph", type_=Integer())
    stmt = (
        update(t)
        .where(t.c.id == bindparam("b_id", type_=String()))
        .where(or_(t.c.last_state_at.is_(None), t.c.last_state_at <= b_ts))
        .values(
            kwh=case((t.c.kwh < b_kwh, b_kwh), else_=t.c.kwh),
            last_state_at=b_ts,
            current_a=func.coalesce(b_i, t.c.current_a),
            phases=func.coalesce(b_ph, t.c.phases),
        )
        .execution_options(synchronize_session=False)
    )
    db.execute(
        stmt,
        [
            {"b_id": sid, "b_kwh": u.kwh, "b_ts": u.timestamp, "b_i": u.current_a, "b_ph": u.phases}
            for sid, u in updates.items()
        ],
    )


def store_states(db: Session, states: Sequence[MeterState], now: datetime) -> StateReport:
    """Store meter states of known sessions and advance the sessions (see module docstring).

    Parameters
    ----------
    db : Session
        In an open transaction; the caller commits.
    states : sequence of MeterState
        Timestamps aware (UTC); ``kwh`` cumulative [kWh]; ``current_a`` per phase [A].
    now : datetime
        Our clock: a state later than ``now + MAX_CLOCK_SKEW`` is rejected.

    Returns
    -------
    StateReport
        One outcome per state, in request order: ``stored`` (in order, may advance the session),
        ``out_of_order`` (stored, older than the session's ``last_state_at``), ``duplicate``
        (not stored again), ``unknown`` (no such session) or ``rejected`` (from the future).
    """
    n = len(states)
    outcomes: list[Outcome | None] = [None] * n
    report_errors: list[StateError] = []
    latest = now + MAX_CLOCK_SKEW
    known = _load_known(db, sorted({s.session_id for s in states}))
    seen: set[tuple[str, datetime]] = set()
    candidates: list[int] = []
    for i, s in enumerate(states):
        if s.session_id not in known:
            outcomes[i] = "unknown"
            report_errors.append(
                StateError(
                    index=i,
                    session_id=s.session_id,
                    field="session_id",
                    message=f"unknown session {s.session_id!r} (PUT it over OCPI first)",
                )
            )
            continue
        if s.timestamp > latest:
            outcomes[i] = "rejected"
            report_errors.append(
                StateError(
                    index=i,
                    session_id=s.session_id,
                    field="timestamp",
                    message=f"{s.timestamp.isoformat()} is more than "
                    f"{MAX_CLOCK_SKEW.total_seconds():.0f} s in the future",
                )
            )
            continue
        key = (s.session_id, s.timestamp)
        if key in seen:
            outcomes[i] = "duplicate"
            continue
        seen.add(key)
        candidates.append(i)

    inserted = _insert_states(db, [states[i] for i in candidates], now)
    for i in candidates:
        s = states[i]
        if (s.session_id, s.timestamp) not in inserted:
            outcomes[i] = "duplicate"
            continue
        last = known[s.session_id].last_state_at
        outcomes[i] = "out_of_order" if last is not None and s.timestamp < last else "stored"

    # apply the in-order states per session in timestamp order: kwh is a running maximum
    updates: dict[str, _Update] = {}
    decreased: set[int] = set()
    in_order = sorted(
        (i for i in candidates if outcomes[i] == "stored"),
        key=lambda i: (states[i].session_id, states[i].timestamp),
    )
    for i in in_order:
        s = states[i]
        prev = updates.get(s.session_id)
        kwh_before = prev.kwh if prev is not None else known[s.session_id].kwh
        if s.kwh < kwh_before:
            decreased.add(i)
        current = max(s.current_a) if s.current_a is not None else None
        updates[s.session_id] = _Update(
            kwh=max(kwh_before, s.kwh),
            timestamp=s.timestamp,
            current_a=current if current is not None else (prev.current_a if prev else None),
            phases=s.phases if s.phases is not None else (prev.phases if prev else None),
        )
    _update_sessions(db, updates)
    return StateReport(
        outcomes=[cast(Outcome, o) for o in outcomes], kwh_decreased=decreased, errors=report_errors
    )


def states_result(report: StateReport, states: Sequence[MeterState]) -> StatesResult:
    """The bulk endpoint's answer."""
    warnings = [
        StateError(
            index=i,
            session_id=states[i].session_id,
            field="kwh",
            message=f"{states[i].kwh} kWh is below the session's cumulative energy: stored, "
            "the session keeps its higher kwh",
        )
        for i in sorted(report.kwh_decreased)
    ]
    return StatesResult(
        stored=report.count("stored"),
        duplicates=report.count("duplicate"),
        out_of_order=report.count("out_of_order"),
        unknown=report.count("unknown"),
        rejected=report.count("rejected"),
        kwh_decreased=len(report.kwh_decreased),
        errors=report.errors,
        warnings=warnings,
    )


def meter_states(items: Sequence[StateIn]) -> list[MeterState]:
    """Compact states (validated) as :class:`MeterState`."""
    return [
        MeterState(
            session_id=s.session_id,
            timestamp=s.timestamp,
            kwh=s.kwh,
            current_a=(s.current_a[0], s.current_a[1], s.current_a[2]) if s.current_a else None,
            phases=s.phases,
        )
        for s in items
    ]


# ---------------------------------------------------------------------------------------------
# OCPI sessions


@dataclass(frozen=True)
class SessionView:
    """The session fields an OCPI answer reports, as stored after the request."""

    id: str
    status: str
    end_date_time: datetime | None
    connector_id: str
    kwh: float
    last_state_at: datetime | None
    current_a: float | None
    phases: int
    last_updated: datetime

    @classmethod
    def of(cls, row: ChargingSession) -> SessionView:
        return cls(
            id=row.id,
            status=row.status,
            end_date_time=row.end_date_time,
            connector_id=row.connector_id,
            kwh=row.kwh,
            last_state_at=row.last_state_at,
            current_a=row.current_a,
            phases=row.phases,
            last_updated=row.last_updated,
        )


@dataclass(frozen=True)
class SessionResult:
    """What a PUT or PATCH did: whether the session object changed and what its state became."""

    session: SessionView
    created: bool
    updated: bool
    state: Outcome | None
    kwh_decreased: bool

    @property
    def ended(self) -> bool:
        """The session is no longer plugged in (ended status or an end time)."""
        s = self.session
        return s.status in ENDED_STATUSES or s.end_date_time is not None

    def as_data(self) -> dict[str, Any]:
        s = self.session
        return {
            "id": s.id,
            "status": s.status,
            "plugged_in": s.status == "ACTIVE" and s.end_date_time is None,
            "connector_id": s.connector_id,
            "kwh": s.kwh,
            "last_state_at": iso_z(s.last_state_at),
            "current_a": s.current_a,
            "phases": s.phases,
            "last_updated": iso_z(s.last_updated),
            "session_updated": self.updated,
            "state": self.state or "none",
            "kwh_decreased": self.kwh_decreased,
        }


def iso_z(value: datetime | None) -> str | None:
    """An aware datetime as RFC 3339 in UTC with ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_path(field_name: str, path_value: str, body_value: str | None, *, ci: bool) -> None:
    if body_value is None:
        return
    same = path_value.upper() == body_value.upper() if ci else path_value == body_value
    if not same:
        raise SessionInputError(
            field_name, f"{body_value!r} differs from {path_value!r} in the URL path"
        )


def _check_not_future(field_name: str, value: datetime, now: datetime) -> None:
    if value > now + MAX_CLOCK_SKEW:
        raise SessionInputError(
            field_name,
            f"{iso_z(value)} is more than {MAX_CLOCK_SKEW.total_seconds():.0f} s in the future",
        )


def _connector(db: Session, evse_uid: str) -> Connector:
    connector = db.get(Connector, evse_uid)
    if connector is None:
        raise UnknownEvse(
            "evse_uid", f"unknown location: no connector {evse_uid!r} in the topology"
        )
    return connector


def _owned(db: Session, country_code: str, party_id: str, session_id: str) -> ChargingSession:
    row = db.get(ChargingSession, session_id, with_for_update=True)
    if (
        row is None
        or row.country_code.upper() != country_code.upper()
        or row.party_id.upper() != party_id.upper()
    ):
        raise UnknownSession(
            "session_id",
            f"unknown session {country_code}/{party_id}/{session_id} (PUT the Session first)",
        )
    return row


def _period_key(period: dict[str, Any]) -> str:
    return str(period["start_date_time"])


def _merge_periods(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Periods by ``start_date_time`` (a new one replaces an old one with the same start)."""
    merged = {_period_key(p): p for p in old}
    merged.update({_period_key(p): p for p in new})
    return [merged[k] for k in sorted(merged)]


def _dump_periods(periods: Sequence[ChargingPeriod]) -> list[dict[str, Any]]:
    out = []
    for p in periods:
        d = p.model_dump(mode="json", exclude_none=True)
        d["start_date_time"] = iso_z(p.start_date_time)
        out.append(d)
    return out


def _state_from(
    session_id: str,
    kwh: float,
    timestamp: datetime,
    periods: Sequence[ChargingPeriod],
    session_phases: int,
    connector_phase: str,
    field_prefix: str = "charging_periods",
) -> MeterState:
    """The meter state an OCPI Session update carries.

    ``kwh`` is the Session's cumulative energy at ``timestamp`` (its ``last_updated``). The
    currents come from the newest period of this request: the ``current_a`` extension if given,
    else its CURRENT dimension, read as the average current **per phase** on the phases the car
    draws on (all three, or the connector's ``phase`` for a 1-phase car).
    """
    if not periods:
        return MeterState(session_id, timestamp, kwh)
    index, newest = max(enumerate(periods), key=lambda ip: ip[1].start_date_time)
    phases = newest.phases
    if newest.current_a is not None:
        a, b, c = newest.current_a
        return MeterState(session_id, timestamp, kwh, (a, b, c), phases)
    current = None
    for j, dim in enumerate(newest.dimensions):
        if dim.type == "CURRENT":
            if dim.volume < 0:
                raise SessionInputError(
                    f"{field_prefix}[{index}].dimensions[{j}].volume",
                    f"CURRENT {dim.volume} A is negative (discharging is not supported)",
                )
            current = dim.volume
    if current is None:
        return MeterState(session_id, timestamp, kwh, None, phases)
    n = phases or session_phases
    if n == 3:
        per_phase = (current, current, current)
    else:
        values = [0.0, 0.0, 0.0]
        values[PHASE_INDEX.get(connector_phase, 0)] = current
        per_phase = (values[0], values[1], values[2])
    return MeterState(session_id, timestamp, kwh, per_phase, phases)


def _ocpi_raw(data: dict[str, Any]) -> dict[str, Any]:
    """The OCPI fields to keep in ``raw``: everything but the token uid."""
    out = dict(data)
    token = out.get("cdr_token")
    if isinstance(token, dict):
        out["cdr_token"] = {k: v for k, v in token.items() if k != "uid"}
    for key in ("start_date_time", "end_date_time", "last_updated"):
        if isinstance(out.get(key), str):
            out[key] = iso_z(datetime.fromisoformat(out[key]))
    return out


def _finish(row: ChargingSession) -> None:
    """An ended status ends the session; the end is never before the start."""
    if row.status in ENDED_STATUSES and row.end_date_time is None:
        row.end_date_time = row.last_updated
    if row.end_date_time is not None and row.end_date_time < row.start_date_time:
        raise SessionInputError(
            "end_date_time",
            f"{iso_z(row.end_date_time)} is before start_date_time {iso_z(row.start_date_time)}",
        )


def _apply_state(
    db: Session, state: MeterState | None, now: datetime
) -> tuple[Outcome | None, bool]:
    if state is None:
        return None, False
    report = store_states(db, [state], now)
    return report.outcomes[0], 0 in report.kwh_decreased


def put_session(
    db: Session,
    country_code: str,
    party_id: str,
    session_id: str,
    body: OcpiSession,
    now: datetime,
    *,
    token_key: bytes,
) -> SessionResult:
    """Create or replace a session from a full OCPI Session (PUT) and record its state.

    The session object is replaced only when ``last_updated`` is not older than the stored one;
    the state (``kwh`` at ``last_updated``) is offered to :func:`store_states` either way.
    ``token_key`` keys the hash the token uid is stored as (:mod:`api.tokens`).

    Raises
    ------
    SessionInputError
        Path and body ids differ, ``last_updated`` in the future, end before start.
    UnknownEvse
        ``evse_uid`` is not a connector of the topology.
    SessionConflict
        The id belongs to a session of another party.
    """
    _check_path("country_code", country_code, body.country_code, ci=True)
    _check_path("party_id", party_id, body.party_id, ci=True)
    _check_path("id", session_id, body.id, ci=False)
    _check_not_future("last_updated", body.last_updated, now)
    connector = _connector(db, body.evse_uid)
    row = db.get(ChargingSession, session_id, with_for_update=True)
    if row is not None and (
        row.country_code != body.country_code.upper() or row.party_id != body.party_id.upper()
    ):
        raise SessionConflict(
            "id", f"session {session_id!r} belongs to party {row.country_code}/{row.party_id}"
        )
    created = row is None
    data = body.model_dump(mode="json", exclude_none=True)
    data["charging_periods"] = _dump_periods(body.charging_periods)
    if row is None:
        row = ChargingSession(
            id=session_id,
            kwh=0.0,
            last_state_at=None,
            current_a=None,
            phases=connector.phases,
            opt_out=False,
            pause_consent=False,
            raw={},
        )
        db.add(row)
    updated = created or body.last_updated >= row.last_updated
    if updated:
        if row.connector_id is not None and row.connector_id != connector.id:
            row.phases = connector.phases
        row.country_code = body.country_code.upper()
        row.party_id = body.party_id.upper()
        row.connector_id = connector.id
        row.start_date_time = body.start_date_time
        row.end_date_time = body.end_date_time
        row.status = body.status
        row.token_hash = token_hash(body.cdr_token.uid, token_key)
        row.last_updated = body.last_updated
        kept = {k: v for k, v in (row.raw or {}).items() if k == "charging_preferences"}
        row.raw = {**_ocpi_raw(data), **kept}
        _finish(row)
    db.flush()
    state = _state_from(
        session_id,
        body.kwh,
        body.last_updated,
        body.charging_periods,
        row.phases,
        connector.phase,
    )
    outcome, decreased = _apply_state(db, state, now)
    db.refresh(row)
    return SessionResult(SessionView.of(row), created, updated, outcome, decreased)


def patch_session(
    db: Session,
    country_code: str,
    party_id: str,
    session_id: str,
    patch: OcpiSessionPatch,
    now: datetime,
    *,
    token_key: bytes,
) -> SessionResult:
    """Update a stored session from a partial OCPI Session (PATCH).

    Fields given replace the stored ones (when ``last_updated`` is not older than the stored
    one); ``charging_periods`` are merged by ``start_date_time``. A state is recorded when the
    PATCH carries ``kwh`` (cumulative, at ``last_updated``); without ``kwh`` none is.
    ``token_key`` keys the hash a new token uid is stored as (:mod:`api.tokens`).

    This is the hot path of the service (one PATCH per session every 5 minutes), so it works
    in SQLAlchemy Core on the session's connection with prebuilt statements: one ``SELECT``
    of the session row (locked on PostgreSQL) joined with its connector, one ``INSERT ... ON
    CONFLICT DO NOTHING`` of the state, and at most one ``UPDATE`` of the session with values
    computed here. The state rules are those of :func:`store_states`; the row lock (PostgreSQL)
    or the write lock of :func:`api.db.transaction` (SQLite) keeps them safe under concurrency.

    Raises
    ------
    UnknownSession
        No such session of this party.
    SessionInputError, UnknownEvse
        As for :func:`put_session`; also a required Session field set to null.
    """
    given = patch.model_fields_set
    for name in _NOT_NULL:
        if name in given and getattr(patch, name) is None:
            raise SessionInputError(name, "may not be null (leave it out to keep it)")
    _check_path("country_code", country_code, patch.country_code, ci=True)
    _check_path("party_id", party_id, patch.party_id, ci=True)
    _check_path("id", session_id, patch.id, ci=False)
    _check_not_future("last_updated", patch.last_updated, now)
    conn = db.connection()
    row = conn.execute(_PATCH_SELECT, {"b_id": session_id}).first()
    if (
        row is None
        or row.country_code.upper() != country_code.upper()
        or row.party_id.upper() != party_id.upper()
    ):
        raise UnknownSession(
            "session_id",
            f"unknown session {country_code}/{party_id}/{session_id} (PUT the Session first)",
        )
    v = _PatchValues.of(row)
    connector_phase: str = row.connector_phase or "L1"
    found = None
    if patch.evse_uid is not None:
        found = conn.execute(_CONNECTOR_SELECT, {"b_id": patch.evse_uid}).first()
        if found is None:
            raise UnknownEvse(
                "evse_uid", f"unknown location: no connector {patch.evse_uid!r} in the topology"
            )
        connector_phase = found.phase
    updated = patch.last_updated >= row.last_updated
    periods = patch.charging_periods or []
    if updated:
        data = patch.model_dump(mode="json", exclude_unset=True)
        data.pop("charging_periods", None)
        for name in ("country_code", "party_id"):
            data.pop(name, None)
        if patch.cdr_token is not None:
            v.token_hash = token_hash(patch.cdr_token.uid, token_key)
        if patch.evse_uid is not None and found is not None:
            if found.id != v.connector_id:
                v.phases = found.phases
            v.connector_id = found.id
        if patch.start_date_time is not None:
            v.start_date_time = patch.start_date_time
        if "end_date_time" in given:
            v.end_date_time = patch.end_date_time
        if patch.status is not None:
            v.status = patch.status
        v.last_updated = patch.last_updated
        raw = dict(row.raw or {})
        raw.update(_ocpi_raw(data))
        if periods or "charging_periods" not in raw:
            raw["charging_periods"] = _merge_periods(
                list(raw.get("charging_periods", [])), _dump_periods(periods)
            )
        v.raw = raw
        v.finish()
    outcome: Outcome | None = None
    decreased = False
    if patch.kwh is not None:
        state = _state_from(
            session_id, patch.kwh, patch.last_updated, periods, v.phases, connector_phase
        )
        outcome, decreased = _apply_one_state(conn, state, v, now)
    if updated:
        conn.execute(_PATCH_UPDATE, v.params(session_id))
    elif outcome == "stored":
        conn.execute(_STATE_UPDATE, v.state_params(session_id))
    view = SessionView(
        id=session_id,
        status=v.status,
        end_date_time=v.end_date_time,
        connector_id=v.connector_id,
        kwh=v.kwh,
        last_state_at=v.last_state_at,
        current_a=v.current_a,
        phases=v.phases,
        last_updated=v.last_updated,
    )
    return SessionResult(view, False, updated, outcome, decreased)


@dataclass
class _PatchValues:
    """The mutable columns of a session row while a PATCH is applied to it."""

    connector_id: str
    start_date_time: datetime
    end_date_time: datetime | None
    status: str
    token_hash: str | None
    last_updated: datetime
    kwh: float
    last_state_at: datetime | None
    current_a: float | None
    phases: int
    raw: dict[str, Any] | None

    @classmethod
    def of(cls, row: Any) -> _PatchValues:
        return cls(
            connector_id=row.connector_id,
            start_date_time=row.start_date_time,
            end_date_time=row.end_date_time,
            status=row.status,
            token_hash=row.token_hash,
            last_updated=row.last_updated,
            kwh=float(row.kwh),
            last_state_at=row.last_state_at,
            current_a=row.current_a,
            phases=int(row.phases),
            raw=row.raw,
        )

    def finish(self) -> None:
        """As :func:`_finish`: an ended status ends the session; no end before the start."""
        if self.status in ENDED_STATUSES and self.end_date_time is None:
            self.end_date_time = self.last_updated
        if self.end_date_time is not None and self.end_date_time < self.start_date_time:
            raise SessionInputError(
                "end_date_time",
                f"{iso_z(self.end_date_time)} is before start_date_time "
                f"{iso_z(self.start_date_time)}",
            )

    def state_params(self, session_id: str) -> dict[str, Any]:
        return {
            "b_id": session_id,
            "b_kwh": self.kwh,
            "b_ts": self.last_state_at,
            "b_i": self.current_a,
            "b_ph": self.phases,
        }

    def params(self, session_id: str) -> dict[str, Any]:
        return {
            **self.state_params(session_id),
            "b_connector": self.connector_id,
            "b_start": self.start_date_time,
            "b_end": self.end_date_time,
            "b_status": self.status,
            "b_token": self.token_hash,
            "b_updated": self.last_updated,
            "b_raw": self.raw,
        }


def _apply_one_state(
    conn: Connection, state: MeterState, v: _PatchValues, now: datetime
) -> tuple[Outcome, bool]:
    """Store one state of a locked session and apply it to ``v`` (the rules of
    :func:`store_states`); the outcome and whether its ``kwh`` was below the session's."""
    inserted = conn.execute(
        _insert_state_statement(conn.dialect.name),
        {
            "session_id": state.session_id,
            "timestamp": state.timestamp,
            "kwh": state.kwh,
            "current_a": list(state.current_a) if state.current_a is not None else None,
            "phases": state.phases,
            "received_at": now,
        },
    ).first()
    if inserted is None:
        return "duplicate", False
    if v.last_state_at is not None and state.timestamp < v.last_state_at:
        return "out_of_order", False
    decreased = state.kwh < v.kwh
    v.kwh = max(v.kwh, state.kwh)
    v.last_state_at = state.timestamp
    if state.current_a is not None:
        v.current_a = max(state.current_a)
    if state.phases is not None:
        v.phases = state.phases
    return "stored", decreased


def set_charging_preferences(
    db: Session,
    country_code: str,
    party_id: str,
    session_id: str,
    prefs: ChargingPreferences,
    now: datetime,
) -> str:
    """Store the driver's preferences on the session; the OCPI ChargingPreferencesResponse.

    ``departure_time`` → ``departure``, ``energy_need`` → ``energy_need_kwh`` (a PUT replaces
    both: left out means unknown). ``opt_out`` is the extension's value, or true for
    ``profile_type`` FAST; ``pause_consent`` is the extension's value (default false). The
    whole object is kept in ``raw["charging_preferences"]``.

    Raises
    ------
    UnknownSession
        No such session of this party.
    SessionInputError
        ``departure_time`` before the session's start.
    """
    row = _owned(db, country_code, party_id, session_id)
    if prefs.departure_time is not None and prefs.departure_time < row.start_date_time:
        raise SessionInputError(
            "departure_time",
            f"{iso_z(prefs.departure_time)} is before the session's start "
            f"{iso_z(row.start_date_time)}",
        )
    row.departure = prefs.departure_time
    row.energy_need_kwh = prefs.energy_need
    row.opt_out = bool(prefs.opt_out) or prefs.profile_type == "FAST"
    row.pause_consent = bool(prefs.pause_consent)
    stored = prefs.model_dump(mode="json", exclude_none=True)
    if prefs.departure_time is not None:
        stored["departure_time"] = iso_z(prefs.departure_time)
    stored["received_at"] = iso_z(now)
    row.raw = {**(row.raw or {}), "charging_preferences": stored}
    return "ACCEPTED"


def count_plugged_in(db: Session) -> int:
    """Sessions plugged in: status ACTIVE and no end."""
    t = _sessions_table()
    stmt = (
        select(func.count())
        .select_from(t)
        .where(t.c.status == "ACTIVE", t.c.end_date_time.is_(None))
    )
    return int(db.execute(stmt).scalar_one())

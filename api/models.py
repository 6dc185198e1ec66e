"""Tables of the scheduling service. Units are in column names; times are aware UTC.

The schema itself is created by the Alembic migrations (``api/migrations``), never by
``create_all``: a test checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, JSONText, UTCDateTime, utcnow
from optimizer.profiles import ocpp_forms


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``prefix`` identifies it in logs and lists."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(32))
    regions: Mapped[list[str]] = mapped_column(JSON, default=list)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TopologyNode(Base):
    """A DSO region (``parent`` null) or a subcluster."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    parent: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    limit_kw: Mapped[Any] = mapped_column(JSON, nullable=True)
    limit_a: Mapped[Any] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Station(Base):
    __tablename__ = "stations"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    node: Mapped[str] = mapped_column(String(200), index=True)
    limit_a: Mapped[Any] = mapped_column(JSON)
    min_current_a: Mapped[float] = mapped_column(Float, default=8.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Connector(Base):
    """A connector; OCPI sessions refer to it by ``evse_uid`` (= this id)."""

    __tablename__ = "connectors"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(200), index=True)
    position: Mapped[int] = mapped_column(Integer)
    limit_a: Mapped[float] = mapped_column(Float, default=16.0)
    phases: Mapped[int] = mapped_column(Integer, default=3)
    phase: Mapped[str] = mapped_column(String(2), default="L1")


class ChargingSession(Base):
    """A charging session as the CSMS reports it (OCPI 2.2.1 Session), with what we keep of it."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    country_code: Mapped[str] = mapped_column(String(2))
    party_id: Mapped[str] = mapped_column(String(3))
    connector_id: Mapped[str] = mapped_column(String(200), index=True)
    start_date_time: Mapped[datetime] = mapped_column(UTCDateTime)
    end_date_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    kwh: Mapped[float] = mapped_column(Float, default=0.0)
    last_state_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    current_a: Mapped[float | None] = mapped_column(Float, nullable=True)
    phases: Mapped[int] = mapped_column(Integer, default=3)
    departure: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    energy_need_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    opt_out: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)
    raw: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SessionState(Base):
    """Every meter state received (the measurement input); duplicates are not stored twice."""

    __tablename__ = "session_states"
    __table_args__ = (UniqueConstraint("session_id", "timestamp", name="uq_state_session_time"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), index=True)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    kwh: Mapped[float] = mapped_column(Float)
    current_a: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    phases: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DsoProfile(Base):
    """A DSO's cap and/or target for one region and local day, per 15-minute slot [kW]."""

    __tablename__ = "dso_profiles"
    region: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    start: Mapped[datetime] = mapped_column(UTCDateTime)  # UTC start of slot 0
    slot_s: Mapped[int] = mapped_column(Integer, default=900)
    cap_kw: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    target_kw: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="rest")
    event_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ScheduleRun(Base):
    """One re-optimisation of the live sessions, published only after it passed the checker."""

    __tablename__ = "schedule_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    grid_start: Mapped[datetime] = mapped_column(UTCDateTime)
    step_s: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    time_s: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    violations: Mapped[int] = mapped_column(Integer, default=0)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    kpis: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    region_power_kw: Mapped[dict[str, list[float]]] = mapped_column(JSON, default=dict)


class ProfileChange(Base):
    """The cursor sequence of published profiles: one row per (re)published session profile
    (a log, read by cursor; no index on the session: migration 0008).

    Rows are never deleted: on SQLite the next cursor is the highest one plus one, and
    :mod:`api.published` relies on a committed cursor never being handed out again."""

    __tablename__ = "profile_changes"
    cursor: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36))
    run_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Profile(Base):
    """The charging profile currently published for a session; a cleared one (``cleared_at``
    set: the session ended) keeps its last forms but is no longer in force.

    Stored: the OCPI form, the limit of every step, and the session's connector and phases.
    The OCPP 1.6 and 2.0.1 forms follow from those (:func:`optimizer.profiles.ocpp_forms`) and
    are derived when read (migration 0008): a third of the text to write per profile."""

    __tablename__ = "profiles"
    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    cursor: Mapped[int] = mapped_column(Integer, index=True)
    run_id: Mapped[int] = mapped_column(Integer)
    # JSON as text on PostgreSQL (api.db.JSONText; migration 0007)
    limits_a: Mapped[list[float]] = mapped_column(JSONText)
    ocpi: Mapped[dict[str, Any]] = mapped_column(JSONText)
    evse_id: Mapped[int] = mapped_column(Integer)  # OCPP connectorId / evseId (1-based)
    n_phases: Mapped[int] = mapped_column(Integer)  # numberPhases of every OCPP period
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # set when the session ended: the profile left the feed (api/clearing.py, migration 0004)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def ocpp_forms(self) -> dict[str, dict[str, Any]]:
        """``{"ocpp16": ..., "ocpp201": ...}`` of this profile."""
        return ocpp_forms(
            self.ocpi, session_id=self.session_id, evse_id=self.evse_id, n_phases=self.n_phases
        )

    @property
    def ocpp16(self) -> dict[str, Any]:
        """The OCPP 1.6 ``SetChargingProfile.req`` payload."""
        return self.ocpp_forms()["ocpp16"]

    @property
    def ocpp201(self) -> dict[str, Any]:
        """The OCPP 2.0.1 ``SetChargingProfileRequest`` payload."""
        return self.ocpp_forms()["ocpp201"]


class OutboxItem(Base):
    """A profile to push to the CPO; kept until the CPO accepted it or it ran out of attempts."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), index=True)
    cursor: Mapped[int] = mapped_column(Integer)
    # null until the item is claimed: its profile is the session's profile of this cursor
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Job(Base):
    """A background scheduling job (``POST /v1/schedules`` on a large scenario)."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Setting(Base):
    """Small persistent key/value settings changed at run time (e.g. the last heartbeat)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


# The demand-response and forecasting-registry tables live in their own modules; importing them
# here puts them in the same metadata wherever these models are used (migrations check, ORM).
import api.models_dr  # noqa: E402
import api.models_forecast  # noqa: E402
import api.models_lease  # noqa: E402, F401  (the scheduler lease: api/lease.py)

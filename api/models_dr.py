"""Tables of demand response: signals, activations, per-session curtailments, the relay policy,
contract rules per region, drivers' consent and the audit log (``docs/demand-response.md``).

Created by migration ``0002``; imported at the end of :mod:`api.models` so that one metadata
holds every table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, utcnow


class DrSignal(Base):
    """A demand-response signal from the energy supplier (BRP) or an operator, and its fate.

    ``status``: ``pending`` (waiting for an operator), ``relayed`` (an activation followed),
    ``rejected`` (by an operator, or by the policy/eligibility: ``decision_reason`` says why).
    """

    __tablename__ = "dr_signals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    sender: Mapped[str] = mapped_column(String(64))  # role:key prefix
    end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    target_kw: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    imbalance_price_eur_per_mwh: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    activation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DrActivation(Base):
    """One relayed signal: the sessions it curtailed and when they come back."""

    __tablename__ = "dr_activations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    signal_id: Mapped[int] = mapped_column(Integer, index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    restore_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    mode: Mapped[str] = mapped_column(String(16))  # auto | manual
    target_kw: Mapped[float | None] = mapped_column(Float, nullable=True)
    released_kw: Mapped[float] = mapped_column(Float, default=0.0)
    sessions_curtailed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    released_kw_by_region: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    time_s: Mapped[float] = mapped_column(Float, default=0.0)
    restored: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    restored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    restore_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DrCurtailment(Base):
    """One session held at its minimum by one activation, ``[start, until)``. Read by time
    (budgets: ``until`` after the window's start; KPIs: ``start`` in a day) and by activation,
    never by session alone: no index on the session (migration 0008)."""

    __tablename__ = "dr_curtailments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    activation_id: Mapped[int] = mapped_column(Integer, index=True)
    session_id: Mapped[str] = mapped_column(String(36))
    region: Mapped[str | None] = mapped_column(String(200), nullable=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    limit_a: Mapped[float] = mapped_column(Float)
    current_before_a: Mapped[float] = mapped_column(Float)
    released_kw: Mapped[float] = mapped_column(Float)
    kwh_at_signal: Mapped[float] = mapped_column(Float, default=0.0)
    planned_kwh: Mapped[float | None] = mapped_column(Float, nullable=True)


class DrPolicy(Base):
    """The operator's relay policy (one row, ``id`` 1)."""

    __tablename__ = "dr_policy"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    auto_relay: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_from: Mapped[str] = mapped_column(String(5), default="00:00")  # local HH:MM
    allowed_to: Mapped[str] = mapped_column(String(5), default="24:00")
    max_activations_per_day: Mapped[int] = mapped_column(Integer, default=8)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="")


class DrContractRule(Base):
    """Curtailment rules of the contracts (municipality) in one region."""

    __tablename__ = "dr_contract_rules"
    region: Mapped[str] = mapped_column(String(200), primary_key=True)
    consent_required: Mapped[bool] = mapped_column(Boolean, default=False)
    max_curtail_min_per_4h: Mapped[float] = mapped_column(Float, default=30.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DrConsent(Base):
    """A driver's consent to demand-response curtailment for one session."""

    __tablename__ = "dr_consents"
    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consent: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DrAuditEntry(Base):
    """Every demand-response decision: who, when, what and why."""

    __tablename__ = "dr_audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    signal_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    activation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

"""Demand response in the service: signals, the relay policy, activations through the fast path,
restore at the settlement-period end with the optimiser's latest plan, flexibility and KPIs.

The rules are in ``docs/demand-response.md``. In short:

- A signal (role ``operator`` or ``brp``) is stored and audited. With auto-relay on, inside the
  allowed local hours and below the day's maximum number of activations it is relayed at once;
  otherwise it waits for an operator's ``relay`` or ``reject``.
- Relaying runs :func:`optimizer.fastpath.activate` on the active sessions and writes, in ONE
  transaction, the activation, one :class:`~api.models_dr.DrCurtailment` per curtailed session,
  their curtailment profiles (the same ``profiles``/``profile_changes``/``outbox`` rows the
  scheduler publishes) and the audit entry. A curtailment profile holds the session's minimum
  current from the signal until its restore time and then continues with the limits of the
  profile published before, so a charger that never hears from us again still comes back.
- While a curtailment holds, the live scenario caps the session (``session.limit_a``) and the
  scheduler leaves its profile alone (:func:`api.live.held_sessions`). Ahead of the restore time
  :class:`RestoreLoop` solves the live scenario as it will be at that time, and at the restore
  time publishes the result like a scheduler run.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from itertools import pairwise
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.bulk import dumps, insert_columns, insert_rows, loads, reserve_ids
from api.db import transaction, utcnow
from api.dr_batch import Batch, render_batch
from api.lease import LeaseKeeper
from api.live import build_live_scenario, held_sessions
from api.metrics import REGISTRY
from api.models import (
    ChargingSession,
    Connector,
    OutboxItem,
    Profile,
    ProfileChange,
    ScheduleRun,
    Station,
    TopologyNode,
)
from api.models_dr import (
    DrActivation,
    DrAuditEntry,
    DrConsent,
    DrContractRule,
    DrCurtailment,
    DrPolicy,
    DrSignal,
)
from api.publish import (
    Choice,
    _lock,
    _root_power,
    choose_schedule,
    ocpi_segments,
    publish_profiles,
)
from api.published import Found, PublishedProfiles, published_ocpi_texts
from api.security import Principal
from api.settings import Settings
from optimizer.collector import gc_paused
from optimizer.fastpath import (
    DEFAULT_BUDGET_MIN,
    MAX_ACTIVATION_S,
    MIN_DURATION_S,
    WINDOW_S,
    Activation,
    FastPathError,
    activate,
    budget_ahead_s,
)
from optimizer.network import compile_network
from optimizer.profiles import ocpp_forms
from optimizer.scenario import parse_scenario

log = logging.getLogger(__name__)

CURTAILMENT_COLUMNS = (
    "activation_id",
    "session_id",
    "region",
    "start",
    "until",
    "limit_a",
    "current_before_a",
    "released_kw",
    "kwh_at_signal",
    "planned_kwh",
)
"""Columns of a bulk-written :class:`~api.models_dr.DrCurtailment` row, in row order."""

SIGNALS = Counter(
    "gridcharge_dr_signals", "Demand-response signals by outcome", ["outcome"], registry=REGISTRY
)
ACTIVATIONS = Counter(
    "gridcharge_dr_activations", "Demand-response activations by mode", ["mode"], registry=REGISTRY
)
SESSIONS_CURTAILED = Counter(
    "gridcharge_dr_sessions_curtailed", "Sessions curtailed by activations", registry=REGISTRY
)
RELEASED_KW = Gauge(
    "gridcharge_dr_released_kw", "Power released by the newest activation [kW]", registry=REGISTRY
)
ACTIVATION_SECONDS = Histogram(
    "gridcharge_dr_activation_seconds",
    "Signal to committed curtailment profiles [s]",
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
RESTORES = Counter(
    "gridcharge_dr_restores", "Restores published, by outcome", ["outcome"], registry=REGISTRY
)

RESTORE_LEAD_S = 120.0
"""The restore schedule is computed this long before the restore time [s] (or at once)."""


class DrError(Exception):
    """A refused demand-response request: HTTP ``status``, message naming the field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        self.status = status
        self.field = field
        super().__init__(f"{field}: {message}")


def actor_of(principal: Principal) -> str:
    return f"{principal.role}:{principal.prefix}"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_z(t: datetime) -> str:
    """``t`` in UTC, ISO-8601 with ``Z``."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Spans:
    """Wall time of the steps of one request [ms], in the order they ran (the response and the
    audit entry carry them, so a slow activation says where its time went)."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = self.t = time.perf_counter() if t0 is None else t0
        self.ms: dict[str, float] = {}

    def total_s(self) -> float:
        """Seconds since the start [s]."""
        return time.perf_counter() - self.t0

    def mark(self, step: str) -> None:
        """End ``step`` now (it began at the previous mark)."""
        t = time.perf_counter()
        self.ms[step] = round(self.ms.get(step, 0.0) + (t - self.t) * 1e3, 2)
        self.t = t


def audit(
    db: Session,
    actor: str,
    action: str,
    *,
    at: datetime,
    signal_id: int | None = None,
    activation_id: int | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    db.add(
        DrAuditEntry(
            at=at,
            actor=actor,
            action=action,
            signal_id=signal_id,
            activation_id=activation_id,
            reason=reason,
            detail=dict(detail or {}),
        )
    )


# --------------------------------------------------------------------------------------------
# policy, contract rules, consent


def get_policy(db: Session) -> DrPolicy:
    """The stored policy, or the default (auto-relay off) when none was set."""
    row = db.get(DrPolicy, 1)
    if row is None:
        row = DrPolicy(
            id=1,
            auto_relay=False,
            allowed_from="00:00",
            allowed_to="24:00",
            max_activations_per_day=8,
            updated_by="",
            updated_at=datetime(1970, 1, 1, tzinfo=UTC),
        )
    return row


def policy_json(p: DrPolicy) -> dict[str, Any]:
    return {
        "auto_relay": p.auto_relay,
        "allowed_from": p.allowed_from,
        "allowed_to": p.allowed_to,
        "max_activations_per_day": p.max_activations_per_day,
        "updated_at": _iso(p.updated_at),
        "updated_by": p.updated_by,
    }


def parse_hhmm(value: str, field: str) -> int:
    """Minutes after local midnight of ``HH:MM`` (``24:00`` allowed as the day's end)."""
    try:
        hh, mm = value.split(":")
        minutes = int(hh) * 60 + int(mm)
    except ValueError:
        raise DrError(422, field, f"{value!r} is not HH:MM") from None
    if len(hh) != 2 or len(mm) != 2 or not 0 <= int(mm) < 60 or not 0 <= minutes <= 1440:
        raise DrError(422, field, f"{value!r} is not a time of day HH:MM (00:00-24:00)")
    return minutes


def set_policy(db: Session, body: Mapping[str, Any], actor: str, now: datetime) -> DrPolicy:
    """Replace the policy (fields not given keep their value); audited."""
    row = db.get(DrPolicy, 1)
    if row is None:
        row = get_policy(db)
        db.add(row)
    for key in ("allowed_from", "allowed_to"):
        if body.get(key) is not None:
            parse_hhmm(str(body[key]), key)
            setattr(row, key, str(body[key]))
    if body.get("auto_relay") is not None:
        row.auto_relay = bool(body["auto_relay"])
    if body.get("max_activations_per_day") is not None:
        row.max_activations_per_day = int(body["max_activations_per_day"])
    row.updated_at = now
    row.updated_by = actor
    audit(db, actor, "policy", at=now, detail=policy_json(row))
    return row


def rule_json(r: DrContractRule) -> dict[str, Any]:
    return {
        "region": r.region,
        "consent_required": r.consent_required,
        "max_curtail_min_per_4h": r.max_curtail_min_per_4h,
        "updated_at": _iso(r.updated_at),
    }


def set_contract_rule(
    db: Session, region: str, body: Mapping[str, Any], actor: str, now: datetime
) -> DrContractRule:
    """Create or replace the contract rule of a region (which must exist); audited."""
    node = db.get(TopologyNode, region)
    if node is None or node.parent is not None:
        raise DrError(404, "region", f"unknown region {region!r}")
    row = db.get(DrContractRule, region)
    if row is None:
        row = DrContractRule(region=region)
        db.add(row)
    row.consent_required = bool(body.get("consent_required", False))
    row.max_curtail_min_per_4h = float(body.get("max_curtail_min_per_4h", DEFAULT_BUDGET_MIN))
    row.updated_at = now
    audit(db, actor, "contract_rule", at=now, detail=rule_json(row))
    return row


def set_consent(db: Session, session_id: str, consent: bool, actor: str, now: datetime) -> None:
    if db.get(ChargingSession, session_id) is None:
        raise DrError(404, "session_id", f"unknown session {session_id!r}")
    row = db.get(DrConsent, session_id)
    if row is None:
        row = DrConsent(session_id=session_id)
        db.add(row)
    row.consent = consent
    row.updated_at = now
    audit(db, actor, "consent", at=now, detail={"session_id": session_id, "consent": consent})


# --------------------------------------------------------------------------------------------
# the fleet: active sessions as arrays


@dataclass
class Fleet:
    """The active sessions at ``now`` as arrays (one entry per session, by id)."""

    now: datetime
    ids: list[str]
    region: list[str | None]
    evse: np.ndarray
    i_now_a: np.ndarray
    min_a: np.ndarray
    max_a: np.ndarray
    n_phases: np.ndarray
    opt_out: np.ndarray
    consent_required: np.ndarray
    consent: np.ndarray
    budget_s: np.ndarray
    kwh: np.ndarray
    need_kwh: np.ndarray  # NaN when unknown
    departure: list[datetime | None]
    log_session: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    log_start_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_end_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_curtailed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n(self) -> int:
        return len(self.ids)


def _roots(db: Session) -> dict[str, str]:
    """Region (root node) of every node."""
    parent = dict(db.execute(select(TopologyNode.id, TopologyNode.parent)).all())
    root: dict[str, str] = {}
    for nid in parent:
        chain = [nid]
        up = parent[nid]
        seen = {nid}
        while up is not None and up not in root and up in parent and up not in seen:
            chain.append(up)
            seen.add(up)
            up = parent[up]
        top = root.get(up, up) if up is not None and up in parent else chain[-1]
        for c in chain:
            root[c] = top
    return root


def local_midnight(t: datetime, tz: str) -> datetime:
    local = t.astimezone(ZoneInfo(tz))
    day = datetime.combine(local.date(), dtime(0), ZoneInfo(tz))
    return day.astimezone(UTC)


def load_fleet(db: Session, settings: Settings, now: datetime, *, departures: bool = True) -> Fleet:
    """The plugged-in sessions on known connectors (the newest per connector), with their rules,
    consent, the curtailment log of the last 4 hours and the curtailments of the local day.

    One set-based query reads the sessions with their connector, station and consent; its
    columns go into numpy arrays. ``departures=False`` leaves ``Fleet.departure`` empty (the
    activation does not need it)."""
    root = _roots(db)
    columns = [
        ChargingSession.id,
        Connector.position,
        ChargingSession.current_a,
        Station.min_current_a,
        Connector.limit_a,
        ChargingSession.phases,
        Connector.phases,
        ChargingSession.opt_out,
        DrConsent.consent,
        ChargingSession.kwh,
        ChargingSession.energy_need_kwh,
        Station.node,
        ChargingSession.departure if departures else ChargingSession.id,
        ChargingSession.connector_id,
    ]
    result = db.connection().execute(
        select(*columns)
        .join(Connector, Connector.id == ChargingSession.connector_id)
        .outerjoin(Station, Station.id == Connector.station_id)
        .outerjoin(DrConsent, DrConsent.session_id == ChargingSession.id)
        .where(ChargingSession.status == "ACTIVE", ChargingSession.end_date_time.is_(None))
        .order_by(ChargingSession.start_date_time, ChargingSession.id)
    )
    newest = {r[13]: r for r in result.all()}  # the newest session per connector: the last
    rows: list[tuple[Any, ...]] = list(newest.values())
    rows.sort(key=lambda r: r[0])  # session id order, the same on every database
    n = len(rows)
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    ids = list(cols[0])

    def floats(k: int, missing: float) -> np.ndarray:
        out = np.array(cols[k], dtype=float).reshape(n)  # None becomes NaN
        return np.where(np.isnan(out), missing, out)

    region: list[str | None] = [None if node is None else root.get(node) for node in cols[11]]
    rules = {r.region: r for r in db.scalars(select(DrContractRule))}
    consent_required: dict[str | None, bool] = {g: r.consent_required for g, r in rules.items()}
    budget_min: dict[str | None, float] = {g: r.max_curtail_min_per_4h for g, r in rules.items()}
    car_phases = np.where(np.array(cols[5], dtype=float).reshape(n) == 1, 1.0, 3.0)
    f = Fleet(
        now=now,
        ids=ids,
        region=region,
        evse=np.array(cols[1], dtype=np.int64).reshape(n),
        i_now_a=floats(2, 0.0),
        min_a=floats(3, 8.0),
        max_a=floats(4, np.nan),
        n_phases=np.minimum(car_phases, floats(6, 3.0)),
        opt_out=np.array(cols[7], dtype=bool).reshape(n),
        consent_required=np.array(
            [consent_required.get(g, False) for g in region], dtype=bool
        ).reshape(n),
        consent=np.array([c is True or c == 1 for c in cols[8]], dtype=bool).reshape(n),
        budget_s=60.0
        * np.array([budget_min.get(g, DEFAULT_BUDGET_MIN) for g in region], dtype=float).reshape(n),
        kwh=floats(9, 0.0),
        need_kwh=floats(10, np.nan),
        departure=list(cols[12]) if departures else [None] * n,
    )
    index = {sid: k for k, sid in enumerate(ids)}
    since = now - timedelta(seconds=WINDOW_S)
    logged = (
        db.connection()
        .execute(
            select(DrCurtailment.session_id, DrCurtailment.start, DrCurtailment.until).where(
                DrCurtailment.until > since, DrCurtailment.start <= now
            )
        )
        .all()
    )
    rel: dict[datetime, float] = {}  # one activation's rows share their times

    def seconds(t: datetime) -> float:
        x = rel.get(t)
        if x is None:
            x = rel[t] = (t - now).total_seconds()
        return x

    ls, la, lb = [], [], []
    for sid, a, b in logged:
        k = index.get(sid)
        if k is not None:
            ls.append(k)
            la.append(seconds(a))
            lb.append(seconds(b))
    f.log_session = np.array(ls, dtype=np.int64)
    f.log_start_s = np.array(la, dtype=float)
    f.log_end_s = np.array(lb, dtype=float)
    counts = np.zeros(n, dtype=np.int64)
    midnight = local_midnight(now, settings.timezone)
    for sid, c in (
        db.connection()
        .execute(
            select(DrCurtailment.session_id, func.count())
            .where(DrCurtailment.start >= midnight, DrCurtailment.start <= now)
            .group_by(DrCurtailment.session_id)
        )
        .all()
    ):
        if sid in index:
            counts[index[sid]] = int(c)
    f.n_curtailed = counts
    return f


def decide(
    fleet: Fleet,
    settings: Settings,
    end: datetime | None = None,
    target_kw: float | None = None,
) -> Activation:
    """:func:`optimizer.fastpath.activate` on the fleet."""
    return activate(
        signal_at=fleet.now,
        i_now_a=fleet.i_now_a,
        min_a=fleet.min_a,
        n_phases=fleet.n_phases,
        voltage_v=settings.voltage_v,
        opt_out=fleet.opt_out,
        consent_required=fleet.consent_required,
        consent=fleet.consent,
        budget_s=fleet.budget_s,
        log_session=fleet.log_session,
        log_start_s=fleet.log_start_s,
        log_end_s=fleet.log_end_s,
        n_curtailed=fleet.n_curtailed,
        end=end,
        target_kw=target_kw,
        tz=settings.timezone,
    )


# --------------------------------------------------------------------------------------------
# curtailment profiles


def published_ocpi(db: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The published OCPI profiles of ``ids``."""
    texts = published_ocpi_texts(db, ids)
    decoded: dict[str, dict[str, Any]] = {}  # identical profiles decoded once
    return {sid: decoded.get(t) or decoded.setdefault(t, loads(t)) for sid, t in texts.items()}


@lru_cache(maxsize=64)
def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CurtailmentShape:
    """What a curtailment profile sets, apart from the session's ids: the periods
    ``[(offset_s, limit_a), ...]`` from ``start``, the duration [s] and ``min_charging_rate``."""

    start: datetime
    periods: tuple[tuple[int, float], ...]
    duration_s: int
    min_rate: float


def curtailment_shape(
    *,
    start: datetime,
    until: datetime,
    limit_a: float,
    previous: Mapping[str, Any] | None,
    parsed: tuple[list[tuple[float, float]], float] | None = None,
) -> CurtailmentShape:
    """``limit_a`` from ``start`` to ``until``, then the limits of ``previous`` (the OCPI profile
    published before) until its end. ``parsed``: ``ocpi_segments(previous)`` when known."""
    t0 = start.timestamp()
    t_until = until.timestamp()
    limit = round(float(limit_a), 1)
    periods: list[tuple[int, float]] = [(0, limit)]
    end_s = t_until
    min_rate = limit
    if previous is not None:
        segments, prev_end = parsed or ocpi_segments(previous)
        min_rate = float(previous.get("min_charging_rate", limit))
        if prev_end > t_until:
            end_s = prev_end
            for k, (s, lim) in enumerate(segments):
                nxt = segments[k + 1][0] if k + 1 < len(segments) else prev_end
                if nxt <= t_until:
                    continue
                offset = round(max(s, t_until) - t0)
                if lim != periods[-1][1]:
                    periods.append((offset, float(lim)))
    return CurtailmentShape(start, tuple(periods), round(end_s - t0), min_rate)


def shape_forms(
    shape: CurtailmentShape, *, session_id: str, evse_id: int, n_phases: int
) -> dict[str, dict[str, Any]]:
    """The OCPP 1.6, OCPP 2.0.1 and OCPI profiles of ``shape`` for one session (they replace
    the published one: same id, ``TxProfile``, stack level 0)."""
    ocpi = {
        "start_date_time": _stamp(shape.start),
        "duration": shape.duration_s,
        "charging_rate_unit": "A",
        "min_charging_rate": shape.min_rate,
        "charging_profile_period": [{"start_period": s, "limit": lim} for s, lim in shape.periods],
    }
    return {
        **ocpp_forms(ocpi, session_id=session_id, evse_id=evse_id, n_phases=n_phases),
        "ocpi": ocpi,
    }


def curtailment_forms(
    *,
    session_id: str,
    evse_id: int,
    n_phases: int,
    start: datetime,
    until: datetime,
    limit_a: float,
    previous: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """OCPP 1.6, OCPP 2.0.1 and OCPI profiles: ``limit_a`` from ``start`` to ``until``, then the
    limits of ``previous`` (the OCPI profile published before) until its end.

    The profile replaces the published one (same id, ``TxProfile``, stack level 0).
    """
    shape = curtailment_shape(start=start, until=until, limit_a=limit_a, previous=previous)
    return shape_forms(shape, session_id=session_id, evse_id=evse_id, n_phases=n_phases)


@dataclass
class RenderedShape:
    """One curtailment shape rendered once for every session that has it (the stored texts:
    the OCPP forms are derived from the OCPI one when read)."""

    shape: CurtailmentShape
    changed: bool
    """False when the published profile already sets these limits (the session is left alone)."""
    planned_kwh: float | None
    ocpi_text: str
    limits_a_text: str


def render_shape(
    shape: CurtailmentShape,
    previous: Mapping[str, Any] | None,
    n_phases: int,
    settings: Settings,
    parsed: tuple[list[tuple[float, float]], float] | None = None,
) -> RenderedShape:
    """JSON text of the OCPI form of ``shape`` and of its step limits (the same JSON as
    :func:`shape_forms` and :func:`api.publish.step_limits_a`, key order included), with what
    the activation needs to know of it: the reference for one session of
    :func:`api.dr_batch.render_batch`."""
    stamp = _stamp(shape.start)
    rate = dumps(shape.min_rate)
    ocpi_periods = dumps([{"start_period": s, "limit": lim} for s, lim in shape.periods])
    ocpi_text = (
        f'{{"start_date_time":"{stamp}","duration":{shape.duration_s},"charging_rate_unit":"A",'
        f'"min_charging_rate":{rate},"charging_profile_period":{ocpi_periods}}}'
    )
    return RenderedShape(
        shape=shape,
        changed=_changes(shape, previous, parsed),
        planned_kwh=planned_kwh(previous, shape.start, n_phases, settings.voltage_v, parsed),
        ocpi_text=ocpi_text,
        limits_a_text=dumps(_step_limits(shape, settings.step_s)),
    )


def _step_limits(shape: CurtailmentShape, step_s: int) -> list[float]:
    """:func:`api.publish.step_limits_a` of the shape's OCPI form [A]."""
    starts = [s for s, _ in shape.periods]
    limits = [float(lim) for _, lim in shape.periods]
    return [limits[bisect_right(starts, j * step_s) - 1] for j in range(shape.duration_s // step_s)]


def _changes(
    shape: CurtailmentShape,
    previous: Mapping[str, Any] | None,
    parsed: tuple[list[tuple[float, float]], float] | None = None,
) -> bool:
    """:func:`api.publish.same_from_start` of the shape's OCPI form and ``previous``, negated:
    the curtailment continues ``previous`` after its first period, so it changes nothing only
    when ``previous`` already holds that limit over the whole first period."""
    if previous is None:
        return True
    limit = shape.periods[0][1]
    if previous.get("min_charging_rate") != shape.min_rate:
        return True
    if previous.get("charging_rate_unit") != "A":
        return True
    segments, end = parsed or ocpi_segments(previous)
    t0 = shape.start.timestamp()
    t1 = t0 + (shape.periods[1][0] if len(shape.periods) > 1 else shape.duration_s)
    if segments[0][0] > t0 or end != t0 + shape.duration_s:
        return True
    for k, (a, lim) in enumerate(segments):
        b = segments[k + 1][0] if k + 1 < len(segments) else end
        if b > t0 and a < t1 and lim != limit:
            return True
    return False


def planned_kwh(
    previous: Mapping[str, Any] | None,
    start: datetime,
    n_phases: int,
    v: float,
    parsed: tuple[list[tuple[float, float]], float] | None = None,
) -> float | None:
    """Energy the previous profile allowed from ``start`` to its end [kWh] (the no-activation
    plan of the KPIs). ``parsed``: ``ocpi_segments(previous)`` when known."""
    if previous is None:
        return None
    segments, end = parsed or ocpi_segments(previous)
    t = start.timestamp()
    total = 0.0
    for k, (s, lim) in enumerate(segments):
        nxt = segments[k + 1][0] if k + 1 < len(segments) else end
        a, b = max(s, t), nxt
        if b > a:
            total += lim * n_phases * v / 1000.0 * (b - a) / 3600.0
    return total


def publish_curtailments(
    db: Session,
    run_id: int,
    session_ids: Sequence[str],
    evse_id: Sequence[int],
    n_phases: Sequence[int],
    batch: Batch,
    settings: Settings,
    now: datetime,
) -> list[str]:
    """Publish curtailment profiles into the scheduler's tables, in bulk.

    ``batch`` holds the profiles of ``session_ids`` (:func:`api.dr_batch.render_batch`), whose
    connectors and phases are ``evse_id`` and ``n_phases`` (the OCPP forms follow from them). The
    same rows as :func:`api.publish.publish_profiles` writes (a ``profile_changes`` cursor per
    changed session, the replaced ``profiles`` row, and with ``cpo_url`` an ``outbox`` item
    naming the profile by its cursor), written through :mod:`api.bulk` (encoded once, handed to
    the driver's ``executemany`` or PostgreSQL ``COPY``): for 16,000 sessions that is the
    difference between seconds and a fraction of one. Cursors are reserved first, so no row is
    written twice. ``run_id`` is the negative activation id. A session whose profile would not
    change is left alone. Returns the changed session ids.
    """
    changed_mask = batch.changed.tolist()
    picked = sorted((sid, k) for k, sid in enumerate(session_ids) if changed_mask[k])
    changed = [sid for sid, _ in picked]
    if not changed:
        return []
    conn = db.connection()
    changes = cast(Table, ProfileChange.__table__)
    profiles = cast(Table, Profile.__table__)
    outbox = cast(Table, OutboxItem.__table__)
    cursors = reserve_ids(conn, changes, "cursor", len(changed))
    insert_rows(
        conn,
        changes,
        ("cursor", "session_id", "run_id", "created_at"),
        [(cur, sid, run_id, now) for cur, sid in zip(cursors, changed, strict=True)],
    )
    rows = [k for _, k in picked]
    insert_columns(
        conn,
        profiles,
        {
            "session_id": changed,
            "cursor": cursors,
            "run_id": [run_id] * len(rows),
            "limits_a": [batch.limits_a[k] for k in rows],
            "ocpi": [batch.ocpi[k] for k in rows],
            "evse_id": [int(evse_id[k]) for k in rows],
            "n_phases": [int(n_phases[k]) for k in rows],
            "updated_at": [now] * len(rows),
        },
        json_text=("limits_a", "ocpi"),
        replace_on="session_id",
    )
    if settings.cpo_url:
        # the items name their profiles by cursor: no second copy of the OCPI text, and the
        # older pending items of these sessions are superseded by the outbox worker, not
        # rewritten here (api/outbox.py)
        m = len(rows)
        insert_columns(
            conn,
            outbox,
            {
                "session_id": changed,
                "cursor": cursors,
                "status": ["pending"] * m,
                "attempts": [0] * m,
                "next_attempt_at": [now] * m,
                "created_at": [now] * m,
                "updated_at": [now] * m,
            },
        )
    return changed


# --------------------------------------------------------------------------------------------
# signals and activations


@dataclass(frozen=True)
class SignalIn:
    end: datetime | None = None
    target_kw: float | None = None
    reason: str | None = None
    imbalance_price_eur_per_mwh: float | None = None


def validate_signal(body: SignalIn, now: datetime) -> None:
    """422 for a past ``end`` or a non-positive ``target_kw`` (nothing is stored)."""
    if body.end is not None:
        if body.end.tzinfo is None:
            raise DrError(422, "end", f"{body.end.isoformat()} has no UTC offset")
        if body.end <= now:
            raise DrError(422, "end", f"{_iso(body.end)} is not in the future (now {_iso(now)})")
    if body.target_kw is not None and not body.target_kw > 0:
        raise DrError(422, "target_kw", f"must be > 0 (got {body.target_kw})")


def activations_today(db: Session, now: datetime, tz: str) -> int:
    return int(
        db.scalar(
            select(func.count())
            .select_from(DrActivation)
            .where(DrActivation.started_at >= local_midnight(now, tz))
        )
        or 0
    )


def auto_relay_refusal(db: Session, settings: Settings, now: datetime) -> str | None:
    """Why the policy does not relay automatically now (None: it does)."""
    p = get_policy(db)
    if not p.auto_relay:
        return "auto-relay is off"
    local = now.astimezone(ZoneInfo(settings.timezone))
    minute = local.hour * 60 + local.minute
    a, b = parse_hhmm(p.allowed_from, "allowed_from"), parse_hhmm(p.allowed_to, "allowed_to")
    inside = a <= minute < b if a <= b else (minute >= a or minute < b)
    if not inside:
        return f"outside the allowed hours {p.allowed_from}-{p.allowed_to}"
    done = activations_today(db, now, settings.timezone)
    if done >= p.max_activations_per_day:
        return f"{done} activations today reach the maximum {p.max_activations_per_day}"
    return None


def signal_json(s: DrSignal) -> dict[str, Any]:
    return {
        "id": s.id,
        "received_at": _iso(s.received_at),
        "sender": s.sender,
        "end": _iso(s.end),
        "target_kw": s.target_kw,
        "reason": s.reason,
        "imbalance_price_eur_per_mwh": s.imbalance_price_eur_per_mwh,
        "status": s.status,
        "decided_at": _iso(s.decided_at),
        "decided_by": s.decided_by,
        "decision_reason": s.decision_reason,
        "activation_id": s.activation_id,
    }


def activation_json(a: DrActivation) -> dict[str, Any]:
    return {
        "id": a.id,
        "signal_id": a.signal_id,
        "mode": a.mode,
        "started_at": _iso(a.started_at),
        "restore_at": _iso(a.restore_at),
        "target_kw": a.target_kw,
        "released_kw": round(a.released_kw, 3),
        "released_kw_by_region": a.released_kw_by_region,
        "sessions_curtailed": a.sessions_curtailed,
        "skipped": a.skipped,
        "time_s": a.time_s,
        "restored": a.restored,
        "restored_at": _iso(a.restored_at),
        "restore_run_id": a.restore_run_id,
    }


RENDER_CHUNKS = (512, 2048)
"""Sessions in the first chunk of an activation's profiles, and in each later one: a worker
thread renders chunk k + 1 while the request's thread writes chunk k (:func:`_write_profiles`)."""


def render_chunks(m: int) -> list[tuple[int, int]]:
    """``[a, b)`` bounds of the chunks of ``m`` sessions (a small first one, so the writing
    starts early)."""
    first, size = RENDER_CHUNKS
    bounds = [0, *range(min(first, m), m, size), m] if m else []
    return [(a, b) for a, b in pairwise(bounds) if b > a]


def _write_profiles(
    db: Session,
    settings: Settings,
    activation_id: int,
    now: datetime,
    fleet: Fleet,
    act: Activation,
    chosen: np.ndarray,
    ids: list[str],
    previous: Found,
    spans: Spans,
) -> None:
    """Render the curtailment profiles of ``ids`` and write them with their curtailment rows,
    profile changes and outbox items, chunk by chunk: a worker thread renders (Python, holding
    the GIL) the next chunk while this thread writes the last one (mostly waiting for the
    database, without the GIL). Everything goes into the caller's transaction."""
    duration_s = act.duration_s[chosen].tolist()
    untils: dict[float, datetime] = {}
    until = [untils.get(d) or untils.setdefault(d, now + timedelta(seconds=d)) for d in duration_s]
    until_s = np.array([u.timestamp() for u in until], dtype=np.float64)
    n_phases = fleet.n_phases[chosen].astype(np.int64)
    phases = n_phases.tolist()
    evse = fleet.evse[chosen].tolist()
    min_a = fleet.min_a[chosen]
    regions = [fleet.region[k] for k in chosen.tolist()]
    i_now = fleet.i_now_a[chosen].tolist()
    release = act.release_kw[chosen].tolist()
    kwh = fleet.kwh[chosen].tolist()
    min_list = min_a.tolist()

    def render(a: int, b: int) -> Batch:
        return render_batch(
            start=now,
            until_s=until_s[a:b],
            limit_a=min_a[a:b],
            n_phases=n_phases[a:b],
            previous=previous.published(ids[a:b]),
            voltage_v=settings.voltage_v,
            step_s=settings.step_s,
        )

    chunks = render_chunks(len(ids))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dr-render")
    try:
        # one worker: the chunks are rendered in order, each while the one before is written
        batches = [pool.submit(render, a, b) for a, b in chunks]
        for (a, b), pending in zip(chunks, batches, strict=True):
            batch = pending.result()
            spans.mark("render")
            m = b - a
            values: list[Sequence[Any]] = [  # in the order of CURTAILMENT_COLUMNS
                [activation_id] * m,
                ids[a:b],
                regions[a:b],
                [now] * m,
                until[a:b],
                min_list[a:b],
                i_now[a:b],
                release[a:b],
                kwh[a:b],
                batch.planned_kwh,
            ]
            columns = dict(zip(CURTAILMENT_COLUMNS, values, strict=True))
            insert_columns(db.connection(), cast(Table, DrCurtailment.__table__), columns)
            spans.mark("write_curtailments")
            publish_curtailments(
                db, -activation_id, ids[a:b], evse[a:b], phases[a:b], batch, settings, now
            )
            spans.mark("write_profiles_outbox")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_activation(
    db: Session,
    settings: Settings,
    signal: DrSignal,
    now: datetime,
    mode: str,
    actor: str,
    spans: Spans,
    published: PublishedProfiles | None = None,
) -> DrActivation:
    """The fast path inside the caller's transaction: activation, curtailments, profiles,
    outbox and audit entry. The signal is marked relayed. ``spans`` gets the time of each
    step. ``published`` holds the published profiles already flattened (the service's,
    :mod:`api.published`); without it every one is read and decoded here."""
    fleet = load_fleet(db, settings, now, departures=False)
    spans.mark("read_fleet")
    try:
        act = decide(fleet, settings, signal.end, signal.target_kw)
    except FastPathError as exc:
        raise DrError(422, exc.field, f"{exc.reason} (got {exc.value!r})") from None
    chosen = np.flatnonzero(act.chosen)
    ids = [fleet.ids[k] for k in chosen]
    by_region: dict[str, float] = {}
    for k, kw in zip(chosen.tolist(), act.release_kw[chosen].tolist(), strict=True):
        g = fleet.region[k] or ""
        by_region[g] = by_region.get(g, 0.0) + kw
    activation = DrActivation(
        signal_id=signal.id,
        started_at=now,
        restore_at=act.restore_at,
        mode=mode,
        target_kw=signal.target_kw,
        released_kw=act.released_kw,
        sessions_curtailed=len(ids),
        skipped=act.skipped(),
        released_kw_by_region={g: round(v, 3) for g, v in sorted(by_region.items())},
    )
    db.add(activation)
    db.flush()
    spans.mark("decide")
    previous = (published or PublishedProfiles()).lookup(db, ids)
    spans.mark("read_profiles")
    if ids:
        _write_profiles(db, settings, activation.id, now, fleet, act, chosen, ids, previous, spans)
    signal.status = "relayed"
    signal.decided_at = now
    signal.decided_by = actor
    signal.activation_id = activation.id
    activation.time_s = round(spans.total_s(), 4)
    audit(
        db,
        actor,
        "relay",
        at=now,
        signal_id=signal.id,
        activation_id=activation.id,
        reason=signal.decision_reason,
        detail={
            "mode": mode,
            "sessions_curtailed": len(ids),
            "released_kw": round(act.released_kw, 3),
            "restore_at": _iso(act.restore_at),
            "skipped": act.skipped(),
            "target_reached": act.target_reached,
            "timings_ms": spans.ms,
            "profiles_cached": len(previous.flat),  # api/published.py
        },
    )
    return activation


def response_of(signal: DrSignal, activation: DrActivation | None) -> dict[str, Any]:
    out: dict[str, Any] = {"signal": signal_json(signal)}
    if activation is not None:
        out.update(
            {
                "activation_id": activation.id,
                "sessions_curtailed": activation.sessions_curtailed,
                "skipped": activation.skipped,
                "released_kw": round(activation.released_kw, 3),
                "restore_at": _iso(activation.restore_at),
                "activation": activation_json(activation),
            }
        )
    return out


def receive_signal(
    factory: sessionmaker[Session],
    settings: Settings,
    principal: Principal,
    body: SignalIn,
    now: datetime | None = None,
    published: PublishedProfiles | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a signal and relay it when the policy says so; ``(response, relayed)``
    (``published``: :func:`run_activation`).

    Raises
    ------
    DrError
        422 for a past ``end`` or a non-positive ``target_kw`` (nothing stored).
    """
    spans = Spans()
    now = (now or utcnow()).replace(microsecond=0)
    validate_signal(body, now)
    actor = actor_of(principal)
    with gc_paused(), transaction(factory) as db:
        _lock(db)
        signal = DrSignal(
            received_at=now,
            sender=actor,
            end=body.end,
            target_kw=body.target_kw,
            reason=body.reason,
            imbalance_price_eur_per_mwh=body.imbalance_price_eur_per_mwh,
            status="pending",
        )
        db.add(signal)
        db.flush()
        audit(
            db,
            actor,
            "signal",
            at=now,
            signal_id=signal.id,
            reason=body.reason,
            detail={
                "end": _iso(body.end),
                "target_kw": body.target_kw,
                "imbalance_price_eur_per_mwh": body.imbalance_price_eur_per_mwh,
            },
        )
        refusal = auto_relay_refusal(db, settings, now)
        spans.mark("store_signal")
        activation = None
        if refusal is None:
            signal.decision_reason = "auto-relay policy"
            activation = run_activation(
                db, settings, signal, now, "auto", "policy", spans, published
            )
        else:
            signal.decision_reason = f"waiting for an operator: {refusal}"
        out = response_of(signal, activation)
    SIGNALS.labels("received").inc()
    if activation is not None:
        spans.mark("commit")
        elapsed = spans.total_s()
        out["committed_s"] = round(elapsed, 4)
        out["timings_ms"] = spans.ms
        _count(activation, elapsed)
    return out, activation is not None


def _count(activation: DrActivation, elapsed: float) -> None:
    SIGNALS.labels("relayed").inc()
    ACTIVATIONS.labels(activation.mode).inc()
    SESSIONS_CURTAILED.inc(activation.sessions_curtailed)
    RELEASED_KW.set(activation.released_kw)
    ACTIVATION_SECONDS.observe(elapsed)


def _pending(db: Session, signal_id: int, now: datetime) -> DrSignal:
    signal = db.get(DrSignal, signal_id)
    if signal is None:
        raise DrError(404, "signal_id", f"unknown signal {signal_id}")
    if signal.status != "pending":
        raise DrError(409, "signal_id", f"signal {signal_id} is already {signal.status}")
    expires = signal.received_at + timedelta(seconds=MAX_ACTIVATION_S)
    if signal.end is not None:
        expires = min(expires, signal.end)
    if now >= expires:
        raise DrError(409, "signal_id", f"signal {signal_id} expired at {_iso(expires)}")
    return signal


def relay_signal(
    factory: sessionmaker[Session],
    settings: Settings,
    principal: Principal,
    signal_id: int,
    reason: str | None = None,
    now: datetime | None = None,
    published: PublishedProfiles | None = None,
) -> dict[str, Any]:
    """An operator relays a pending signal: the activation starts now (``published``:
    :func:`run_activation`)."""
    spans = Spans()
    now = (now or utcnow()).replace(microsecond=0)
    with gc_paused(), transaction(factory) as db:
        _lock(db)
        signal = _pending(db, signal_id, now)
        signal.decision_reason = reason or "relayed by an operator"
        spans.mark("store_signal")
        activation = run_activation(
            db, settings, signal, now, "manual", actor_of(principal), spans, published
        )
        out = response_of(signal, activation)
    spans.mark("commit")
    elapsed = spans.total_s()
    out["committed_s"] = round(elapsed, 4)
    out["timings_ms"] = spans.ms
    _count(activation, elapsed)
    return out


def reject_signal(
    factory: sessionmaker[Session],
    settings: Settings,
    principal: Principal,
    signal_id: int,
    reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An operator rejects a pending signal: nothing else changes; audited."""
    now = (now or utcnow()).replace(microsecond=0)
    actor = actor_of(principal)
    with transaction(factory) as db:
        signal = db.get(DrSignal, signal_id)
        if signal is None:
            raise DrError(404, "signal_id", f"unknown signal {signal_id}")
        if signal.status != "pending":
            raise DrError(409, "signal_id", f"signal {signal_id} is already {signal.status}")
        signal.status = "rejected"
        signal.decided_at = now
        signal.decided_by = actor
        signal.decision_reason = reason or "rejected by an operator"
        audit(db, actor, "reject", at=now, signal_id=signal.id, reason=signal.decision_reason)
        out = response_of(signal, None)
    SIGNALS.labels("rejected").inc()
    return out


# --------------------------------------------------------------------------------------------
# restore


@dataclass
class Prepared:
    """A restore schedule computed ahead of its time."""

    restore_at: datetime
    scenario: dict[str, Any]
    choice: Choice
    computed_at: datetime


def prepare_restore(
    factory: sessionmaker[Session], settings: Settings, restore_at: datetime, now: datetime
) -> Prepared:
    """Solve the live scenario as it will be at ``restore_at`` (curtailments ending by then are
    no longer capped; the checker gates the schedule as in every run)."""
    with factory() as db:
        scenario = build_live_scenario(db, settings, restore_at)
    net = compile_network(parse_scenario(scenario))
    choice = choose_schedule(scenario, net, settings)
    return Prepared(restore_at, scenario, choice, now)


def publish_restore(
    factory: sessionmaker[Session],
    settings: Settings,
    prepared: Prepared,
    activation_ids: list[int],
    now: datetime,
) -> int | None:
    """Publish a prepared restore schedule like a scheduler run and mark the activations
    restored (one transaction). Returns the run id (None when no schedule passed the checker:
    the curtailment profiles then continue with the plan published before)."""
    schedule = prepared.choice.schedule
    scenario = prepared.scenario
    with transaction(factory) as db:
        _lock(db)
        run_id: int | None = None
        if schedule is not None:
            run = ScheduleRun(
                grid_start=datetime.fromisoformat(scenario["grid"]["start"]),
                step_s=settings.step_s,
                steps=settings.horizon_steps,
                status=schedule["status"],
                method=schedule["method"],
                objective=(schedule.get("solver") or {}).get("objective"),
                reason=prepared.choice.reason
                or f"restore after demand-response activation(s) {activation_ids}",
                sessions=len(scenario["sessions"]),
                violations=len(schedule["violations"]),
                published=True,
                kpis=schedule["kpis"],
                region_power_kw=_root_power(schedule, scenario),
            )
            db.add(run)
            db.flush()
            held = held_sessions(db, now)
            forms = {s: f for s, f in schedule.get("profiles", {}).items() if s not in held}
            publish_profiles(db, run, {"profiles": forms}, settings)
            run_id = run.id
        for aid in activation_ids:
            a = db.get(DrActivation, aid)
            if a is None:
                continue
            a.restored = True
            a.restored_at = now
            a.restore_run_id = run_id
            audit(
                db,
                "scheduler",
                "restore",
                at=now,
                activation_id=aid,
                detail={
                    "run_id": run_id,
                    "prepared_at": _iso(prepared.computed_at),
                    "restore_at": _iso(prepared.restore_at),
                },
            )
    RESTORES.labels("published" if run_id is not None else "kept").inc()
    return run_id


class Restorer:
    """Prepares restore schedules ahead of time and publishes them at the restore time."""

    def __init__(
        self, factory: sessionmaker[Session], settings: Settings, lead_s: float = RESTORE_LEAD_S
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.lead_s = lead_s
        self.prepared: dict[datetime, Prepared] = {}

    def due(self, now: datetime) -> dict[datetime, list[int]]:
        """Open activations whose restore falls within the lead, by restore time."""
        horizon = now + timedelta(seconds=self.lead_s)
        with self.factory() as db:
            rows = db.execute(
                select(DrActivation.id, DrActivation.restore_at).where(
                    DrActivation.restored.is_(False), DrActivation.restore_at <= horizon
                )
            )
            out: dict[datetime, list[int]] = {}
            for aid, at in rows:
                out.setdefault(at, []).append(aid)
        return out

    def step(self, now: datetime) -> list[int]:
        """Prepare what is due soon, publish what is due; returns the activations restored."""
        restored: list[int] = []
        for at, ids in sorted(self.due(now).items()):
            prepared = self.prepared.get(at)
            if prepared is None:
                prepared = prepare_restore(self.factory, self.settings, at, now)
                self.prepared[at] = prepared
            if at <= now:
                publish_restore(self.factory, self.settings, prepared, ids, now)
                self.prepared.pop(at, None)
                restored += ids
        return restored


class RestoreLoop:
    """Daemon thread running :meth:`Restorer.step` every ``tick_s``; with ``lease`` (the
    scheduler's, api/lease.py) only while this process holds it, so that one process of a
    deployment prepares and publishes the restore plans."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        tick_s: float = 0.5,
        lease: LeaseKeeper | None = None,
    ) -> None:
        self.restorer = Restorer(factory, settings)
        self.tick_s = tick_s
        self.lease = lease
        self.errors = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dr-restore", daemon=True)

    def start(self) -> RestoreLoop:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.lease is None or self.lease.held:
                    self.restorer.step(utcnow())
            except Exception:
                self.errors += 1
                log.exception("demand-response restore failed; retrying")
            self._stop.wait(self.tick_s)


# --------------------------------------------------------------------------------------------
# flexibility and KPIs


def flexibility(db: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    """Release-able power now per region and a 24 h forecast per 15-minute slot.

    Now: what an activation without target would release at ``now`` (eligibility, budgets and
    all). Ahead, slot ``k`` starting at ``t_k`` (``h_k`` long from ``τ_k = max(t_k, now)``):
    ``Σ_s max(ℓ_s(t_k) − i_min,s, 0) · n_s · V/1000 · x_s,k / h_k`` over sessions that are
    eligible by opt-out and consent and present at ``t_k`` (before their departure), with
    ``ℓ_s`` the limit of the published profile at ``t_k`` (the schedule) and ``x_s,k`` the
    curtailment its rolling 4-hour budget still allows from ``τ_k`` (the curtailment log as it
    stands; :func:`optimizer.fastpath.budget_ahead_s`), 0 when less than a minute: the mean
    power an activation at the slot's start would release over the slot.
    """
    now = now.replace(microsecond=0)
    fleet = load_fleet(db, settings, now)
    act = decide(fleet, settings)
    regions = sorted({g for g in fleet.region if g is not None})
    now_by_region = dict.fromkeys(regions, 0.0)
    for k in np.flatnonzero(act.chosen).tolist():
        g = fleet.region[k]
        if g is not None:
            now_by_region[g] += float(act.release_kw[k])
    slot_s = 900
    start = datetime.fromtimestamp(now.timestamp() // slot_s * slot_s, UTC)
    slots = 96
    t_slot = start.timestamp() + slot_s * np.arange(slots)
    ahead = {g: np.zeros(slots) for g in regions}
    eligible = ~fleet.opt_out & ~(fleet.consent_required & ~fleet.consent)
    at_s = np.maximum(t_slot - now.timestamp(), 0.0)
    horizon_s = t_slot + slot_s - now.timestamp() - at_s
    allowed_s = budget_ahead_s(
        fleet.budget_s, fleet.log_session, fleet.log_start_s, fleet.log_end_s, at_s, horizon_s
    )
    share = np.where(allowed_s >= np.minimum(MIN_DURATION_S, horizon_s), allowed_s / horizon_s, 0.0)
    profiles = published_ocpi(db, fleet.ids)
    for k, sid in enumerate(fleet.ids):
        g = fleet.region[k]
        prof = profiles.get(sid)
        if g is None or prof is None or not eligible[k]:
            continue
        segments, end = ocpi_segments(prof)
        dep = fleet.departure[k]
        stop = min(end, dep.timestamp()) if dep is not None else end
        starts = np.array([s for s, _ in segments])
        limits = np.array([lim for _, lim in segments])
        pos = np.searchsorted(starts, t_slot, side="right") - 1
        valid = (pos >= 0) & (t_slot < stop)
        lim = np.where(valid, limits[np.clip(pos, 0, None)], 0.0)
        kw = np.maximum(lim - fleet.min_a[k], 0.0) * fleet.n_phases[k] * settings.voltage_v / 1e3
        ahead[g] += np.where(valid, kw * share[k], 0.0)
    return {
        "at": _iso(now),
        "now_kw": {g: round(v, 3) for g, v in now_by_region.items()},
        "now_total_kw": round(sum(now_by_region.values()), 3),
        "sessions_eligible_now": int(act.chosen.sum()),
        "slot_s": slot_s,
        "forecast": {
            "start": _iso(start),
            "slots": slots,
            "kw": {g: [round(float(x), 3) for x in v] for g, v in ahead.items()},
            "total_kw": [round(float(x), 3) for x in sum(ahead.values(), np.zeros(slots))],
        },
    }


def day_kpis(db: Session, settings: Settings, day: str) -> dict[str, Any]:
    """Driver-impact KPIs of one local day (``YYYY-MM-DD``).

    Sessions of the day: those plugged in at some time of it. ``never_curtailed_share`` = 1 −
    (sessions curtailed that day / sessions of the day). Minutes per session: over the curtailed
    sessions (mean, max) and over all sessions of the day (mean). ``energy_ratio`` = energy
    delivered from the signal to the departure / energy the profile in force before the signal
    allowed over the same time, over the curtailed sessions that ended.
    """
    try:
        d = datetime.strptime(day, "%Y-%m-%d").date()
    except ValueError:
        raise DrError(422, "date", f"{day!r} is not YYYY-MM-DD") from None
    tz = ZoneInfo(settings.timezone)
    a = datetime.combine(d, dtime(0), tz).astimezone(UTC)
    b = datetime.combine(d + timedelta(days=1), dtime(0), tz).astimezone(UTC)
    n_sessions = int(
        db.scalar(
            select(func.count())
            .select_from(ChargingSession)
            .where(
                ChargingSession.start_date_time < b,
                (ChargingSession.end_date_time.is_(None)) | (ChargingSession.end_date_time > a),
            )
        )
        or 0
    )
    rows = db.execute(
        select(
            DrCurtailment.session_id,
            DrCurtailment.start,
            DrCurtailment.until,
            DrCurtailment.kwh_at_signal,
            DrCurtailment.planned_kwh,
            DrCurtailment.released_kw,
        ).where(DrCurtailment.start >= a, DrCurtailment.start < b)
    ).all()
    minutes: dict[str, float] = {}
    for sid, s, u, *_ in rows:
        minutes[sid] = minutes.get(sid, 0.0) + (u - s).total_seconds() / 60.0
    first: dict[str, tuple[float, float | None]] = {}
    for sid, _s, _u, kwh0, plan, _kw in sorted(rows, key=lambda r: r[1]):
        if sid not in first:
            first[sid] = (kwh0, plan)
    ended = {
        sid: (kwh, end)
        for sid, kwh, end in db.execute(
            select(ChargingSession.id, ChargingSession.kwh, ChargingSession.end_date_time).where(
                ChargingSession.id.in_(list(first)), ChargingSession.end_date_time.is_not(None)
            )
        )
    }
    delivered = planned = 0.0
    for sid, (kwh0, plan) in first.items():
        if sid in ended and plan is not None:
            delivered += max(float(ended[sid][0]) - kwh0, 0.0)
            planned += plan
    curtailed = len(minutes)
    values = list(minutes.values())
    activations = int(
        db.scalar(
            select(func.count())
            .select_from(DrActivation)
            .where(DrActivation.started_at >= a, DrActivation.started_at < b)
        )
        or 0
    )
    return {
        "date": day,
        "activations": activations,
        "sessions": n_sessions,
        "sessions_curtailed": curtailed,
        "never_curtailed_share": (1.0 - curtailed / n_sessions) if n_sessions else None,
        "curtailment_min_per_curtailed_session": {
            "mean": round(sum(values) / curtailed, 3) if curtailed else 0.0,
            "max": round(max(values), 3) if values else 0.0,
        },
        "curtailment_min_per_session_mean": (
            round(sum(values) / n_sessions, 3) if n_sessions else 0.0
        ),
        "energy_by_departure": {
            "sessions": sum(1 for s in first if s in ended and first[s][1] is not None),
            "delivered_kwh": round(delivered, 3),
            "no_activation_plan_kwh": round(planned, 3),
            "ratio": round(delivered / planned, 4) if planned > 0 else None,
        },
        "shifted_kwh_estimate": round(
            sum(kw * (u - s).total_seconds() / 3600.0 for _sid, s, u, _k, _p, kw in rows), 3
        ),
    }


def audit_log(db: Session, since: datetime | None = None, limit: int = 500) -> list[dict[str, Any]]:
    q = select(DrAuditEntry).order_by(DrAuditEntry.id)
    if since is not None:
        q = q.where(DrAuditEntry.at >= since)
    return [
        {
            "id": e.id,
            "at": _iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "signal_id": e.signal_id,
            "activation_id": e.activation_id,
            "reason": e.reason,
            "detail": e.detail,
        }
        for e in db.scalars(q.limit(limit))
    ]

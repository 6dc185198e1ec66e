"""DSO day profiles: cap and target per 15-minute slot of a local day, their OpenADR 3 form,
and the compliance of planned and realised power with them.

A *local day* is a calendar day in the service time zone (setting ``timezone``). Slot ``k`` of
the day covers ``[start + k·900 s, start + (k+1)·900 s)`` where ``start`` is the UTC instant of
local midnight, so a day has 96 slots, 92 on the spring DST day and 100 in autumn (Europe).
Everything here is computed in UTC; local time only decides where a day begins and ends.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.models import (
    ChargingSession,
    Connector,
    DsoProfile,
    ScheduleRun,
    SessionState,
    Station,
    TopologyNode,
)

SLOT_S = 900
"""Length of a DSO slot [s] (the imbalance settlement period)."""

SLOT_H = SLOT_S / 3600.0

RUN_LOOKBACK = timedelta(days=7)
"""A schedule run whose grid starts more than this before a day is not searched for plans."""

STATE_LOOKBACK = timedelta(hours=24)
"""Meter states further than this outside a day are not used to bridge into it."""

PAYLOAD_TYPE = "IMPORT_CAPACITY_LIMIT"
REGION_TARGET_TYPES = ("GRID_AREA", "RESOURCE_NAME")

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DURATION_RE = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


class DsoError(ValueError):
    """A DSO request that cannot be honoured; ``status`` is the HTTP status to answer with.

    Parameters
    ----------
    field : str
        Path of the offending field, e.g. ``intervals[3].payloads[0].values``.
    reason : str
        What is wrong with it.
    status : int
        422 for invalid input, 404 for an unknown region or day.
    """

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        self.field = field
        self.reason = reason
        self.status = status
        super().__init__(f"{field}: {reason}")


# --------------------------------------------------------------------------------------------
# local days and slots


@dataclass(frozen=True)
class LocalDay:
    """One calendar day of the service time zone, as a UTC interval of 15-minute slots."""

    day: date
    start: datetime  # UTC instant of local midnight
    end: datetime  # UTC instant of the next local midnight

    @property
    def slots(self) -> int:
        return int((self.end - self.start).total_seconds()) // SLOT_S

    def slot_start(self, k: int) -> datetime:
        return self.start + timedelta(seconds=k * SLOT_S)


def local_day(day: date, tz: ZoneInfo) -> LocalDay:
    """The UTC span of ``day`` in ``tz`` (from local midnight to the next local midnight)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)
    return LocalDay(day, start, end)


def parse_day(text: str, field: str = "date") -> date:
    """A ``YYYY-MM-DD`` date; :class:`DsoError` naming ``field`` otherwise."""
    try:
        if not _DATE_RE.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise DsoError(field, f"expected a date YYYY-MM-DD (got {text!r})") from None


def slot_of(instant: datetime, tz: ZoneInfo, field: str) -> tuple[LocalDay, int]:
    """The local day and slot index starting exactly at ``instant`` (aware)."""
    day = local_day(instant.astimezone(tz).date(), tz)
    offset_s = (instant - day.start).total_seconds()
    if offset_s % SLOT_S != 0:
        raise DsoError(
            field,
            f"{instant.isoformat()} is not on a 15-minute slot boundary of local day "
            f"{day.day.isoformat()} ({tz.key})",
        )
    return day, int(offset_s) // SLOT_S


# --------------------------------------------------------------------------------------------
# regions


def region_ids(db: Session) -> set[str]:
    """Ids of the DSO regions: topology nodes without a parent."""
    return set(db.scalars(select(TopologyNode.id).where(TopologyNode.parent.is_(None))))


def check_region_exists(db: Session, region: str, field: str = "region", status: int = 404) -> None:
    if region not in region_ids(db):
        raise DsoError(
            field, f"unknown region {region!r} (not a topology node without parent)", status
        )


def region_nodes(db: Session, region: str) -> set[str]:
    """``region`` and every node below it."""
    children: dict[str | None, list[str]] = defaultdict(list)
    for node_id, parent in db.execute(select(TopologyNode.id, TopologyNode.parent)):
        children[parent].append(node_id)
    out, todo = {region}, [region]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


# --------------------------------------------------------------------------------------------
# REST profiles

NonNegativeKw = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


class DsoProfileIn(BaseModel):
    """A DSO's cap and/or target for one region and local day, one value per 15-minute slot."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"cap_kw": [400.0] * 96, "target_kw": [250.0] * 96}]},
    )
    cap_kw: list[NonNegativeKw] | None = Field(
        default=None, description="Hard cap on the region's aggregate power per slot [kW]."
    )
    target_kw: list[NonNegativeKw] | None = Field(
        default=None, description="Desired aggregate power per slot [kW] (tracked, not hard)."
    )


def put_profile(
    db: Session,
    region: str,
    day: LocalDay,
    cap_kw: list[float] | None,
    target_kw: list[float] | None,
) -> DsoProfile:
    """Replace the profile of ``region`` on ``day`` (idempotent; an omitted list is cleared).

    Raises
    ------
    DsoError
        Neither list given, or a list without one value per slot of the day.
    """
    if cap_kw is None and target_kw is None:
        raise DsoError("cap_kw", "give cap_kw, target_kw or both")
    for field, values in (("cap_kw", cap_kw), ("target_kw", target_kw)):
        if values is not None and len(values) != day.slots:
            raise DsoError(
                field,
                f"expected {day.slots} values (one per 15-minute slot of local day "
                f"{day.day.isoformat()}), got {len(values)}",
            )
    row = db.get(DsoProfile, (region, day.day.isoformat()), with_for_update=True)
    if row is None:
        row = DsoProfile(region=region, day=day.day.isoformat())
        db.add(row)
    row.start, row.slot_s = day.start, SLOT_S
    row.cap_kw = None if cap_kw is None else [float(v) for v in cap_kw]
    row.target_kw = None if target_kw is None else [float(v) for v in target_kw]
    row.source, row.event_id = "rest", None
    db.flush()
    return row


def profile_json(row: DsoProfile) -> dict[str, Any]:
    """A stored profile as the API shows it."""
    n = len(row.cap_kw if row.cap_kw is not None else row.target_kw or [])
    return {
        "region": row.region,
        "date": row.day,
        "start": row.start.isoformat(),
        "slot_s": row.slot_s,
        "slot_count": n,
        "cap_kw": row.cap_kw,
        "target_kw": row.target_kw,
        "source": row.source,
        "event_id": row.event_id,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


# --------------------------------------------------------------------------------------------
# OpenADR 3.0 events

_OADR_ID = r"^[a-zA-Z0-9_-]*$"


class ValuesMap(BaseModel):
    """OpenADR ``valuesMap``: a type and its values."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, max_length=128)
    values: list[Any]


def _iso_text(value: Any) -> Any:
    """OpenADR times are ISO-8601 text; a number (epoch seconds) is refused, not guessed."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 date-time string with a UTC offset")
    return value


class IntervalPeriod(BaseModel):
    """OpenADR ``intervalPeriod``; ``start`` must be ISO-8601 text with a UTC offset."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    start: Annotated[AwareDatetime, BeforeValidator(_iso_text)]
    duration: str | None = Field(default=None, description="ISO 8601 duration; must be PT15M.")
    randomize_start: str | None = Field(default=None, alias="randomizeStart")


class EventPayloadDescriptor(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    object_type: str | None = Field(default=None, alias="objectType")
    payload_type: str = Field(alias="payloadType", min_length=1, max_length=128)
    units: str | None = None
    currency: str | None = None


class Interval(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    id: int
    interval_period: IntervalPeriod | None = Field(default=None, alias="intervalPeriod")
    payloads: list[ValuesMap]


OADR_EXAMPLE: dict[str, Any] = {
    "programID": "gac-region-01",
    "eventName": "capacity limit region-01 2026-11-26 evening",
    "priority": 0,
    "targets": [{"type": "GRID_AREA", "values": ["region-01"]}],
    "payloadDescriptors": [
        {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": PAYLOAD_TYPE, "units": "KW"}
    ],
    "intervalPeriod": {"start": "2026-11-26T17:00:00+01:00", "duration": "PT15M"},
    "intervals": [
        {"id": 0, "payloads": [{"type": PAYLOAD_TYPE, "values": [400.0]}]},
        {"id": 1, "payloads": [{"type": PAYLOAD_TYPE, "values": [350.0]}]},
        {
            "id": 2,
            "intervalPeriod": {"start": "2026-11-26T18:00:00+01:00", "duration": "PT15M"},
            "payloads": [{"type": PAYLOAD_TYPE, "values": [300.0]}],
        },
    ],
}


class OadrEvent(BaseModel):
    """An OpenADR 3.0 event object (the fields gridcharge reads; others are kept as sent)."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, json_schema_extra={"examples": [OADR_EXAMPLE]}
    )
    program_id: str = Field(alias="programID", min_length=1, max_length=128, pattern=_OADR_ID)
    event_name: str | None = Field(default=None, alias="eventName")
    priority: int | None = None
    targets: list[ValuesMap] | None = None
    report_descriptors: list[dict[str, Any]] | None = Field(default=None, alias="reportDescriptors")
    payload_descriptors: list[EventPayloadDescriptor] | None = Field(
        default=None, alias="payloadDescriptors"
    )
    interval_period: IntervalPeriod | None = Field(default=None, alias="intervalPeriod")
    intervals: list[Interval]


def duration_s(text: str) -> float | None:
    """Seconds of an ISO 8601 duration of days, hours, minutes and seconds (None if not one)."""
    m = _DURATION_RE.fullmatch(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        return None
    d, h, mi, s = (m.group(k) for k in ("d", "h", "m", "s"))
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def event_region(event: OadrEvent) -> str:
    """The one region an event targets (``GRID_AREA`` or ``RESOURCE_NAME`` target)."""
    found: dict[str, str] = {}
    for i, target in enumerate(event.targets or []):
        if target.type not in REGION_TARGET_TYPES:
            continue  # e.g. VEN_NAME: addresses us, not a region
        if not target.values:
            raise DsoError(f"targets[{i}].values", "name one region")
        for j, value in enumerate(target.values):
            if not isinstance(value, str) or not value:
                raise DsoError(f"targets[{i}].values[{j}]", f"expected a region id (got {value!r})")
            found.setdefault(value, f"targets[{i}].values[{j}]")
    if not found:
        raise DsoError(
            "targets",
            "name the region as {'type': 'GRID_AREA' (or 'RESOURCE_NAME'), 'values': [region]}",
        )
    if len(found) > 1:
        raise DsoError("targets", f"one region per event (got {sorted(found)})")
    return next(iter(found))


def event_region_field(event: OadrEvent) -> str:
    """The path of the field that names the event's region (for error messages)."""
    for i, target in enumerate(event.targets or []):
        if target.type in REGION_TARGET_TYPES:
            return f"targets[{i}].values[0]"
    return "targets"


def _check_period(period: IntervalPeriod, field: str) -> float | None:
    """The period's duration [s] if it states one; refuses anything but 15 minutes."""
    if period.randomize_start not in (None, "", "PT0S"):
        raise DsoError(f"{field}.randomizeStart", "not supported for capacity limits")
    if period.duration in (None, ""):
        return None
    seconds = duration_s(period.duration)
    if seconds != SLOT_S:
        raise DsoError(f"{field}.duration", f"must be PT15M (got {period.duration!r})")
    return seconds


def _check_descriptors(event: OadrEvent) -> None:
    if not event.payload_descriptors:
        raise DsoError(
            "payloadDescriptors",
            f"state the payload as [{{'payloadType': '{PAYLOAD_TYPE}', 'units': 'KW'}}]",
        )
    for i, desc in enumerate(event.payload_descriptors):
        field = f"payloadDescriptors[{i}]"
        if desc.object_type not in (None, "EVENT_PAYLOAD_DESCRIPTOR"):
            raise DsoError(
                f"{field}.objectType",
                f"must be EVENT_PAYLOAD_DESCRIPTOR (got {desc.object_type!r})",
            )
        if desc.payload_type != PAYLOAD_TYPE:
            raise DsoError(
                f"{field}.payloadType",
                f"only {PAYLOAD_TYPE} is accepted (got {desc.payload_type!r})",
            )
        if desc.units != "KW":
            raise DsoError(f"{field}.units", f"must be KW (got {desc.units!r})")


def _interval_value(interval: Interval, field: str) -> float:
    if len(interval.payloads) != 1:
        raise DsoError(
            f"{field}.payloads",
            f"expected exactly one {PAYLOAD_TYPE} payload (got {len(interval.payloads)})",
        )
    payload = interval.payloads[0]
    if payload.type != PAYLOAD_TYPE:
        raise DsoError(
            f"{field}.payloads[0].type", f"only {PAYLOAD_TYPE} is accepted (got {payload.type!r})"
        )
    if len(payload.values) != 1:
        raise DsoError(
            f"{field}.payloads[0].values",
            f"expected exactly one value [kW] (got {len(payload.values)})",
        )
    value = payload.values[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DsoError(f"{field}.payloads[0].values[0]", f"expected a number (got {value!r})")
    if not math.isfinite(value) or value < 0:
        raise DsoError(f"{field}.payloads[0].values[0]", f"must be finite and >= 0 (got {value})")
    return float(value)


@dataclass(frozen=True)
class CapSlot:
    """One interval of an event mapped onto a slot of a local day."""

    day: LocalDay
    slot: int
    cap_kw: float


def event_slots(event: OadrEvent, tz: ZoneInfo) -> list[CapSlot]:
    """The slots an event sets, in event order.

    An interval starts at its own ``intervalPeriod.start`` if it has one, otherwise where the
    previous interval ended (the first at the event's ``intervalPeriod.start``). Every interval
    lasts 15 minutes and starts on a slot boundary.

    Raises
    ------
    DsoError
        Naming the first offending field.
    """
    object_type = (event.model_extra or {}).get("objectType")
    if object_type not in (None, "EVENT"):
        raise DsoError("objectType", f"must be EVENT (got {object_type!r})")
    _check_descriptors(event)
    if event.interval_period is not None:
        _check_period(event.interval_period, "intervalPeriod")
    if not event.intervals:
        raise DsoError("intervals", "give at least one interval")
    out: list[CapSlot] = []
    seen: dict[tuple[date, int], int] = {}
    cursor = event.interval_period.start if event.interval_period else None
    event_duration = (
        event.interval_period.duration
        if event.interval_period and event.interval_period.duration
        else None
    )
    for i, interval in enumerate(event.intervals):
        field = f"intervals[{i}]"
        own = interval.interval_period
        if own is not None:
            own_duration = _check_period(own, f"{field}.intervalPeriod")
            start = own.start
            start_field = f"{field}.intervalPeriod.start"
            if own_duration is None and event_duration is None:
                raise DsoError(f"{field}.intervalPeriod.duration", "must be PT15M (missing)")
        else:
            if cursor is None:
                raise DsoError(
                    f"{field}.intervalPeriod", "needed: the event has no intervalPeriod.start"
                )
            if event_duration is None:
                raise DsoError("intervalPeriod.duration", "must be PT15M (missing)")
            start = cursor
            start_field = "intervalPeriod.start" if i == 0 else f"{field}.intervalPeriod"
        value = _interval_value(interval, field)
        day, k = slot_of(start, tz, start_field)
        if (day.day, k) in seen:
            raise DsoError(
                start_field,
                f"slot {start.astimezone(UTC).isoformat()} is already set by "
                f"intervals[{seen[day.day, k]}]",
            )
        seen[day.day, k] = i
        out.append(CapSlot(day, k, value))
        cursor = start + timedelta(seconds=SLOT_S)
    return out


def apply_event(db: Session, region: str, slots: list[CapSlot], event_id: str) -> list[str]:
    """Merge an event's caps into the stored day rows of ``region``; returns the days touched.

    Slots the event does not cover keep their stored cap (``null`` in a new row: no cap);
    ``target_kw`` is kept.
    """
    by_day: dict[date, list[CapSlot]] = defaultdict(list)
    for s in slots:
        by_day[s.day.day].append(s)
    touched = []
    for d in sorted(by_day):
        day = by_day[d][0].day
        row = db.get(DsoProfile, (region, d.isoformat()), with_for_update=True)
        if row is None:
            row = DsoProfile(region=region, day=d.isoformat(), target_kw=None)
            db.add(row)
        cap: list[float | None] = list(row.cap_kw or [])
        if len(cap) != day.slots:
            cap = [None] * day.slots
        for s in by_day[d]:
            cap[s.slot] = s.cap_kw
        row.start, row.slot_s = day.start, SLOT_S
        row.cap_kw = cap  # type: ignore[assignment]  # null entries: no cap in that slot
        row.source, row.event_id = "openadr", event_id
        touched.append(d.isoformat())
    db.flush()
    return touched


# --------------------------------------------------------------------------------------------
# compliance


def planned_kw(db: Session, region: str, day: LocalDay) -> list[float | None]:
    """Per slot: the mean planned power of ``region`` in the newest published run covering it.

    A run covers a slot when its grid ``[grid_start, grid_start + steps·step_s)`` contains the
    whole slot and its ``region_power_kw`` has the region. The mean is weighted by the overlap
    of each step with the slot.
    """
    runs = db.execute(
        select(ScheduleRun.id, ScheduleRun.grid_start, ScheduleRun.step_s, ScheduleRun.steps)
        .where(
            ScheduleRun.published.is_(True),
            ScheduleRun.grid_start < day.end,
            ScheduleRun.grid_start >= day.start - RUN_LOOKBACK,
        )
        .order_by(ScheduleRun.created_at.desc(), ScheduleRun.id.desc())
    ).all()
    power: dict[int, list[float] | None] = {}

    def region_power(run_id: int) -> list[float] | None:
        if run_id not in power:
            by_region = db.scalar(
                select(ScheduleRun.region_power_kw).where(ScheduleRun.id == run_id)
            )
            power[run_id] = (by_region or {}).get(region)
        return power[run_id]

    out: list[float | None] = [None] * day.slots
    for k in range(day.slots):
        s0 = day.slot_start(k)
        s1 = s0 + timedelta(seconds=SLOT_S)
        for run_id, grid_start, step_s, steps in runs:
            if grid_start > s0 or grid_start + timedelta(seconds=steps * step_s) < s1:
                continue
            p = region_power(run_id)
            if p is None or grid_start + timedelta(seconds=min(steps, len(p)) * step_s) < s1:
                continue
            j0 = int((s0 - grid_start).total_seconds() // step_s)
            energy = 0.0
            for j in range(j0, min(steps, len(p))):
                a = grid_start + timedelta(seconds=j * step_s)
                b = a + timedelta(seconds=step_s)
                if a >= s1:
                    break
                energy += float(p[j]) * (min(b, s1) - max(a, s0)).total_seconds()
            out[k] = energy / SLOT_S
            break
    return out


def _region_states(nodes: set[str]) -> Any:  # a Select of (session_id, timestamp, kwh)
    return (
        select(SessionState.session_id, SessionState.timestamp, SessionState.kwh)
        .join(ChargingSession, ChargingSession.id == SessionState.session_id)
        .join(Connector, Connector.id == ChargingSession.connector_id)
        .join(Station, Station.id == Connector.station_id)
        .where(Station.node.in_(nodes))
    )


def _boundary_states(
    db: Session, nodes: set[str], lo: datetime, hi: datetime, last: bool
) -> list[tuple[str, datetime, float]]:
    """Per session, its last (or first) state in ``[lo, hi)`` (``(lo, hi]`` for the first)."""
    ts = SessionState.timestamp
    agg = func.max(ts) if last else func.min(ts)
    window = (ts >= lo, ts < hi) if last else (ts > lo, ts <= hi)
    sub = (
        _region_states(nodes)
        .with_only_columns(SessionState.session_id.label("sid"), agg.label("ts"))
        .where(*window)
        .group_by(SessionState.session_id)
        .subquery()
    )
    rows = db.execute(
        select(SessionState.session_id, SessionState.timestamp, SessionState.kwh).join(
            sub, (SessionState.session_id == sub.c.sid) & (SessionState.timestamp == sub.c.ts)
        )
    )
    return [(r[0], r[1], r[2]) for r in rows]


def realised_kw(db: Session, region: str, day: LocalDay) -> np.ndarray:
    """Per slot: the mean power [kW] delivered to sessions under ``region``.

    Between consecutive meter states of a session the increase of cumulative kWh (negative
    increases count as 0) is spread uniformly over the time between them, so each session's
    energy is a piecewise-linear, non-decreasing ``E_i(t)``, flat before its first and after its
    last state. Then ``P_k = Σ_i (E_i(t_{k+1}) − E_i(t_k)) / Δt_h``.
    """
    nodes = region_nodes(db, region)
    ts = SessionState.timestamp
    rows = [
        (r[0], r[1], r[2])
        for r in db.execute(_region_states(nodes).where(ts >= day.start, ts <= day.end))
    ]
    rows += _boundary_states(db, nodes, day.start - STATE_LOOKBACK, day.start, last=True)
    rows += _boundary_states(db, nodes, day.end, day.end + STATE_LOOKBACK, last=False)
    by_session: dict[str, dict[float, float]] = defaultdict(dict)
    for sid, t, kwh in rows:
        by_session[sid][t.timestamp()] = float(kwh)
    edges = day.start.timestamp() + SLOT_S * np.arange(day.slots + 1, dtype=np.float64)
    energy_kwh = np.zeros(day.slots)
    for states in by_session.values():
        if len(states) < 2:
            continue
        t = np.array(sorted(states), dtype=np.float64)
        e = np.array([states[x] for x in sorted(states)], dtype=np.float64)
        cum = np.concatenate(([0.0], np.cumsum(np.maximum(np.diff(e), 0.0))))
        energy_kwh += np.diff(np.interp(edges, t, cum))
    return energy_kwh / SLOT_H


def compliance(
    db: Session, region: str, day: LocalDay, now: datetime | None = None
) -> dict[str, Any]:
    """Cap, target, planned and realised power per slot of ``day``, with the exceedance.

    ``realised_kw`` is null for slots that have not ended at ``now``; ``exceedance_kw`` is
    ``max(realised − cap, 0)`` where both are known.
    """
    now = now or datetime.now(UTC)
    row = db.get(DsoProfile, (region, day.day.isoformat()))

    def per_slot(values: Sequence[float | None] | None) -> list[float | None]:
        if values is None or len(values) != day.slots:
            return [None] * day.slots
        return list(values)

    cap = per_slot(row.cap_kw if row else None)
    target = per_slot(row.target_kw if row else None)
    planned = planned_kw(db, region, day)
    realised = realised_kw(db, region, day)
    slots = []
    over_kwh, over_n, realised_kwh = 0.0, 0, 0.0
    for k in range(day.slots):
        s0 = day.slot_start(k)
        done = s0 + timedelta(seconds=SLOT_S) <= now
        r = float(realised[k]) if done else None
        exceed = None
        c = cap[k]
        if r is not None:
            realised_kwh += r * SLOT_H
            if c is not None:
                exceed = max(r - float(c), 0.0)
                if exceed > 1e-9:
                    over_kwh += exceed * SLOT_H
                    over_n += 1
                else:
                    exceed = 0.0
        slots.append(
            {
                "slot": k,
                "start": s0.isoformat(),
                "cap_kw": cap[k],
                "target_kw": target[k],
                "planned_kw": planned[k],
                "realised_kw": r,
                "exceedance_kw": exceed,
            }
        )
    return {
        "region": region,
        "date": day.day.isoformat(),
        "start": day.start.isoformat(),
        "slot_s": SLOT_S,
        "slot_count": day.slots,
        "slots": slots,
        "totals": {
            "energy_over_cap_kwh": over_kwh,
            "slots_over_cap": over_n,
            "realised_kwh": realised_kwh,
        },
    }

"""The live scenario: the plugged-in sessions, the topology and the DSO profiles of the database,
as one ``gridcharge.scenario/1`` dict on a rolling grid that starts at the current step.

The rules (also in ``docs/api-profiles.md``):

- **Grid.** ``start`` = ``now`` floored to ``step_s`` (UTC), ``steps`` = ``horizon_steps``.
- **Sessions.** Every session with status ``ACTIVE`` and no ``end_date_time``. A car plugged in
  is drawing power now, so it is present from the current step on: its arrival is
  ``min(start_date_time, grid start)`` (the file format rounds an arrival *up*, which would leave
  a car that plugged in during the current step without a profile until the next step). The
  departure is the session's ``departure``, else the promoted forecast model's departure at
  quantile ``forecast_quantile`` (``api/forecast.py``), else ``arrival + DEFAULT_STAY_H``; a car
  that is still plugged in after that (an overstay) is assumed to stay :data:`OVERSTAY_S` longer
  from the grid start. ``energy_kwh`` = ``max(energy_need_kwh − kwh, 0)`` when a need is
  known, else the same with the forecast model's energy need, else absent. A session on a
  connector the topology does not know is left out (logged); of two open sessions on one
  connector only the newest is kept (the other missed its end).
- **DSO caps.** Per region, a slot's cap applies to every step it overlaps; a step overlapped by
  several slots takes the lowest cap (the hard limit holds in every part of the step). Steps no
  slot covers get a non-binding cap: the sum of the maximum power of every connector below the
  region. A region whose caps cover no step of the horizon gets no cap entry.
- **Demand-response curtailments.** A session held at its minimum by an activation
  (``dr_curtailments``) gets ``limit_a`` per step: in a step overlapped by the curtailment for a
  fraction ``f``, ``f · i_min + (1 − f) · i_connector``; the connector limit elsewhere. So the
  plan made meanwhile knows the curtailment; the scheduler does not republish the profiles of
  sessions still held (:func:`held_sessions`).
- **DSO targets.** A step takes the overlap-weighted mean of the targets covering it. A step no
  target covers takes the target at the same time on the nearest day that has one (``t ± k·24
  h``, k ≤ 7): a target is a shape and the scenario needs a value for every step, and any fixed
  fill would push energy into or out of the uncovered steps. Failing that, the nearest covered
  step's value. A region whose targets cover no step of the horizon gets no target entry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.forecast import LivePrediction, live_predictions
from api.models import ChargingSession, DsoProfile
from api.models_dr import DrCurtailment
from api.settings import Settings
from api.topology import read_topology
from optimizer.scenario import DEFAULT_STAY_H, SCENARIO_FORMAT

log = logging.getLogger(__name__)

OVERSTAY_S = 3600
"""A car still plugged in after its (predicted) departure is assumed to stay this long after the
grid start [s] (at least one step); the next run extends it again while it stays."""

PERSISTENCE_DAYS = 7
"""How many days before or after a step are searched for a DSO target at the same time [d]."""

_DAY = timedelta(days=1)


def grid_start(now: datetime, step_s: int) -> datetime:
    """``now`` floored to a multiple of ``step_s`` since the Unix epoch, in UTC.

    Raises
    ------
    ValueError
        ``now`` is naive.
    """
    if now.tzinfo is None:
        raise ValueError(f"now: naive datetime {now.isoformat()} (give an aware UTC time)")
    epoch_s = math.floor(now.timestamp())
    return datetime.fromtimestamp(epoch_s - epoch_s % step_s, UTC)


def plugged_in(db: Session) -> list[ChargingSession]:
    """Sessions with status ``ACTIVE`` and no ``end_date_time``, by start time then id."""
    return list(
        db.scalars(
            select(ChargingSession)
            .where(ChargingSession.status == "ACTIVE", ChargingSession.end_date_time.is_(None))
            .order_by(ChargingSession.start_date_time, ChargingSession.id)
        )
    )


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def session_entry(
    s: ChargingSession, start: datetime, step_s: int, predicted: LivePrediction | None = None
) -> dict[str, Any]:
    """The scenario ``session`` of one plugged-in session on a grid starting at ``start``;
    ``predicted`` (the promoted forecast model's) stands in for a departure or energy need the
    driver did not give."""
    arrival = min(s.start_date_time, start)
    departure = s.departure
    if (departure is None or departure <= s.start_date_time) and predicted is not None:
        departure = predicted.departure
    if departure is None or departure <= s.start_date_time:
        departure = s.start_date_time + timedelta(hours=DEFAULT_STAY_H)
    if departure < start + timedelta(seconds=step_s):
        departure = start + timedelta(seconds=max(OVERSTAY_S, step_s))
    entry: dict[str, Any] = {
        "id": s.id,
        "connector": s.connector_id,
        "arrival": _iso(arrival),
        "departure": _iso(departure),
        "phases": 1 if s.phases == 1 else 3,
        "opt_out": bool(s.opt_out),
        "pause_consent": bool(s.pause_consent),
    }
    if s.energy_need_kwh is not None:
        entry["energy_kwh"] = max(float(s.energy_need_kwh) - float(s.kwh or 0.0), 0.0)
    elif predicted is not None:
        entry["energy_kwh"] = max(predicted.energy_kwh - float(s.kwh or 0.0), 0.0)
    return entry


@dataclass(frozen=True)
class SlotSeries:
    """Values per slot from ``start`` [kW]; ``None`` where a slot has no value."""

    start: datetime
    slot_s: int
    values: Sequence[float | None]


def _covering(series: Sequence[SlotSeries], a: datetime, b: datetime) -> list[tuple[float, float]]:
    """``(value, overlap_s)`` of every slot with a value that overlaps ``[a, b)``."""
    out = []
    for sr in series:
        if not sr.values:
            continue
        k0 = max(int((a - sr.start).total_seconds() // sr.slot_s), 0)
        for k in range(k0, len(sr.values)):
            s0 = sr.start + timedelta(seconds=k * sr.slot_s)
            if s0 >= b:
                break
            s1 = s0 + timedelta(seconds=sr.slot_s)
            overlap = (min(b, s1) - max(a, s0)).total_seconds()
            value = sr.values[k]
            if overlap > 0 and value is not None:
                out.append((float(value), overlap))
    return out


def cap_steps(
    series: Sequence[SlotSeries], start: datetime, step_s: int, steps: int, fill_kw: float
) -> list[float] | None:
    """Cap per grid step [kW]: the lowest cap of the slots overlapping the step, ``fill_kw``
    where none does; ``None`` when no slot overlaps any step."""
    out: list[float] = []
    covered = False
    for t in range(steps):
        a = start + timedelta(seconds=t * step_s)
        hits = _covering(series, a, a + timedelta(seconds=step_s))
        covered |= bool(hits)
        out.append(min(v for v, _ in hits) if hits else fill_kw)
    return out if covered else None


def _mean(hits: list[tuple[float, float]]) -> float:
    return sum(v * w for v, w in hits) / sum(w for _, w in hits)


def target_steps(
    series: Sequence[SlotSeries], start: datetime, step_s: int, steps: int
) -> list[float] | None:
    """Target per grid step [kW]: the overlap-weighted mean of the slots covering the step; for
    an uncovered step the same time on the nearest day with a target (up to
    :data:`PERSISTENCE_DAYS`), else the nearest covered step; ``None`` when no slot overlaps any
    step."""
    direct: list[float | None] = []
    for t in range(steps):
        a = start + timedelta(seconds=t * step_s)
        hits = _covering(series, a, a + timedelta(seconds=step_s))
        direct.append(_mean(hits) if hits else None)
    known = [t for t, v in enumerate(direct) if v is not None]
    if not known:
        return None
    out: list[float] = []
    for t, v in enumerate(direct):
        if v is not None:
            out.append(v)
            continue
        a = start + timedelta(seconds=t * step_s)
        found: float | None = None
        for k in range(1, PERSISTENCE_DAYS + 1):
            for shift in (-k * _DAY, k * _DAY):
                hits = _covering(series, a + shift, a + shift + timedelta(seconds=step_s))
                if hits:
                    found = _mean(hits)
                    break
            if found is not None:
                break
        if found is None:
            nearest = min(known, key=lambda j: (abs(j - t), j))
            found = direct[nearest]
        assert found is not None
        out.append(found)
    return out


def _max_power_below(
    topology: dict[str, list[dict[str, Any]]], voltage_v: float
) -> dict[str, float]:
    """Sum of the connectors' maximum power below every node [kW]."""
    parent = {n["id"]: n.get("parent") for n in topology["nodes"]}
    out = dict.fromkeys(parent, 0.0)
    for st in topology["stations"]:
        kw = sum(
            float(c.get("limit_a", 16.0)) * int(c.get("phases", 3)) * voltage_v / 1000.0
            for c in st["connectors"]
        )
        node = st["node"]
        seen: set[str] = set()
        while node is not None and node in out and node not in seen:
            seen.add(node)
            out[node] += kw
            node = parent[node]
    return out


def dso_entries(
    db: Session,
    topology: dict[str, list[dict[str, Any]]],
    start: datetime,
    step_s: int,
    steps: int,
    voltage_v: float,
) -> list[dict[str, Any]]:
    """The scenario ``dso_profiles`` of every region with a cap or target in the horizon."""
    end = start + timedelta(seconds=steps * step_s)
    reach = (PERSISTENCE_DAYS + 2) * _DAY
    rows = db.scalars(
        select(DsoProfile)
        .where(DsoProfile.start < end + reach, DsoProfile.start > start - reach)
        .order_by(DsoProfile.region, DsoProfile.start)
    ).all()
    by_region: dict[str, list[DsoProfile]] = {}
    for row in rows:
        by_region.setdefault(row.region, []).append(row)
    max_kw = _max_power_below(topology, voltage_v)
    out: list[dict[str, Any]] = []
    for region, region_rows in sorted(by_region.items()):
        if region not in max_kw:
            log.warning("DSO profile for %r ignored: no such topology node", region)
            continue
        caps = [SlotSeries(r.start, r.slot_s, r.cap_kw or []) for r in region_rows]
        targets = [SlotSeries(r.start, r.slot_s, r.target_kw or []) for r in region_rows]
        entry: dict[str, Any] = {"node": region}
        cap = cap_steps(caps, start, step_s, steps, fill_kw=max_kw[region])
        target = target_steps(targets, start, step_s, steps)
        if cap is not None:
            entry["cap_kw"] = cap
        if target is not None:
            entry["target_kw"] = target
        if len(entry) > 1:
            out.append(entry)
    return out


def held_sessions(db: Session, now: datetime) -> set[str]:
    """Sessions a demand-response curtailment holds at ``now`` (``start ≤ now < until``)."""
    return set(
        db.scalars(
            select(DrCurtailment.session_id).where(
                DrCurtailment.start <= now, DrCurtailment.until > now
            )
        )
    )


def apply_curtailment_caps(
    db: Session,
    sessions: list[dict[str, Any]],
    topology: dict[str, list[dict[str, Any]]],
    start: datetime,
    step_s: int,
    steps: int,
) -> None:
    """Set ``limit_a`` on the sessions a curtailment overlaps within the horizon (module doc)."""
    end = start + timedelta(seconds=steps * step_s)
    rows = db.execute(
        select(
            DrCurtailment.session_id,
            DrCurtailment.start,
            DrCurtailment.until,
            DrCurtailment.limit_a,
        ).where(DrCurtailment.until > start, DrCurtailment.start < end)
    )
    spans: dict[str, list[tuple[datetime, datetime, float]]] = {}
    for sid, a, b, lim in rows:
        spans.setdefault(sid, []).append((a, b, float(lim)))
    if not spans:
        return
    limit_of = {
        c["id"]: float(c.get("limit_a", 16.0))
        for st in topology["stations"]
        for c in st["connectors"]
    }
    for entry in sessions:
        held = spans.get(entry["id"])
        if not held:
            continue
        top = limit_of.get(entry["connector"], 16.0)
        caps = [top] * steps
        for a, b, lim in held:
            t0 = max(int((a - start).total_seconds() // step_s), 0)
            t1 = min(math.ceil((b - start).total_seconds() / step_s), steps)
            for t in range(t0, t1):
                s0 = start + timedelta(seconds=t * step_s)
                s1 = s0 + timedelta(seconds=step_s)
                f = max((min(b, s1) - max(a, s0)).total_seconds(), 0.0) / step_s
                lim_a = max(min(lim, top), 0.0)
                caps[t] = min(caps[t], round(f * lim_a + (1.0 - f) * top, 3))
        entry["limit_a"] = caps


def build_live_scenario(db: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    """The ``gridcharge.scenario/1`` dict of the database at ``now`` (rules in the module doc).

    Parameters
    ----------
    db : Session
        An open database session (only read).
    settings : Settings
        ``step_s``, ``horizon_steps`` and ``voltage_v`` are used.
    now : datetime
        Aware time of the run; the grid starts at ``now`` floored to ``step_s``.
    """
    step_s, steps = settings.step_s, settings.horizon_steps
    start = grid_start(now, step_s)
    topology = read_topology(db)
    connectors = {c["id"] for st in topology["stations"] for c in st["connectors"]}
    newest: dict[str, ChargingSession] = {}
    for s in plugged_in(db):  # by start time: a later one replaces an earlier one
        if s.connector_id not in connectors:
            log.warning("session %s ignored: unknown connector %r", s.id, s.connector_id)
            continue
        if s.connector_id in newest:
            log.warning(
                "session %s ignored: %s is newer on connector %r",
                newest[s.connector_id].id,
                s.id,
                s.connector_id,
            )
        newest[s.connector_id] = s
    predicted = live_predictions(db, settings, list(newest.values()))  # api/forecast.py
    sessions = sorted(
        (session_entry(s, start, step_s, predicted.get(s.id)) for s in newest.values()),
        key=lambda e: e["id"],
    )
    apply_curtailment_caps(db, sessions, topology, start, step_s, steps)
    return {
        "format": SCENARIO_FORMAT,
        "grid": {"start": _iso(start), "step_s": step_s, "steps": steps},
        "voltage_v": settings.voltage_v,
        "nodes": topology["nodes"],
        "stations": topology["stations"],
        "sessions": sessions,
        "dso_profiles": dso_entries(db, topology, start, step_s, steps, settings.voltage_v),
    }

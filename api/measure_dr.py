"""Measurement of the stored demand-response activations from the stored meter states: the
activation report (shifted energy, value, theoretical minimum, performance ratio,
non-responding sessions and stations), the report of a day and the erasable-power curve
(``docs/MEASUREMENT.md``, section "Activations from the activation log").

Reads the tables of :mod:`api.models_dr` (activation log, curtailments), the meter states and
the profiles actually sent to the CPO (the outbox); writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import (
    ChargingSession,
    Connector,
    OutboxItem,
    Profile,
    SessionState,
    Station,
    TopologyNode,
)
from api.models_dr import DrActivation, DrCurtailment, DrSignal
from api.publish import ocpi_segments
from api.settings import Settings
from measurement.errors import MeasurementError
from measurement.flexibility import (
    GRACE_S,
    erasable_by_hour,
    fleet_power,
    non_responding,
    station_summary,
)
from measurement.io import load_states
from measurement.reconstruct import reconstruct
from measurement.shifted import (
    PRE_S,
    SEARCH_S,
    WINDOW_S,
    Plan,
    estimate_cars,
    iso,
    measure_activation,
    plan_shifted,
    with_session_baseline,
)

MARGIN = timedelta(hours=1)
"""States read before the signal and after the clear."""
RECOVERY = timedelta(seconds=WINDOW_S + SEARCH_S)
"""Time after the clear that the recovery (edge search and the line after it) needs."""
MAX_ERASABLE_DAYS = 31
"""Longest history the erasable-power curve is computed over [days]."""
_CHUNK = 500


class MeasureError(Exception):
    """A request that cannot be measured; ``status`` is the HTTP status, the message names the
    field and its value."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for k in range(0, len(ids), _CHUNK):
        yield ids[k : k + _CHUNK]


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def region_roots(db: Session) -> dict[str, str]:
    """Every topology node and the region (root node) above it."""
    parent: dict[str, str | None] = dict(
        db.execute(select(TopologyNode.id, TopologyNode.parent)).all()
    )

    def root(node: str) -> str:
        seen = set()
        up = parent.get(node)
        while up is not None and node not in seen:
            seen.add(node)
            node, up = up, parent.get(up)
        return node

    return {n: root(n) for n in parent}


def states_frame(
    db: Session, lo: datetime, hi: datetime, session_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """The stored states between ``lo`` and ``hi`` (of ``session_ids`` when given) with their
    session's topology, in the columns of :func:`measurement.io.load_states`."""
    stmt = (
        select(
            SessionState.session_id,
            SessionState.timestamp,
            SessionState.kwh,
            SessionState.current_a,
            SessionState.phases,
            ChargingSession.phases,
            ChargingSession.opt_out,
            ChargingSession.energy_need_kwh,
            Connector.station_id,
            Station.node,
            Station.min_current_a,
        )
        .join(ChargingSession, ChargingSession.id == SessionState.session_id)
        .join(Connector, Connector.id == ChargingSession.connector_id, isouter=True)
        .join(Station, Station.id == Connector.station_id, isouter=True)
        .where(SessionState.timestamp >= lo, SessionState.timestamp <= hi)
    )
    if session_ids is None:
        rows = list(db.execute(stmt))
    else:
        rows = []
        for chunk in _chunks(list(session_ids)):
            rows += list(db.execute(stmt.where(SessionState.session_id.in_(chunk))))
    region = region_roots(db)
    records = []
    for sid, ts, kwh, cur, ph, sph, opt, need, station, node, min_a in rows:
        i = list(cur) if cur else [0.0, 0.0, 0.0]
        records.append(
            {
                "session_id": sid,
                "timestamp": ts.isoformat(),
                "kwh": kwh,
                "current_l1_a": i[0],
                "current_l2_a": i[1],
                "current_l3_a": i[2],
                "phases": ph or sph or 3,
                "station": station or "",
                "subcluster": node or "",
                "region": region.get(node, node or "") if node else "",
                "min_current_a": min_a if min_a is not None else 8.0,
                "opt_out": "true" if opt else "false",
                "energy_need_kwh": need,
            }
        )
    return pd.DataFrame.from_records(records)


@dataclass(frozen=True)
class SentProfile:
    """One OCPI profile pushed to the CPO: when it was sent and its limits [A] on absolute
    time [s since epoch]."""

    sent_s: float
    starts_s: np.ndarray
    limits_a: np.ndarray
    end_s: float

    def limit_at(self, t_s: np.ndarray) -> np.ndarray:
        """The profile's limit at ``t_s`` [A]; NaN before its start or after its end."""
        k = np.searchsorted(self.starts_s, t_s, side="right") - 1
        out = self.limits_a[np.clip(k, 0, None)].astype(float)
        return np.where((k >= 0) & (t_s < self.end_s), out, np.nan)


def sent_profiles(
    db: Session, session_ids: Sequence[str], hi: datetime
) -> dict[str, list[SentProfile]]:
    """Per session the profiles pushed to the CPO up to ``hi`` (outbox items that were not
    superseded before they were sent), oldest first.

    An item not claimed yet holds no payload: its profile is the session's profile of the same
    cursor (:mod:`api.outbox`). A pending item whose session has a newer profile is superseded,
    whether or not the outbox worker marked it yet."""
    out: dict[str, list[SentProfile]] = {}
    for chunk in _chunks(list(session_ids)):
        stmt = (
            select(
                OutboxItem.session_id,
                OutboxItem.created_at,
                OutboxItem.payload,
                OutboxItem.status,
                OutboxItem.cursor,
                Profile.cursor,
                Profile.ocpi,
            )
            .outerjoin(Profile, Profile.session_id == OutboxItem.session_id)
            .where(
                OutboxItem.session_id.in_(chunk),
                OutboxItem.status != "superseded",
                OutboxItem.created_at <= hi,
            )
            .order_by(OutboxItem.id)
        )
        for sid, created, payload, status, cursor, p_cursor, p_ocpi in db.execute(stmt):
            newer = p_cursor is not None and p_cursor > cursor
            if status == "pending" and newer:
                continue
            if payload is not None:
                ocpi = payload.get("charging_profile")
            else:
                ocpi = p_ocpi if p_cursor == cursor else None
            if not ocpi:
                continue
            segments, end_s = ocpi_segments(ocpi)
            out.setdefault(sid, []).append(
                SentProfile(
                    sent_s=_utc(created).timestamp(),
                    starts_s=np.array([s for s, _ in segments], dtype=float),
                    limits_a=np.array([lim for _, lim in segments], dtype=float),
                    end_s=end_s,
                )
            )
    return out


def profile_in_force(
    t_s: np.ndarray,
    profiles: Sequence[SentProfile],
    curtailments: Sequence[tuple[float, float, float]] = (),
    grace_s: float = GRACE_S,
) -> np.ndarray:
    """Limit of the profile in force at each ``t_s`` [A] (NaN: none known).

    The profile in force is the last one sent at or before ``t``; during the first ``grace_s``
    after it was sent the previous profile's limit still counts when higher (the charger gets
    that time to follow). Within a curtailment ``(start_s, until_s, limit_a)`` the limit is the
    curtailment's (the profile the activation sent says exactly that).

    Parameters
    ----------
    t_s : numpy.ndarray
        Times of the states [s since epoch].
    profiles : sequence of SentProfile
        Oldest first.
    curtailments : sequence of (float, float, float)
        ``(start [s], until [s], limit [A])`` of the session's curtailments.
    grace_s : float
        [s].
    """
    t = np.asarray(t_s, dtype=float)
    limit = np.full(t.size, np.nan)
    previous = np.full(t.size, np.nan)
    for p in profiles:
        sent = t >= p.sent_s
        here = p.limit_at(t)
        fresh = sent & (t < p.sent_s + grace_s)
        previous = np.where(sent, limit, previous)
        limit = np.where(sent, here, limit)
        limit = np.where(fresh & (previous > limit), previous, limit)
    for start_s, until_s, limit_a in curtailments:
        inside = (t >= start_s) & (t < until_s)
        limit = np.where(inside, limit_a, limit)
    return limit


def profiles_at_states(
    states: pd.DataFrame,
    sent: dict[str, list[SentProfile]],
    windows: dict[str, list[tuple[float, float, float]]] | None = None,
) -> np.ndarray:
    """The limit in force at each state (:func:`profile_in_force`; ``states`` sorted by
    session, as :func:`measurement.io.load_states` returns them) [A]; NaN where none."""
    profile = np.full(len(states), np.nan)
    sid = states["session_id"].to_numpy()
    t = states["t_s"].to_numpy(float)
    bounds = np.r_[0, np.nonzero(sid[1:] != sid[:-1])[0] + 1, sid.size]
    for k in range(bounds.size - 1):
        a_, b_ = int(bounds[k]), int(bounds[k + 1])
        s = str(sid[a_])
        if s in sent:
            got = profile_in_force(t[a_:b_], sent[s], (windows or {}).get(s, []))
            profile[a_:b_] = got
    return profile


def plan_at_signal(
    session_ids: Sequence[str],
    sent: dict[str, list[SentProfile]],
    t_signal_s: float,
    t_clear_s: float,
) -> Plan:
    """The plan each session would have followed: the last profile sent to it before the
    signal, on a 1-minute grid from 5 minutes before the signal to 10 minutes after the clear.
    Sessions with no profile sent before the signal are left out (held at their power)."""
    edges = np.arange(t_signal_s - PRE_S, t_clear_s + WINDOW_S + 60.0, 60.0)
    mid = (edges[:-1] + edges[1:]) / 2.0
    ids, rows = [], []
    for sid in session_ids:
        before = [p for p in sent.get(sid, []) if p.sent_s < t_signal_s]
        if before:
            ids.append(sid)
            rows.append(before[-1].limit_at(mid))
    limits = np.array(rows, dtype=float).reshape(len(rows), mid.size)
    return Plan(np.array(ids, dtype=object), edges, limits)


def _activation_rows(
    db: Session, activations: Sequence[DrActivation]
) -> tuple[dict[int, list[DrCurtailment]], dict[int, float | None]]:
    ids = [a.id for a in activations]
    curt: dict[int, list[DrCurtailment]] = {i: [] for i in ids}
    for c in db.scalars(select(DrCurtailment).where(DrCurtailment.activation_id.in_(ids))):
        curt[c.activation_id].append(c)
    signals = {a.signal_id for a in activations}
    price: dict[int, float | None] = {
        i: p
        for i, p in db.execute(
            select(DrSignal.id, DrSignal.imbalance_price_eur_per_mwh).where(
                DrSignal.id.in_(sorted(signals))
            )
        )
    }
    return curt, {a.id: price.get(a.signal_id) for a in activations}


def _status(a: DrActivation, now: datetime) -> str:
    """``running`` before the restore time, ``recovering`` until the recovery can be seen,
    ``complete`` after."""
    restore = _utc(a.restore_at)
    if now < restore:
        return "running"
    if now < restore + RECOVERY:
        return "recovering"
    return "complete"


def _stations(evidence: pd.DataFrame) -> list[dict[str, Any]]:
    out = station_summary(evidence)
    return [
        {
            "station": str(r.station),
            "findings": int(r.findings),
            "sessions": int(r.sessions),
            "kinds": str(r.kinds),
        }
        for r in out.itertuples(index=False)
    ]


def measure_logged(
    db: Session,
    activations: Sequence[DrActivation],
    now: datetime,
    tolerance_a: float = 1.0,
) -> list[dict[str, Any]]:
    """The report of each logged activation (none of them running).

    ``t_signal`` is the activation's start, ``t_clear`` its restore time; ``S`` is the sessions
    it curtailed that were charging at the signal according to their states. Non-responding
    findings use the curtailment limits and the profiles actually sent to the CPO as the
    ``profile_a`` in force at each state.

    Returns
    -------
    list of dict
        Per activation: the measured record (:meth:`ActivationResult.to_dict`) plus
        ``activation_id, signal_id, status, curtailed_sessions, unmeasured_sessions,
        price_eur_per_mwh, non_responding, stations``.
    """
    if not activations:
        return []
    curt, price = _activation_rows(db, activations)
    ids = sorted({c.session_id for cs in curt.values() for c in cs})
    lo = min(_utc(a.started_at) for a in activations) - MARGIN
    hi = max(_utc(a.restore_at) for a in activations) + MARGIN
    frame = states_frame(db, lo, hi, ids) if ids else pd.DataFrame()
    base: list[dict[str, Any]] = [
        {
            "activation_id": a.id,
            "signal_id": a.signal_id,
            "status": _status(a, now),
            "t_signal": iso(_utc(a.started_at).timestamp()),
            "t_clear": iso(_utc(a.restore_at).timestamp()),
            "curtailed_sessions": len(curt[a.id]),
            "price_eur_per_mwh": price[a.id],
        }
        for a in activations
    ]
    if frame.empty:
        for b in base:
            b.update(
                sessions=0,
                unmeasured_sessions=b["curtailed_sessions"],
                non_responding=[],
                stations=[],
                note="no meter states of the curtailed sessions around the activation",
            )
        return base
    sent = sent_profiles(db, ids, hi)
    windows: dict[str, list[tuple[float, float, float]]] = {}
    for cs in curt.values():
        for c in cs:
            windows.setdefault(c.session_id, []).append(
                (_utc(c.start).timestamp(), _utc(c.until).timestamp(), float(c.limit_a))
            )
    try:
        states = load_states(frame)
    except MeasurementError as exc:  # stored data is validated on the way in; be safe
        raise MeasureError(409, "states", f"stored states cannot be measured: {exc}") from None
    states["profile_a"] = profiles_at_states(states, sent, windows)
    t_sig = np.array([_utc(a.started_at).timestamp() for a in activations])
    t_clr = np.array([_utc(a.restore_at).timestamp() for a in activations])
    untils = [u for w in windows.values() for _, u, _ in w]
    rec = reconstruct(states, np.unique(np.r_[t_sig, t_clr, untils]))
    pos = {str(s): k for k, s in enumerate(rec.session_ids)}
    members = {
        str(a.id): np.array(
            sorted({pos[c.session_id] for c in curt[a.id] if c.session_id in pos}), dtype=int
        )
        for a in activations
    }
    table = pd.DataFrame(
        {
            "id": [str(a.id) for a in activations],
            "t_signal_s": t_sig,
            "t_clear_s": t_clr,
            "region": [""] * len(activations),
            "price_eur_per_mwh": [
                np.nan if price[a.id] is None else price[a.id] for a in activations
            ],
        }
    )
    evidence, _ = non_responding(states, rec, table, tolerance_a=tolerance_a, sessions=members)
    # each car's own maximum, need and the fleet's taper, from the states and the profiles sent
    cars = estimate_cars(states, rec, table)
    out = []
    for k, (a, b) in enumerate(zip(activations, base, strict=True)):
        p = price[a.id]
        res = measure_activation(
            rec,
            str(a.id),
            float(t_sig[k]),
            float(t_clr[k]),
            "",
            float("nan") if p is None else float(p),
            None,
            sessions=members[str(a.id)],
        )
        curtailed_ids = sorted({c.session_id for c in curt[a.id]})
        plan = plan_at_signal(curtailed_ids, sent, float(t_sig[k]), float(t_clr[k]))
        by_plan = plan_shifted(
            rec,
            float(t_sig[k]),
            float(t_clr[k]),
            plan,
            sessions=members[str(a.id)],
            cars=cars,
            price_eur_per_mwh=float("nan") if p is None else float(p),
        )
        if by_plan.without_plan < by_plan.sessions:  # some session had a profile: headline
            res = with_session_baseline(res, by_plan)
        record = res.to_dict()
        record["plan_baseline_kwh"] = round(by_plan.baseline_kwh, 6)
        record["plan_shifted_kwh"] = round(by_plan.shifted_kwh, 6)
        record["plan_sessions_without_plan"] = by_plan.without_plan
        record.pop("id", None)
        record.pop("region", None)
        curtailed = {c.session_id for c in curt[a.id]}
        mine = evidence[
            (evidence["activation"] == str(a.id))
            | ((evidence["kind"] == "exceeded_profile") & evidence["session_id"].isin(curtailed))
        ]
        b.update(record)
        b["t_signal"], b["t_clear"] = iso(t_sig[k]), iso(t_clr[k])
        b["unmeasured_sessions"] = b["curtailed_sessions"] - int(res.sessions)
        b["regions"] = sorted({c.region or "" for c in curt[a.id]})
        b["non_responding"] = mine.to_dict(orient="records")
        b["stations"] = _stations(mine)
        if b["status"] == "recovering":
            b["note"] = (
                "the recovery after the clear is not over: the report may change until "
                + iso((_utc(a.restore_at) + RECOVERY).timestamp())
            )
        out.append(b)
    return out


def activation_report(
    db: Session, activation_id: int, now: datetime, tolerance_a: float = 1.0
) -> dict[str, Any]:
    """The report of one logged activation.

    Raises
    ------
    MeasureError
        404 for an unknown activation, 409 while it is still running.
    """
    a = db.get(DrActivation, activation_id)
    if a is None:
        raise MeasureError(404, "activation_id", f"unknown activation {activation_id}")
    if _status(a, now) == "running":
        raise MeasureError(
            409,
            "activation_id",
            f"activation {activation_id} is still running until "
            f"{iso(_utc(a.restore_at).timestamp())}; measure it after the restore",
        )
    (report,) = measure_logged(db, [a], now, tolerance_a)
    return report


def day_bounds(day: str, tz: str) -> tuple[datetime, datetime]:
    """UTC start and end of the local day ``YYYY-MM-DD`` in ``tz``."""
    try:
        d = datetime.strptime(day, "%Y-%m-%d").date()
    except ValueError:
        raise MeasureError(422, "date", f"{day!r} is not YYYY-MM-DD") from None
    zone = ZoneInfo(tz)
    a = datetime.combine(d, dtime(0), zone).astimezone(UTC)
    b = datetime.combine(d + timedelta(days=1), dtime(0), zone).astimezone(UTC)
    return a, b


def day_report(
    db: Session, settings: Settings, day: str, now: datetime, tolerance_a: float = 1.0
) -> dict[str, Any]:
    """Every activation that started in the local day: each one's report (running ones are
    listed without one), the totals and the non-responding stations over the day."""
    a, b = day_bounds(day, settings.timezone)
    acts = list(
        db.scalars(
            select(DrActivation)
            .where(DrActivation.started_at >= a, DrActivation.started_at < b)
            .order_by(DrActivation.started_at, DrActivation.id)
        )
    )
    done = [x for x in acts if _status(x, now) != "running"]
    measured = {r["activation_id"]: r for r in measure_logged(db, done, now, tolerance_a)}
    reports = []
    for x in acts:
        if x.id in measured:
            reports.append(measured[x.id])
        else:
            reports.append(
                {
                    "activation_id": x.id,
                    "signal_id": x.signal_id,
                    "status": "running",
                    "t_signal": iso(_utc(x.started_at).timestamp()),
                    "t_clear": iso(_utc(x.restore_at).timestamp()),
                    "note": "still running; measured after the restore",
                }
            )
    rows = list(measured.values())
    evidence = pd.DataFrame(
        [f for r in rows for f in r.get("non_responding", [])],
        columns=[
            "kind",
            "activation",
            "session_id",
            "station",
            "timestamp",
            "current_a",
            "expected_max_a",
            "source",
        ],
    ).drop_duplicates(["kind", "activation", "session_id", "timestamp"])

    def total(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(float(sum(vals)), 6) if vals else None

    return {
        "date": day,
        "timezone": settings.timezone,
        "start": iso(a.timestamp()),
        "end": iso(b.timestamp()),
        "activations": reports,
        "totals": {
            "activations": len(acts),
            "measured": len(rows),
            "complete": all(r["status"] == "complete" for r in reports),
            "baseline_kwh": total("baseline_kwh"),
            "delivered_kwh": total("delivered_kwh"),
            "shifted_kwh": total("shifted_kwh"),
            "theoretical_min_kwh": total("theoretical_min_kwh"),
            "value_eur": total("value_eur"),
        },
        "stations": _stations(evidence),
    }


def erasable_report(
    db: Session, settings: Settings, start: datetime, end: datetime
) -> dict[str, Any]:
    """The flexibility curve from the stored states between ``start`` and ``end``: erasable
    power by local hour of day (mean, 10/50/90 % over the minutes of that hour) [kW].

    Raises
    ------
    MeasureError
        422 when ``end`` is not after ``start`` or the range is longer than
        :data:`MAX_ERASABLE_DAYS`.
    """
    if end <= start:
        raise MeasureError(422, "end", f"must be after start (got {end.isoformat()})")
    if end - start > timedelta(days=MAX_ERASABLE_DAYS):
        raise MeasureError(
            422, "start", f"range longer than {MAX_ERASABLE_DAYS} days (got {start.isoformat()})"
        )
    frame = states_frame(db, start, end)
    t0 = np.floor(_utc(start).timestamp() / 60.0) * 60.0
    t1 = np.ceil(_utc(end).timestamp() / 60.0) * 60.0
    hours: list[dict[str, Any]]
    sessions = 0
    if frame.empty:
        curve = pd.DataFrame(index=pd.RangeIndex(24, name="hour"))
        hours = [{"hour": h, "minutes": 0} for h in range(24)]
    else:
        try:
            states = load_states(frame)
        except MeasurementError as exc:
            raise MeasureError(409, "states", f"stored states cannot be measured: {exc}") from None
        rec = reconstruct(states)
        sessions = rec.n_sessions
        curve = erasable_by_hour(fleet_power(rec, t0, t1), settings.timezone)
        hours = []
        for h, r in curve.iterrows():
            n = 0 if pd.isna(r["minutes"]) else int(r["minutes"])
            row: dict[str, Any] = {"hour": int(str(h)), "minutes": n}
            for key in ("mean_kw", "p10_kw", "p50_kw", "p90_kw"):
                row[key] = None if n == 0 or pd.isna(r[key]) else round(float(r[key]), 3)
            hours.append(row)
    return {
        "start": iso(t0),
        "end": iso(t1),
        "timezone": settings.timezone,
        "sessions": sessions,
        "hours": hours,
    }

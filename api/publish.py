"""Re-optimise the live sessions and publish the charging profiles that changed.

One run (:func:`reoptimise`):

1. build the live scenario (:mod:`api.live`), parse and compile it;
2. solve with ``lp`` (time limit ``solver_time_limit_s``); the schedule is *publishable* when the
   independent checker finds no violation the schedule does not itself declare
   (:func:`optimizer.checker.explained` is empty) and its profiles can be emitted;
3. otherwise compute the greedy schedule and publish that, with status ``fallback`` and the
   reason (counted in ``FALLBACKS``; so is the solver's own built-in fallback);
4. if neither is publishable, publish nothing (``REJECTED_SCHEDULES``): the profiles published
   before stay in force, so a connector with a session keeps its last valid profile;
5. publish: a :class:`ScheduleRun` (``published`` set once every profile is written); for
   every session whose profile changed a :class:`ProfileChange` (the cursor) and the upserted
   :class:`Profile`; with ``cpo_url`` set an :class:`OutboxItem` per changed session, naming
   the profile by its cursor (the outbox worker composes the payload and supersedes the older
   pending items of the session, :mod:`api.outbox`). The profiles are written in short
   transactions of ``publish_chunk_sessions`` sessions, profiles that lower limits first
   (:func:`publish_in_chunks`), so that request handling is never kept waiting for the
   database's write lock for long. Sessions a demand-response curtailment holds at the time a
   chunk is written are left out (:mod:`api.dr`).

A profile *changed* when its limits from the new profile's start on differ from the published
one's (as piecewise-constant functions of absolute time, from the OCPI form), or it ends at
another time, or its ``min_charging_rate`` differs. The grid rolls forward every step, so the
published profile of an unchanged session keeps its older start; from now on it is identical.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.db import transaction, utcnow
from api.lease import LeaseClaim
from api.live import build_live_scenario, held_sessions
from api.metrics import (
    ACTIVE_SESSIONS,
    FALLBACKS,
    OUTBOX_DEPTH,
    PROFILE_LAG_SECONDS,
    REJECTED_SCHEDULES,
    SOLVE_SECONDS,
)
from api.models import OutboxItem, Profile, ProfileChange, ScheduleRun
from api.outbox import pending_count
from api.settings import Settings
from optimizer.checker import check_schedule, explained
from optimizer.emit import attach_profiles
from optimizer.engine import LiveEngine
from optimizer.network import Network, compile_network
from optimizer.profiles import ProfileError, ocpp_ids
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network

log = logging.getLogger(__name__)

FORMATS = ("ocpp16", "ocpp201", "ocpi")
PUBLISH_LOCK_ID = 0x6763_7075_626C
"""PostgreSQL advisory lock serialising publishers, so cursors commit in increasing order."""
IN_CHUNK = 500
"""Ids per ``IN (...)`` clause."""
PUBLISHING = "publishing"
"""Status of a run while its profiles are being written (its own status once all are)."""


@dataclass
class Choice:
    """The outcome of :func:`choose_schedule`.

    Attributes
    ----------
    schedule : dict or None
        The publishable schedule with ``profiles`` attached, or None when nothing passed.
    fallback : bool
        True when ``schedule`` is the greedy fallback (status ``fallback``).
    reason : str or None
        Why the LP result was not used (fallback), or why nothing was published.
    """

    schedule: dict[str, Any] | None
    fallback: bool
    reason: str | None


def problems(scenario: Mapping[str, Any], net: Network, schedule: dict[str, Any]) -> list[str]:
    """Why ``schedule`` may not be published (empty: publishable); attaches its profiles.

    A violation the checker finds is acceptable only when the schedule declares it in its own
    ``violations`` (limits that cannot all hold); then its profiles must be emittable.
    """
    found = check_schedule(scenario, schedule)
    bad = explained(found, schedule.get("violations") or [])
    if bad:
        shown = [f"{v.kind} {v.subject} step {v.step} by {v.amount:g} {v.unit}" for v in bad[:5]]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return [f"checker: {len(bad)} undeclared violation(s): {'; '.join(shown)}{more}"]
    try:
        attach_profiles(net, schedule, FORMATS)
    except ProfileError as exc:
        return [f"profiles: {exc}"]
    return []


_ENGINES: dict[tuple[Any, ...], LiveEngine] = {}
_ENGINES_LOCK = threading.Lock()


def live_engine(settings: Settings) -> LiveEngine:
    """The process's live engine for these settings (solver state kept between re-plans)."""
    key = (
        settings.database_url,
        settings.workers,
        settings.scheduler,
        settings.solver_time_limit_s,
    )
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = LiveEngine(
                workers=settings.workers,
                scheduler=settings.scheduler,
                time_limit_s=settings.solver_time_limit_s,
            )
        return engine


def solve_lp(net: Network, settings: Settings) -> dict[str, Any]:
    """The LP schedule: warm through the live engine, or a cold solve when it is switched off."""
    if settings.live_engine:
        return live_engine(settings).solve(net)
    return solve_network(
        net,
        "lp",
        time_limit_s=settings.solver_time_limit_s,
        workers=settings.workers,
        scheduler=settings.scheduler,
    )


def choose_schedule(scenario: Mapping[str, Any], net: Network, settings: Settings) -> Choice:
    """Solve with ``lp``; fall back to greedy when the LP result is not publishable."""
    reason: str | None
    try:
        lp = solve_lp(net, settings)
    except Exception as exc:  # any solver failure falls back; the reason records it
        log.exception("lp solve failed")
        reason = f"lp solve raised {type(exc).__name__}: {exc}"
    else:
        found = problems(scenario, net, lp)
        if not found:
            fell_back = lp["status"] == "fallback"
            return Choice(lp, fell_back, lp.get("reason") if fell_back else None)
        reason = f"the {lp['method']} schedule ({lp['status']}) was rejected: {found[0]}"
    greedy = solve_network(net, "greedy")
    found = problems(scenario, net, greedy)
    if not found:
        greedy["status"] = "fallback"
        greedy["reason"] = reason
        return Choice(greedy, True, reason)
    return Choice(None, False, f"{reason}; the greedy schedule was rejected too: {found[0]}")


def ocpi_segments(ocpi: Mapping[str, Any]) -> tuple[list[tuple[float, float]], float]:
    """An OCPI ChargingProfile as ``([(epoch_s start, limit), ...], epoch_s end)``."""
    t0 = datetime.fromisoformat(ocpi["start_date_time"]).timestamp()
    segments = [
        (t0 + float(p["start_period"]), float(p["limit"])) for p in ocpi["charging_profile_period"]
    ]
    return segments, t0 + float(ocpi["duration"])


def _from(segments: list[tuple[float, float]], t: float, end: float) -> list[tuple[float, float]]:
    """The segments restricted to ``[t, end)``, equal neighbours merged."""
    out: list[tuple[float, float]] = []
    for k, (s, limit) in enumerate(segments):
        nxt = segments[k + 1][0] if k + 1 < len(segments) else end
        if nxt <= t or s >= end:
            continue
        if out and out[-1][1] == limit:
            continue
        out.append((max(s, t), limit))
    return out


def same_from_start(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """True when ``old`` sets the same limits as ``new`` from ``new``'s start to its end."""
    if new.get("min_charging_rate") != old.get("min_charging_rate"):
        return False
    if new.get("charging_rate_unit") != old.get("charging_rate_unit"):
        return False
    n_seg, n_end = ocpi_segments(new)
    o_seg, o_end = ocpi_segments(old)
    start = n_seg[0][0]
    if o_end != n_end or o_seg[0][0] > start:
        return False
    return _from(o_seg, start, o_end) == _from(n_seg, start, n_end)


def step_limits_a(ocpi: Mapping[str, Any], step_s: int) -> list[float]:
    """The limit of every ``step_s`` step of an OCPI profile, from its start [A]."""
    periods = ocpi["charging_profile_period"]
    out: list[float] = []
    k = 0
    for j in range(int(ocpi["duration"]) // step_s):
        while k + 1 < len(periods) and periods[k + 1]["start_period"] <= j * step_s:
            k += 1
        out.append(float(periods[k]["limit"]))
    return out


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for k in range(0, len(ids), IN_CHUNK):
        yield ids[k : k + IN_CHUNK]


def _lock(db: Session) -> None:
    """Serialise publishers on PostgreSQL (SQLite has a single writer anyway)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PUBLISH_LOCK_ID})


def _changed(
    forms: Mapping[str, dict[str, Any]], current: Mapping[str, Profile | _Published]
) -> list[str]:
    """The sessions of ``forms`` whose profile differs from the published one (module doc)."""
    return [
        sid
        for sid in sorted(forms)
        if sid not in current
        or current[sid].cleared_at is not None  # a re-opened session (api/clearing.py)
        or not same_from_start(forms[sid]["ocpi"], current[sid].ocpi)
    ]


def publish_profiles(
    db: Session, run: ScheduleRun, schedule: dict[str, Any], settings: Settings
) -> list[str]:
    """Upsert the profiles of ``schedule`` that changed; returns their session ids.

    Runs inside the caller's transaction, after ``run`` was flushed (it needs ``run.id``).
    """
    forms: dict[str, dict[str, Any]] = schedule.get("profiles", {})
    current: dict[str, Profile] = {}
    for chunk in _chunks(sorted(forms)):
        for p in db.scalars(select(Profile).where(Profile.session_id.in_(chunk))):
            current[p.session_id] = p
    changed = _changed(forms, current)
    _write_profiles(db, run.id, run.step_s, forms, changed, current, settings)
    return changed


def _write_profiles(
    db: Session,
    run_id: int,
    step_s: int,
    forms: Mapping[str, dict[str, Any]],
    changed: list[str],
    current: Mapping[str, Profile],
    settings: Settings,
) -> None:
    """Write the cursors, profiles and outbox items of the ``changed`` sessions (``current``:
    their loaded :class:`Profile` rows, where they have one)."""
    if not changed:
        return
    changes = [ProfileChange(session_id=sid, run_id=run_id) for sid in changed]
    db.add_all(changes)
    db.flush()  # assigns the cursors
    now = utcnow()
    for change in changes:
        sid = change.session_id
        form = forms[sid]
        evse_id, n_phases = ocpp_ids(form, sid)
        values = {
            "cursor": change.cursor,
            "run_id": run_id,
            "limits_a": step_limits_a(form["ocpi"], step_s),
            "ocpi": form["ocpi"],
            "evse_id": evse_id,
            "n_phases": n_phases,
            "updated_at": now,
            "cleared_at": None,
        }
        row = current.get(sid)
        if row is None:
            db.add(Profile(session_id=sid, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)
    if settings.cpo_url:
        # the item names its profile by cursor; the worker composes the payload and supersedes
        # the older pending items of these sessions (api/outbox.py)
        db.add_all(
            OutboxItem(
                session_id=c.session_id,
                cursor=c.cursor,
                payload=None,
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
            for c in changes
        )


@dataclass(frozen=True)
class _Published:
    """What the comparison needs of a published profile (read before the chunks are written)."""

    ocpi: dict[str, Any]
    cleared_at: datetime | None


def raises_limit(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """True when the OCPI profile ``new`` allows more current than ``old`` at some time from
    ``new``'s start on. Where ``old`` is not in force (``old`` None: a session without a
    profile; before it begins or after it ends) the charger draws its maximum, which no
    profile raises.
    """
    if old is None:
        return False
    n_seg, n_end = ocpi_segments(new)
    o_seg, o_end = ocpi_segments(old)
    start = n_seg[0][0]
    if o_end < n_end:  # after the old profile ends the charger falls back to its maximum
        n_end = o_end
    n_from, o_from = _from(n_seg, start, n_end), _from(o_seg, start, n_end)
    if not n_from or not o_from:
        return False  # where no old profile is in force the charger is at its maximum
    cuts = sorted({t for t, _ in n_from} | {t for t, _ in o_from})
    i = j = 0
    for t in cuts:
        if t < o_from[0][0]:
            continue  # before the old profile begins: at its maximum
        while i + 1 < len(n_from) and n_from[i + 1][0] <= t:
            i += 1
        while j + 1 < len(o_from) and o_from[j + 1][0] <= t:
            j += 1
        if n_from[i][1] > o_from[j][1] + 1e-9:
            return True
    return False


def publish_in_chunks(
    factory: sessionmaker[Session],
    run: ScheduleRun,
    forms: Mapping[str, dict[str, Any]],
    settings: Settings,
    lease: LeaseClaim | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Publish the changed profiles of ``forms`` in transactions of at most
    ``settings.publish_chunk_sessions`` sessions; returns the ids published.

    Every profile written was checked with the whole schedule before (:func:`choose_schedule`),
    so a session always holds either its previous valid profile or its new one, never nothing.
    Sessions whose new profile lowers their limits (or that had none) are published before
    those whose limits rise, so that while old and new profiles are both in force, a shared limit
    sees the lower of the two sooner. Each chunk transaction:

    - renews the scheduler's lease when ``lease`` is given (a process that lost it publishes
      nothing more: :class:`api.lease.LeaseLost`);
    - takes the publishers' lock (PostgreSQL), so cursors commit in increasing order;
    - leaves out sessions a demand-response curtailment holds at that time (``now``, the run's
      time, plus the time spent publishing so far), and sessions whose profile was cleared (the
      session ended) since the comparison.

    Short transactions keep the database's write lock free for request handling. SQLite has
    one writer at a time, and a request that finds the lock taken waits by sleeping in growing
    steps (1, 2, 5, 10 ... ms): on SQLite each chunk is followed by a pause, so that the
    publisher holds the lock at most ``publish_write_share`` of the time (default a quarter: at
    500 updates per second the requests need the lock most of the time).
    """
    began_at, t_start = now or utcnow(), time.perf_counter()
    ids = sorted(forms)
    published: dict[str, _Published] = {}
    with factory() as db:
        for chunk in _chunks(ids):
            for sid, ocpi, cleared_at in db.execute(
                select(Profile.session_id, Profile.ocpi, Profile.cleared_at).where(
                    Profile.session_id.in_(chunk)
                )
            ):
                published[sid] = _Published(ocpi, cleared_at)
    changed = _changed(forms, published)
    order = sorted(
        changed,
        key=lambda sid: raises_limit(
            forms[sid]["ocpi"],
            published[sid].ocpi if sid in published and published[sid].cleared_at is None else None,
        ),
    )
    size = settings.publish_chunk_sessions
    bind = factory.kw.get("bind")
    single_writer = bind is not None and bind.dialect.name == "sqlite"
    wrote_s = longest_s = 0.0
    done: list[str] = []
    for k in range(0, len(order), size):
        if k and single_writer:  # hold SQLite's one write lock at most this share of the time
            time.sleep(wrote_s * (1.0 / settings.publish_write_share - 1.0))
        part = order[k : k + size]
        began = time.perf_counter()
        with transaction(factory) as db:
            _lock(db)
            # a write first: on SQLite the transaction then holds the write lock before it
            # reads (a read snapshot could not be upgraded once another process wrote)
            db.execute(
                update(ScheduleRun)
                .where(ScheduleRun.id == run.id)
                .values(time_s=round(time.perf_counter() - t_start, 4))
                .execution_options(synchronize_session=False)
            )
            if lease is not None:
                lease.confirm(db)
            held = held_sessions(db, began_at + timedelta(seconds=time.perf_counter() - t_start))
            rows = {
                p.session_id: p
                for p in db.scalars(select(Profile).where(Profile.session_id.in_(part)))
            }
            keep = [
                sid
                for sid in part
                if sid not in held
                and not (
                    sid in rows
                    and rows[sid].cleared_at is not None
                    and (sid not in published or published[sid].cleared_at is None)
                )
            ]
            _write_profiles(db, run.id, run.step_s, forms, sorted(keep), rows, settings)
        wrote_s = time.perf_counter() - began
        longest_s = max(longest_s, wrote_s)
        done.extend(keep)
    if order:
        log.info(
            "published %d profile(s) in %d transaction(s), the longest %.1f ms",
            len(done),
            -(-len(order) // size),
            1000 * longest_s,
        )
    return sorted(done)


def _root_power(schedule: Mapping[str, Any], scenario: Mapping[str, Any]) -> dict[str, list[float]]:
    roots = [n["id"] for n in scenario["nodes"] if n.get("parent") is None]
    nodes = schedule.get("nodes", {})
    return {r: list(nodes[r]["power_kw"]) for r in roots if r in nodes}


def update_gauges(factory: sessionmaker[Session]) -> None:
    """``PROFILE_LAG_SECONDS`` (age of the newest published run) and ``OUTBOX_DEPTH``."""
    with factory() as db:
        newest = db.scalar(
            select(func.max(ScheduleRun.created_at)).where(ScheduleRun.published.is_(True))
        )
        depth = pending_count(db)
    if newest is not None:
        PROFILE_LAG_SECONDS.set(max((utcnow() - newest).total_seconds(), 0.0))
    OUTBOX_DEPTH.set(depth)


def reoptimise(
    factory: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    lease: LeaseClaim | None = None,
) -> ScheduleRun:
    """Schedule the live sessions at ``now`` and publish what changed (see the module doc).

    Parameters
    ----------
    factory : sessionmaker
        Database sessions.
    settings : Settings
        Grid, solver, CPO and outbox settings.
    now : datetime, optional
        Aware time of the run (default: the current time); only the grid depends on it.
    lease : LeaseClaim, optional
        The scheduler's lease this run works under: every write renews it, and a run whose
        process lost it stops publishing (:class:`api.lease.LeaseLost`).

    Returns
    -------
    ScheduleRun
        The stored run; ``published`` is False when no schedule passed the checker (or the run
        was cut short while publishing).

    Raises
    ------
    optimizer.errors.ScenarioError
        The live data does not form a valid scenario (nothing is published).
    api.lease.LeaseLost
        ``lease`` was lost; the profiles published before stay in force.
    """
    t0 = time.perf_counter()
    now = now or utcnow()
    with factory() as db:
        scenario = build_live_scenario(db, settings, now)
    ACTIVE_SESSIONS.set(len(scenario["sessions"]))
    net = compile_network(parse_scenario(scenario))
    choice = choose_schedule(scenario, net, settings)
    schedule = choice.schedule
    grid_start = datetime.fromisoformat(scenario["grid"]["start"])
    with transaction(factory) as db:
        if lease is not None:
            lease.confirm(db)
        run = ScheduleRun(
            grid_start=grid_start,
            step_s=settings.step_s,
            steps=settings.horizon_steps,
            status=PUBLISHING if schedule else "rejected",
            method=schedule["method"] if schedule else "none",
            objective=(schedule.get("solver") or {}).get("objective") if schedule else None,
            reason=choice.reason,
            sessions=len(scenario["sessions"]),
            violations=len(schedule["violations"]) if schedule else 0,
            published=False,
            kpis=schedule["kpis"] if schedule else {},
            region_power_kw=_root_power(schedule, scenario) if schedule else {},
        )
        db.add(run)
    changed: list[str] = []
    if schedule is not None:
        forms = schedule.get("profiles", {})
        changed = publish_in_chunks(factory, run, forms, settings, lease, now)
        run.status, run.published = schedule["status"], True
    run.time_s = round(time.perf_counter() - t0, 4)
    with transaction(factory) as db:
        if lease is not None:
            lease.confirm(db)
        db.execute(
            update(ScheduleRun)
            .where(ScheduleRun.id == run.id)
            .values(status=run.status, published=run.published, time_s=run.time_s)
            .execution_options(synchronize_session=False)
        )
    elapsed = time.perf_counter() - t0
    SOLVE_SECONDS.observe(elapsed)
    if schedule is None:
        REJECTED_SCHEDULES.inc()
        log.error("run %s published nothing: %s", run.id, choice.reason)
    elif choice.fallback:
        FALLBACKS.inc()
        log.warning("run %s published the greedy fallback: %s", run.id, choice.reason)
    log.info(
        "run %s: %s sessions, %s, %d profile(s) changed in %.2f s",
        run.id,
        run.sessions,
        run.status,
        len(changed),
        elapsed,
    )
    update_gauges(factory)
    return run

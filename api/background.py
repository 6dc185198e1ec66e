"""Background loops of the service: the scheduler (re-optimise on events and periodically) and
the outbox worker (:mod:`api.outbox`). Both are daemon threads with ``stop()``; with
``scheduler_process`` (the default) the scheduler thread has each run done by a child process
at lower CPU priority (:class:`ChildScheduler`).

Of all the processes sharing a database (``gridcharge serve --workers N``, several hosts), only
the holder of the scheduler lease (:mod:`api.lease`) re-optimises; the others pass the events
they see on to it through the lease row."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.db import make_engine, make_sessionmaker, transaction, utcnow
from api.events import Events
from api.lease import SCHEDULER_LEASE, LeaseClaim, LeaseKeeper, signal
from api.metrics import ACTIVE_SESSIONS, FALLBACKS, REJECTED_SCHEDULES, SOLVE_SECONDS
from api.outbox import OutboxWorker
from api.publish import reoptimise, update_gauges
from api.published import Follower
from api.settings import Settings

log = logging.getLogger(__name__)

TICK_S = 0.5
"""Longest sleep of the scheduler between two looks at its stop flag [s]."""


class SchedulerLoop:
    """Re-optimise when something changed, debounced, and at least every ``reschedule_every_s``.

    - At start it runs once (profiles may be stale after a restart).
    - After an event it waits until ``debounce_s`` passed without a further event (but no
      longer than ``reschedule_every_s`` in all, so a stream of events cannot starve it), drains
      the events and runs.
    - Without events it runs ``reschedule_every_s`` after the end of the previous run.
    - An exception is logged and the loop goes on; the next run is then the periodic one (or
      the next event).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        events: Events,
        after_run: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        lease: LeaseKeeper | None = None,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.events = events
        self.after_run = after_run
        self.clock = clock
        self.lease = lease
        self.runs = 0
        self.errors = 0
        self.skipped = 0
        self.run_lock = threading.Lock()
        """Held by every run of this process (the loop's and ``POST /v1/schedule-runs``)."""
        self._stop = threading.Event()
        self.child = ChildScheduler(settings) if settings.scheduler_in_child else None
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> SchedulerLoop:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        if self.child is not None:
            self.child.close()
        if self.lease is not None:
            self.lease.stop()

    def run_once(self) -> None:
        """One re-optimisation (only while this process holds the lease, when it has one);
        failures are logged, never raised."""
        if self.lease is not None and not self.lease.held:
            self.skipped += 1
            return
        claim = self.lease.claim() if self.lease is not None else None
        try:
            with self.run_lock:
                if self.child is not None:
                    self.child.reoptimise(self.clock(), self._stop, claim)
                    update_gauges(self.factory)
                else:
                    reoptimise(self.factory, self.settings, self.clock(), claim)
            self.runs += 1
        except Exception:
            self.errors += 1
            log.exception("re-optimisation failed; the loop goes on")
        if self.after_run is not None:
            try:
                self.after_run()
            except Exception:
                log.exception("after-run hook failed")

    def _debounce(self) -> None:
        """Wait until ``debounce_s`` passed since the last event (at most the period)."""
        begun = time.monotonic()
        while not self._stop.is_set():
            quiet_for = time.monotonic() - self.events.last_event
            waited = time.monotonic() - begun
            left = min(
                self.settings.debounce_s - quiet_for, self.settings.reschedule_every_s - waited
            )
            if left <= 0:
                return
            self._stop.wait(min(left, TICK_S))

    def _relay(self) -> bool:
        """Pass this process's events to the lease holder when it is another process; True
        when this process is not the holder (it then does not run)."""
        if self.lease is None or self.lease.held:
            return False
        if self.events.drain():
            try:
                with transaction(self.factory) as db:
                    signal(db, self.lease.name, self.clock())
            except Exception:
                log.exception("could not signal the scheduler's lease holder")
        return True

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            if self._relay():
                self._stop.wait(TICK_S)
                due = time.monotonic()  # run at once when the lease comes to this process
                continue
            wait_s = due - time.monotonic()
            if wait_s > 0 and not self.events.wait(min(wait_s, TICK_S)):
                continue
            if self._stop.is_set():
                break
            if time.monotonic() < due:  # woken by an event
                self._debounce()
                if self._stop.is_set():
                    break
            kinds = self.events.drain()
            if kinds:
                log.info("re-optimising after %s", dict(kinds))
            self.run_once()
            due = time.monotonic() + self.settings.reschedule_every_s


def _child_main(conn: Connection, settings_json: str) -> None:
    """The child process of :class:`ChildScheduler`: one :func:`reoptimise` per request
    ``(now, lease claim or None)``, at ``scheduler_nice`` lower CPU priority."""
    settings = Settings.model_validate_json(settings_json)
    if settings.scheduler_nice and hasattr(os, "nice"):
        os.nice(settings.scheduler_nice)
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    try:
        while True:
            try:
                now, claim = conn.recv()
            except EOFError:
                return
            try:
                run = reoptimise(factory, settings, now, claim)
                conn.send(
                    {
                        "published": run.published,
                        "status": run.status,
                        "sessions": run.sessions,
                        "time_s": run.time_s,
                    }
                )
            except Exception as exc:
                log.exception("re-optimisation failed in the scheduler process")
                conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        engine.dispose()


class ChildScheduler:
    """Runs :func:`api.publish.reoptimise` in a child process (spawned on first use, restarted
    if it dies), so that building, solving and checking a large schedule never holds the
    interpreter lock of the process that answers requests. The metrics of a run are recorded in
    this process from the child's answer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None

    def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            self.close()
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            fields = self.settings.model_dump(mode="json")
            if self.settings.token_secret is not None:  # dumped masked: pass the value itself
                fields["token_secret"] = self.settings.token_secret.get_secret_value()
            settings_json = json.dumps(fields)
            proc = ctx.Process(
                target=_child_main,
                args=(child, settings_json),
                name="gridcharge-scheduler",
                daemon=True,
            )
            proc.start()
            child.close()
            self._proc, self._conn = proc, parent
        return self._conn

    def reoptimise(
        self, now: datetime, stop: threading.Event, lease: LeaseClaim | None = None
    ) -> dict[str, Any]:
        """One run at ``now`` (under ``lease``, when given); returns the child's summary.

        Raises
        ------
        RuntimeError
            The run failed in the child, the child died, or ``stop`` was set meanwhile.
        """
        conn = self._ensure()
        conn.send((now, lease))
        while not conn.poll(TICK_S):
            if stop.is_set():
                raise RuntimeError("stopped while re-optimising")
            if self._proc is None or not self._proc.is_alive():
                raise RuntimeError("the scheduler process died")
        try:
            answer: dict[str, Any] = conn.recv()
        except EOFError:
            raise RuntimeError("the scheduler process died") from None
        if "error" in answer:
            raise RuntimeError(f"re-optimisation failed: {answer['error']}")
        SOLVE_SECONDS.observe(float(answer["time_s"]))
        ACTIVE_SESSIONS.set(int(answer["sessions"]))
        if not answer["published"]:
            REJECTED_SCHEDULES.inc()
        elif answer["status"] == "fallback":
            FALLBACKS.inc()
        return answer

    def close(self) -> None:
        """Stop the child process (it holds no state: a run cut short published nothing)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join(10)
            self._proc = None


def start_loops(app: Any, settings: Settings) -> list[Any]:
    """Start the scheduler, (with ``cpo_url``) the outbox worker, the restore loop and the
    follower of the published profiles (:mod:`api.published`); returns them (``.stop()``)."""
    factory: sessionmaker[Session] = app.state.sessionmaker
    events: Events = app.state.events
    loops: list[Any] = []
    outbox: OutboxWorker | None = None
    if settings.cpo_url:
        outbox = OutboxWorker(factory, settings).start()
    lease = LeaseKeeper(
        factory,
        SCHEDULER_LEASE,
        settings.scheduler_lease_ttl_s,
        on_signal=lambda: events.notify("other process"),
    ).start()
    scheduler = SchedulerLoop(
        factory,
        settings,
        events,
        after_run=outbox.wake if outbox is not None else None,
        lease=lease,
    ).start()
    app.state.scheduler_loop = scheduler  # POST /v1/schedule-runs runs under its lease
    loops.append(scheduler)
    if outbox is not None:
        loops.append(outbox)
    from api.dr import RestoreLoop  # demand response: restore at the settlement-period end

    loops.append(RestoreLoop(factory, settings, lease=lease).start())
    published = getattr(app.state, "published", None)
    if published is not None:  # the activation's published profiles, kept flattened
        loops.append(Follower(published, factory).start())
    return loops

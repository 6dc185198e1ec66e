"""Background loops of the service: the scheduler (re-optimise on events and periodically) and
the outbox worker (:mod:`api.outbox`). Both are daemon threads with ``stop()``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.db import utcnow
from api.events import Events
from api.outbox import OutboxWorker
from api.publish import reoptimise
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
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.events = events
        self.after_run = after_run
        self.clock = clock
        self.runs = 0
        self.errors = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> SchedulerLoop:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    def run_once(self) -> None:
        """One re-optimisation; failures are logged, never raised."""
        try:
            reoptimise(self.factory, self.settings, self.clock())
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

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
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


def start_loops(app: Any, settings: Settings) -> list[Any]:
    """Start the scheduler and (with ``cpo_url``) the outbox worker; returns them (``.stop()``)."""
    factory: sessionmaker[Session] = app.state.sessionmaker
    events: Events = app.state.events
    loops: list[Any] = []
    outbox: OutboxWorker | None = None
    if settings.cpo_url:
        outbox = OutboxWorker(factory, settings).start()
    scheduler = SchedulerLoop(
        factory, settings, events, after_run=outbox.wake if outbox is not None else None
    ).start()
    loops.append(scheduler)
    if outbox is not None:
        loops.append(outbox)
    from api.dr import RestoreLoop  # demand response: restore at the settlement-period end

    loops.append(RestoreLoop(factory, settings).start())
    return loops

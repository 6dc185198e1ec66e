"""Leases: exactly one of the service's processes runs a deployment-wide task.

``gridcharge serve --workers N`` starts N processes, and several ``serve`` instances may share
one PostgreSQL database; each would start its own background scheduler and re-plan the same
sessions N times over. A named row of the ``leases`` table elects one holder instead:

- **Acquire / renew** is one conditional ``UPDATE``: the row is taken when its holder is the
  caller or its ``expires_at`` has passed, and then expires ``ttl_s`` later. Both databases
  apply it atomically (PostgreSQL re-checks the condition on the row a concurrent update
  committed; SQLite has one writer at a time), so two processes never both succeed while the
  lease is valid. Times are the processes' own UTC clocks: hosts sharing a database need
  synchronised clocks (NTP); the TTL is the margin.
- **Fencing.** The holder renews the lease inside every transaction that publishes a plan
  (:func:`confirm`): a holder that lost the lease (stalled longer than the TTL, say) cannot
  publish any more, even if it did not notice yet.
- **Signals.** The processes that do not hold the lease still receive the requests that should
  wake the scheduler; they set ``signalled_at``, which the holder polls (:meth:`LeaseKeeper.poll`).
- A holder that stops releases its lease (``expires_at`` in the past); one killed lets it expire
  after at most ``ttl_s``, or at once for a process of the same host and PID namespace (a
  restart after ``kill -9``): the holder name says where it runs, and a process that no longer
  exists holds nothing (:func:`is_dead`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, case, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db import transaction, utcnow
from api.models_lease import Lease

log = logging.getLogger(__name__)

SCHEDULER_LEASE = "scheduler"
"""The lease of the background scheduler."""


class LeaseLost(RuntimeError):
    """The caller no longer holds the lease it works under (another process took it over)."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"lease {name!r}: no longer held by {holder}")
        self.name = name
        self.holder = holder


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[inode]``), or ``-`` where it cannot be read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def holder_id() -> str:
    """A holder name unique to this process: ``host|pid namespace|pid|random``."""
    return f"{socket.gethostname()}|{_pid_namespace()}|{os.getpid()}|{secrets.token_hex(4)}"


def is_dead(holder: str) -> bool:
    """True when ``holder`` names a process of this host and PID namespace that no longer runs
    (a holder killed before it could release its lease); False when unknown."""
    parts = holder.split("|")
    if len(parts) != 4 or parts[0] != socket.gethostname() or parts[1] != _pid_namespace():
        return False
    if parts[1] == "-" or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _table() -> Table:
    return cast(Table, Lease.__table__)


def _ensure_row(db: Session, name: str, now: datetime) -> None:
    """Insert the lease row (expired, no holder) unless it exists."""
    t = _table()
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(t)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(t)
    db.execute(
        stmt.values(name=name, holder="", expires_at=now, acquired_at=now).on_conflict_do_nothing(
            index_elements=["name"]
        )
    )


def try_acquire(db: Session, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
    """Take or renew lease ``name`` for ``holder`` until ``now + ttl_s``; False when another
    holder's lease is still valid. Runs in the caller's transaction.

    Raises
    ------
    ValueError
        ``ttl_s`` is not positive.
    """
    if ttl_s <= 0:
        raise ValueError(f"ttl_s: must be > 0 (got {ttl_s})")
    _ensure_row(db, name, now)
    t = _table()
    took: CursorResult[Any] = db.execute(  # type: ignore[assignment]
        update(t)
        .where(t.c.name == name, (t.c.holder == holder) | (t.c.expires_at <= now))
        .values(
            holder=holder,
            expires_at=now + timedelta(seconds=ttl_s),
            acquired_at=case((t.c.holder == holder, t.c.acquired_at), else_=now),
        )
        .execution_options(synchronize_session=False)
    )
    return bool(took.rowcount == 1)


def take_from_dead(db: Session, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
    """Take lease ``name`` from a holder that :func:`is_dead` (one atomic compare-and-set on
    that holder); True when taken."""
    t = _table()
    row = db.execute(select(t.c.holder, t.c.expires_at).where(t.c.name == name)).first()
    if row is None or row.expires_at <= now or not is_dead(row.holder):
        return False
    took: CursorResult[Any] = db.execute(  # type: ignore[assignment]
        update(t)
        .where(t.c.name == name, t.c.holder == row.holder)
        .values(holder=holder, expires_at=now + timedelta(seconds=ttl_s), acquired_at=now)
        .execution_options(synchronize_session=False)
    )
    if took.rowcount == 1:
        log.warning("lease %r taken from %s, which no longer runs", name, row.holder)
    return bool(took.rowcount == 1)


def confirm(db: Session, name: str, holder: str, ttl_s: float, now: datetime) -> None:
    """Renew lease ``name`` inside the caller's transaction, which then commits only under a
    valid lease (fencing).

    Raises
    ------
    LeaseLost
        ``holder`` does not hold the lease (or it expired).
    """
    t = _table()
    renewed: CursorResult[Any] = db.execute(  # type: ignore[assignment]
        update(t)
        .where(t.c.name == name, t.c.holder == holder, t.c.expires_at > now)
        .values(expires_at=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    if renewed.rowcount != 1:
        raise LeaseLost(name, holder)


def release(db: Session, name: str, holder: str, now: datetime) -> None:
    """Give the lease up at once (only when ``holder`` holds it)."""
    t = _table()
    db.execute(
        update(t)
        .where(t.c.name == name, t.c.holder == holder)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )


def signal(db: Session, name: str, now: datetime) -> None:
    """Ask the holder of ``name`` to act (it sees ``signalled_at`` change)."""
    t = _table()
    _ensure_row(db, name, now)
    db.execute(
        update(t)
        .where(t.c.name == name)
        .values(signalled_at=now)
        .execution_options(synchronize_session=False)
    )


def current_holder(db: Session, name: str, now: datetime) -> str | None:
    """The holder of a valid lease ``name``, or None."""
    t = _table()
    row = db.execute(select(t.c.holder, t.c.expires_at).where(t.c.name == name)).first()
    if row is None or not row.holder or row.expires_at <= now:
        return None
    return str(row.holder)


@dataclass(frozen=True)
class LeaseClaim:
    """The lease a piece of work runs under (it may cross processes: plain data)."""

    name: str
    holder: str
    ttl_s: float

    def confirm(self, db: Session) -> None:
        """:func:`confirm` this lease in ``db``'s transaction."""
        confirm(db, self.name, self.holder, self.ttl_s, utcnow())


class LeaseKeeper:
    """Keeps trying to hold lease ``name`` for this process, renewing it every ``ttl_s / 3``.

    :attr:`held` is True while the last successful renewal is younger than ``ttl_s / 2`` (so the
    process stops acting well before another one could take over). The keeper also relays the
    signals of the other processes (:func:`signal`) to ``on_signal`` while it holds the lease.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        name: str,
        ttl_s: float,
        holder: str | None = None,
        on_signal: Callable[[], None] | None = None,
        poll_s: float = 0.5,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0 (got {ttl_s})")
        self.factory = factory
        self.name = name
        self.ttl_s = ttl_s
        self.holder = holder or holder_id()
        self.on_signal = on_signal
        self.poll_s = poll_s
        self.clock = clock
        self._renewed_at: float | None = None
        self._seen_signal: datetime | None = None
        self._primed = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"lease-{name}", daemon=True)

    @property
    def held(self) -> bool:
        """Whether this process may act as the holder now."""
        import time

        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and time.monotonic() - renewed < self.ttl_s / 2

    def renew(self) -> bool:
        """One attempt to take or renew the lease; True when held afterwards."""
        import time

        began = time.monotonic()
        try:
            with transaction(self.factory) as db:
                now = self.clock()
                ok = try_acquire(db, self.name, self.holder, self.ttl_s, now) or take_from_dead(
                    db, self.name, self.holder, self.ttl_s, now
                )
        except Exception:
            log.exception("lease %r: renewal failed", self.name)
            ok = False
        with self._lock:
            was = self._renewed_at is not None
            self._renewed_at = began if ok else None
        if ok and not was:
            log.info("lease %r taken by %s", self.name, self.holder)
        elif was and not ok:
            log.warning("lease %r lost by %s", self.name, self.holder)
        return ok

    def poll(self) -> None:
        """Relay a ``signalled_at`` newer than the one seen before to ``on_signal`` (holder
        only; a signal from before this process held the lease is covered by its first run)."""
        if self.on_signal is None or not self.held:
            self._primed = False
            return
        t = _table()
        with self.factory() as db:
            seen = db.scalar(select(t.c.signalled_at).where(t.c.name == self.name))
        newer = seen is not None and (self._seen_signal is None or seen > self._seen_signal)
        if newer:
            self._seen_signal = seen
        if newer and self._primed:
            self.on_signal()
        self._primed = True

    def claim(self) -> LeaseClaim:
        """The claim work done under this keeper's lease confirms (:meth:`LeaseClaim.confirm`)."""
        return LeaseClaim(self.name, self.holder, self.ttl_s)

    def start(self) -> LeaseKeeper:
        self.renew()
        self.thread.start()
        return self

    def _run(self) -> None:
        import time

        next_renew = time.monotonic() + self.ttl_s / 3
        while not self._stop.wait(self.poll_s):
            if time.monotonic() >= next_renew:
                self.renew()
                next_renew = time.monotonic() + self.ttl_s / 3
            try:
                self.poll()
            except Exception:
                log.exception("lease %r: polling signals failed", self.name)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop renewing and release the lease."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        with self._lock:
            had = self._renewed_at is not None
            self._renewed_at = None
        if had:
            try:
                with transaction(self.factory) as db:
                    release(db, self.name, self.holder, self.clock())
            except Exception:
                log.exception("lease %r: release failed", self.name)

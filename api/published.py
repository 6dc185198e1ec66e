"""The published profiles kept flattened in memory, by session and cursor
(``docs/demand-response.md``, "How it is written fast").

An activation needs the published OCPI profile of every session it curtails: the curtailment
runs at the minimum until the restore time and then goes on with the published limits. Reading
13,000 of them as JSON and decoding and flattening them costs a few hundred milliseconds of the
service's CPU, inside the request. :class:`PublishedProfiles` keeps them flattened
(:class:`api.dr_batch.Flat`) per session, with the cursor of the row they were read from:

- :meth:`PublishedProfiles.follow` reads the rows above the highest cursor it has seen, in a
  transaction of its own, so the cache only ever holds committed rows. The service calls it at
  start and then every :data:`FOLLOW_EVERY_S` seconds in a background thread
  (:class:`Follower`), off the request path.
- :meth:`PublishedProfiles.lookup`, inside the activation's transaction, reads the cursor of
  every session's row and takes the cached profile only where the cursor is the same; every
  other profile (published since, or never seen) is read and decoded there as before. A profile
  is never rewritten under its cursor (every publication and every clearing gives it a new
  one, and the cursors of committed rows are never handed out again), so a cursor that matches
  names the same profile, and the result is the same as reading everything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import Text, case, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session, sessionmaker

from api.bulk import dumps, loads
from api.dr_batch import Flat, Published, flatten, published_from_dicts, published_from_flat
from api.models import Profile

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 1.0
"""Pause of :class:`Follower` between two reads of the new profiles [s]."""

FOLLOW_BATCH = 4096
"""Rows per read of :meth:`PublishedProfiles.follow`."""

IN_CHUNK = 500
"""Ids per ``IN (...)`` clause."""


def decode_profiles(texts: Sequence[str | None]) -> list[dict[str, Any] | None]:
    """Decoded JSON of ``texts`` (None stays None); each distinct text is decoded once, all of
    them in one call of the decoder."""
    distinct = list(dict.fromkeys(t for t in texts if t is not None))
    if not distinct:
        return [None] * len(texts)
    try:
        values = orjson.loads("[" + ",".join(distinct) + "]")
    except orjson.JSONDecodeError:  # NaN/Infinity written by the standard library
        values = [loads(t) for t in distinct]
    by_text = dict(zip(distinct, values, strict=True))
    return [None if t is None else by_text[t] for t in texts]


def _rows(db: Session, columns: tuple[Any, ...], ids: list[str]) -> Iterable[Any]:
    """``columns`` of the ``profiles`` rows of ``ids``: one scan when they are most of the
    table, ``IN (...)`` lookups otherwise."""
    conn = db.connection()  # rows as tuples: the ORM's result machinery is not needed
    if len(ids) > IN_CHUNK * 4:
        wanted = set(ids)
        return (r for r in conn.execute(select(Profile.session_id, *columns)) if r[0] in wanted)
    return (
        r
        for k in range(0, len(ids), IN_CHUNK)
        for r in conn.execute(
            select(Profile.session_id, *columns).where(
                Profile.session_id.in_(ids[k : k + IN_CHUNK])
            )
        )
    )


_TEXT = sql_cast(Profile.ocpi, Text)
"""The stored OCPI text, not decoded by the driver."""


def _text(value: Any) -> str:
    """The OCPI text of a row (PostgreSQL's driver may hand back decoded JSON, which is encoded
    again; identical profiles then give identical text)."""
    return value if isinstance(value, str) else dumps(value)


def published_ocpi_texts(db: Session, ids: list[str]) -> dict[str, str]:
    """The published OCPI profiles of ``ids`` as stored JSON text."""
    return {sid: _text(t) for sid, t in _rows(db, (_TEXT,), ids)}


_UNREADABLE = object()
"""What :func:`_flatten_texts` gives for a text that is not a profile it can flatten."""


def _flatten_texts(texts: list[str]) -> list[Flat | object | None]:
    """:func:`api.dr_batch.flatten` of the decoded ``texts``; a text that cannot be decoded or
    flattened gives :data:`_UNREADABLE` (logged) instead of stopping the others."""
    try:
        return list(flatten(decode_profiles(texts)))
    except Exception:  # one bad row: flatten them one by one
        out: list[Flat | object | None] = []
        for text in texts:
            try:
                out.extend(flatten(decode_profiles([text])))
            except Exception as exc:
                log.warning("a published profile is not kept in memory: %r", exc)
                out.append(_UNREADABLE)
        return out


class PublishedProfiles:
    """Flattened published profiles of one database, by session, with their cursors."""

    def __init__(self) -> None:
        self._by_session: dict[str, tuple[int, Flat | None]] = {}
        self._cursor = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_session)

    @property
    def cursor(self) -> int:
        """The highest cursor read by :meth:`follow`."""
        return self._cursor

    def follow(self, factory: sessionmaker[Session]) -> int:
        """Read the profiles published (or cleared) since the last call, in a transaction of
        its own; returns how many rows were read. A cleared profile leaves the cache."""
        read = 0
        with self._lock:  # one follower at a time; lookups do not wait for it
            while True:
                q = select(Profile.session_id, Profile.cursor, _TEXT, Profile.cleared_at).where(
                    Profile.cursor > self._cursor
                )
                if not self._by_session:  # nothing to remove: the cleared ones are not read
                    q = q.where(Profile.cleared_at.is_(None))
                with factory() as db:
                    rows = (
                        db.connection()
                        .execute(q.order_by(Profile.cursor).limit(FOLLOW_BATCH))
                        .all()
                    )
                if not rows:
                    return read
                live = [r for r in rows if r[3] is None]
                flat = _flatten_texts([_text(r[2]) for r in live])
                by_session = self._by_session
                for r in rows:
                    if r[3] is not None:
                        by_session.pop(r[0], None)
                for r, f in zip(live, flat, strict=True):
                    if f is _UNREADABLE:  # not kept: the activation reads it (and fails as before)
                        by_session.pop(r[0], None)
                    else:
                        by_session[r[0]] = (int(r[1]), cast(Flat | None, f))
                self._cursor = max(self._cursor, int(rows[-1][1]))
                read += len(rows)
                if len(rows) < FOLLOW_BATCH:
                    return read

    def lookup(self, db: Session, ids: list[str]) -> Found:
        """The published profiles of ``ids`` as read in ``db``'s transaction: flattened from
        the cache where the cursor matches, as text otherwise. One scan: the text comes only
        with the rows above the follower's cursor; a row below it that the cache does not hold
        under its cursor (committed after the follower passed it) is read in a second query."""
        seen = self._cursor  # before the cache: whatever is above it is read with its text
        cached = self._by_session  # read without the lock: a dict lookup is atomic
        found = Found({}, {})
        late: list[str] = []
        newer = case((Profile.cursor > seen, _TEXT), else_=None)
        for sid, cursor, text in _rows(db, (Profile.cursor, newer), ids):
            hit = cached.get(sid)
            if hit is not None and hit[0] == cursor:
                found.flat[sid] = hit[1]
            elif text is not None:
                found.texts[sid] = _text(text)
            else:
                late.append(sid)
        if late:
            found.texts.update(published_ocpi_texts(db, late))
        return found


@dataclass
class Found:
    """Published profiles by session: ``flat`` from the cache, ``texts`` as read (decoded by
    :meth:`published`, chunk by chunk, in the activation's render thread)."""

    flat: dict[str, Flat | None]
    texts: dict[str, str]

    def published(self, ids: Sequence[str]) -> Published:
        """The profiles of ``ids``, in that order (none where a session has none)."""
        flat, texts = self.flat, self.texts
        if not any(s in flat for s in ids):  # nothing cached: decoded and flattened at once
            return published_from_dicts(decode_profiles([texts.get(s) for s in ids]))
        read = [s for s in ids if s in texts]
        decoded = dict(zip(read, flatten(decode_profiles([texts[s] for s in read])), strict=True))
        return published_from_flat([flat[s] if s in flat else decoded.get(s) for s in ids])


class Follower:
    """Background thread calling :meth:`PublishedProfiles.follow` every ``every_s`` seconds
    (errors are logged and the next round tries again)."""

    def __init__(
        self,
        published: PublishedProfiles,
        factory: sessionmaker[Session],
        every_s: float = FOLLOW_EVERY_S,
    ) -> None:
        self.published = published
        self.factory = factory
        self.every_s = every_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="published-follower", daemon=True)

    def start(self) -> Follower:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self.thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.published.follow(self.factory)
            except Exception:  # the database may be away for a while
                log.exception("reading the published profiles failed")

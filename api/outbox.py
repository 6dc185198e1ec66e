"""Push published profiles to the CPO (OCPI 2.2.1 SetChargingProfile) from a durable outbox.

Every changed profile becomes an :class:`~api.models.OutboxItem` in the same transaction that
publishes it (:mod:`api.publish`), so nothing is lost when the CPO is down or this process dies:
the item stays ``pending`` in the database until it is delivered.

States of an item:

| status | meaning |
|---|---|
| ``pending`` | to be pushed at ``next_attempt_at`` (new, or waiting to retry) |
| ``sent`` | the CPO answered ``ACCEPTED``; its asynchronous result is awaited |
| ``accepted`` / ``rejected`` | the CPO's result arrived on ``response_url`` (``result`` keeps it) |
| ``superseded`` | a newer profile of the session came first, or the session ended |
| ``failed`` | a round of ``outbox_max_attempts`` pushes failed; rests until ``next_attempt_at`` |
| ``abandoned`` | ``outbox_max_rounds`` rounds failed: no more attempts |
| ``no_result`` | sent, but no asynchronous result within ``outbox_result_timeout_s`` |

A push is ``PUT {cpo_url}/{session_id}`` with the JSON payload ``{charging_profile,
response_url}`` and ``Authorization: Token {cpo_token}``. It succeeds on a 2xx answer with OCPI
``status_code`` 1000 and ``data.result`` ``ACCEPTED``. Any other answer or a connection error
counts as a failed attempt: the retry waits ``outbox_backoff_s · 2^(attempts − 1)`` (capped at
:data:`MAX_BACKOFF_S`), ``attempts`` counting this failure.

A ``failed`` item is not dropped (:func:`maintain`): after ``outbox_failed_retry_s`` it becomes
``pending`` for another round of attempts, and at once when a push to the CPO succeeds again
(the CPO is back). Only the newest item of a session is retried; an older one is
``superseded``. After ``outbox_max_rounds`` rounds it is ``abandoned`` (``OUTBOX_ABANDONED``).
Re-queued items are counted in ``OUTBOX_REQUEUED{why=rested|cpo_back}``.

A ``sent`` item waits for the CPO's ``ChargingProfileResult`` on its ``response_url``; when none
arrived ``outbox_result_timeout_s`` after the push it becomes ``no_result``
(``OUTBOX_RESULT_TIMEOUTS``), so an operator sees profiles whose application is unconfirmed. A
result that arrives later is still stored and sets the final status.

**The item refers to its profile.** A publisher writes the item without its payload (``payload``
null): the item's ``cursor`` names the published profile (``profiles.cursor``), whose OCPI form
is the ``charging_profile``. The payload is composed when the item is claimed for its first push
(``{"charging_profile": <the profile's OCPI form>, "response_url": "<public_url>/v1/profiles/
results/<id>"}``) and stored in the item then, so the item keeps what was sent. A demand-response
activation thus writes each profile body once, not twice.

**Supersession is decided by cursor.** A pending item is out of date when its session's profile
has a higher cursor than the item (a newer profile was published, or the session ended and its
profile was cleared): :func:`stale_pending`. Publishers do not update older items (an activation
would rewrite thousands of rows in its transaction); the worker marks them ``superseded`` before
it pushes anything (:func:`maintain`, one statement), and :func:`claim_due` checks the item it
claims again, so an out-of-date item is never sent. ``OUTBOX_DEPTH`` counts the pending items
that are not out of date.

A worker *claims* an item right before pushing it by moving its ``next_attempt_at`` a lease
(:data:`LEASE_S`) ahead, in a transaction that skips rows another worker holds (PostgreSQL
``FOR UPDATE SKIP LOCKED``). If the process dies mid-push, the item is due again when the lease
ends. The outcome is written only while the item is still ``pending``, so a result that arrived
first, or a newer profile that superseded the item, is never overwritten.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from api.db import transaction, utcnow
from api.metrics import OUTBOX_ABANDONED, OUTBOX_DEPTH, OUTBOX_REQUEUED, OUTBOX_RESULT_TIMEOUTS
from api.models import OutboxItem, Profile
from api.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
"""Longest wait between two attempts [s]."""
LEASE_S = 20.0
"""How long a claimed item is hidden from other workers while it is pushed [s]; longer than a
push can take (:data:`HTTP_TIMEOUT_S`), so two workers never push one item at once."""
HTTP_TIMEOUT_S = 10.0
"""Connect/read timeout of a push [s]."""
POLL_S = 1.0
"""Longest sleep of the worker between two looks at the outbox [s]."""

RESULT_STATUS = {"ACCEPTED": "accepted", "REJECTED": "rejected", "UNKNOWN": "rejected"}
"""Item status for each OCPI ChargingProfileResultType (UNKNOWN: the CPO found no session to
apply it to, so the profile is not in force)."""


def backoff_s(attempts: int, base_s: float) -> float:
    """Wait after the ``attempts``-th failed attempt: ``base_s · 2^(attempts − 1)``, ≤ 300 s."""
    return float(min(base_s * 2.0 ** max(attempts - 1, 0), MAX_BACKOFF_S))


def stale_pending() -> ColumnElement[bool]:
    """SQL condition: the item's session has a profile newer than the item (its cursor is
    higher), so the item must never be sent. Items of a session without a profile row are not
    judged by it."""
    return exists(
        select(Profile.cursor).where(
            Profile.session_id == OutboxItem.session_id, Profile.cursor > OutboxItem.cursor
        )
    )


def compose_payload(ocpi: dict[str, Any], item_id: int, public_url: str) -> dict[str, Any]:
    """The body of the push: OCPI ``SetChargingProfile`` with the item's ``response_url``."""
    return {
        "charging_profile": ocpi,
        "response_url": f"{public_url.rstrip('/')}/v1/profiles/results/{item_id}",
    }


@dataclass(frozen=True)
class Claimed:
    id: int
    session_id: str
    payload: dict[str, Any]
    attempts: int


def claim_due(
    factory: sessionmaker[Session],
    due_at: datetime,
    lease_until: datetime,
    public_url: str,
) -> Claimed | None:
    """Claim the oldest pending item due at ``due_at``: hide it until ``lease_until``.

    An item that is out of date (:func:`stale_pending`) is marked ``superseded`` instead and the
    next one is looked at. An item without its payload gets it now from the profile it names
    (``public_url``: this service's base URL, for the ``response_url``); an item whose profile
    is gone is superseded too (nothing to send)."""
    with transaction(factory) as db:
        while True:
            row = db.scalars(
                select(OutboxItem)
                .where(OutboxItem.status == "pending", OutboxItem.next_attempt_at <= due_at)
                .order_by(OutboxItem.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            profile = db.execute(
                select(Profile.cursor, Profile.ocpi, Profile.cleared_at).where(
                    Profile.session_id == row.session_id
                )
            ).first()
            newer = profile is not None and profile.cursor > row.cursor
            payload = row.payload
            reason = None
            if payload is None and not newer:
                if profile is not None and profile.cursor == row.cursor and not profile.cleared_at:
                    payload = compose_payload(profile.ocpi, row.id, public_url)
                else:
                    reason = f"profile of cursor {row.cursor} is no longer stored"
            if newer or payload is None:
                row.status = "superseded"
                row.updated_at = utcnow()
                row.last_error = reason
                continue
            row.payload = payload
            row.next_attempt_at = lease_until
            return Claimed(row.id, row.session_id, dict(payload), row.attempts)


def judge(response: httpx.Response) -> str | None:
    """None when the CPO accepted the command, else why not."""
    if not response.is_success:
        return f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} with a body that is not JSON"
    if not isinstance(body, dict):
        return "answer is not an OCPI response object"
    if body.get("status_code") != 1000:
        return f"OCPI status_code {body.get('status_code')!r}: {body.get('status_message', '')}"
    data = body.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if result != "ACCEPTED":
        return f"ChargingProfileResponse result {result!r}"
    return None


def push(client: httpx.Client, settings: Settings, item: Claimed) -> str | None:
    """PUT one item to the CPO; None on success, else the error."""
    assert settings.cpo_url is not None
    url = f"{settings.cpo_url.rstrip('/')}/{quote(item.session_id, safe='')}"
    headers = {"Authorization": f"Token {settings.cpo_token}"} if settings.cpo_token else {}
    try:
        response = client.put(url, json=item.payload, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return judge(response)


def record(
    factory: sessionmaker[Session],
    settings: Settings,
    item: Claimed,
    error: str | None,
    now: datetime,
) -> str | None:
    """Store the outcome of a push if the item is still pending; returns the new status."""
    if error is None:
        values: dict[str, Any] = {"status": "sent", "attempts": item.attempts + 1}
        values["last_error"] = None
    else:
        attempts = item.attempts + 1
        if attempts >= settings.outbox_max_attempts * settings.outbox_max_rounds:
            status, wait_s = "abandoned", 0.0
        elif attempts % settings.outbox_max_attempts == 0:  # the round ends: rest
            status, wait_s = "failed", settings.outbox_failed_retry_s
        else:
            status, wait_s = "pending", backoff_s(attempts, settings.outbox_backoff_s)
        values = {
            "status": status,
            "attempts": attempts,
            "last_error": error[:2000],
            "next_attempt_at": now + timedelta(seconds=wait_s),
        }
    with transaction(factory) as db:
        done = db.execute(
            update(OutboxItem)
            .where(OutboxItem.id == item.id, OutboxItem.status == "pending")
            .values(**values, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    if not done.rowcount:  # type: ignore[attr-defined]
        return None
    if values["status"] == "abandoned":
        OUTBOX_ABANDONED.inc()
    return str(values["status"])


def maintain(
    factory: sessionmaker[Session], settings: Settings, now: datetime, cpo_back: bool = False
) -> tuple[int, int]:
    """Re-queue failed items and time out sent ones (see the module doc), in one transaction.

    Parameters
    ----------
    now : datetime
        Aware current time.
    cpo_back : bool
        A push just succeeded: re-queue every failed item now, rested or not.

    Returns
    -------
    (requeued, timed_out) : tuple of int
    """
    o = aliased(OutboxItem)
    newer = select(o.id).where(o.session_id == OutboxItem.session_id, o.id > OutboxItem.id)
    with transaction(factory) as db:
        # a pending item whose session has a newer profile: superseded before anything is sent
        db.execute(
            update(OutboxItem)
            .where(OutboxItem.status == "pending", stale_pending())
            .values(status="superseded", updated_at=now)
            .execution_options(synchronize_session=False)
        )
        # an item older than another of its session is out of date: never retried
        db.execute(
            update(OutboxItem)
            .where(OutboxItem.status == "failed", exists(newer) | stale_pending())
            .values(status="superseded", updated_at=now)
            .execution_options(synchronize_session=False)
        )
        due = OutboxItem.status == "failed"
        if not cpo_back:
            due = due & (OutboxItem.next_attempt_at <= now)
        requeued = db.execute(
            update(OutboxItem)
            .where(due)
            .values(status="pending", next_attempt_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        cutoff = now - timedelta(seconds=settings.outbox_result_timeout_s)
        timed_out = db.execute(
            update(OutboxItem)
            .where(OutboxItem.status == "sent", OutboxItem.updated_at <= cutoff)
            .values(
                status="no_result",
                updated_at=now,
                last_error=f"no ChargingProfileResult within "
                f"{settings.outbox_result_timeout_s:g} s",
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    if requeued:
        OUTBOX_REQUEUED.labels(why="cpo_back" if cpo_back else "rested").inc(requeued)
        log.info("outbox: %d failed item(s) re-queued", requeued)
    if timed_out:
        OUTBOX_RESULT_TIMEOUTS.inc(timed_out)
        log.warning("outbox: %d sent item(s) got no result in time", timed_out)
    return int(requeued), int(timed_out)


def pending_count(db: Session) -> int:
    """Pending items that are not out of date (:func:`stale_pending`): what is left to push."""
    q = select(func.count()).where(OutboxItem.status == "pending", ~stale_pending())
    return int(db.scalar(q) or 0)


def outbox_depth(factory: sessionmaker[Session]) -> int:
    """Pending items left to push (also sets ``OUTBOX_DEPTH``)."""
    with factory() as db:
        depth = pending_count(db)
    OUTBOX_DEPTH.set(depth)
    return depth


def push_due(
    factory: sessionmaker[Session],
    settings: Settings,
    client: httpx.Client,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Push, one by one, the items that are due at ``now`` (default: the current time) when the
    call starts; returns how many were tried. Retries fall due later, in another call. First
    :func:`maintain`; after the first successful push, the failed items are re-queued at once.

    ``now`` also stands for the current time in the leases and retry times (tests pass it).
    """
    if not settings.cpo_url:
        return 0
    due_at = now or utcnow()
    maintain(factory, settings, due_at)
    tried = 0
    requeue_on_success = True
    while stop is None or not stop.is_set():
        lease_until = (now or utcnow()) + timedelta(seconds=LEASE_S)
        item = claim_due(factory, due_at, lease_until, settings.public_url)
        if item is None:
            break
        error = push(client, settings, item)
        status = record(factory, settings, item, error, now or utcnow())
        if error:
            log.warning("push of outbox item %s failed (%s): %s", item.id, status, error)
        elif requeue_on_success:
            # the CPO answers again: what failed while it was down goes out in this call
            requeue_on_success = False
            maintain(factory, settings, now or utcnow(), cpo_back=True)
        tried += 1
    return tried


def store_result(db: Session, item_id: int, body: dict[str, Any]) -> OutboxItem | None:
    """Store the CPO's asynchronous result of item ``item_id``; None when there is no such item.

    Raises
    ------
    ValueError
        ``body.result`` is not ``ACCEPTED``, ``REJECTED`` or ``UNKNOWN``.
    """
    result = body.get("result")
    if result not in RESULT_STATUS:
        raise ValueError(f"result: must be one of {', '.join(RESULT_STATUS)} (got {result!r})")
    item = db.get(OutboxItem, item_id)
    if item is None:
        return None
    item.result = body
    if item.status != "superseded":
        item.status = RESULT_STATUS[result]
    item.updated_at = utcnow()
    return item


class OutboxWorker:
    """A daemon thread that pushes due items; :meth:`wake` makes it look at once."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.poll_s = min(POLL_S, settings.outbox_backoff_s)
        self.thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> OutboxWorker:
        self.thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    def _run(self) -> None:
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
            while not self._stop.is_set():
                try:
                    push_due(self.factory, self.settings, client, stop=self._stop)
                    outbox_depth(self.factory)
                except Exception:  # the loop must survive a database or network hiccup
                    log.exception("outbox round failed")
                self._wake.wait(self.poll_s)
                self._wake.clear()

"""Ended sessions leave the profile feed: their published profile is *cleared*.

When a session ends (OCPI status ``COMPLETED``/``INVALID`` or an ``end_date_time``), the PUT or
PATCH that ends it also, in the same transaction (:func:`clear_ended_profile`):

1. gives the session's profile a new cursor (a :class:`~api.models.ProfileChange` row) and sets
   its ``cleared_at``, so ``GET /v1/profiles?changed_since=…`` reports it once more, now as
   ``cleared`` (with the OCPP ``ClearChargingProfile`` forms), and a poller learns that the
   profile is no longer in force;
2. supersedes the session's outbox items that were not pushed yet (``pending``, or ``failed``
   and waiting for another round): a
   ``SetChargingProfile`` for a session that has ended would only be answered
   ``UNKNOWN_SESSION``.

No ``ClearProfile`` (OCPI 2.2.1 ``DELETE {cpo_url}/{session_id}``) is pushed: an OCPI charging
profile is bound to its session, and the CPO (and the charger, for a ``TxProfile``) drops it
when the session ends; the CPO is the one that told us it ended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.orm import Session

from api.models import OutboxItem, Profile, ProfileChange

PUBLISH_LOCK_ID = 0x6763_7075_626C
"""The advisory lock of :mod:`api.publish`: cursors commit in increasing order on PostgreSQL."""

_P = cast(Table, Profile.__table__)
_O = cast(Table, OutboxItem.__table__)
_PROFILE = select(_P.c.run_id, _P.c.cleared_at).where(_P.c.session_id == bindparam("b_id"))
_CLEAR = (
    update(_P)
    .where(_P.c.session_id == bindparam("b_id"))
    .values(
        cursor=bindparam("b_cursor"), cleared_at=bindparam("b_now"), updated_at=bindparam("b_now")
    )
)
_SUPERSEDE = (
    update(_O)
    .where(_O.c.session_id == bindparam("b_id"), _O.c.status.in_(("pending", "failed")))
    .values(status="superseded", updated_at=bindparam("b_now"), last_error="the session ended")
)


def clear_ended_profile(db: Session, session_id: str, now: datetime) -> int | None:
    """Clear the published profile of an ended session (see the module doc).

    Parameters
    ----------
    db : Session
        In the transaction that ended the session; the caller commits.
    session_id : str
        The session that ended.
    now : datetime
        Aware time of the clearing.

    Returns
    -------
    int or None
        The new cursor, or None when the session has no profile or it was cleared before
        (idempotent: a repeated or stale update of an ended session changes nothing).
    """
    conn = db.connection()
    row = conn.execute(_PROFILE, {"b_id": session_id}).first()
    if row is None or row.cleared_at is not None:
        return None
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PUBLISH_LOCK_ID})
    change = ProfileChange(session_id=session_id, run_id=row.run_id, created_at=now)
    db.add(change)
    db.flush()  # assigns the cursor
    conn.execute(_CLEAR, {"b_id": session_id, "b_cursor": change.cursor, "b_now": now})
    conn.execute(_SUPERSEDE, {"b_id": session_id, "b_now": now})
    return int(change.cursor)


def clear_forms(ocpp16: dict[str, Any], ocpp201: dict[str, Any]) -> dict[str, Any]:
    """The OCPP commands that remove a cleared profile from the charger: OCPP 1.6
    ``ClearChargingProfile.req`` and OCPP 2.0.1 ``ClearChargingProfileRequest``, by the id the
    profile was set with."""
    id16 = (ocpp16.get("csChargingProfiles") or {}).get("chargingProfileId")
    id201 = (ocpp201.get("chargingProfile") or {}).get("id")
    return {
        "ocpp16": {"id": id16, "connectorId": ocpp16.get("connectorId")},
        "ocpp201": {"chargingProfileId": id201},
    }

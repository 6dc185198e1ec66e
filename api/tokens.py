"""Token uids (RFID cards, app ids) are stored only as a keyed hash.

``token_hash = HMAC-SHA-256(key, sha256_hex(uid.upper()))``: the uid is upper-cased first (an
OCPI CiString is case-insensitive). Without the key, a leaked database does not let anyone test
candidate uids (short RFID uids could otherwise be found by brute force). The inner SHA-256 is
the scheme stored before (unkeyed), so existing hashes are re-keyed in place at the first start
(:func:`rekey_stored_hashes`) and the sessions of one token stay linked for forecasting.

The key is ``GRIDCHARGE_TOKEN_SECRET`` when set (keep it in a secret store; then it is not in
the database). Otherwise one is generated at the first start and kept in the ``settings`` table,
so that every worker, every restart and every host of the deployment uses the same. A
fingerprint of the key in use (never the key) is stored with the hashes; a start with another
key is refused (:class:`TokenKeyMismatch`), because every stored hash would silently stop
matching. The key is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db import transaction
from api.models import ChargingSession, Setting
from api.settings import Settings

log = logging.getLogger(__name__)

SECRET_KEY = "token_secret"
"""``settings`` row of a generated key (64 hex digits, used as text like a configured one)."""
SCHEME_KEY = "token_hash_scheme"
"""``settings`` row naming the scheme and the key fingerprint of the stored hashes."""
SCHEME = "hmac-sha256(sha256(upper(uid)))/1"
IN_CHUNK = 500


class TokenKeyMismatch(RuntimeError):
    """The configured key is not the one the stored token hashes were made with."""

    def __init__(self, stored: str, configured: str) -> None:
        super().__init__(
            "token_secret: the stored token hashes were made with another key (fingerprint "
            f"{stored}, configured {configured}); set GRIDCHARGE_TOKEN_SECRET back to that key"
        )
        self.stored = stored
        self.configured = configured


def unkeyed_hash(uid: str) -> str:
    """The inner, unkeyed hash: SHA-256 of the upper-cased uid (hex)."""
    return hashlib.sha256(uid.upper().encode("utf-8")).hexdigest()


def keyed(key: bytes, inner: str) -> str:
    """HMAC-SHA-256 of an inner hash under ``key`` (hex)."""
    return hmac.new(key, inner.encode("ascii"), hashlib.sha256).hexdigest()


def token_hash(uid: str, key: bytes) -> str:
    """The stored form of token ``uid`` under ``key`` (module doc)."""
    return keyed(key, unkeyed_hash(uid))


def fingerprint(key: bytes) -> str:
    """A short, non-secret identifier of ``key`` (first 16 hex digits of an HMAC)."""
    return hmac.new(key, b"gridcharge token key fingerprint", hashlib.sha256).hexdigest()[:16]


def _insert_if_absent(db: Session, key: str, value: Any) -> bool:
    """Insert a ``settings`` row unless one exists; True when this call inserted it."""
    table = cast(Table, Setting.__table__)
    if db.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table)
    inserted = db.execute(
        stmt.values(key=key, value=value)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(table.c.key)
    ).first()
    return inserted is not None


def token_key(factory: sessionmaker[Session], settings: Settings) -> bytes:
    """The key of this deployment: ``settings.token_secret``, else the generated one kept in
    the database (generated now if there is none; concurrent first starts agree on one)."""
    if settings.token_secret is not None:
        return settings.token_secret.get_secret_value().encode("utf-8")
    with transaction(factory) as db:
        if _insert_if_absent(db, SECRET_KEY, secrets.token_hex(32)):
            log.info("generated the token hashing key (kept in the database)")
    with factory() as db:
        stored = db.get(Setting, SECRET_KEY)
        assert stored is not None
        return str(stored.value).encode("utf-8")  # as a configured secret: the text's bytes


def rekey_stored_hashes(factory: sessionmaker[Session], key: bytes) -> int:
    """Bring the stored token hashes to the keyed scheme under ``key`` (once per database, in
    one transaction); returns the number of sessions re-keyed (0 when already done).

    Raises
    ------
    TokenKeyMismatch
        The hashes were made with another key.
    """
    mark = {"scheme": SCHEME, "key": fingerprint(key)}
    with transaction(factory) as db:
        if not _insert_if_absent(db, SCHEME_KEY, mark):
            stored = db.get(Setting, SCHEME_KEY)
            found = dict(stored.value) if stored is not None else {}
            if found.get("key") != mark["key"]:
                raise TokenKeyMismatch(str(found.get("key")), mark["key"])
            return 0
        t = cast(Table, ChargingSession.__table__)
        rows = db.execute(select(t.c.id, t.c.token_hash).where(t.c.token_hash.is_not(None))).all()
        for k in range(0, len(rows), IN_CHUNK):
            db.execute(
                update(t)
                .where(t.c.id == bindparam("b_id"))
                .values(token_hash=bindparam("b_hash"))
                .execution_options(synchronize_session=False),
                [{"b_id": sid, "b_hash": keyed(key, old)} for sid, old in rows[k : k + IN_CHUNK]],
            )
    if rows:
        log.info("re-keyed the token hashes of %d session(s)", len(rows))
    return len(rows)

"""API keys and roles.

A key is 32 random bytes (URL-safe text) shown once at creation; only its SHA-256 is stored,
which is enough for a secret of that entropy: a 256-bit random key cannot be found from its hash,
so a per-install HMAC secret ("pepper") would add nothing but a way to lock every key out when
that secret is lost (README, "The service"). Roles:

| role | may |
|---|---|
| ``csms`` | send OCPI sessions and states, read profiles, schedule scenarios |
| ``dso`` | submit and read DSO profiles and compliance for its own regions only |
| ``operator`` | manage topology, read everything operational, relay demand response |
| ``data-scientist`` | train, evaluate and promote forecasting models |
| ``brp`` | send demand-response signals (not relay them) |
| ``admin`` | everything |
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import ApiKey

ROLES = ("csms", "dso", "operator", "data-scientist", "brp", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, role and (for a DSO) the regions it may act on."""

    key_id: int
    prefix: str
    role: str
    regions: tuple[str, ...]

    def may_act_on_region(self, region: str) -> bool:
        if self.role in ("admin", "operator"):
            return True
        return self.role == "dso" and region in self.regions


def create_key(
    session: Session, role: str, regions: list[str] | None = None, label: str = ""
) -> str:
    """Store a new key and return it (the only time it is visible).

    Raises
    ------
    ValueError
        For an unknown role, or a DSO key without a region.
    """
    if role not in ROLES:
        raise ValueError(f"role: unknown role {role!r} (choose from {', '.join(ROLES)})")
    regions = sorted(set(regions or []))
    if role == "dso" and not regions:
        raise ValueError("region: a dso key needs at least one --region")
    key = "gc_" + secrets.token_urlsafe(32)
    session.add(
        ApiKey(key_hash=hash_key(key), prefix=key[:10], role=role, regions=regions, label=label)
    )
    return key


def lookup(session: Session, key: str) -> Principal | None:
    row = session.scalars(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return Principal(row.id, row.prefix, row.role, tuple(row.regions or ()))

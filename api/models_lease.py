"""Table of the leases that elect one holder of a deployment-wide task among the service's
processes (``api/lease.py``): the background scheduler runs in exactly one of them.

The schema is created by migration ``0006_leases``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, utcnow


class Lease(Base):
    """One named lease: held by ``holder`` (``host:pid:random``) until ``expires_at``.

    A holder renews it before it expires; another process may take it only once it expired.
    """

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # set by the processes that do not hold the lease to wake its holder (api/lease.py)
    signalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

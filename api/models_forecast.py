"""Tables of the forecasting registry: model versions (with their skops bytes, stored in the
database so every worker and a PostgreSQL deployment see the same files) and promotions.

The schema is created by migration ``0003_forecast_registry``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, utcnow


class ForecastModelVersion(Base):
    """One trained (or training) departure/energy model version.

    ``status``: ``queued`` → ``running`` → ``ready`` | ``failed``. ``worker`` names the process
    training it (``host:pid:start time``). ``model`` holds the skops
    file and ``model_sha256`` its SHA-256: bytes that do not match are refused when loaded.
    """

    __tablename__ = "forecast_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(200))
    region: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    n_sessions: Mapped[int] = mapped_column(Integer, default=0)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ForecastPromotion(Base):
    """A model promoted for ``scope`` (a region id, or ``global``). The one in service for a
    scope is its newest promotion not retired; a rollback retires it, so the one before
    serves again."""

    __tablename__ = "forecast_promotions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(200), index=True)
    version_id: Mapped[int] = mapped_column(Integer)
    promoted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_by: Mapped[str] = mapped_column(String(200), default="")
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retired_by: Mapped[str | None] = mapped_column(String(200), nullable=True)

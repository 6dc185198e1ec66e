"""forecast registry: model versions and promotions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import api.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecast_models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("region", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("n_sessions", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("model", sa.LargeBinary(), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("forecast_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_forecast_models_created_at"), ["created_at"])
        batch_op.create_index(batch_op.f("ix_forecast_models_status"), ["status"])

    op.create_table(
        "forecast_promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("promoted_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("promoted_by", sa.String(length=200), nullable=False),
        sa.Column("retired_at", api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("retired_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("forecast_promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_forecast_promotions_scope"), ["scope"])


def downgrade() -> None:
    with op.batch_alter_table("forecast_promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_forecast_promotions_scope"))
    op.drop_table("forecast_promotions")
    with op.batch_alter_table("forecast_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_forecast_models_status"))
        batch_op.drop_index(batch_op.f("ix_forecast_models_created_at"))
    op.drop_table("forecast_models")

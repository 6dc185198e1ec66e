"""PostgreSQL: LZ4 compression for the large JSON texts of profiles and outbox items

A demand-response activation rewrites the profile of every curtailed session (three JSON forms
and the step limits) and queues an outbox item for each: for 16,000 sessions some tens of MB of
JSON in one transaction. Values over about 2 kB are compressed by PostgreSQL on the way in;
LZ4 does that several times faster than the default pglz. Nothing changes for readers (the
column type and the values are the same). Only on PostgreSQL 14 or newer built with LZ4; on
other servers and on SQLite this migration does nothing. Only values written afterwards are
compressed with LZ4.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 04:00:00
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = {
    "profiles": ("limits_a", "ocpi", "ocpp16", "ocpp201"),
    "outbox": ("payload",),
}


def _set(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if int(bind.execute(text("SHOW server_version_num")).scalar_one()) < 140000:
        return
    try:
        with bind.begin_nested():
            for table, columns in COLUMNS.items():
                for col in columns:
                    op.execute(f'ALTER TABLE {table} ALTER COLUMN "{col}" SET COMPRESSION {method}')
    except DBAPIError:  # a server built without LZ4 keeps its default
        return


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("pglz")

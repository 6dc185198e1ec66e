"""outbox items name their profile by cursor; the payload is composed when an item is claimed

An outbox item is written without its payload (``payload`` null): its ``cursor`` names the
session's published profile, whose OCPI form is the ``charging_profile`` of the push. The outbox
worker composes the payload when it claims the item for its first push and stores it then
(``api/outbox.py``). Existing items keep their payloads; nothing else changes for them.

Revision ID: 0007_outbox_by_cursor
Revises: 0006
Create Date: 2026-11-26 06:30:00
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op

revision = "0007_outbox_by_cursor"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("payload", existing_type=sa.JSON(), nullable=True)


def downgrade() -> None:
    # an item that was never claimed gets the payload it would have been sent with: the OCPI
    # form of the profile it names and its response_url (base URL from GRIDCHARGE_PUBLIC_URL,
    # as the service reads it); an item whose profile moved on is out of date: superseded
    base = os.environ.get("GRIDCHARGE_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
    url = "/v1/profiles/results/"
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text(
                "UPDATE outbox o SET payload = json_build_object('charging_profile', p.ocpi, "
                "'response_url', :base || o.id) FROM profiles p "
                "WHERE o.payload IS NULL AND p.session_id = o.session_id AND p.cursor = o.cursor"
            ),
            {"base": base + url},
        )
    else:
        bind.execute(
            sa.text(
                "UPDATE outbox SET payload = (SELECT json_object('charging_profile', "
                "json(p.ocpi), 'response_url', :base || outbox.id) FROM profiles p "
                "WHERE p.session_id = outbox.session_id AND p.cursor = outbox.cursor) "
                "WHERE payload IS NULL"
            ),
            {"base": base + url},
        )
    op.execute(
        "UPDATE outbox SET status = 'superseded', payload = '{}' "
        "WHERE payload IS NULL OR payload::text = 'null'"
        if bind.dialect.name == "postgresql"
        else "UPDATE outbox SET status = 'superseded', payload = '{}' "
        "WHERE payload IS NULL OR payload = 'null'"
    )
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("payload", existing_type=sa.JSON(), nullable=False)

"""profile storage: outbox items name their profile by cursor; profile texts as text on PostgreSQL

1. An outbox item is written without its payload (``payload`` null): its ``cursor`` names the
   session's published profile, whose OCPI form is the ``charging_profile`` of the push. The
   outbox worker composes the payload when it claims the item for its first push and stores it
   then (``api/outbox.py``). Existing items keep their payloads.
2. PostgreSQL: the JSON texts of ``profiles`` (``limits_a``, ``ocpi``, ``ocpp16``,
   ``ocpp201``) become ``text`` holding the same JSON (``api.db.JSONText``): the server no
   longer parses every text on the way in only to check it. ``json`` to ``text`` keeps every
   stored text as it is; LZ4 compression (migration 0005) is set again where available.
   SQLite stores JSON as text anyway: nothing changes there.

Revision ID: 0007_profile_storage
Revises: 0006
Create Date: 2026-11-26 06:30:00
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0007_profile_storage"
down_revision = "0006"
branch_labels = None
depends_on = None


PROFILE_TEXTS = ("limits_a", "ocpi", "ocpp16", "ocpp201")


def _profile_texts(sql_type: str) -> None:
    """PostgreSQL: the profile texts to ``sql_type`` (one rewrite at most), LZ4 kept."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE profiles "
        + ", ".join(
            f'ALTER COLUMN "{c}" TYPE {sql_type} USING "{c}"::{sql_type}' for c in PROFILE_TEXTS
        )
    )
    if int(bind.execute(sa.text("SHOW server_version_num")).scalar_one()) < 140000:
        return
    try:
        with bind.begin_nested():
            op.execute(
                "ALTER TABLE profiles "
                + ", ".join(f'ALTER COLUMN "{c}" SET COMPRESSION lz4' for c in PROFILE_TEXTS)
            )
    except DBAPIError:  # a server built without LZ4 keeps its default
        return


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("payload", existing_type=sa.JSON(), nullable=True)
    _profile_texts("text")


def downgrade() -> None:
    _profile_texts("json")
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

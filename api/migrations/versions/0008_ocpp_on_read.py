"""OCPP forms derived on read; indexes that no query used

1. ``profiles`` keeps the OCPI form and ``limits_a`` and gains ``evse_id`` and ``n_phases``;
   the OCPP 1.6 and 2.0.1 forms (``ocpp16``, ``ocpp201``) are no longer stored but derived when
   read (:func:`optimizer.profiles.ocpp_forms`): they repeat the OCPI schedule with the
   session's ids, two thirds of the text written per profile. The upgrade takes the two ids
   from each stored OCPP 1.6 form and first checks, row by row, that the forms derived from
   them are the stored ones; a row where they differ stops the upgrade before anything changes,
   naming the session. The downgrade writes the derived forms back.
2. ``ix_profile_changes_session_id`` and ``ix_dr_curtailments_session_until`` go (no query
   selects by session there); ``dr_curtailments.until`` gets an index of its own (the budget
   query reads the curtailments that end after the start of the 4-hour window).

Revision ID: 0008_ocpp_on_read
Revises: 0007_profile_storage
Create Date: 2026-11-26 15:40:00
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

import api.db
from optimizer.profiles import ocpp_forms, ocpp_ids

revision = "0008_ocpp_on_read"
down_revision = "0007_profile_storage"
branch_labels = None
depends_on = None

BATCH_ROWS = 2000


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _rows(columns: str) -> Iterator[list[tuple[Any, ...]]]:
    """``profiles`` rows in batches (texts cast to text: the driver does not decode them)."""
    bind = op.get_bind()
    result = bind.execute(sa.text(f"SELECT session_id, {columns} FROM profiles"))
    while batch := result.fetchmany(BATCH_ROWS):
        yield [tuple(row) for row in batch]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # no profile written between the check and the change
        op.execute("LOCK TABLE profiles IN SHARE MODE")
    ids: list[dict[str, Any]] = []
    for batch in _rows("CAST(ocpi AS TEXT), CAST(ocpp16 AS TEXT), CAST(ocpp201 AS TEXT)"):
        for sid, ocpi, p16, p201 in batch:
            stored = {"ocpp16": _loads(p16), "ocpp201": _loads(p201)}
            try:
                evse_id, n_phases = ocpp_ids(stored, sid)
                same = (
                    ocpp_forms(_loads(ocpi), session_id=sid, evse_id=evse_id, n_phases=n_phases)
                    == stored
                )
            except (KeyError, IndexError, TypeError, ValueError):
                same = False
            if not same:
                raise RuntimeError(
                    f"profiles.ocpp16/ocpp201 of session {sid!r} are not the OCPP forms of its "
                    "OCPI profile: they cannot be derived on read; the upgrade to "
                    f"{revision} stopped before changing anything"
                )
            ids.append({"sid": sid, "evse_id": evse_id, "n_phases": n_phases})
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.add_column(sa.Column("evse_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("n_phases", sa.Integer(), nullable=True))
    if ids:
        bind.execute(
            sa.text(
                "UPDATE profiles SET evse_id = :evse_id, n_phases = :n_phases "
                "WHERE session_id = :sid"
            ),
            ids,
        )
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.alter_column("evse_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("n_phases", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("ocpp16")
        batch_op.drop_column("ocpp201")
    with op.batch_alter_table("profile_changes") as batch_op:
        batch_op.drop_index("ix_profile_changes_session_id")
    with op.batch_alter_table("dr_curtailments") as batch_op:
        batch_op.drop_index("ix_dr_curtailments_session_until")
        batch_op.create_index("ix_dr_curtailments_until", ["until"], unique=False)


def downgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("dr_curtailments") as batch_op:
        batch_op.drop_index("ix_dr_curtailments_until")
        batch_op.create_index(
            "ix_dr_curtailments_session_until", ["session_id", "until"], unique=False
        )
    with op.batch_alter_table("profile_changes") as batch_op:
        batch_op.create_index("ix_profile_changes_session_id", ["session_id"], unique=False)
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.add_column(sa.Column("ocpp16", api.db.JSONText(), nullable=True))
        batch_op.add_column(sa.Column("ocpp201", api.db.JSONText(), nullable=True))
    forms: list[dict[str, Any]] = []
    for batch in _rows("CAST(ocpi AS TEXT), evse_id, n_phases"):
        for sid, ocpi, evse_id, n_phases in batch:
            f = ocpp_forms(_loads(ocpi), session_id=sid, evse_id=evse_id, n_phases=n_phases)
            forms.append(
                {
                    "sid": sid,
                    "p16": json.dumps(f["ocpp16"], ensure_ascii=False),
                    "p201": json.dumps(f["ocpp201"], ensure_ascii=False),
                }
            )
    if forms:
        bind.execute(
            sa.text("UPDATE profiles SET ocpp16 = :p16, ocpp201 = :p201 WHERE session_id = :sid"),
            forms,
        )
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.alter_column("ocpp16", existing_type=api.db.JSONText(), nullable=False)
        batch_op.alter_column("ocpp201", existing_type=api.db.JSONText(), nullable=False)
        batch_op.drop_column("evse_id")
        batch_op.drop_column("n_phases")

"""Idempotency keys recorded with their effect: ``idempotency_keys.effect_bound``.

A row written in the operation's own transaction (``effect_bound`` true) proves the effect
committed, so one without an answer is never re-run; rows claimed in a transaction of their
own (false, every row before this revision) keep their abandoned-claim lease.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (with a constant default) works on both databases, online or as
    # offline SQL; no table copy on SQLite.
    op.add_column(
        "idempotency_keys",
        sa.Column("effect_bound", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot DROP COLUMN (it copies the table instead).
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("effect_bound")

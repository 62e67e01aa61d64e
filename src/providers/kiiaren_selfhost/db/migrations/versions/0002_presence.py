"""Presence table: online/away/offline per user and workspace, shared across processes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UUID = sa.Uuid(as_uuid=False)
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "presence",
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("last_seen_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "status IN ('online', 'away', 'offline')", name=op.f("ck_presence_status")
        ),
        sa.PrimaryKeyConstraint("workspace_id", "user_id", name=op.f("pk_presence")),
    )
    op.create_index(
        op.f("ix_presence_status_last_seen_at"),
        "presence",
        ["status", "last_seen_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("presence")

"""Row -> model conversions shared by the stores (what each viewer may see is decided here)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.models import Member, Role, UserSummary, Workspace
from kiiaren_selfhost.db import tables as t

__all__ = ["MEMBER_COLUMNS", "member_from_row", "members_by_id", "workspace_from_row"]

MEMBER_COLUMNS = (
    t.members.c.id,
    t.members.c.user_id,
    t.members.c.workspace_id,
    t.members.c.role,
    t.members.c.joined_at,
    t.users.c.name.label("user_name"),
    t.users.c.image.label("user_image"),
    t.users.c.email.label("user_email"),
)
"""Columns of ``members JOIN users`` that :func:`member_from_row` reads."""


def member_from_row(row: Any, *, show_email: bool) -> Member:
    """A member with its user summary; the email only when ``show_email``."""
    return Member(
        id=str(row.id),
        user_id=str(row.user_id),
        workspace_id=str(row.workspace_id),
        role=Role(row.role),
        joined_at=row.joined_at,
        user=UserSummary(
            id=str(row.user_id),
            name=row.user_name,
            image=row.user_image,
            email=row.user_email if show_email else None,
        ),
    )


async def members_by_id(
    conn: AsyncConnection, member_ids: set[str], *, show_email: bool
) -> dict[str, Member]:
    """Members (with user summaries) for a set of ids, in one query."""
    if not member_ids:
        return {}
    rows = (
        await conn.execute(
            sa.select(*MEMBER_COLUMNS)
            .join(t.users, t.users.c.id == t.members.c.user_id)
            .where(t.members.c.id.in_(sorted(member_ids)))
        )
    ).all()
    return {str(row.id): member_from_row(row, show_email=show_email) for row in rows}


def workspace_from_row(row: Any, *, viewer_role: Role | None) -> Workspace:
    """A workspace; the join code only for admin and owner viewers."""
    return Workspace(
        id=str(row.id),
        name=row.name,
        owner_id=str(row.owner_id),
        join_code=row.join_code if viewer_role is not None and viewer_role.is_admin else None,
        created_at=row.created_at,
        domain_verified=bool(row.domain_verified),
        join_code_enabled=bool(row.join_code_enabled),
    )

"""Authorization primitives shared by every store.

The rules (DESIGN.md section 3): a workspace the caller is not a member of behaves exactly
like a missing one (``get`` -> None, mutation -> NotFoundError with the same text); inside a
visible workspace a forbidden action raises PermissionDeniedError. Ids that are not even
well-formed behave like missing ids (and never reach the database as bad literals).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import NotFoundError, PermissionDeniedError
from kiiaren_core.models import Role
from kiiaren_selfhost.db import tables as t

__all__ = [
    "ADMIN_REQUIRED",
    "Membership",
    "as_id",
    "find_membership",
    "require_admin",
    "require_membership",
    "require_owner",
]

ADMIN_REQUIRED = "You must be a workspace admin to perform this action."
OWNER_REQUIRED = "Only the workspace owner can perform this action."


@dataclass(frozen=True, slots=True)
class Membership:
    """The caller's membership of one workspace."""

    member_id: str
    workspace_id: str
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role.is_admin


def as_id(value: object) -> str | None:
    """The canonical form of a UUID string, or None if ``value`` is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


async def find_membership(
    conn: AsyncConnection, workspace_id: str | None, user_id: str | None
) -> Membership | None:
    """The caller's membership of ``workspace_id``, or None (also for malformed ids)."""
    workspace_id = as_id(workspace_id)
    if workspace_id is None or user_id is None:
        return None
    m = t.members
    row = (
        await conn.execute(
            sa.select(m.c.id, m.c.role).where(
                m.c.workspace_id == workspace_id, m.c.user_id == user_id
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return Membership(str(row.id), workspace_id, user_id, Role(row.role))


async def require_membership(
    conn: AsyncConnection,
    workspace_id: str | None,
    user_id: str,
    *,
    missing: str = "Workspace not found.",
) -> Membership:
    """The caller's membership, or NotFoundError(``missing``): outsiders learn nothing."""
    membership = await find_membership(conn, workspace_id, user_id)
    if membership is None:
        raise NotFoundError(missing)
    return membership


def require_admin(membership: Membership, message: str = ADMIN_REQUIRED) -> Membership:
    """Admins and the owner pass; members get PermissionDeniedError."""
    if not membership.is_admin:
        raise PermissionDeniedError(message)
    return membership


def require_owner(membership: Membership, message: str = OWNER_REQUIRED) -> Membership:
    """Only the owner passes."""
    if membership.role is not Role.OWNER:
        raise PermissionDeniedError(message)
    return membership

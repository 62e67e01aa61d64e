"""Members: list, read, change roles (owner protected), remove or leave with full cascades."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from kiiaren_core.models import Member, Role
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import (
    Membership,
    as_id,
    find_membership,
    require_admin,
    require_membership,
)
from kiiaren_selfhost.domain._unit import Mutation, Store
from kiiaren_selfhost.domain._views import MEMBER_COLUMNS, member_from_row

__all__ = ["MemberStoreImpl", "delete_messages_where"]

MEMBER_NOT_FOUND = "Member not found."
_BATCH = 500  # ids bound per statement, well under every driver's parameter limit


async def delete_messages_where(
    tx: Mutation, workspace_id: str, condition: sa.ColumnElement[bool]
) -> None:
    """Delete the messages matching ``condition`` and everything hanging off them.

    Replies and reactions go through ON DELETE CASCADE; what the database cannot see is done
    here: one ``message.deleted`` event per removed message (replies included) and the removal
    of their stored images after commit.
    """
    m = t.messages
    targets = sa.select(m.c.id).where(condition).scalar_subquery()
    rows = (
        await tx.conn.execute(
            sa.select(
                m.c.id, m.c.channel_id, m.c.conversation_id, m.c.parent_message_id, m.c.image_id
            ).where(sa.or_(m.c.id.in_(targets), m.c.parent_message_id.in_(targets)))
        )
    ).all()
    if not rows:
        return
    images = [str(row.image_id) for row in rows if row.image_id is not None]
    # Delete by the same condition, not by an id list: a large channel would exceed the
    # drivers' bound-parameter limits.
    await tx.conn.execute(
        m.delete().where(sa.or_(m.c.id.in_(targets), m.c.parent_message_id.in_(targets)))
    )
    for row in rows:
        tx.emit(
            workspace_id,
            "message.deleted",
            {
                "message_id": str(row.id),
                "channel_id": str(row.channel_id) if row.channel_id else None,
                "conversation_id": str(row.conversation_id) if row.conversation_id else None,
                "parent_message_id": str(row.parent_message_id) if row.parent_message_id else None,
            },
        )
    for start in range(0, len(images), _BATCH):
        await tx.conn.execute(
            t.stored_objects.update()
            .where(t.stored_objects.c.id.in_(images[start : start + _BATCH]))
            .values(status="deleting")
        )
    tx.remove_files(images)


class MemberStoreImpl(Store):
    """``persistence.member`` of the self-host provider."""

    async def get(self, workspace_id: str) -> list[Member]:
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            rows = (
                await q.conn.execute(
                    sa.select(*MEMBER_COLUMNS)
                    .join(t.users, t.users.c.id == t.members.c.user_id)
                    .where(t.members.c.workspace_id == me.workspace_id)
                    .order_by(t.members.c.joined_at, t.members.c.id)
                )
            ).all()
        return [member_from_row(row, show_email=me.is_admin) for row in rows]

    async def _target(self, conn: AsyncConnection, member_id: str) -> Any:
        key = as_id(member_id)
        if key is None:
            return None
        return (
            await conn.execute(
                sa.select(*MEMBER_COLUMNS)
                .join(t.users, t.users.c.id == t.members.c.user_id)
                .where(t.members.c.id == key)
            )
        ).one_or_none()

    async def get_by_id(self, member_id: str) -> Member | None:
        async with self.query() as q:
            row = await self._target(q.conn, member_id)
            if row is None:
                return None
            me = await find_membership(q.conn, str(row.workspace_id), q.user_id)
            if me is None:
                return None
        return member_from_row(row, show_email=me.is_admin or me.member_id == str(row.id))

    async def get_current(self, workspace_id: str) -> Member | None:
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return None
            row = await self._target(q.conn, me.member_id)
        return member_from_row(row, show_email=True) if row is not None else None

    async def _visible_target(
        self, tx: Mutation, member_id: str
    ) -> tuple[Membership, sa.Row[tuple[object, ...]]]:
        """The target member and the caller's membership of its workspace, or NotFoundError."""
        row = await self._target(tx.conn, member_id)
        if row is None:
            raise NotFoundError(MEMBER_NOT_FOUND)
        me = await require_membership(
            tx.conn, str(row.workspace_id), tx.user_id, missing=MEMBER_NOT_FOUND
        )
        return me, row

    async def update_role(self, member_id: str, role: Role) -> Member:
        try:
            new_role = Role(role)
        except ValueError:
            raise InvalidInputError("Invalid role.", details={"field": "role"}) from None
        async with self.mutation() as tx:
            me, target = await self._visible_target(tx, member_id)
            require_admin(me)
            if new_role is Role.OWNER:
                raise PermissionDeniedError("Use transfer_ownership to make a member the owner.")
            if target.role == Role.OWNER.value:
                raise PermissionDeniedError("The workspace owner's role cannot be changed.")
            if target.role != new_role.value:
                await tx.conn.execute(
                    t.members.update()
                    .where(t.members.c.id == target.id)
                    .values(role=new_role.value)
                )
                tx.emit(
                    me.workspace_id,
                    "member.role_changed",
                    {
                        "member_id": str(target.id),
                        "user_id": str(target.user_id),
                        "role": new_role.value,
                        "previous_role": target.role,
                    },
                )
                tx.audit(
                    "member.update_role",
                    "member",
                    str(target.id),
                    me.workspace_id,
                    {"role": new_role.value, "previous_role": target.role},
                )
            updated = await self._target(tx.conn, str(target.id))
        assert updated is not None
        return member_from_row(updated, show_email=True)

    async def remove(self, member_id: str) -> None:
        async with self.mutation() as tx:
            me, target = await self._visible_target(tx, member_id)
            leaving = str(target.id) == me.member_id
            if leaving and me.role is Role.OWNER:
                raise PermissionDeniedError(
                    "The workspace owner cannot leave. Transfer ownership first."
                )
            if not leaving:
                require_admin(me)
                if target.role == Role.OWNER.value:
                    raise PermissionDeniedError("The workspace owner cannot be removed.")
                if target.role == Role.ADMIN.value and me.role is not Role.OWNER:
                    raise PermissionDeniedError("Only the workspace owner can remove an admin.")
            key = str(target.id)
            m, c = t.messages, t.conversations
            # Reference 3.5, done completely: the member's messages (with their replies,
            # reactions and images) and every conversation they took part in, with both
            # parties' messages. Their own reactions go through ON DELETE CASCADE.
            their_conversations = sa.select(c.c.id).where(
                sa.or_(c.c.member_one_id == key, c.c.member_two_id == key)
            )
            await delete_messages_where(
                tx,
                me.workspace_id,
                sa.or_(m.c.member_id == key, m.c.conversation_id.in_(their_conversations)),
            )
            await tx.conn.execute(c.delete().where(c.c.id.in_(their_conversations)))
            await tx.conn.execute(t.members.delete().where(t.members.c.id == key))
            tx.emit(
                me.workspace_id, "member.left", {"member_id": key, "user_id": str(target.user_id)}
            )
            tx.audit("member.remove", "member", key, me.workspace_id, {"left": leaving})

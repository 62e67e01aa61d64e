"""Channels: create, list, read, rename and delete (reference rows 9-13, bug C3 fixed)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import ConflictError, NotFoundError
from kiiaren_core.models import Channel, Role
from kiiaren_core.validation import normalize_channel_name
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import (
    Membership,
    as_id,
    find_membership,
    require_admin,
    require_membership,
)
from kiiaren_selfhost.domain._unit import Mutation, Store
from kiiaren_selfhost.domain.members import delete_messages_where

__all__ = ["CHANNEL_EXISTS", "CHANNEL_NOT_FOUND", "ChannelStoreImpl"]

CHANNEL_NOT_FOUND = "Channel not found."
CHANNEL_EXISTS = "A channel with this name already exists."

_COLUMNS = (t.channels.c.id, t.channels.c.workspace_id, t.channels.c.name, t.channels.c.created_at)


def _channel(row: Any) -> Channel:
    return Channel(
        id=str(row.id),
        workspace_id=str(row.workspace_id),
        name=row.name,
        created_at=row.created_at,
    )


def _name_key(name: str) -> str:
    """The uniqueness key: names are unique per workspace whatever their case."""
    return name.casefold()


class ChannelStoreImpl(Store):
    """``persistence.channel`` of the self-host provider.

    Names go through :func:`~kiiaren_core.validation.normalize_channel_name` and are unique
    per workspace case-insensitively (the ``uq_channels_workspace_id_name_key`` constraint
    decides races). Every call needs a session; a channel of a workspace the caller is not a
    member of behaves like a missing one.
    """

    async def create(self, workspace_id: str, name: str) -> Channel:
        """Create a channel (admins and the owner).

        Raises:
            InvalidInputError: ``Invalid channel name.``
            NotFoundError: ``Workspace not found.`` (missing, or the caller is not a member).
            PermissionDeniedError: the caller is a plain member.
            ConflictError: ``A channel with this name already exists.``
        """
        clean = normalize_channel_name(name)
        async with self.mutation() as tx:
            me = require_admin(await require_membership(tx.conn, workspace_id, tx.user_id))
            channel_id, now = str(uuid.uuid4()), utcnow()
            await self._write_name(
                tx,
                t.channels.insert().values(
                    id=channel_id,
                    workspace_id=me.workspace_id,
                    name=clean,
                    name_key=_name_key(clean),
                    created_at=now,
                ),
            )
            tx.emit(me.workspace_id, "channel.created", {"channel_id": channel_id, "name": clean})
            tx.audit("channel.create", "channel", channel_id, me.workspace_id, {"name": clean})
        return Channel(id=channel_id, workspace_id=me.workspace_id, name=clean, created_at=now)

    async def get(self, workspace_id: str) -> list[Channel]:
        """The workspace's channels, oldest first; ``[]`` for outsiders and missing ids."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            rows = (
                await q.conn.execute(
                    sa.select(*_COLUMNS)
                    .where(t.channels.c.workspace_id == me.workspace_id)
                    .order_by(t.channels.c.created_at, t.channels.c.id)
                )
            ).all()
        return [_channel(row) for row in rows]

    async def get_by_id(self, channel_id: str) -> Channel | None:
        """The channel if the caller is a member of its workspace, else None."""
        async with self.query() as q:
            found = await self._visible(q.conn, channel_id, q.user_id)
        return _channel(found[0]) if found is not None else None

    async def update(self, channel_id: str, *, name: str) -> Channel:
        """Rename (admins and the owner); same rules as :meth:`create`. Renaming to the
        current name changes nothing and emits nothing.

        Raises:
            NotFoundError: ``Channel not found.`` (missing, or not the caller's workspace).
        """
        clean = normalize_channel_name(name)
        async with self.mutation() as tx:
            row, me = await self._require_visible(tx, channel_id)
            require_admin(me)
            if row.name != clean:
                await self._write_name(
                    tx,
                    t.channels.update()
                    .where(t.channels.c.id == row.id)
                    .values(name=clean, name_key=_name_key(clean)),
                )
                tx.emit(
                    me.workspace_id, "channel.updated", {"channel_id": str(row.id), "name": clean}
                )
                tx.audit("channel.update", "channel", str(row.id), me.workspace_id, {"name": clean})
        return Channel(
            id=str(row.id), workspace_id=me.workspace_id, name=clean, created_at=row.created_at
        )

    async def remove(self, channel_id: str) -> None:
        """Delete the channel (admins and the owner) with everything in it.

        Its messages and their replies, reactions and images go through
        ``delete_messages_where`` (one ``message.deleted`` per message); channel-scoped
        invite links go with the row (ON DELETE CASCADE). Emits ``channel.deleted`` last.

        Raises:
            NotFoundError: ``Channel not found.``
            PermissionDeniedError: the caller is a plain member.
        """
        async with self.mutation() as tx:
            row, me = await self._require_visible(tx, channel_id)
            require_admin(me)
            key = str(row.id)
            await delete_messages_where(tx, me.workspace_id, t.messages.c.channel_id == key)
            await tx.conn.execute(t.channels.delete().where(t.channels.c.id == key))
            tx.emit(me.workspace_id, "channel.deleted", {"channel_id": key})
            tx.audit("channel.delete", "channel", key, me.workspace_id, {"name": row.name})

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    async def _visible(
        conn: AsyncConnection, channel_id: str, user_id: str | None
    ) -> tuple[Any, Membership] | None:
        """The channel row and the caller's membership of its workspace (one query), or None."""
        key = as_id(channel_id)
        if key is None or user_id is None:
            return None
        me = t.members
        row = (
            await conn.execute(
                sa.select(*_COLUMNS, me.c.id.label("viewer_id"), me.c.role.label("viewer_role"))
                .join(
                    me,
                    sa.and_(
                        me.c.workspace_id == t.channels.c.workspace_id, me.c.user_id == user_id
                    ),
                )
                .where(t.channels.c.id == key)
            )
        ).one_or_none()
        if row is None:
            return None
        return row, Membership(
            str(row.viewer_id), str(row.workspace_id), user_id, Role(row.viewer_role)
        )

    async def _require_visible(self, tx: Mutation, channel_id: str) -> tuple[Any, Membership]:
        found = await self._visible(tx.conn, channel_id, tx.user_id)
        if found is None:
            raise NotFoundError(CHANNEL_NOT_FOUND)
        return found

    @staticmethod
    async def _write_name(tx: Mutation, statement: sa.Executable) -> None:
        """Run an insert or update of a channel name; a taken name is ConflictError."""
        try:
            await tx.conn.execute(statement)
        except sa.exc.IntegrityError:
            # (workspace_id, name_key) is the only constraint a valid name can break.
            raise ConflictError(CHANNEL_EXISTS, details={"field": "name"}) from None

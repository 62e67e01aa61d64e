"""Direct conversations between two members of one workspace (reference row 25, bugs S5 and
C7 fixed).

The pair is stored ordered (:func:`~kiiaren_selfhost.db.types.ordered_pair`) under
``UNIQUE(workspace_id, member_one_id, member_two_id)``, so (a, b) and (b, a) are one row and
concurrent ``create_or_get`` calls agree on it.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from kiiaren_core.models import Conversation
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.db.types import ordered_pair
from kiiaren_selfhost.domain._access import as_id, find_membership, require_membership
from kiiaren_selfhost.domain._unit import Store

__all__ = ["ConversationStoreImpl"]

MEMBER_NOT_FOUND = "Member not found."

_c = t.conversations
_COLUMNS = (_c.c.id, _c.c.workspace_id, _c.c.member_one_id, _c.c.member_two_id, _c.c.created_at)


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=str(row.id),
        workspace_id=str(row.workspace_id),
        member_one_id=str(row.member_one_id),
        member_two_id=str(row.member_two_id),
        created_at=row.created_at,
    )


async def _find_pair(conn: AsyncConnection, workspace_id: str, pair: tuple[str, str]) -> Any:
    return (
        await conn.execute(
            sa.select(*_COLUMNS).where(
                _c.c.workspace_id == workspace_id,
                _c.c.member_one_id == pair[0],
                _c.c.member_two_id == pair[1],
            )
        )
    ).one_or_none()


class ConversationStoreImpl(Store):
    """``persistence.conversation`` of the self-host provider.

    A conversation is visible only to its two participants; to anyone else it behaves like a
    missing one. Every call needs a session.
    """

    async def create_or_get(
        self, workspace_id: str, member_one_id: str, member_two_id: str
    ) -> Conversation:
        """The conversation between two members of ``workspace_id``, created on first use.

        The caller must be one of the two. Concurrent calls (in either orientation) return
        the same conversation; ``conversation.created`` is emitted only by the call that
        created it. The returned pair is in canonical (sorted) order, whatever the
        argument order.

        Raises:
            NotFoundError: ``Workspace not found.`` (the caller is not a member),
                ``Member not found.`` (either id is not a member of this workspace).
            PermissionDeniedError: the caller is neither of the two members.
            InvalidInputError: ``Cannot start a conversation with yourself.``
        """
        async with self.mutation() as tx:
            me = await require_membership(tx.conn, workspace_id, tx.user_id)
            one, two = as_id(member_one_id), as_id(member_two_id)
            if one is None or two is None:
                raise NotFoundError(MEMBER_NOT_FOUND)
            found = (
                await tx.conn.execute(
                    sa.select(sa.func.count(t.members.c.id)).where(
                        t.members.c.workspace_id == me.workspace_id,
                        t.members.c.id.in_(sorted({one, two})),
                    )
                )
            ).scalar_one()
            if found != len({one, two}):
                raise NotFoundError(MEMBER_NOT_FOUND)
            if me.member_id not in (one, two):
                raise PermissionDeniedError("You can only start conversations you take part in.")
            if one == two:
                raise InvalidInputError(
                    "Cannot start a conversation with yourself.",
                    details={"field": "member_two_id"},
                )
            pair = ordered_pair(one, two)
            row = await _find_pair(tx.conn, me.workspace_id, pair)
            if row is not None:
                return _conversation(row)
            conversation_id = str(uuid.uuid4())
            insert = postgresql.insert if tx.conn.dialect.name == "postgresql" else sqlite.insert
            # A concurrent call may insert the pair between the select above and this insert:
            # DO NOTHING waits for it and skips, keeping the transaction usable (a plain
            # INSERT's unique violation would abort it on PostgreSQL); the re-select below
            # then reads the committed winner.
            created = await tx.conn.execute(
                insert(_c)
                .values(
                    id=conversation_id,
                    workspace_id=me.workspace_id,
                    member_one_id=pair[0],
                    member_two_id=pair[1],
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(
                    index_elements=[_c.c.workspace_id, _c.c.member_one_id, _c.c.member_two_id]
                )
                # RETURNING, not rowcount: drivers need not report an INSERT's row count.
                .returning(_c.c.id)
            )
            won = created.first() is not None
            row = await _find_pair(tx.conn, me.workspace_id, pair)
            if won:
                tx.emit(
                    me.workspace_id,
                    "conversation.created",
                    {
                        "conversation_id": conversation_id,
                        "member_one_id": pair[0],
                        "member_two_id": pair[1],
                    },
                )
                tx.audit("conversation.create", "conversation", conversation_id, me.workspace_id)
        return _conversation(row)

    async def get_by_id(self, conversation_id: str) -> Conversation | None:
        """The conversation if the caller takes part in it, else None."""
        async with self.query() as q:
            key = as_id(conversation_id)
            if key is None:
                return None
            viewer = t.members
            row = (
                await q.conn.execute(
                    sa.select(*_COLUMNS)
                    .join(
                        viewer,
                        sa.and_(
                            viewer.c.workspace_id == _c.c.workspace_id,
                            viewer.c.user_id == q.user_id,
                            viewer.c.id.in_((_c.c.member_one_id, _c.c.member_two_id)),
                        ),
                    )
                    .where(_c.c.id == key)
                )
            ).one_or_none()
        return _conversation(row) if row is not None else None

    async def get(self, workspace_id: str) -> list[Conversation]:
        """The caller's conversations in the workspace, oldest first (``[]`` for outsiders)."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            rows = (
                await q.conn.execute(
                    sa.select(*_COLUMNS)
                    .where(
                        _c.c.workspace_id == me.workspace_id,
                        sa.or_(
                            _c.c.member_one_id == me.member_id, _c.c.member_two_id == me.member_id
                        ),
                    )
                    .order_by(_c.c.created_at, _c.c.id)
                )
            ).all()
        return [_conversation(row) for row in rows]

"""Messages, threads and reactions (reference rows 19-24, read model 3.4; bugs S1, S2, C1, C6,
C8 fixed).

Visibility: a message is visible to the members of its workspace, and a message of a direct
conversation (or a reply in one) only to the conversation's two participants. Anything else
behaves like a missing message.

The read model of a page is built in a constant number of queries whatever the page size:
the page itself, joined with its authors (member and user) and carrying each message's thread
summary (correlated subqueries over the ``(parent_message_id, created_at, id)`` index), and
one query for every reaction of the page's messages. A page is a keyset slice over
``(created_at, id)``, newest first, with an opaque cursor.

The statements are built once at import (values go in as bound parameters), so a request
pays for execution, not for constructing SQL.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import (
    BackendUnavailableError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from kiiaren_core.events import MessageCreatedPayload
from kiiaren_core.models import (
    Message,
    Page,
    ReactionGroup,
    ReactionToggle,
    Role,
    ThreadSummary,
)
from kiiaren_core.validation import validate_message_body, validate_reaction
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import Membership, as_id
from kiiaren_selfhost.domain._content import attach_image, settle_upload
from kiiaren_selfhost.domain._unit import Mutation, Store
from kiiaren_selfhost.domain._views import MEMBER_COLUMNS, member_from_row
from kiiaren_selfhost.domain.members import delete_messages_where

__all__ = [
    "CONVERSATION_NOT_FOUND",
    "MESSAGE_NOT_FOUND",
    "PARENT_NOT_FOUND",
    "MessageStoreImpl",
    "ReactionStoreImpl",
]

MESSAGE_NOT_FOUND: Final = "Message not found."
PARENT_NOT_FOUND: Final = "Parent message not found."
CHANNEL_NOT_FOUND: Final = "Channel not found."
CONVERSATION_NOT_FOUND: Final = "Conversation not found."
WORKSPACE_NOT_FOUND: Final = "Workspace not found."

# A toggle that keeps losing races to the same member's concurrent toggles gives up after
# this many rounds (each round sees the rows committed before it).
_TOGGLE_ROUNDS: Final = 5

_m = t.messages
_viewer = t.members.alias("viewer")
_cv = t.conversations


def _read_model_query(src: Any, *, threads: bool) -> tuple[list[Any], Any]:
    """The columns and FROM clause of the read model of the messages in ``src`` (the
    messages table, or a subquery of its rows): each message with its author's member and
    user columns (see :func:`_message`) and, with ``threads``, its thread summary.

    The summary is computed per message of ``src`` by correlated subqueries over the
    ``(parent_message_id, created_at, id)`` index: the reply count, and the newest reply
    joined with its author.
    """
    author, author_user = t.members.alias("author"), t.users.alias("author_user")
    columns: list[Any] = [
        src.c.id,
        src.c.workspace_id,
        src.c.member_id,
        src.c.body,
        src.c.channel_id,
        src.c.conversation_id,
        src.c.parent_message_id,
        src.c.image_id,
        src.c.created_at,
        src.c.updated_at,
        author.c.user_id.label("author_user_id"),
        author.c.role.label("author_role"),
        author.c.joined_at.label("author_joined_at"),
        author_user.c.name.label("author_name"),
        author_user.c.image.label("author_image"),
        author_user.c.email.label("author_email"),
    ]
    source = src.join(author, author.c.id == src.c.member_id).join(
        author_user, author_user.c.id == author.c.user_id
    )
    if threads:
        reply, last_reply = t.messages.alias("reply"), t.messages.alias("last_reply")
        replier, replier_user = t.members.alias("replier"), t.users.alias("replier_user")
        newest_reply_id = (
            sa.select(reply.c.id)
            .where(reply.c.parent_message_id == src.c.id)
            .order_by(reply.c.created_at.desc(), reply.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        columns += [
            sa.select(sa.func.count())
            .where(reply.c.parent_message_id == src.c.id)
            .scalar_subquery()
            .label("thread_count"),
            last_reply.c.created_at.label("thread_last_at"),
            replier_user.c.name.label("thread_name"),
            replier_user.c.image.label("thread_image"),
        ]
        source = (
            source.outerjoin(last_reply, last_reply.c.id == newest_reply_id)
            .outerjoin(replier, replier.c.id == last_reply.c.member_id)
            .outerjoin(replier_user, replier_user.c.id == replier.c.user_id)
        )
    return columns, source


def _with_viewer(source: Any, src: Any) -> tuple[list[Any], Any]:
    """Join the caller's membership of each message's workspace (bound: ``user_id``) and the
    message's conversation onto ``source``: messages of workspaces the caller is not a member
    of drop out. Returns the added columns (``viewer_id``, ``viewer_role`` and the
    conversation's two members) and the new FROM clause."""
    columns = [
        _viewer.c.id.label("viewer_id"),
        _viewer.c.role.label("viewer_role"),
        _cv.c.member_one_id,
        _cv.c.member_two_id,
    ]
    source = source.join(
        _viewer,
        sa.and_(
            _viewer.c.workspace_id == src.c.workspace_id,
            _viewer.c.user_id == sa.bindparam("user_id"),
        ),
    ).outerjoin(_cv, _cv.c.id == src.c.conversation_id)
    return columns, source


def _page_statement(context: str) -> sa.Select[Any]:
    """A page of the messages of a channel or conversation (top level) or of a parent (its
    replies), with their read model, as the caller may see it.

    Bound: ``key`` (the context's id), ``before_at`` / ``before_id`` (the keyset position),
    ``size``, ``user_id``. Newest first. Rows the caller may not read (not a member of the
    workspace, or not a participant of the conversation) are dropped, so an outsider gets
    no rows: one statement does both the authorisation and the read.

    The page is cut in a subquery first, so authors, thread summaries and the caller's
    standing are looked up for the page's rows only, whatever plan the database picks for
    the keyset scan.
    """
    key = {"channel": _m.c.channel_id, "conversation": _m.c.conversation_id}.get(
        context, _m.c.parent_message_id
    )
    level = _m.c.parent_message_id.is_(None) if context != "parent" else sa.true()
    page = (
        sa.select(_m)
        .where(
            key == sa.bindparam("key"),
            level,
            sa.tuple_(_m.c.created_at, _m.c.id)
            < sa.tuple_(
                sa.bindparam("before_at", type_=_m.c.created_at.type),
                sa.bindparam("before_id", type_=_m.c.id.type),
            ),
        )
        .order_by(_m.c.created_at.desc(), _m.c.id.desc())
        .limit(sa.bindparam("size", type_=sa.Integer()))
        .subquery("page")
    )
    # Replies cannot have replies: their thread summary is always empty.
    columns, source = _read_model_query(page, threads=context != "parent")
    viewer_columns, source = _with_viewer(source, page)
    return (
        sa.select(*columns, *viewer_columns)
        .select_from(source)
        .where(
            sa.or_(
                page.c.conversation_id.is_(None),
                _viewer.c.id == _cv.c.member_one_id,
                _viewer.c.id == _cv.c.member_two_id,
            )
        )
        .order_by(page.c.created_at.desc(), page.c.id.desc())
    )


_PAGES: Final = {
    context: _page_statement(context) for context in ("channel", "conversation", "parent")
}

# The first page starts after the newest possible position (the keyset condition stays, so
# every page of a context runs the same statement).
_FIRST_POSITION: Final = (
    datetime(9999, 12, 31, tzinfo=UTC),
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
)


def _find_statement(*, threads: bool) -> sa.Select[Any]:
    """One message (bound: ``key``) with its read model, the caller's membership of its
    workspace and its conversation's members (bound: ``user_id``); no row for outsiders."""
    columns, source = _read_model_query(_m, threads=threads)
    viewer_columns, source = _with_viewer(source, _m)
    return (
        sa.select(*columns, *viewer_columns)
        .select_from(source)
        .where(_m.c.id == sa.bindparam("key"))
    )


_FIND: Final = _find_statement(threads=False)
_FIND_WITH_THREAD: Final = _find_statement(threads=True)

_REACTIONS: Final = (
    sa.select(t.reactions.c.message_id, t.reactions.c.value, t.reactions.c.member_id)
    .where(t.reactions.c.message_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(t.reactions.c.created_at, t.reactions.c.id)
)


def _opt(value: Any) -> str | None:
    return str(value) if value is not None else None


def _is_participant(member_id: str, one: Any, two: Any) -> bool:
    return member_id in (str(one), str(two))


# --- cursors --------------------------------------------------------------------------------


def _encode_cursor(created_at: datetime, message_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), message_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The keyset position a cursor stands for; InvalidInputError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, message_id = json.loads(raw)
        created_at = datetime.fromisoformat(stamp)
        key = as_id(message_id)
    except (TypeError, ValueError, binascii.Error, UnicodeDecodeError):
        key = None
    if key is None or created_at.utcoffset() is None:
        raise InvalidInputError("Invalid cursor.", details={"field": "cursor"})
    return created_at, key


# --- read model -----------------------------------------------------------------------------


def _thread(row: Any) -> ThreadSummary:
    """The thread summary of a read-model row (empty for rows without summary columns)."""
    count = getattr(row, "thread_count", 0)
    if not count:
        return ThreadSummary()
    return ThreadSummary(
        count=count,
        last_reply_at=row.thread_last_at,
        last_replier_name=row.thread_name,
        last_replier_image=row.thread_image,
    )


def _message(row: Any, viewer: Membership, reactions: tuple[ReactionGroup, ...] = ()) -> Message:
    """A read-model row (see :func:`_read_model_query`) as the viewer sees it.

    The author's email is shown to admin viewers and to the author; ``image_url`` is left
    None: clients resolve ``image_id`` through ``storage.get_url``.
    """
    author = member_from_row(
        SimpleNamespace(
            id=row.member_id,
            user_id=row.author_user_id,
            workspace_id=row.workspace_id,
            role=row.author_role,
            joined_at=row.author_joined_at,
            user_name=row.author_name,
            user_image=row.author_image,
            user_email=row.author_email,
        ),
        show_email=viewer.is_admin or viewer.member_id == str(row.member_id),
    )
    return Message(
        id=str(row.id),
        workspace_id=str(row.workspace_id),
        member_id=str(row.member_id),
        body=row.body,
        channel_id=_opt(row.channel_id),
        conversation_id=_opt(row.conversation_id),
        parent_message_id=_opt(row.parent_message_id),
        image_id=_opt(row.image_id),
        created_at=row.created_at,
        updated_at=row.updated_at,
        member=author,
        reactions=reactions,
        thread=_thread(row),
    )


async def _read_models(
    conn: AsyncConnection, rows: Sequence[Any], viewer: Membership
) -> list[Message]:
    """The read model of message rows: one more query, for their reactions grouped by value
    in first-seen order (member ids deduplicated in order)."""
    if not rows:
        return []
    grouped: dict[str, dict[str, dict[str, None]]] = {}
    for message_id, value, member_id in await conn.execute(
        _REACTIONS, {"ids": [str(row.id) for row in rows]}
    ):
        # dicts keep insertion order: first-seen values, and member ids deduplicated in order.
        grouped.setdefault(str(message_id), {}).setdefault(value, {})[str(member_id)] = None
    return [
        _message(
            row,
            viewer,
            tuple(
                ReactionGroup(value=value, count=len(members), member_ids=tuple(members))
                for value, members in grouped.get(str(row.id), {}).items()
            ),
        )
        for row in rows
    ]


# --- visibility -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Visible:
    """A message as found for a caller: its row, the caller's membership of its workspace,
    and whether the caller takes part in its conversation (True for channel messages)."""

    row: Any
    viewer: Membership
    participant: bool


async def _find_message(
    conn: AsyncConnection, message_id: str | None, user_id: str | None, *, threads: bool = False
) -> _Visible | None:
    """The message and the caller's standing in one query (with its thread summary when
    ``threads``); None if missing or the caller is not a member of its workspace. DM
    participation is reported, not enforced."""
    key = as_id(message_id)
    if key is None or user_id is None:
        return None
    row = (
        await conn.execute(
            _FIND_WITH_THREAD if threads else _FIND, {"key": key, "user_id": user_id}
        )
    ).one_or_none()
    if row is None:
        return None
    viewer = Membership(str(row.viewer_id), str(row.workspace_id), user_id, Role(row.viewer_role))
    participant = row.conversation_id is None or _is_participant(
        viewer.member_id, row.member_one_id, row.member_two_id
    )
    return _Visible(row, viewer, participant)


async def _visible_message(
    conn: AsyncConnection, message_id: str | None, user_id: str | None, *, threads: bool = False
) -> _Visible | None:
    """The message if the caller may read it (member, and participant for DMs), else None."""
    found = await _find_message(conn, message_id, user_id, threads=threads)
    return found if found is not None and found.participant else None


async def _require_visible(tx: Mutation, message_id: str, *, threads: bool = False) -> _Visible:
    found = await _visible_message(tx.conn, message_id, tx.user_id, threads=threads)
    if found is None:
        raise NotFoundError(MESSAGE_NOT_FOUND)
    return found


def _context_statement(kind: str) -> sa.Select[Any]:
    """The caller's member row (:data:`MEMBER_COLUMNS`) with the context a new message
    goes into, joined only when it is in the same workspace (bound: ``workspace_id``,
    ``user_id``, ``ctx``; a NULL ``ctx`` matches nothing)."""
    me = t.members
    columns: list[Any] = list(MEMBER_COLUMNS)
    source: Any = me.join(t.users, t.users.c.id == me.c.user_id)
    if kind == "parent":
        parent = t.messages.alias("parent")
        source = source.outerjoin(
            parent,
            sa.and_(parent.c.id == sa.bindparam("ctx"), parent.c.workspace_id == me.c.workspace_id),
        ).outerjoin(_cv, _cv.c.id == parent.c.conversation_id)
        columns += [
            parent.c.id.label("ctx_parent_id"),
            parent.c.channel_id.label("ctx_channel_id"),
            parent.c.conversation_id.label("ctx_conversation_id"),
            parent.c.parent_message_id.label("ctx_grandparent_id"),
        ]
    elif kind == "channel":
        ch = t.channels
        source = source.outerjoin(
            ch, sa.and_(ch.c.id == sa.bindparam("ctx"), ch.c.workspace_id == me.c.workspace_id)
        )
        columns.append(ch.c.id.label("ctx_channel_id"))
    else:
        source = source.outerjoin(
            _cv,
            sa.and_(_cv.c.id == sa.bindparam("ctx"), _cv.c.workspace_id == me.c.workspace_id),
        )
        columns.append(_cv.c.id.label("ctx_conversation_id"))
    if kind != "channel":
        columns += [
            _cv.c.member_one_id.label("ctx_member_one_id"),
            _cv.c.member_two_id.label("ctx_member_two_id"),
        ]
    return (
        sa.select(*columns)
        .select_from(source)
        .where(
            me.c.workspace_id == sa.bindparam("workspace_id"),
            me.c.user_id == sa.bindparam("user_id"),
        )
    )


_CONTEXTS: Final = {
    kind: _context_statement(kind) for kind in ("parent", "channel", "conversation")
}


# --- stores ---------------------------------------------------------------------------------


class MessageStoreImpl(Store):
    """``persistence.message`` of the self-host provider.

    Every call needs a session (NotAuthenticatedError otherwise). Messages the caller may
    not read behave like missing ones: ``get_by_id`` returns None, ``get`` an empty page,
    mutations raise ``NotFoundError("Message not found.")``.
    """

    async def create(
        self,
        workspace_id: str,
        *,
        body: str,
        channel_id: str | None = None,
        conversation_id: str | None = None,
        parent_message_id: str | None = None,
        image_id: str | None = None,
    ) -> Message:
        """Post as the caller in one transaction of a few statements.

        The context is a channel, a conversation, or a parent message; a reply takes its
        parent's channel or conversation (a ``channel_id``/``conversation_id`` given with a
        parent must be the parent's). ``image_id`` must be the caller's own upload in this
        workspace, not yet attached to anything; it is marked attached. Returns the message
        with its author, no reactions and an empty thread summary.

        Raises:
            InvalidInputError: empty body, no context or both a channel and a conversation,
                a context that differs from the parent's, ``Cannot reply to a thread reply.``
            PayloadTooLargeError: body over ``limits.max_message_bytes``.
            NotFoundError: ``Workspace not found.`` (not a member), ``Channel not found.``,
                ``Conversation not found.`` (also for non-participants),
                ``Parent message not found.``, ``Image not found.``, each also for ids of
                another workspace.
            ConflictError: the image is already attached to something.
        """
        body = validate_message_body(body, max_bytes=self.limits.max_message_bytes)
        if parent_message_id is None:
            if channel_id is None and conversation_id is None:
                raise InvalidInputError(
                    "A message needs a channel, a conversation or a parent message.",
                    details={"field": "channel_id"},
                )
            if channel_id is not None and conversation_id is not None:
                raise InvalidInputError(
                    "A message belongs to a channel or a conversation, not both.",
                    details={"field": "conversation_id"},
                )
        if image_id is not None:
            await settle_upload(self._rt, image_id, field="image_id")
        async with self.mutation() as tx:
            row = await self._context(
                tx, workspace_id, channel_id, conversation_id, parent_message_id
            )
            if row is None:
                raise NotFoundError(WORKSPACE_NOT_FOUND)
            me = Membership(str(row.id), str(row.workspace_id), tx.user_id, Role(row.role))
            parent_key: str | None = None
            if parent_message_id is not None:
                channel_key, conversation_key = self._reply_context(
                    row, me, channel_id, conversation_id
                )
                parent_key = str(row.ctx_parent_id)
            elif channel_id is not None:
                if row.ctx_channel_id is None:
                    raise NotFoundError(CHANNEL_NOT_FOUND)
                channel_key, conversation_key = str(row.ctx_channel_id), None
            elif row.ctx_conversation_id is None or not _is_participant(
                me.member_id, row.ctx_member_one_id, row.ctx_member_two_id
            ):
                raise NotFoundError(CONVERSATION_NOT_FOUND)
            else:
                channel_key, conversation_key = None, str(row.ctx_conversation_id)
            image_key = None
            if image_id is not None:
                image_key = await attach_image(
                    tx, me.workspace_id, image_id, current=None, field="image_id"
                )
            now = utcnow()
            message_id = str(uuid.uuid4())
            await tx.conn.execute(
                _m.insert().values(
                    id=message_id,
                    workspace_id=me.workspace_id,
                    member_id=me.member_id,
                    channel_id=channel_key,
                    conversation_id=conversation_key,
                    parent_message_id=parent_key,
                    body=body,
                    image_id=image_key,
                    created_at=now,
                )
            )
            tx.emit(
                me.workspace_id,
                "message.created",
                MessageCreatedPayload(
                    message_id=message_id,
                    channel_id=channel_key,
                    conversation_id=conversation_key,
                    parent_message_id=parent_key,
                    body=body,
                    has_attachment=image_key is not None,
                ),
            )
            tx.audit("message.create", "message", message_id, me.workspace_id)
            tx.index("message", message_id, me.workspace_id, body)
        return Message(
            id=message_id,
            workspace_id=me.workspace_id,
            member_id=me.member_id,
            body=body,
            channel_id=channel_key,
            conversation_id=conversation_key,
            parent_message_id=parent_key,
            image_id=image_key,
            created_at=now,
            member=member_from_row(row, show_email=True),
        )

    @staticmethod
    async def _context(
        tx: Mutation,
        workspace_id: str,
        channel_id: str | None,
        conversation_id: str | None,
        parent_message_id: str | None,
    ) -> Any:
        """The caller's member row and the context it posts into (one query): the parent
        when given, else the channel, else the conversation with its two members.

        A foreign or malformed id reads exactly like a missing one (its ``ctx_*`` columns
        are NULL). None when the caller is not a member of the workspace.
        """
        workspace_key = as_id(workspace_id)
        if workspace_key is None:
            return None
        given: str | None
        if parent_message_id is not None:
            kind, given = "parent", parent_message_id
        elif channel_id is not None:
            kind, given = "channel", channel_id
        else:
            kind, given = "conversation", conversation_id
        parameters = {"workspace_id": workspace_key, "user_id": tx.user_id, "ctx": as_id(given)}
        return (await tx.conn.execute(_CONTEXTS[kind], parameters)).one_or_none()

    @staticmethod
    def _reply_context(
        row: Any, me: Membership, channel_id: str | None, conversation_id: str | None
    ) -> tuple[str | None, str | None]:
        """Check a reply against its parent; returns the (channel, conversation) it inherits."""
        if row.ctx_parent_id is None or (
            row.ctx_conversation_id is not None
            and not _is_participant(me.member_id, row.ctx_member_one_id, row.ctx_member_two_id)
        ):
            raise NotFoundError(PARENT_NOT_FOUND)
        if row.ctx_grandparent_id is not None:
            raise InvalidInputError(
                "Cannot reply to a thread reply.", details={"field": "parent_message_id"}
            )
        inherited = (_opt(row.ctx_channel_id), _opt(row.ctx_conversation_id))
        if channel_id is not None and as_id(channel_id) != inherited[0]:
            raise InvalidInputError(
                "A reply must be in its parent message's channel.",
                details={"field": "channel_id"},
            )
        if conversation_id is not None and as_id(conversation_id) != inherited[1]:
            raise InvalidInputError(
                "A reply must be in its parent message's conversation.",
                details={"field": "conversation_id"},
            )
        return inherited

    async def get(
        self,
        *,
        channel_id: str | None = None,
        conversation_id: str | None = None,
        parent_message_id: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> Page[Message]:
        """A page of messages, newest first, with their read model.

        ``channel_id`` or ``conversation_id`` lists top-level messages; ``parent_message_id``
        lists that (visible) parent's replies, and a channel or conversation given with it
        must be the parent's (else the page is empty). ``limit`` is clamped to
        ``1..limits.max_page_size``. Pass the returned ``cursor`` back for the next page;
        messages posted meanwhile never shift later pages. Outsiders, non-participants and
        unknown ids get an empty page.

        Raises:
            InvalidInputError: no context, a channel and a conversation together, or a
                malformed ``cursor``.
        """
        if parent_message_id is None:
            if channel_id is None and conversation_id is None:
                raise InvalidInputError(
                    "Give a channel, a conversation or a parent message.",
                    details={"field": "channel_id"},
                )
            if channel_id is not None and conversation_id is not None:
                raise InvalidInputError(
                    "Give a channel or a conversation, not both.",
                    details={"field": "conversation_id"},
                )
        before_at, before_id = _decode_cursor(cursor) if cursor is not None else _FIRST_POSITION
        size = max(1, min(int(limit), self.limits.max_page_size))
        given: str | None
        if parent_message_id is not None:
            context, given = "parent", parent_message_id
        elif channel_id is not None:
            context, given = "channel", channel_id
        else:
            context, given = "conversation", conversation_id
        key = as_id(given)
        async with self.query() as q:
            if key is None:
                return Page(items=())
            parameters = {
                "key": key,
                "user_id": q.user_id,
                "before_at": before_at,
                "before_id": before_id,
                "size": size + 1,  # one row more than asked tells whether a page follows
            }
            rows = (await q.conn.execute(_PAGES[context], parameters)).all()
            if not rows or (
                # Replies share their parent's context: one that contradicts it matches none.
                context == "parent"
                and (
                    (channel_id is not None and as_id(channel_id) != _opt(rows[0].channel_id))
                    or (
                        conversation_id is not None
                        and as_id(conversation_id) != _opt(rows[0].conversation_id)
                    )
                )
            ):
                return Page(items=())
            first = rows[0]
            viewer = Membership(
                str(first.viewer_id),
                str(first.workspace_id),
                str(q.user_id),
                Role(first.viewer_role),
            )
            items = await _read_models(q.conn, rows[:size], viewer)
        if len(rows) <= size:
            return Page(items=tuple(items))
        last = items[-1]
        return Page(
            items=tuple(items), cursor=_encode_cursor(last.created_at, last.id), has_more=True
        )

    async def get_by_id(self, message_id: str) -> Message | None:
        """The message with reactions and thread summary if the caller may read it, else
        None (missing, another workspace, or a DM the caller does not take part in)."""
        async with self.query() as q:
            found = await _visible_message(q.conn, message_id, q.user_id, threads=True)
            if found is None:
                return None
            (message,) = await _read_models(q.conn, [found.row], found.viewer)
        return message

    async def update(self, message_id: str, *, body: str) -> Message:
        """Replace the body (the author only); sets ``updated_at``, emits
        ``message.updated`` and re-indexes the message.

        Raises:
            InvalidInputError / PayloadTooLargeError: a bad body.
            NotFoundError: ``Message not found.`` (also when the caller may not read it).
            PermissionDeniedError: the caller is not the author.
        """
        body = validate_message_body(body, max_bytes=self.limits.max_message_bytes)
        async with self.mutation() as tx:
            found = await _require_visible(tx, message_id, threads=True)
            if str(found.row.member_id) != found.viewer.member_id:
                raise PermissionDeniedError("Only the author can edit this message.")
            key, workspace_key, now = str(found.row.id), found.viewer.workspace_id, utcnow()
            await tx.conn.execute(
                _m.update().where(_m.c.id == key).values(body=body, updated_at=now)
            )
            tx.emit(workspace_key, "message.updated", {"message_id": key, "body": body})
            tx.audit("message.update", "message", key, workspace_key)
            tx.index("message", key, workspace_key, body)
            (message,) = await _read_models(tx.conn, [found.row], found.viewer)
        return message.model_copy(update={"body": body, "updated_at": now})

    async def remove(self, message_id: str) -> None:
        """Delete a message with its replies, reactions and images (one ``message.deleted``
        per removed message).

        The author may delete their message; admins and the owner may delete any message of
        their workspace, direct-conversation messages included (DESIGN decision 2), although
        they cannot read those.

        Raises:
            NotFoundError: ``Message not found.`` (missing, another workspace, or a DM the
                caller neither takes part in nor administers).
            PermissionDeniedError: a plain member deleting someone else's message.
        """
        async with self.mutation() as tx:
            found = await _find_message(tx.conn, message_id, tx.user_id)
            if found is None or not (found.participant or found.viewer.is_admin):
                raise NotFoundError(MESSAGE_NOT_FOUND)
            is_author = str(found.row.member_id) == found.viewer.member_id
            if not (is_author or found.viewer.is_admin):
                raise PermissionDeniedError(
                    "Only the author or a workspace admin can delete this message."
                )
            key, workspace_key = str(found.row.id), found.viewer.workspace_id
            await delete_messages_where(tx, workspace_key, _m.c.id == key)
            tx.audit("message.delete", "message", key, workspace_key, {"by_author": is_author})


class ReactionStoreImpl(Store):
    """``persistence.reaction`` of the self-host provider."""

    async def toggle(self, message_id: str, value: str) -> ReactionToggle:
        """Add the caller's reaction ``value`` to a message they can read, or remove it.

        Race-free against the same member's concurrent toggles: each call is one step of a
        sequence of adds and removes (the ``UNIQUE(message_id, member_id, value)``
        constraint orders them), so an even number of concurrent toggles leaves no reaction
        and an odd number one. Emits ``reaction.toggled``.

        Raises:
            InvalidInputError: ``Invalid reaction.``
            NotFoundError: ``Message not found.`` (also when the caller may not read it).
        """
        value = validate_reaction(value)
        async with self.mutation() as tx:
            found = await _require_visible(tx, message_id)
            key, me = str(found.row.id), found.viewer
            added = await self._flip(tx, key, me, value)
            tx.emit(
                me.workspace_id,
                "reaction.toggled",
                {"message_id": key, "reaction": value, "added": added, "member_id": me.member_id},
            )
        return ReactionToggle(message_id=key, value=value, added=added)

    @staticmethod
    async def _flip(tx: Mutation, message_key: str, me: Membership, value: str) -> bool:
        """Delete the reaction if present, else insert it; True when inserted.

        ``INSERT .. ON CONFLICT DO NOTHING`` is the race-free form of "insert, and on a
        unique violation treat the row as already present" that keeps a PostgreSQL
        transaction usable: a concurrent toggle that inserted the row first makes this
        round insert nothing, and the next round (which sees that committed row) removes it.
        """
        r = t.reactions
        mine = sa.and_(
            r.c.message_id == message_key, r.c.member_id == me.member_id, r.c.value == value
        )
        insert = postgresql.insert if tx.conn.dialect.name == "postgresql" else sqlite.insert
        for _ in range(_TOGGLE_ROUNDS):
            if (await tx.conn.execute(r.delete().where(mine))).rowcount:
                return False
            inserted = await tx.conn.execute(
                insert(r)
                .values(
                    id=str(uuid.uuid4()),
                    workspace_id=me.workspace_id,
                    message_id=message_key,
                    member_id=me.member_id,
                    value=value,
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=[r.c.message_id, r.c.member_id, r.c.value])
                # RETURNING, not rowcount: drivers need not report an INSERT's row count.
                .returning(r.c.id)
            )
            if inserted.first() is not None:
                return True
        raise BackendUnavailableError(retry_after=1)

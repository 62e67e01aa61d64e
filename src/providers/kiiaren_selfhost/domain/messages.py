"""Messages, threads and reactions (reference rows 19-24, read model 3.4; bugs S1, S2, C1, C6,
C8 fixed).

Visibility: a message is visible to the members of its workspace, and a message of a direct
conversation (or a reply in one) only to the conversation's two participants. Anything else
behaves like a missing message.

The read model of a page is one statement whatever the page size: the page, joined with
the caller's live session and membership (authorisation), its authors (member and user),
and carrying each message's reactions (a JSON aggregate) and thread summary (correlated
subqueries over the ``(parent_message_id, created_at, id)`` index). A page is a keyset
slice over ``(created_at, id)``, newest first, with an opaque cursor. Creating a message
is one read of the caller's session, membership and context, the insert, and the event log
(its counter and row: one statement on PostgreSQL, two on SQLite).

Rows read back from our own tables become models without validation (``model_construct``):
the column types already produced the values the models hold; input is validated.

The statements are built once at import (values go in as bound parameters), so a request
pays for execution, not for constructing SQL.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
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
    Member,
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
from kiiaren_selfhost.db.types import hyphenate_id
from kiiaren_selfhost.domain._access import Membership, as_id
from kiiaren_selfhost.domain._content import attach_image, settle_upload
from kiiaren_selfhost.domain._unit import Mutation, Store
from kiiaren_selfhost.domain._views import (
    MEMBER_COLUMNS,
    TrustedBuilder,
    member_from_row,
    member_model,
)
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


def _reaction_list(src: Any, dialect: str) -> Any:
    """A correlated subquery: the reactions of the message ``src.c.id`` as JSON text,
    ``[[value, member_id], ...]`` in ``(created_at, id)`` order (``NULL`` or ``[]`` for none).

    PostgreSQL orders inside the aggregate; SQLite (no ``ORDER BY`` in aggregates before
    3.44) aggregates an ordered subquery, which it never flattens into an aggregate.
    """
    r = t.reactions
    if dialect == "postgresql":
        aggregated = sa.func.json_agg(
            postgresql.aggregate_order_by(
                sa.func.json_build_array(r.c.value, r.c.member_id), r.c.created_at, r.c.id
            )
        )
        return (
            sa.select(sa.cast(aggregated, sa.Text()))
            .where(r.c.message_id == src.c.id)
            .scalar_subquery()
        )
    ordered = (
        sa.select(r.c.value, r.c.member_id)
        .where(r.c.message_id == src.c.id)
        .order_by(r.c.created_at, r.c.id)
        .correlate(src)
        .subquery("reaction_rows")
    )
    return (
        sa.select(
            sa.func.json_group_array(
                sa.func.json_array(ordered.c.value, ordered.c.member_id), type_=sa.Text()
            )
        )
        .select_from(ordered)
        .scalar_subquery()
    )


def _read_model_query(
    src: Any, *, threads: bool, reactions: bool, dialect: str
) -> tuple[list[Any], Any]:
    """The columns and FROM clause of the read model of the messages in ``src`` (the
    messages table, or a subquery of its rows): each message with its author's member and
    user columns (see :func:`_message`), with ``reactions`` its reactions (JSON text, see
    :func:`_reaction_list`) and with ``threads`` its thread summary.

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
    if reactions:
        columns.append(_reaction_list(src, dialect).label("reactions_json"))
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


_session = t.auth_sessions


def _live_session(user_id: Any) -> Any:
    """Join condition: the caller's session (bound: ``session_id``, ``now``) is live, i.e.
    exactly what :func:`kiiaren_selfhost.session.check_session` checks."""
    return sa.and_(
        _session.c.id == sa.bindparam("session_id", type_=_session.c.id.type),
        _session.c.user_id == user_id,
        _session.c.revoked_at.is_(None),
        _session.c.expires_at > sa.bindparam("now", type_=_session.c.expires_at.type),
    )


def _with_viewer(source: Any, src: Any, *, session: bool = False) -> tuple[list[Any], Any]:
    """Join the caller's membership of each message's workspace (bound: ``user_id``) and the
    message's conversation onto ``source``: messages of workspaces the caller is not a member
    of drop out. With ``session``, the caller's live session too (see :func:`_live_session`):
    no rows at all when it has ended. Returns the added columns (``viewer_id``,
    ``viewer_role`` and the conversation's two members) and the new FROM clause."""
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
    if session:
        source = source.join(_session, _live_session(_viewer.c.user_id))
    return columns, source


def _page_statement(context: str, dialect: str) -> sa.Select[Any]:
    """A page of the messages of a channel or conversation (top level) or of a parent (its
    replies), with their read model, as the caller may see it.

    Bound: ``key`` (the context's id), ``before_at`` / ``before_id`` (the keyset position),
    ``size``, ``user_id``, ``session_id``, ``now``. Newest first. Rows the caller may not
    read (not a member of the workspace, or not a participant of the conversation) are
    dropped, and so is every row when the caller's session has ended: one statement does
    the session check, the authorisation and the read, reactions included.

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
    columns, source = _read_model_query(
        page, threads=context != "parent", reactions=True, dialect=dialect
    )
    viewer_columns, source = _with_viewer(source, page, session=True)
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


_DIALECTS: Final = ("postgresql", "sqlite")

_PAGES: Final = {
    (dialect, context): _page_statement(context, dialect)
    for dialect in _DIALECTS
    for context in ("channel", "conversation", "parent")
}

# The first page starts after the newest possible position (the keyset condition stays, so
# every page of a context runs the same statement).
_FIRST_POSITION: Final = (
    datetime(9999, 12, 31, tzinfo=UTC),
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
)


def _find_statement(*, threads: bool, dialect: str) -> sa.Select[Any]:
    """One message (bound: ``key``) with, when ``threads``, its whole read model (reactions
    and thread summary), the caller's membership of its workspace and its conversation's
    members (bound: ``user_id``); no row for outsiders."""
    columns, source = _read_model_query(_m, threads=threads, reactions=threads, dialect=dialect)
    viewer_columns, source = _with_viewer(source, _m)
    return (
        sa.select(*columns, *viewer_columns)
        .select_from(source)
        .where(_m.c.id == sa.bindparam("key"))
    )


# The statement without the thread summary reads no reactions either, and is the same on
# both databases.
_FIND: Final = _find_statement(threads=False, dialect="sqlite")
_FIND_WITH_THREAD: Final = {
    dialect: _find_statement(threads=True, dialect=dialect) for dialect in _DIALECTS
}


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


_NO_THREAD: Final = ThreadSummary()
_THREAD: Final = TrustedBuilder(
    ThreadSummary, ("count", "last_reply_at", "last_replier_name", "last_replier_image")
)
_GROUP: Final = TrustedBuilder(ReactionGroup, ("value", "count", "member_ids"))
_READ_MODEL_FIELDS: Final = (
    "id",
    "workspace_id",
    "member_id",
    "body",
    "channel_id",
    "conversation_id",
    "parent_message_id",
    "image_id",
    "created_at",
    "updated_at",
    "member",
    "reactions",
    "thread",
)
_READ_MODEL: Final = TrustedBuilder(Message, _READ_MODEL_FIELDS)
"""A message of a page or ``get_by_id`` (``image_url`` is left to the client)."""
_CREATED: Final = TrustedBuilder(
    Message,
    [name for name in _READ_MODEL_FIELDS if name not in ("updated_at", "reactions", "thread")],
)
"""A message as ``create`` returns it (no update, reactions or replies yet)."""


def _created(
    message_id: str,
    workspace_id: str,
    body: str,
    channel_id: str | None,
    conversation_id: str | None,
    parent_message_id: str | None,
    image_id: str | None,
    created_at: datetime,
    member: Member,
) -> Message:
    return _CREATED(  # type: ignore[no-any-return]
        {
            "id": message_id,
            "workspace_id": workspace_id,
            "member_id": member.id,
            "body": body,
            "channel_id": channel_id,
            "conversation_id": conversation_id,
            "parent_message_id": parent_message_id,
            "image_id": image_id,
            "image_url": None,
            "created_at": created_at,
            "updated_at": None,
            "member": member,
            "reactions": (),
            "thread": _NO_THREAD,
        }
    )


def _thread(row: Any) -> ThreadSummary:
    """The thread summary of a read-model row (empty for rows without summary columns)."""
    count = getattr(row, "thread_count", 0)
    if not count:
        return _NO_THREAD
    return _THREAD(  # type: ignore[no-any-return]
        {
            "count": count,
            "last_reply_at": row.thread_last_at,
            "last_replier_name": row.thread_name,
            "last_replier_image": row.thread_image,
        }
    )


def _reactions(reactions_json: str | None) -> tuple[ReactionGroup, ...]:
    """Reactions grouped by value in first-seen order, member ids deduplicated in order,
    from :func:`_reaction_list`'s JSON (SQLite yields ids as 32 hex digits)."""
    if not reactions_json or reactions_json == "[]":
        return ()
    # dicts keep insertion order: first-seen values, and member ids deduplicated in order.
    grouped: dict[str, dict[str, None]] = {}
    for value, member_id in json.loads(reactions_json):
        grouped.setdefault(value, {})[hyphenate_id(member_id)] = None
    return tuple(
        _GROUP({"value": value, "count": len(members), "member_ids": tuple(members)})
        for value, members in grouped.items()
    )


def _message(row: Any, viewer: Membership) -> Message:
    """A read-model row (see :func:`_read_model_query`) as the viewer sees it.

    The author's email is shown to admin viewers and to the author; ``image_url`` is left
    None: clients resolve ``image_id`` through ``storage.get_url``. The models are built
    without validation: every value comes from our own rows, typed by the column types.
    """
    member_id = row.member_id
    author = member_model(
        member_id,
        row.author_user_id,
        row.workspace_id,
        row.author_role,
        row.author_joined_at,
        row.author_name,
        row.author_image,
        row.author_email if viewer.is_admin or viewer.member_id == member_id else None,
    )
    return _READ_MODEL(  # type: ignore[no-any-return]
        {
            "id": row.id,
            "workspace_id": row.workspace_id,
            "member_id": member_id,
            "body": row.body,
            "channel_id": row.channel_id,
            "conversation_id": row.conversation_id,
            "parent_message_id": row.parent_message_id,
            "image_id": row.image_id,
            "image_url": None,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "member": author,
            "reactions": _reactions(getattr(row, "reactions_json", None)),
            "thread": _thread(row),
        }
    )


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
            _FIND_WITH_THREAD[conn.dialect.name] if threads else _FIND,
            {"key": key, "user_id": user_id},
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
    ``user_id``, ``ctx``; a NULL ``ctx`` matches nothing), while the caller's session is
    live (bound: ``session_id``, ``now``; no row once it has ended)."""
    me = t.members
    columns: list[Any] = list(MEMBER_COLUMNS)
    source: Any = me.join(t.users, t.users.c.id == me.c.user_id).join(
        _session, _live_session(me.c.user_id)
    )
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

_e = t.events
_POST_IN_CHANNEL_PG: Final = (
    # PostgreSQL runs data-modifying CTEs: the whole create is this one statement.
    sa.text(
        "WITH me AS ("
        " SELECT m.id, m.user_id, m.workspace_id, m.role, m.joined_at,"
        " u.name AS user_name, u.image AS user_image, u.email AS user_email"
        " FROM members AS m JOIN users AS u ON u.id = m.user_id"
        " JOIN auth_sessions AS s ON s.id = :session_id AND s.user_id = m.user_id"
        " AND s.revoked_at IS NULL AND s.expires_at > :now"
        " JOIN channels AS c ON c.id = :channel_id AND c.workspace_id = m.workspace_id"
        " WHERE m.workspace_id = :workspace_id AND m.user_id = :user_id),"
        " written AS ("
        " INSERT INTO messages (id, workspace_id, member_id, channel_id, body, created_at)"
        " SELECT :message_id, me.workspace_id, me.id, :channel_id, :body, :created_at FROM me"
        " RETURNING workspace_id),"
        " bumped AS ("
        " UPDATE event_streams SET last_seq = last_seq + 1"
        " WHERE workspace_id = (SELECT workspace_id FROM written) RETURNING last_seq),"
        " logged AS ("
        " INSERT INTO events (workspace_id, seq, id, type, actor_id, payload, created_at)"
        " SELECT :workspace_id, bumped.last_seq, :event_id, :event_type, :user_id,"
        " :payload, :event_at FROM bumped RETURNING seq)"
        " SELECT me.*, (SELECT seq FROM logged) AS seq FROM me"
    )
    .bindparams(
        sa.bindparam("session_id", type_=t.auth_sessions.c.id.type),
        sa.bindparam("now", type_=t.auth_sessions.c.expires_at.type),
        sa.bindparam("channel_id", type_=_m.c.channel_id.type),
        sa.bindparam("workspace_id", type_=_m.c.workspace_id.type),
        sa.bindparam("user_id", type_=t.members.c.user_id.type),
        sa.bindparam("message_id", type_=_m.c.id.type),
        sa.bindparam("body", type_=_m.c.body.type),
        sa.bindparam("created_at", type_=_m.c.created_at.type),
        sa.bindparam("event_id", type_=_e.c.id.type),
        sa.bindparam("event_type", type_=_e.c.type.type),
        sa.bindparam("payload", type_=_e.c.payload.type),
        sa.bindparam("event_at", type_=_e.c.created_at.type),
    )
    .columns(*MEMBER_COLUMNS, _e.c.seq)
)
"""A message in a channel, its ``message.created`` event logged with the next seq, in one
statement that checks the caller's live session, membership and the channel (bound as
named). Returns the caller's member row (:data:`MEMBER_COLUMNS`) and the event's ``seq``
(NULL when the stream has no row yet: nothing logged), or no row and no write when any
check fails: the caller then takes the general path, which says why."""

_INSERT_MESSAGE: Final = _m.insert()


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
        elif (
            channel_id is not None
            and parent_message_id is None
            and self._rt.db.dialect_name == "postgresql"
        ):
            posted = await self._post_in_channel(workspace_id, channel_id, body)
            if posted is not None:
                return posted
            # Refused: the general path below finds out why.
        async with self.mutation(session_in_statement=True) as tx:
            row = await self._context(
                tx, workspace_id, channel_id, conversation_id, parent_message_id
            )
            assert tx.session is not None
            if row is None:
                await tx.session.confirm()  # an ended session also reads as no row
                raise NotFoundError(WORKSPACE_NOT_FOUND)
            tx.session.seen()
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
                _INSERT_MESSAGE,
                {
                    "id": message_id,
                    "workspace_id": me.workspace_id,
                    "member_id": me.member_id,
                    "channel_id": channel_key,
                    "conversation_id": conversation_key,
                    "parent_message_id": parent_key,
                    "body": body,
                    "image_id": image_key,
                    "created_at": now,
                },
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
        return _created(
            message_id,
            me.workspace_id,
            body,
            channel_key,
            conversation_key,
            parent_key,
            image_key,
            now,
            member_from_row(row, show_email=True),
        )

    async def _post_in_channel(
        self, workspace_id: str, channel_id: str, body: str
    ) -> Message | None:
        """PostgreSQL: a plain channel message as one statement (:data:`_POST_IN_CHANNEL_PG`);
        None, with nothing written, when a check fails (the session included)."""
        workspace_key, channel_key = as_id(workspace_id), as_id(channel_id)
        if workspace_key is None or channel_key is None:
            return None
        async with self.mutation(session_in_statement=True) as tx:
            assert tx.session is not None
            message_id, now = str(uuid.uuid4()), utcnow()
            event = tx.new_event(
                workspace_key,
                "message.created",
                MessageCreatedPayload(
                    message_id=message_id,
                    channel_id=channel_key,
                    conversation_id=None,
                    parent_message_id=None,
                    body=body,
                    has_attachment=False,
                ),
            )
            row = (
                await tx.conn.execute(
                    _POST_IN_CHANNEL_PG,
                    {
                        "session_id": tx.session.session_id,
                        "now": tx.session.now,
                        "channel_id": channel_key,
                        "workspace_id": workspace_key,
                        "user_id": tx.user_id,
                        "message_id": message_id,
                        "body": body,
                        "created_at": now,
                        "event_id": event.id,
                        "event_type": event.type,
                        "payload": event.model_dump(mode="json")["payload"],
                        "event_at": event.timestamp,
                    },
                )
            ).one_or_none()
            if row is None:
                tx.session.seen()  # nothing written; the general path checks everything
                return None
            tx.session.seen()
            tx.logged_with(event, row.seq)
            tx.audit("message.create", "message", message_id, workspace_key)
            tx.index("message", message_id, workspace_key, body)
        return _created(
            message_id,
            workspace_key,
            body,
            channel_key,
            None,
            None,
            None,
            now,
            member_from_row(row, show_email=True),
        )

    @staticmethod
    async def _context(
        tx: Mutation,
        workspace_id: str,
        channel_id: str | None,
        conversation_id: str | None,
        parent_message_id: str | None,
    ) -> Any:
        """The caller's member row and the context it posts into (one query, which also
        checks the session: ``tx.session``): the parent when given, else the channel, else
        the conversation with its two members.

        A foreign or malformed id reads exactly like a missing one (its ``ctx_*`` columns
        are NULL). None when the caller is not a member of the workspace, or the session
        has ended.
        """
        workspace_key = as_id(workspace_id)
        if workspace_key is None or tx.session is None:
            return None
        given: str | None
        if parent_message_id is not None:
            kind, given = "parent", parent_message_id
        elif channel_id is not None:
            kind, given = "channel", channel_id
        else:
            kind, given = "conversation", conversation_id
        parameters = {
            "workspace_id": workspace_key,
            "user_id": tx.user_id,
            "ctx": as_id(given),
            "session_id": tx.session.session_id,
            "now": tx.session.now,
        }
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
        async with self.session_query(one_statement=True) as q:
            if key is None:
                await q.session.confirm()
                return Page(items=())
            parameters = {
                "key": key,
                "before_at": before_at,
                "before_id": before_id,
                "size": size + 1,  # one row more than asked tells whether a page follows
                **q.bind(),
            }
            statement = _PAGES[q.conn.dialect.name, context]
            rows = (await q.conn.execute(statement, parameters)).all()
            if not rows:
                await q.session.confirm()  # an ended session also reads as no rows
                return Page(items=())
            q.session.seen()
            if (
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
            str(first.viewer_id), str(first.workspace_id), q.user_id, Role(first.viewer_role)
        )
        items = [_message(row, viewer) for row in rows[:size]]
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
        return _message(found.row, found.viewer)

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
            message = _message(found.row, found.viewer)
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

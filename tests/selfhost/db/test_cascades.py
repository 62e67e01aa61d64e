"""Hard deletes cascade completely (design decision 4), and what must outlive a row does."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_selfhost.db import Database, new_id, tables, utcnow
from tests.selfhost.db import rows

pytestmark = pytest.mark.anyio


@dataclass
class Workspace:
    """Ids of a workspace populated with one of everything."""

    id: str
    owner_user: str
    owner: str
    other: str
    channel: str
    conversation: str
    message: str
    reply: str
    dm: str
    doc: str
    child_doc: str
    board: str
    invite: str
    channel_invite: str
    domain: str
    ids: dict[str, list[str]] = field(default_factory=dict)


async def populate(conn: AsyncConnection) -> Workspace:
    workspace_id, owner = await rows.workspace(conn)
    owner_user = await conn.scalar(
        sa.select(tables.members.c.user_id).where(tables.members.c.id == owner)
    )
    other = await rows.member(conn, workspace_id)
    channel = await rows.channel(conn, workspace_id)
    conversation = await rows.conversation(conn, workspace_id, owner, other)
    message = await rows.message(conn, workspace_id, owner, channel_id=channel)
    reply = await rows.message(
        conn, workspace_id, other, channel_id=channel, parent_message_id=message
    )
    dm = await rows.message(conn, workspace_id, other, conversation_id=conversation)
    await rows.reaction(conn, workspace_id, message, other)
    await rows.reaction(conn, workspace_id, reply, owner)
    await rows.reaction(conn, workspace_id, dm, owner)
    doc = await rows.insert(
        conn, tables.docs, workspace_id=workspace_id, title="Doc", created_by=owner_user
    )
    child_doc = await rows.insert(
        conn, tables.docs, workspace_id=workspace_id, title="Child", parent_document_id=doc
    )
    board = await rows.insert(
        conn, tables.boards, workspace_id=workspace_id, title="Board", created_by=owner_user
    )
    invite = await rows.invite(conn, workspace_id, created_by=owner_user)
    channel_invite = await rows.invite(
        conn, workspace_id, scope_type="channel", scope_channel_id=channel
    )
    await rows.insert(
        conn, tables.invite_redemptions, invite_id=invite, user_id=owner_user, member_id=owner
    )
    domain = await rows.domain(conn, workspace_id, f"{new_id()[:8]}.example.test")
    return Workspace(
        id=workspace_id,
        owner_user=str(owner_user),
        owner=owner,
        other=other,
        channel=channel,
        conversation=conversation,
        message=message,
        reply=reply,
        dm=dm,
        doc=doc,
        child_doc=child_doc,
        board=board,
        invite=invite,
        channel_invite=channel_invite,
        domain=domain,
    )


WORKSPACE_TABLES = (
    tables.members,
    tables.channels,
    tables.conversations,
    tables.messages,
    tables.reactions,
    tables.docs,
    tables.boards,
    tables.invite_links,
    tables.domains,
)


async def test_deleting_a_workspace_removes_everything_in_it(db: Database) -> None:
    async with db.write() as conn:
        ws = await populate(conn)
        # What must outlive the workspace row: its files and its event stream.
        await rows.insert(
            conn,
            tables.stored_objects,
            workspace_id=ws.id,
            object_key=f"{ws.id}/{new_id()}",
            content_type="image/png",
            max_bytes=1024,
            ticket_expires_at=utcnow(),
        )
        await conn.execute(
            tables.event_streams.insert().values(workspace_id=ws.id, epoch="e1", last_seq=1)
        )
        await conn.execute(
            tables.events.insert().values(
                workspace_id=ws.id, seq=1, type="workspace.created", payload={"name": "Acme"}
            )
        )
    async with db.read() as conn:
        for table in WORKSPACE_TABLES:
            assert await rows.count(conn, table, table.c.workspace_id == ws.id) > 0, table.name

    async with db.write() as conn:
        await conn.execute(tables.workspaces.delete().where(tables.workspaces.c.id == ws.id))

    async with db.read() as conn:
        for table in WORKSPACE_TABLES:
            assert await rows.count(conn, table, table.c.workspace_id == ws.id) == 0, table.name
        redemptions = tables.invite_redemptions
        assert await rows.count(conn, redemptions, redemptions.c.invite_id == ws.invite) == 0
        assert (
            await rows.count(
                conn, tables.stored_objects, tables.stored_objects.c.workspace_id == ws.id
            )
            == 1
        )
        assert (
            await rows.count(
                conn, tables.event_streams, tables.event_streams.c.workspace_id == ws.id
            )
            == 1
        )
        assert await rows.count(conn, tables.events, tables.events.c.workspace_id == ws.id) == 1
        # The users themselves stay.
        assert await rows.count(conn, tables.users, tables.users.c.id == ws.owner_user) == 1


async def test_deleting_a_message_removes_replies_and_reactions(db: Database) -> None:
    async with db.write() as conn:
        ws = await populate(conn)
        await conn.execute(tables.messages.delete().where(tables.messages.c.id == ws.message))
    async with db.read() as conn:
        messages, reactions = tables.messages, tables.reactions
        assert await rows.count(conn, messages, messages.c.id.in_([ws.message, ws.reply])) == 0
        assert (
            await rows.count(conn, reactions, reactions.c.message_id.in_([ws.message, ws.reply]))
            == 0
        )
        assert await rows.count(conn, messages, messages.c.id == ws.dm) == 1


async def test_deleting_a_channel_removes_its_messages_and_scoped_invites(db: Database) -> None:
    async with db.write() as conn:
        ws = await populate(conn)
        await conn.execute(tables.channels.delete().where(tables.channels.c.id == ws.channel))
    async with db.read() as conn:
        messages, reactions, invites = tables.messages, tables.reactions, tables.invite_links
        assert await rows.count(conn, messages, messages.c.channel_id == ws.channel) == 0
        assert await rows.count(conn, reactions, reactions.c.message_id == ws.reply) == 0
        assert await rows.count(conn, invites, invites.c.id == ws.channel_invite) == 0
        assert await rows.count(conn, invites, invites.c.id == ws.invite) == 1


async def test_deleting_a_member_removes_their_conversations_entirely(db: Database) -> None:
    async with db.write() as conn:
        ws = await populate(conn)
        await conn.execute(tables.members.delete().where(tables.members.c.id == ws.other))
    async with db.read() as conn:
        conversations, messages = tables.conversations, tables.messages
        assert await rows.count(conn, conversations, conversations.c.id == ws.conversation) == 0
        # The DM (both parties' messages) and the member's reply are gone; others' stay.
        assert await rows.count(conn, messages, messages.c.id.in_([ws.dm, ws.reply])) == 0
        assert await rows.count(conn, messages, messages.c.id == ws.message) == 1
        redemptions = tables.invite_redemptions
        assert await rows.count(conn, redemptions, redemptions.c.invite_id == ws.invite) == 1


async def test_deleting_a_doc_removes_its_descendants(db: Database) -> None:
    async with db.write() as conn:
        ws = await populate(conn)
        grandchild = await rows.insert(
            conn,
            tables.docs,
            workspace_id=ws.id,
            title="Grandchild",
            parent_document_id=ws.child_doc,
        )
        await conn.execute(tables.docs.delete().where(tables.docs.c.id == ws.doc))
    async with db.read() as conn:
        docs = tables.docs
        assert await rows.count(conn, docs, docs.c.id.in_([ws.doc, ws.child_doc, grandchild])) == 0


async def test_deleting_an_author_keeps_their_content(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        author = await rows.user(conn)
        doc = await rows.insert(
            conn, tables.docs, workspace_id=workspace_id, title="D", created_by=author
        )
        board = await rows.insert(
            conn, tables.boards, workspace_id=workspace_id, title="B", created_by=author
        )
        await conn.execute(tables.users.delete().where(tables.users.c.id == author))
    async with db.read() as conn:
        assert (
            await conn.scalar(sa.select(tables.docs.c.created_by).where(tables.docs.c.id == doc))
            is None
        )
        assert (
            await conn.scalar(
                sa.select(tables.boards.c.created_by).where(tables.boards.c.id == board)
            )
            is None
        )


async def test_deleting_a_session_removes_its_refresh_tokens(db: Database) -> None:
    async with db.write() as conn:
        user_id = await rows.user(conn)
        session = await rows.insert(
            conn, tables.auth_sessions, user_id=user_id, expires_at=utcnow()
        )
        first = await rows.insert(
            conn, tables.refresh_tokens, session_id=session, token_hash=new_id()
        )
        second = await rows.insert(
            conn, tables.refresh_tokens, session_id=session, token_hash=new_id(), parent_id=first
        )
        await conn.execute(
            tables.refresh_tokens.update()
            .where(tables.refresh_tokens.c.id == first)
            .values(used_at=utcnow(), replaced_by_id=second)
        )
        await conn.execute(
            tables.auth_sessions.delete().where(tables.auth_sessions.c.id == session)
        )
    async with db.read() as conn:
        tokens = tables.refresh_tokens
        assert await rows.count(conn, tokens, tokens.c.session_id == session) == 0

"""Self-host specifics of messaging: statement counts, concurrency and cascades seen in the
database (the behaviour itself is in the conformance suite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from kiiaren_core.errors import ConflictError, NotAuthenticatedError, NotFoundError
from kiiaren_core.models import Channel, Member, Message, Workspace
from kiiaren_core.testing import ConformanceBase, TestUser
from kiiaren_core.testing.persistence_messaging import join_member
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t

pytestmark = pytest.mark.anyio


@contextmanager
def count_statements(provider: SelfHostProvider) -> Iterator[list[str]]:
    """Collect the queries and writes the provider's engine runs inside the block.

    Transaction control and SQLite's per-connection pragmas are left out: the engine emits
    them depending on the pooled connection's previous use, not on the operation.
    """
    statements: list[str] = []
    engine = provider._runtime.db.engine.sync_engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() not in ("BEGIN", "PRAGMA", "SET"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def fetch(provider: SelfHostProvider, statement: sa.Executable) -> list[Any]:
    async with provider._runtime.db.read() as conn:
        return list((await conn.execute(statement)).all())


async def execute(provider: SelfHostProvider, statement: sa.Executable) -> None:
    async with provider._runtime.db.write() as conn:
        await conn.execute(statement)


async def workspace_events(provider: SelfHostProvider, workspace_id: str) -> list[Any]:
    """The workspace's event log in seq order."""
    return await fetch(
        provider,
        sa.select(t.events.c.seq, t.events.c.type, t.events.c.payload)
        .where(t.events.c.workspace_id == workspace_id)
        .order_by(t.events.c.seq),
    )


async def stored_object(
    provider: SelfHostProvider, workspace_id: str, uploaded_by: str, *, status: str = "ready"
) -> str:
    """Insert a stored object row as the storage layer would after an upload."""
    object_id = str(uuid.uuid4())
    await execute(
        provider,
        t.stored_objects.insert().values(
            id=object_id,
            workspace_id=workspace_id,
            object_key=f"{workspace_id}/{object_id}",
            content_type="image/png",
            max_bytes=1024,
            size_bytes=10,
            uploaded_by=uploaded_by,
            status=status,
            created_at=utcnow(),
            ticket_expires_at=utcnow() + timedelta(minutes=5),
        ),
    )
    return object_id


class TestMessagingSpecific(ConformanceBase):
    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

    @pytest.fixture
    async def bob(self, make_user: Any, user: TestUser, workspace: Workspace) -> TestUser:
        bob: TestUser = await make_user("Bob")
        await join_member(user, workspace, bob)
        return bob

    @pytest.fixture
    async def general(self, user: TestUser, workspace: Workspace) -> Channel:
        (channel,) = await user.provider.persistence.channel.get(workspace.id)
        return channel

    @staticmethod
    async def member_of(who: TestUser, workspace: Workspace) -> Member:
        member = await who.provider.persistence.member.get_current(workspace.id)
        assert member is not None
        return member

    # --- statement counts -------------------------------------------------------------------

    async def test_a_page_costs_the_same_statements_whatever_its_size(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        bob: TestUser,
        workspace: Workspace,
        general: Channel,
    ) -> None:
        owner_messages, bob_messages = (
            user.provider.persistence.message,
            bob.provider.persistence.message,
        )
        for i in range(50):
            message = await owner_messages.create(workspace.id, body=f"m{i}", channel_id=general.id)
            await user.provider.persistence.reaction.toggle(message.id, "👍")
            await bob.provider.persistence.reaction.toggle(message.id, "🎉" if i % 2 else "👍")
            await bob_messages.create(workspace.id, body=f"r{i}", parent_message_id=message.id)
        counts = {}
        for size in (5, 50):
            with count_statements(provider) as statements:
                page = await bob_messages.get(channel_id=general.id, limit=size)
            counts[size] = len(statements)
            assert len(page.items) == size
            assert all(m.thread.count == 1 for m in page.items)
            assert all(sum(g.count for g in m.reactions) == 2 for m in page.items)
            assert all(m.member is not None and m.member.user is not None for m in page.items)
        assert counts[5] == counts[50]
        # One statement: the session check, the page with the caller's standing, the
        # authors, the reactions and the thread summaries.
        assert counts[50] == 1
        parent = page.items[0]
        with count_statements(provider) as statements:
            replies = await bob_messages.get(parent_message_id=parent.id)
        assert len(replies.items) == 1
        assert len(statements) == 1
        # An empty page needs the session checked on its own (it may be why nothing came).
        empty = await user.provider.persistence.channel.create(workspace.id, "quiet")
        with count_statements(provider) as statements:
            assert not (await bob_messages.get(channel_id=empty.id)).items
        assert len(statements) == 2
        with count_statements(provider) as statements:
            await bob_messages.get_by_id(parent.id)
        assert len(statements) == 2  # the session check, the message with its read model

    async def test_create_is_one_short_transaction(
        self, provider: SelfHostProvider, user: TestUser, workspace: Workspace, general: Channel
    ) -> None:
        with count_statements(provider) as statements:
            await user.provider.persistence.message.create(
                workspace.id, body="x", channel_id=general.id
            )
        # PostgreSQL: one statement (data-modifying CTEs). SQLite: one read of the caller's
        # session and membership with the context, the insert, the event log's counter and
        # row.
        postgres = provider._runtime.db.dialect_name == "postgresql"
        assert len(statements) == (1 if postgres else 4), statements

    @pytest.mark.parametrize("revoke", ["sign_out", "revoke_all_sessions"])
    async def test_an_ended_session_is_refused_at_once_by_create_and_pages(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        workspace: Workspace,
        general: Channel,
        revoke: str,
    ) -> None:
        """The message page and create check the session inside their own statement: a
        session ended elsewhere (another view of it, another process) is refused on the very
        next call, for full pages, empty pages, malformed ids and every create path."""
        messages = user.provider.persistence.message
        posted = await messages.create(workspace.id, body="x", channel_id=general.id)
        quiet = await user.provider.persistence.channel.create(workspace.id, "quiet")
        tokens = user.provider.auth.tokens
        assert tokens is not None
        calls = [
            lambda view: view.persistence.message.get(channel_id=general.id),
            lambda view: view.persistence.message.get(channel_id=quiet.id),
            lambda view: view.persistence.message.get(channel_id="not-an-id"),
            lambda view: view.persistence.message.get(parent_message_id=posted.id),
            lambda view: view.persistence.message.create(
                workspace.id, body="y", channel_id=general.id
            ),
            lambda view: view.persistence.message.create(
                workspace.id, body="y", parent_message_id=posted.id
            ),
            lambda view: view.persistence.message.create(
                str(uuid.uuid4()), body="y", channel_id=general.id
            ),
        ]
        for call in calls[:-1]:
            async with provider.with_session(tokens) as view:
                await call(view)  # live: works
        async with provider.with_session(tokens) as view:
            with pytest.raises(NotFoundError):  # live: an unknown workspace
                await calls[-1](view)
        async with provider.with_session(tokens) as other:
            await getattr(other.auth, revoke)()
        for call in calls:
            async with provider.with_session(tokens) as view:
                with pytest.raises(NotAuthenticatedError):
                    await call(view)
        async with provider._runtime.db.read() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).where(t.messages.c.workspace_id == workspace.id)
                )
            ).scalar_one()
        assert count == 3  # the first message and the two creates made while live

    # --- concurrency ------------------------------------------------------------------------

    async def test_concurrent_toggles_alternate_without_errors(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        bob: TestUser,
        workspace: Workspace,
        general: Channel,
    ) -> None:
        message = await user.provider.persistence.message.create(
            workspace.id, body="x", channel_id=general.id
        )
        results: list[bool] = []

        async def toggle() -> None:
            results.append((await bob.provider.persistence.reaction.toggle(message.id, "👍")).added)

        async with anyio.create_task_group() as tg:
            for _ in range(7):
                tg.start_soon(toggle)
        assert sorted(results) == [False] * 3 + [True] * 4
        rows = await fetch(
            provider, sa.select(t.reactions.c.value).where(t.reactions.c.message_id == message.id)
        )
        assert [row.value for row in rows] == ["👍"]
        toggled = [
            e.payload["added"]
            for e in await workspace_events(provider, workspace.id)
            if e.type == "reaction.toggled"
        ]
        # In commit order the toggles are a clean add, remove, add, ... sequence.
        assert toggled == [True, False, True, False, True, False, True]

    async def test_concurrent_writers_keep_the_event_log_contiguous(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        bob: TestUser,
        workspace: Workspace,
        general: Channel,
    ) -> None:
        writers = [user, bob] * 4
        failures: list[Exception] = []

        async def write(who: TestUser, n: int) -> None:
            for i in range(8):
                if (n + i) % 3 == 0:
                    # Fails inside the transaction after reading: rolled back, no event.
                    with pytest.raises(NotFoundError):
                        await who.provider.persistence.message.create(
                            workspace.id, body="lost", channel_id=str(uuid.uuid4())
                        )
                    continue
                try:
                    await who.provider.persistence.message.create(
                        workspace.id, body=f"{n}-{i}", channel_id=general.id
                    )
                except Exception as exc:  # collected to fail with the cause below
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for n, who in enumerate(writers):
                tg.start_soon(write, who, n)
        assert failures == []
        log = await workspace_events(provider, workspace.id)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        logged = [e.payload["message_id"] for e in log if e.type == "message.created"]
        rows = await fetch(
            provider, sa.select(t.messages.c.id).where(t.messages.c.workspace_id == workspace.id)
        )
        assert sorted(logged) == sorted(str(row.id) for row in rows)
        assert len(rows) == sum(1 for n in range(8) for i in range(8) if (n + i) % 3)

    async def test_concurrent_create_or_get_makes_one_row_and_one_event(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        bob: TestUser,
        workspace: Workspace,
    ) -> None:
        owner_id = (await self.member_of(user, workspace)).id
        bob_id = (await self.member_of(bob, workspace)).id
        ids: list[str] = []

        async def call(who: TestUser, one: str, two: str) -> None:
            conversation = await who.provider.persistence.conversation.create_or_get(
                workspace.id, one, two
            )
            ids.append(conversation.id)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                if i % 2:
                    tg.start_soon(call, user, owner_id, bob_id)
                else:
                    tg.start_soon(call, bob, bob_id, owner_id)
        assert len(set(ids)) == 1
        rows = await fetch(
            provider,
            sa.select(t.conversations.c.member_one_id, t.conversations.c.member_two_id).where(
                t.conversations.c.workspace_id == workspace.id
            ),
        )
        assert [(str(r.member_one_id), str(r.member_two_id)) for r in rows] == [
            tuple(sorted((owner_id, bob_id)))
        ]
        created = [
            e
            for e in await workspace_events(provider, workspace.id)
            if e.type == "conversation.created"
        ]
        assert len(created) == 1

    # --- cascades and images ----------------------------------------------------------------

    async def test_channel_delete_cascades_in_the_database(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        bob: TestUser,
        workspace: Workspace,
        general: Channel,
    ) -> None:
        persistence = user.provider.persistence
        channel = await persistence.channel.create(workspace.id, "doomed")
        image = await stored_object(provider, workspace.id, user.user_id)
        top = await persistence.message.create(
            workspace.id, body="top", channel_id=channel.id, image_id=image
        )
        reply = await bob.provider.persistence.message.create(
            workspace.id, body="reply", parent_message_id=top.id
        )
        await bob.provider.persistence.reaction.toggle(top.id, "👍")
        await persistence.reaction.toggle(reply.id, "👍")
        kept = await persistence.message.create(workspace.id, body="kept", channel_id=general.id)
        await persistence.reaction.toggle(kept.id, "👍")
        invite_id = str(uuid.uuid4())
        await execute(
            provider,
            t.invite_links.insert().values(
                id=invite_id,
                workspace_id=workspace.id,
                code=uuid.uuid4().hex,
                created_by=user.user_id,
                created_at=utcnow(),
                expires_at=utcnow() + timedelta(hours=1),
                scope_type="channel",
                scope_channel_id=channel.id,
            ),
        )

        await persistence.channel.remove(channel.id)

        m, r = t.messages, t.reactions
        assert await fetch(provider, sa.select(m.c.id).where(m.c.channel_id == channel.id)) == []
        assert (
            await fetch(provider, sa.select(r.c.id).where(r.c.message_id.in_([top.id, reply.id])))
            == []
        )
        assert len(await fetch(provider, sa.select(r.c.id).where(r.c.message_id == kept.id))) == 1
        assert (
            await fetch(
                provider, sa.select(t.invite_links.c.id).where(t.invite_links.c.id == invite_id)
            )
            == []
        )
        (status,) = await fetch(
            provider, sa.select(t.stored_objects.c.status).where(t.stored_objects.c.id == image)
        )
        assert status.status == "deleting"
        log = await workspace_events(provider, workspace.id)
        deleted = [e.payload["message_id"] for e in log if e.type == "message.deleted"]
        assert sorted(deleted) == sorted([top.id, reply.id])
        assert log[-1].type == "channel.deleted"
        assert log[-1].payload == {"channel_id": channel.id}

    async def test_images_are_the_callers_unattached_uploads(
        self,
        provider: SelfHostProvider,
        user: TestUser,
        bob: TestUser,
        workspace: Workspace,
        general: Channel,
        make_user: Any,
    ) -> None:
        messages = user.provider.persistence.message
        image = await stored_object(provider, workspace.id, user.user_id, status="ready")
        message = await messages.create(
            workspace.id, body="pic", channel_id=general.id, image_id=image
        )
        assert message.image_id == image
        assert message.image_url is None  # resolved through storage.get_url
        (row,) = await fetch(
            provider,
            sa.select(t.stored_objects.c.attached_at).where(t.stored_objects.c.id == image),
        )
        assert row.attached_at is not None
        created = [
            e.payload
            for e in await workspace_events(provider, workspace.id)
            if e.type == "message.created"
        ]
        assert created[-1]["has_attachment"] is True
        with pytest.raises(ConflictError):
            await messages.create(workspace.id, body="again", channel_id=general.id, image_id=image)

        bobs = await stored_object(provider, workspace.id, bob.user_id)
        outsider = await make_user("Eve")
        foreign_ws = await outsider.provider.persistence.workspace.create("foreign")
        foreign = await stored_object(provider, foreign_ws.id, user.user_id)
        deleting = await stored_object(provider, workspace.id, user.user_id, status="deleting")
        for image_id in (bobs, foreign, deleting):
            with pytest.raises(NotFoundError) as caught:
                await messages.create(
                    workspace.id, body="x", channel_id=general.id, image_id=image_id
                )
            assert caught.value.message == "Image not found."
        attached = await fetch(
            provider,
            sa.select(t.stored_objects.c.id).where(
                t.stored_objects.c.id.in_([bobs, foreign, deleting]),
                t.stored_objects.c.attached_at.is_not(None),
            ),
        )
        assert attached == []

        await messages.remove(message.id)
        (row,) = await fetch(
            provider, sa.select(t.stored_objects.c.status).where(t.stored_objects.c.id == image)
        )
        assert row.status == "deleting"

    async def test_replies_store_the_inherited_context(
        self, provider: SelfHostProvider, user: TestUser, bob: TestUser, workspace: Workspace
    ) -> None:
        owner_id = (await self.member_of(user, workspace)).id
        bob_id = (await self.member_of(bob, workspace)).id
        conversation = await user.provider.persistence.conversation.create_or_get(
            workspace.id, owner_id, bob_id
        )
        dm = await user.provider.persistence.message.create(
            workspace.id, body="dm", conversation_id=conversation.id
        )
        reply = await bob.provider.persistence.message.create(
            workspace.id, body="re", parent_message_id=dm.id
        )
        (row,) = await fetch(
            provider,
            sa.select(t.messages.c.channel_id, t.messages.c.conversation_id).where(
                t.messages.c.id == reply.id
            ),
        )
        assert (row.channel_id, str(row.conversation_id)) == (None, conversation.id)


class TestTrustedModels(ConformanceBase):
    """Read models are built without validation: they must equal validated ones."""

    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

    @pytest.fixture
    async def bob(self, make_user: Any) -> TestUser:
        bob: TestUser = await make_user("Bob")
        return bob

    @pytest.fixture
    async def general(self, user: TestUser, workspace: Workspace) -> Channel:
        (channel,) = await user.provider.persistence.channel.get(workspace.id)
        return channel

    async def test_pages_and_creates_equal_their_validated_twins(
        self, user: TestUser, bob: TestUser, workspace: Workspace, general: Channel
    ) -> None:
        messages = user.provider.persistence.message
        created = [
            await messages.create(workspace.id, body=f"m{i}", channel_id=general.id)
            for i in range(3)
        ]
        await join_member(user, workspace, bob)
        await bob.provider.persistence.reaction.toggle(created[0].id, "👍")
        await user.provider.persistence.reaction.toggle(created[0].id, "👍")
        await user.provider.persistence.reaction.toggle(created[0].id, "🎉")
        reply = await bob.provider.persistence.message.create(
            workspace.id, body="r", parent_message_id=created[0].id
        )
        page = await bob.provider.persistence.message.get(channel_id=general.id)
        replies = await bob.provider.persistence.message.get(parent_message_id=created[0].id)
        found = await bob.provider.persistence.message.get_by_id(created[0].id)
        assert found is not None
        read_model_fields = {name for name in Message.model_fields if name != "image_url"}
        for model, fields in [
            *((m, read_model_fields - {"updated_at", "reactions", "thread"}) for m in created),
            (reply, read_model_fields - {"updated_at", "reactions", "thread"}),
            *((m, read_model_fields) for m in (*page.items, *replies.items, found)),
        ]:
            twin = Message.model_validate(model.model_dump())
            assert twin == model
            assert twin.model_dump_json() == model.model_dump_json()
            assert model.model_fields_set == fields  # as the validating constructor set them
        first = next(m for m in page.items if m.id == created[0].id)
        assert [(g.value, g.count) for g in first.reactions] == [("👍", 2), ("🎉", 1)]
        assert first.thread.count == 1
        assert first.member is not None
        assert first.member.user is not None
        assert first.member.user.email is None  # bob is neither admin nor the author

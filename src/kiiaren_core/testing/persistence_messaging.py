"""Conformance area ``persistence``, messaging part: channels, messages, reactions, direct
conversations (reference rows 9-13 and 19-25, read model 3.4, cascades 3.5, DESIGN.md 3-4).

Written against the protocols only, so any provider (in-process or over HTTP) can run it.
Every test builds its own team: an owner with a workspace, a member who joined with the join
code, an outsider who owns another workspace, and (where needed) an admin.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest

from kiiaren_core.errors import (
    ConflictError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kiiaren_core.events import AppEvent, EventEnvelope
from kiiaren_core.models import Channel, Member, Message, Page, Role, Workspace
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.testing.base import ConformanceBase, TestUser

__all__ = [
    "ChannelConformance",
    "ConversationConformance",
    "MessageConformance",
    "ReactionConformance",
    "Team",
    "join_member",
    "make_admin",
]

MakeUser = Callable[..., Awaitable[TestUser]]
MISSING = "00000000-0000-4000-8000-000000000000"
"""A well-formed id that names nothing."""
MALFORMED = "not-an-id"


def body(text: str) -> str:
    """A message body as the reference client sends it (Quill Delta JSON)."""
    return json.dumps({"ops": [{"insert": f"{text}\n"}]})


async def join_member(owner: TestUser, workspace: Workspace, other: TestUser) -> Member:
    """``other`` joins ``workspace`` with the join code the owner reads."""
    current = await owner.provider.persistence.workspace.get(workspace.id)
    assert current is not None
    assert current.join_code is not None
    return await other.provider.persistence.workspace.join(
        workspace.id, join_code=current.join_code
    )


async def make_admin(owner: TestUser, workspace: Workspace, other: TestUser) -> Member:
    """``other`` joins ``workspace`` and the owner promotes them to admin."""
    member = await join_member(owner, workspace, other)
    return await owner.provider.persistence.member.update_role(member.id, Role.ADMIN)


@dataclass(slots=True)
class Team:
    """Who a messaging test needs: ``owner`` owns ``workspace`` (with ``general``),
    ``member`` joined it, ``outsider`` owns ``foreign`` (with ``foreign_general``)."""

    owner: TestUser
    owner_member: Member
    member: TestUser
    member_member: Member
    outsider: TestUser
    workspace: Workspace
    general: Channel
    foreign: Workspace
    foreign_general: Channel

    @property
    def p(self) -> BackendProvider:
        """The owner's provider (the most used one)."""
        return self.owner.provider


async def _general(provider: BackendProvider, workspace: Workspace) -> Channel:
    (general,) = await provider.persistence.channel.get(workspace.id)
    assert general.name == "general"
    return general


async def _all_items(
    provider: BackendProvider,
    *,
    channel_id: str | None = None,
    conversation_id: str | None = None,
    parent_message_id: str | None = None,
) -> list[Message]:
    """Every message of a listing, following cursors."""
    items: list[Message] = []
    cursor: str | None = None
    while True:
        page = await provider.persistence.message.get(
            channel_id=channel_id,
            conversation_id=conversation_id,
            parent_message_id=parent_message_id,
            cursor=cursor,
            limit=50,
        )
        items.extend(page.items)
        if not page.has_more:
            assert page.cursor is None
            return items
        cursor = page.cursor


class _MessagingBase(ConformanceBase):
    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    @pytest.fixture
    async def team(self, make_user: MakeUser, user: TestUser, workspace: Workspace) -> Team:
        member = await make_user("Bob")
        outsider = await make_user("Eve")
        member_member = await join_member(user, workspace, member)
        owner_member = await user.provider.persistence.member.get_current(workspace.id)
        assert owner_member is not None
        foreign = await outsider.provider.persistence.workspace.create("foreign")
        return Team(
            owner=user,
            owner_member=owner_member,
            member=member,
            member_member=member_member,
            outsider=outsider,
            workspace=workspace,
            general=await _general(user.provider, workspace),
            foreign=foreign,
            foreign_general=await _general(outsider.provider, foreign),
        )

    @pytest.fixture
    async def anonymous(self, provider: BackendProvider) -> AsyncIterator[BackendProvider]:
        """A signed-out view."""
        view = provider.with_session(None)
        yield view
        await view.aclose()


# --- channels ---------------------------------------------------------------------------------


class ChannelConformance(_MessagingBase):
    """``persistence.channel``: names, uniqueness, roles, visibility, cascading delete."""

    async def test_create_normalises_the_name(self, team: Team) -> None:
        channel = await team.p.persistence.channel.create(team.workspace.id, "  Project   Alpha ")
        assert channel.name == "project-alpha"
        assert channel.workspace_id == team.workspace.id
        assert await team.p.persistence.channel.get_by_id(channel.id) == channel
        assert await team.member.provider.persistence.channel.get_by_id(channel.id) == channel

    @pytest.mark.parametrize("name", ["ab", "   ", "  a  ", "x" * 21, "bad/name", "dots.here", ""])
    async def test_create_refuses_invalid_names(self, team: Team, name: str) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await team.p.persistence.channel.create(team.workspace.id, name)
        assert caught.value.message == "Invalid channel name."
        assert caught.value.details["field"] == "name"
        assert [c.name for c in await team.p.persistence.channel.get(team.workspace.id)] == [
            "general"
        ]

    async def test_names_are_unique_per_workspace_whatever_the_case(self, team: Team) -> None:
        channels = team.p.persistence.channel
        await channels.create(team.workspace.id, "Random")
        for taken in ("random", "RANDOM", " Random ", "General"):
            with pytest.raises(ConflictError) as caught:
                await channels.create(team.workspace.id, taken)
            assert caught.value.message == "A channel with this name already exists."
        # Another workspace may use the same names.
        other = await team.outsider.provider.persistence.channel.create(team.foreign.id, "random")
        assert other.name == "random"
        names = [c.name for c in await channels.get(team.workspace.id)]
        assert names == ["general", "random"]

    async def test_only_admins_and_the_owner_create(self, team: Team, make_user: MakeUser) -> None:
        with pytest.raises(PermissionDeniedError):
            await team.member.provider.persistence.channel.create(team.workspace.id, "members")
        admin = await make_user("Ada")
        await make_admin(team.owner, team.workspace, admin)
        created = await admin.provider.persistence.channel.create(team.workspace.id, "admins")
        assert created.name == "admins"
        assert (await team.p.persistence.channel.create(team.workspace.id, "owners")).name == (
            "owners"
        )

    async def test_outsiders_cannot_create(self, team: Team) -> None:
        for workspace_id in (team.workspace.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError) as caught:
                await team.outsider.provider.persistence.channel.create(workspace_id, "intruders")
            assert caught.value.message == "Workspace not found."
        assert len(await team.p.persistence.channel.get(team.workspace.id)) == 1

    async def test_get_lists_channels_in_creation_order(self, team: Team) -> None:
        for name in ("zeta", "alpha", "mid"):
            await team.p.persistence.channel.create(team.workspace.id, name)
        names = [
            c.name for c in await team.member.provider.persistence.channel.get(team.workspace.id)
        ]
        assert names == ["general", "zeta", "alpha", "mid"]

    async def test_outsiders_see_nothing(self, team: Team) -> None:
        outsider = team.outsider.provider.persistence.channel
        assert await outsider.get(team.workspace.id) == []
        assert await outsider.get(MISSING) == []
        assert await outsider.get(MALFORMED) == []
        assert await outsider.get_by_id(team.general.id) is None
        assert await outsider.get_by_id(MISSING) is None
        assert await outsider.get_by_id(MALFORMED) is None

    async def test_update_renames_with_the_same_rules(self, team: Team) -> None:
        channels = team.p.persistence.channel
        channel = await channels.create(team.workspace.id, "old-name")
        renamed = await channels.update(channel.id, name=" New  Name ")
        assert renamed.name == "new-name"
        assert renamed.id == channel.id
        assert renamed.created_at == channel.created_at
        assert await channels.get_by_id(channel.id) == renamed
        with pytest.raises(ConflictError):
            await channels.update(channel.id, name="GENERAL")
        with pytest.raises(InvalidInputError):
            await channels.update(channel.id, name="  ")
        assert await channels.update(channel.id, name="new-name") == renamed

    async def test_update_permissions(self, team: Team) -> None:
        with pytest.raises(PermissionDeniedError):
            await team.member.provider.persistence.channel.update(team.general.id, name="mine")
        for channel_id in (team.general.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError) as caught:
                await team.outsider.provider.persistence.channel.update(channel_id, name="mine")
            assert caught.value.message == "Channel not found."
        assert await team.p.persistence.channel.get_by_id(team.general.id) == team.general

    async def test_remove_deletes_the_channel_and_its_messages(self, team: Team) -> None:
        channels, messages = team.p.persistence.channel, team.p.persistence.message
        doomed = await channels.create(team.workspace.id, "doomed")
        top = await messages.create(team.workspace.id, body="top", channel_id=doomed.id)
        reply = await team.member.provider.persistence.message.create(
            team.workspace.id, body="reply", parent_message_id=top.id
        )
        await team.member.provider.persistence.reaction.toggle(top.id, "👍")
        kept = await messages.create(team.workspace.id, body="kept", channel_id=team.general.id)

        await channels.remove(doomed.id)

        assert await channels.get_by_id(doomed.id) is None
        assert [c.id for c in await channels.get(team.workspace.id)] == [team.general.id]
        assert await messages.get_by_id(top.id) is None
        assert await messages.get_by_id(reply.id) is None
        assert (await messages.get(channel_id=doomed.id)).items == ()
        assert await messages.get_by_id(kept.id) is not None
        with pytest.raises(NotFoundError):
            await team.p.persistence.reaction.toggle(top.id, "👍")
        with pytest.raises(NotFoundError) as caught:
            await channels.remove(doomed.id)
        assert caught.value.message == "Channel not found."
        # The name is free again.
        assert (await channels.create(team.workspace.id, "doomed")).name == "doomed"

    async def test_remove_permissions(self, team: Team, make_user: MakeUser) -> None:
        channel = await team.p.persistence.channel.create(team.workspace.id, "target")
        with pytest.raises(PermissionDeniedError):
            await team.member.provider.persistence.channel.remove(channel.id)
        for channel_id in (channel.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError):
                await team.outsider.provider.persistence.channel.remove(channel_id)
        assert await team.p.persistence.channel.get_by_id(channel.id) == channel
        admin = await make_user("Ada")
        await make_admin(team.owner, team.workspace, admin)
        await admin.provider.persistence.channel.remove(channel.id)
        assert await team.p.persistence.channel.get_by_id(channel.id) is None

    async def test_anonymous_callers_are_refused(
        self, team: Team, anonymous: BackendProvider
    ) -> None:
        channels = anonymous.persistence.channel
        with pytest.raises(NotAuthenticatedError):
            await channels.create(team.workspace.id, "anon")
        with pytest.raises(NotAuthenticatedError):
            await channels.get(team.workspace.id)
        with pytest.raises(NotAuthenticatedError):
            await channels.get_by_id(team.general.id)
        with pytest.raises(NotAuthenticatedError):
            await channels.update(team.general.id, name="anon")
        with pytest.raises(NotAuthenticatedError):
            await channels.remove(team.general.id)
        assert await team.p.persistence.channel.get_by_id(team.general.id) == team.general

    @pytest.mark.requires_capability("events")
    async def test_channel_events(self, team: Team) -> None:
        channels = team.p.persistence.channel
        async with team.member.provider.events.stream(
            team.workspace.id, types=["channel.*", "message.deleted"]
        ) as stream:
            channel = await channels.create(team.workspace.id, "Events Here")
            await channels.update(channel.id, name="events-there")
            message = await team.p.persistence.message.create(
                team.workspace.id, body="x", channel_id=channel.id
            )
            await channels.remove(channel.id)
            got = [await _next_event(stream) for _ in range(4)]
        assert [(e.type, e.payload.model_dump()) for e in got] == [
            ("channel.created", {"channel_id": channel.id, "name": "events-here"}),
            ("channel.updated", {"channel_id": channel.id, "name": "events-there"}),
            (
                "message.deleted",
                {
                    "message_id": message.id,
                    "channel_id": channel.id,
                    "conversation_id": None,
                    "parent_message_id": None,
                },
            ),
            ("channel.deleted", {"channel_id": channel.id}),
        ]
        assert all(e.actor_id == team.owner.user_id for e in got)


async def _next_event(stream: object) -> EventEnvelope:
    with anyio.fail_after(5):
        item = await stream.__anext__()  # type: ignore[attr-defined]
    assert isinstance(item, EventEnvelope), item
    return item


# --- messages ---------------------------------------------------------------------------------


class MessageConformance(_MessagingBase):
    """``persistence.message``: contexts, isolation, bodies, pages, read model, edit, delete."""

    async def _dm(self, team: Team) -> str:
        conversation = await team.p.persistence.conversation.create_or_get(
            team.workspace.id, team.owner_member.id, team.member_member.id
        )
        return conversation.id

    async def test_create_in_a_channel_returns_the_read_model(self, team: Team) -> None:
        message = await team.member.provider.persistence.message.create(
            team.workspace.id, body=body("hello"), channel_id=team.general.id
        )
        assert message.body == body("hello")
        assert message.workspace_id == team.workspace.id
        assert message.channel_id == team.general.id
        assert message.conversation_id is None
        assert message.parent_message_id is None
        assert message.member_id == team.member_member.id
        assert message.member is not None
        assert message.member.id == team.member_member.id
        assert message.member.user is not None
        assert message.member.user.name == "Bob"
        assert message.reactions == ()
        assert message.thread.count == 0
        assert message.updated_at is None
        assert message.image_id is None
        read = await team.p.persistence.message.get_by_id(message.id)
        assert read is not None
        assert (read.id, read.body, read.created_at, read.member_id) == (
            message.id,
            message.body,
            message.created_at,
            message.member_id,
        )
        page = await team.p.persistence.message.get(channel_id=team.general.id)
        assert [m.id for m in page.items] == [message.id]

    async def test_create_needs_exactly_one_context(self, team: Team) -> None:
        messages = team.p.persistence.message
        conversation_id = await self._dm(team)
        with pytest.raises(InvalidInputError):
            await messages.create(team.workspace.id, body="none")
        with pytest.raises(InvalidInputError):
            await messages.create(
                team.workspace.id,
                body="both",
                channel_id=team.general.id,
                conversation_id=conversation_id,
            )
        assert (await messages.get(channel_id=team.general.id)).items == ()
        assert (await messages.get(conversation_id=conversation_id)).items == ()

    @pytest.mark.parametrize("text", ["", "   ", "\n\t"])
    async def test_create_refuses_empty_bodies(self, team: Team, text: str) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await team.p.persistence.message.create(
                team.workspace.id, body=text, channel_id=team.general.id
            )
        assert caught.value.details["field"] == "body"

    async def test_body_size_limit(self, team: Team) -> None:
        limit = team.p.capabilities.limits.max_message_bytes
        messages = team.p.persistence.message
        with pytest.raises(PayloadTooLargeError):
            await messages.create(
                team.workspace.id, body="é" * (limit // 2 + 1), channel_id=team.general.id
            )
        largest = await messages.create(
            team.workspace.id, body="x" * limit, channel_id=team.general.id
        )
        assert len(largest.body) == limit
        with pytest.raises(PayloadTooLargeError):
            await messages.update(largest.id, body="x" * (limit + 1))

    @pytest.mark.parametrize("bad_id", [MISSING, MALFORMED])
    async def test_unknown_ids_are_not_found(self, team: Team, bad_id: str) -> None:
        messages = team.p.persistence.message
        cases = [
            ({"channel_id": bad_id}, "Channel not found."),
            ({"conversation_id": bad_id}, "Conversation not found."),
            ({"parent_message_id": bad_id}, "Parent message not found."),
            ({"channel_id": team.general.id, "image_id": bad_id}, "Image not found."),
        ]
        for context, text in cases:
            with pytest.raises(NotFoundError) as caught:
                await messages.create(team.workspace.id, body="x", **context)
            assert caught.value.message == text
        for workspace_id in (MISSING, MALFORMED):
            with pytest.raises(NotFoundError):
                await messages.create(workspace_id, body="x", channel_id=team.general.id)
        assert (await messages.get(channel_id=team.general.id)).items == ()

    async def test_ids_of_another_workspace_are_not_found(self, team: Team) -> None:
        """Bug S2: posting into another tenant's channel, conversation or thread."""
        outsider = team.outsider
        eve_member = await outsider.provider.persistence.member.get_current(team.foreign.id)
        assert eve_member is not None
        foreign_message = await outsider.provider.persistence.message.create(
            team.foreign.id, body="private", channel_id=team.foreign_general.id
        )
        # Eve joins the victim workspace too, so she is a legitimate member of both; Bob
        # joins hers so that she has a conversation there.
        await join_member(team.owner, team.workspace, outsider)
        eve_in_victim = outsider.provider.persistence.message
        bob_in_foreign = await join_member(outsider, team.foreign, team.member)
        foreign_dm = await outsider.provider.persistence.conversation.create_or_get(
            team.foreign.id, eve_member.id, bob_in_foreign.id
        )
        cases = [
            ({"channel_id": team.foreign_general.id}, "Channel not found."),
            ({"conversation_id": foreign_dm.id}, "Conversation not found."),
            ({"parent_message_id": foreign_message.id}, "Parent message not found."),
        ]
        for context, text in cases:
            with pytest.raises(NotFoundError) as caught:
                # Her workspace id is the victim's, the context is from her other workspace.
                await eve_in_victim.create(team.workspace.id, body="smuggled", **context)
            assert caught.value.message == text
        # Nothing was written anywhere.
        foreign_items = await _all_items(outsider.provider, channel_id=team.foreign_general.id)
        assert [m.id for m in foreign_items] == [foreign_message.id]
        assert await _all_items(outsider.provider, conversation_id=foreign_dm.id) == []
        assert await _all_items(outsider.provider, parent_message_id=foreign_message.id) == []
        assert await _all_items(team.p, channel_id=team.general.id) == []

    async def test_outsiders_cannot_post(self, team: Team) -> None:
        conversation_id = await self._dm(team)
        parent = await team.p.persistence.message.create(
            team.workspace.id, body="parent", channel_id=team.general.id
        )
        messages = team.outsider.provider.persistence.message
        for context in (
            {"channel_id": team.general.id},
            {"conversation_id": conversation_id},
            {"parent_message_id": parent.id},
        ):
            with pytest.raises(NotFoundError):
                await messages.create(team.workspace.id, body="x", **context)
            # Naming their own workspace does not help either.
            with pytest.raises(NotFoundError):
                await messages.create(team.foreign.id, body="x", **context)
        assert [m.id for m in await _all_items(team.p, channel_id=team.general.id)] == [parent.id]

    async def test_direct_messages_are_for_participants_only(
        self, team: Team, make_user: MakeUser
    ) -> None:
        conversation_id = await self._dm(team)
        dm = await team.member.provider.persistence.message.create(
            team.workspace.id, body="secret", conversation_id=conversation_id
        )
        assert dm.conversation_id == conversation_id
        assert dm.channel_id is None
        reply = await team.p.persistence.message.create(
            team.workspace.id, body="secret reply", parent_message_id=dm.id
        )
        carol = await make_user("Carol")
        await make_admin(team.owner, team.workspace, carol)
        third = carol.provider.persistence.message
        with pytest.raises(NotFoundError) as caught:
            await third.create(team.workspace.id, body="x", conversation_id=conversation_id)
        assert caught.value.message == "Conversation not found."
        with pytest.raises(NotFoundError) as caught:
            await third.create(team.workspace.id, body="x", parent_message_id=dm.id)
        assert caught.value.message == "Parent message not found."
        assert (await third.get(conversation_id=conversation_id)).items == ()
        assert (await third.get(parent_message_id=dm.id)).items == ()
        assert await third.get_by_id(dm.id) is None
        assert await third.get_by_id(reply.id) is None
        with pytest.raises(NotFoundError):
            await third.update(dm.id, body="edited")
        with pytest.raises(NotFoundError):
            await carol.provider.persistence.reaction.toggle(dm.id, "👀")
        # Both participants read it.
        for participant in (team.owner, team.member):
            page = await participant.provider.persistence.message.get(
                conversation_id=conversation_id
            )
            assert [m.id for m in page.items] == [dm.id]
            assert page.items[0].thread.count == 1
            replies = await participant.provider.persistence.message.get(parent_message_id=dm.id)
            assert [m.id for m in replies.items] == [reply.id]

    async def test_replies_inherit_the_parent_context(self, team: Team) -> None:
        messages = team.p.persistence.message
        parent = await messages.create(team.workspace.id, body="p", channel_id=team.general.id)
        reply = await team.member.provider.persistence.message.create(
            team.workspace.id, body="r", parent_message_id=parent.id
        )
        assert (reply.channel_id, reply.conversation_id, reply.parent_message_id) == (
            team.general.id,
            None,
            parent.id,
        )
        explicit = await messages.create(
            team.workspace.id, body="r2", parent_message_id=parent.id, channel_id=team.general.id
        )
        assert explicit.channel_id == team.general.id
        conversation_id = await self._dm(team)
        dm_parent = await messages.create(
            team.workspace.id, body="dm", conversation_id=conversation_id
        )
        dm_reply = await team.member.provider.persistence.message.create(
            team.workspace.id, body="dm reply", parent_message_id=dm_parent.id
        )
        assert (dm_reply.channel_id, dm_reply.conversation_id) == (None, conversation_id)
        # Top-level listings hold no replies.
        assert [m.id for m in await _all_items(team.p, channel_id=team.general.id)] == [parent.id]
        assert [m.id for m in await _all_items(team.p, conversation_id=conversation_id)] == [
            dm_parent.id
        ]

    async def test_reply_context_must_match_the_parent(self, team: Team) -> None:
        messages = team.p.persistence.message
        channel = await team.p.persistence.channel.create(team.workspace.id, "elsewhere")
        parent = await messages.create(team.workspace.id, body="p", channel_id=team.general.id)
        conversation_id = await self._dm(team)
        for context in (
            {"channel_id": channel.id},
            {"conversation_id": conversation_id},
            {"channel_id": team.general.id, "conversation_id": conversation_id},
        ):
            with pytest.raises(InvalidInputError):
                await messages.create(
                    team.workspace.id, body="r", parent_message_id=parent.id, **context
                )
        assert await _all_items(team.p, parent_message_id=parent.id) == []

    async def test_no_reply_to_a_reply(self, team: Team) -> None:
        messages = team.p.persistence.message
        parent = await messages.create(team.workspace.id, body="p", channel_id=team.general.id)
        reply = await messages.create(team.workspace.id, body="r", parent_message_id=parent.id)
        with pytest.raises(InvalidInputError) as caught:
            await messages.create(team.workspace.id, body="rr", parent_message_id=reply.id)
        assert caught.value.message == "Cannot reply to a thread reply."
        assert [m.id for m in await _all_items(team.p, parent_message_id=parent.id)] == [reply.id]
        assert await _all_items(team.p, parent_message_id=reply.id) == []

    async def test_pages_are_newest_first_and_stable(self, team: Team) -> None:
        messages = team.p.persistence.message
        created = [
            await messages.create(team.workspace.id, body=f"m{i}", channel_id=team.general.id)
            for i in range(45)
        ]
        newest_first = [m.id for m in reversed(created)]
        first = await messages.get(channel_id=team.general.id, limit=20)
        assert len(first.items) == 20
        assert first.has_more
        assert first.cursor is not None
        # New messages arriving between pages do not shift the next ones.
        for i in range(3):
            await messages.create(team.workspace.id, body=f"late{i}", channel_id=team.general.id)
        second = await messages.get(channel_id=team.general.id, limit=20, cursor=first.cursor)
        assert len(second.items) == 20
        assert second.has_more
        third = await messages.get(channel_id=team.general.id, limit=20, cursor=second.cursor)
        assert len(third.items) == 5
        assert not third.has_more
        assert third.cursor is None
        seen = [m.id for page in (first, second, third) for m in page.items]
        assert seen == newest_first
        assert len(set(seen)) == 45
        for page in (first, second, third):
            stamps = [(m.created_at, m.id) for m in page.items]
            assert stamps == sorted(stamps, reverse=True)
        # Re-reading with the same cursor gives the same page.
        again = await messages.get(channel_id=team.general.id, limit=20, cursor=first.cursor)
        assert [m.id for m in again.items] == [m.id for m in second.items]

    async def test_limit_is_clamped(self, team: Team) -> None:
        messages = team.p.persistence.message
        maximum = team.p.capabilities.limits.max_page_size
        for i in range(maximum + 1):
            await messages.create(team.workspace.id, body=f"m{i}", channel_id=team.general.id)
        for limit in (0, -5):
            page = await messages.get(channel_id=team.general.id, limit=limit)
            assert len(page.items) == 1
            assert page.has_more
        page = await messages.get(channel_id=team.general.id, limit=maximum * 10)
        assert len(page.items) == maximum
        assert page.has_more
        rest = await messages.get(channel_id=team.general.id, limit=maximum, cursor=page.cursor)
        assert len(rest.items) == 1
        assert not rest.has_more

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "!!!",
            "not base64 at all",
            base64.urlsafe_b64encode(b"not json").decode(),
            base64.urlsafe_b64encode(b'{"a": 1}').decode(),
            base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "nope"]').decode(),
            base64.urlsafe_b64encode(f'["yesterday", "{MISSING}"]'.encode()).decode(),
        ],
    )
    async def test_malformed_cursors_are_refused(self, team: Team, cursor: str) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await team.p.persistence.message.get(channel_id=team.general.id, cursor=cursor)
        assert caught.value.details["field"] == "cursor"

    async def test_get_needs_exactly_one_context(self, team: Team) -> None:
        conversation_id = await self._dm(team)
        with pytest.raises(InvalidInputError):
            await team.p.persistence.message.get()
        with pytest.raises(InvalidInputError):
            await team.p.persistence.message.get(
                channel_id=team.general.id, conversation_id=conversation_id
            )

    async def test_outsiders_get_empty_pages(self, team: Team) -> None:
        messages = team.p.persistence.message
        conversation_id = await self._dm(team)
        top = await messages.create(team.workspace.id, body="t", channel_id=team.general.id)
        await messages.create(team.workspace.id, body="r", parent_message_id=top.id)
        await messages.create(team.workspace.id, body="d", conversation_id=conversation_id)
        outsider = team.outsider.provider.persistence.message
        for context in (
            {"channel_id": team.general.id},
            {"conversation_id": conversation_id},
            {"parent_message_id": top.id},
            {"channel_id": MISSING},
            {"channel_id": MALFORMED},
            {"conversation_id": MALFORMED},
            {"parent_message_id": MISSING},
        ):
            page = await outsider.get(
                channel_id=context.get("channel_id"),
                conversation_id=context.get("conversation_id"),
                parent_message_id=context.get("parent_message_id"),
            )
            assert page == Page(items=(), cursor=None, has_more=False)
        assert await outsider.get_by_id(top.id) is None
        assert await outsider.get_by_id(MALFORMED) is None

    async def test_thread_listing(self, team: Team) -> None:
        messages = team.p.persistence.message
        parent = await messages.create(team.workspace.id, body="p", channel_id=team.general.id)
        replies = [
            await messages.create(team.workspace.id, body=f"r{i}", parent_message_id=parent.id)
            for i in range(5)
        ]
        page = await team.member.provider.persistence.message.get(
            parent_message_id=parent.id, limit=3
        )
        assert [m.id for m in page.items] == [r.id for r in reversed(replies)][:3]
        rest = await team.member.provider.persistence.message.get(
            parent_message_id=parent.id, limit=3, cursor=page.cursor
        )
        assert [m.id for m in rest.items] == [replies[1].id, replies[0].id]
        assert all(m.parent_message_id == parent.id for m in page.items + rest.items)
        # A context that contradicts the parent's matches nothing.
        conversation_id = await self._dm(team)
        mismatch = await messages.get(parent_message_id=parent.id, conversation_id=conversation_id)
        assert mismatch.items == ()
        matching = await messages.get(parent_message_id=parent.id, channel_id=team.general.id)
        assert len(matching.items) == 5

    async def test_read_model_groups_reactions_and_summarises_threads(
        self, team: Team, make_user: MakeUser
    ) -> None:
        owner, bob = team.p, team.member.provider
        message = await owner.persistence.message.create(
            team.workspace.id, body="react", channel_id=team.general.id
        )
        quiet = await owner.persistence.message.create(
            team.workspace.id, body="quiet", channel_id=team.general.id
        )
        await owner.persistence.reaction.toggle(message.id, "👍")
        await bob.persistence.reaction.toggle(message.id, "🎉")
        await bob.persistence.reaction.toggle(message.id, "👍")
        await owner.persistence.reaction.toggle(message.id, "🎉")
        await owner.persistence.reaction.toggle(message.id, "✅")
        await owner.persistence.reaction.toggle(message.id, "✅")  # removed again
        first = await bob.persistence.message.create(
            team.workspace.id, body="r1", parent_message_id=message.id
        )
        last = await owner.persistence.message.create(
            team.workspace.id, body="r2", parent_message_id=message.id
        )
        await bob.persistence.reaction.toggle(first.id, "👀")

        owner_id, bob_id = team.owner_member.id, team.member_member.id
        expected_groups = [
            ("👍", 2, (owner_id, bob_id)),
            ("🎉", 2, (bob_id, owner_id)),
        ]
        page = await bob.persistence.message.get(channel_id=team.general.id)
        by_id = {m.id: m for m in page.items}
        for read in (by_id[message.id], await bob.persistence.message.get_by_id(message.id)):
            assert read is not None
            assert [(g.value, g.count, g.member_ids) for g in read.reactions] == expected_groups
            assert read.thread.count == 2
            assert read.thread.last_reply_at == last.created_at
            assert read.thread.last_replier_name == "Owner"
            assert read.member is not None
            assert read.member.id == owner_id
        assert by_id[quiet.id].reactions == ()
        assert by_id[quiet.id].thread.count == 0
        assert by_id[quiet.id].thread.last_reply_at is None
        replies = await bob.persistence.message.get(parent_message_id=message.id)
        assert [m.id for m in replies.items] == [last.id, first.id]
        assert [(g.value, g.member_ids) for g in replies.items[1].reactions] == [("👀", (bob_id,))]
        assert replies.items[1].member is not None
        assert replies.items[1].member.user is not None
        assert replies.items[1].member.user.name == "Bob"

    async def test_authors_email_is_shown_to_admins_and_the_author_only(self, team: Team) -> None:
        message = await team.member.provider.persistence.message.create(
            team.workspace.id, body="mail", channel_id=team.general.id
        )
        owner_message = await team.p.persistence.message.create(
            team.workspace.id, body="boss", channel_id=team.general.id
        )

        def email(read: Message | None) -> str | None:
            assert read is not None
            assert read.member is not None
            assert read.member.user is not None
            return read.member.user.email

        bob, owner = team.member.provider.persistence.message, team.p.persistence.message
        assert email(await owner.get_by_id(message.id)) == team.member.email.lower()
        assert email(await bob.get_by_id(message.id)) == team.member.email.lower()
        assert email(await bob.get_by_id(owner_message.id)) is None

    async def test_only_the_author_edits(self, team: Team, make_user: MakeUser) -> None:
        messages = team.member.provider.persistence.message
        message = await messages.create(team.workspace.id, body="draft", channel_id=team.general.id)
        edited = await messages.update(message.id, body="final")
        assert edited.body == "final"
        assert edited.updated_at is not None
        assert edited.updated_at >= edited.created_at
        assert edited.created_at == message.created_at
        read = await team.p.persistence.message.get_by_id(message.id)
        assert read is not None
        assert (read.body, read.updated_at) == ("final", edited.updated_at)
        admin = await make_user("Ada")
        await make_admin(team.owner, team.workspace, admin)
        for other in (team.p, admin.provider):
            with pytest.raises(PermissionDeniedError):
                await other.persistence.message.update(message.id, body="hijack")
        for message_id in (message.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError) as caught:
                await team.outsider.provider.persistence.message.update(message_id, body="x")
            assert caught.value.message == "Message not found."
        with pytest.raises(InvalidInputError):
            await messages.update(message.id, body=" ")
        final = await team.p.persistence.message.get_by_id(message.id)
        assert final is not None
        assert final.body == "final"

    async def test_delete_permissions(self, team: Team, make_user: MakeUser) -> None:
        owner, bob = team.p.persistence.message, team.member.provider.persistence.message
        admin = await make_user("Ada")
        await make_admin(team.owner, team.workspace, admin)

        async def post(who: BackendProvider, text: str) -> Message:
            return await who.persistence.message.create(
                team.workspace.id, body=text, channel_id=team.general.id
            )

        own = await post(team.member.provider, "own")
        await bob.remove(own.id)
        assert await owner.get_by_id(own.id) is None
        bosses = await post(team.p, "boss")
        with pytest.raises(PermissionDeniedError):
            await bob.remove(bosses.id)
        for message_id in (bosses.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError):
                await team.outsider.provider.persistence.message.remove(message_id)
        assert await owner.get_by_id(bosses.id) is not None
        by_admin = await post(team.member.provider, "moderated")
        await admin.provider.persistence.message.remove(by_admin.id)
        assert await bob.get_by_id(by_admin.id) is None
        by_owner = await post(admin.provider, "moderated too")
        await owner.remove(by_owner.id)
        assert await bob.get_by_id(by_owner.id) is None
        with pytest.raises(NotFoundError) as caught:
            await owner.remove(by_owner.id)
        assert caught.value.message == "Message not found."

    async def test_admins_may_delete_direct_messages_they_cannot_read(
        self, team: Team, make_user: MakeUser
    ) -> None:
        """DESIGN decision 2: admins delete any message of their workspace, DMs included."""
        conversation_id = await self._dm(team)
        dm = await team.member.provider.persistence.message.create(
            team.workspace.id, body="dm", conversation_id=conversation_id
        )
        admin = await make_user("Ada")
        await make_admin(team.owner, team.workspace, admin)
        plain = await make_user("Plain")
        await join_member(team.owner, team.workspace, plain)
        with pytest.raises(NotFoundError):
            await plain.provider.persistence.message.remove(dm.id)
        assert await admin.provider.persistence.message.get_by_id(dm.id) is None
        await admin.provider.persistence.message.remove(dm.id)
        assert await team.member.provider.persistence.message.get_by_id(dm.id) is None

    async def test_delete_cascades_to_replies_and_reactions(self, team: Team) -> None:
        owner, bob = team.p.persistence.message, team.member.provider.persistence.message
        parent = await owner.create(team.workspace.id, body="p", channel_id=team.general.id)
        replies = [
            await bob.create(team.workspace.id, body=f"r{i}", parent_message_id=parent.id)
            for i in range(3)
        ]
        await team.member.provider.persistence.reaction.toggle(parent.id, "👍")
        await team.p.persistence.reaction.toggle(replies[0].id, "👍")

        # Deleting a reply updates the parent's thread summary.
        await bob.remove(replies[2].id)
        read = await owner.get_by_id(parent.id)
        assert read is not None
        assert read.thread.count == 2
        assert read.thread.last_reply_at == replies[1].created_at

        await owner.remove(parent.id)
        assert await owner.get_by_id(parent.id) is None
        for reply in replies:
            assert await bob.get_by_id(reply.id) is None
        assert (await owner.get(parent_message_id=parent.id)).items == ()
        assert (await owner.get(channel_id=team.general.id)).items == ()
        for message_id in (parent.id, replies[0].id):
            with pytest.raises(NotFoundError):
                await team.p.persistence.reaction.toggle(message_id, "👍")

    async def test_anonymous_callers_are_refused(
        self, team: Team, anonymous: BackendProvider
    ) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        messages = anonymous.persistence.message
        with pytest.raises(NotAuthenticatedError):
            await messages.create(team.workspace.id, body="x", channel_id=team.general.id)
        with pytest.raises(NotAuthenticatedError):
            await messages.get(channel_id=team.general.id)
        with pytest.raises(NotAuthenticatedError):
            await messages.get_by_id(message.id)
        with pytest.raises(NotAuthenticatedError):
            await messages.update(message.id, body="y")
        with pytest.raises(NotAuthenticatedError):
            await messages.remove(message.id)
        assert await team.p.persistence.message.get_by_id(message.id) is not None

    @pytest.mark.requires_capability("events")
    async def test_message_events(self, team: Team) -> None:
        conversation_id = await self._dm(team)
        owner = team.p.persistence.message
        async with team.member.provider.events.stream(
            team.workspace.id, types=["message.*"]
        ) as stream:
            dm = await owner.create(team.workspace.id, body="dm", conversation_id=conversation_id)
            reply = await owner.create(team.workspace.id, body="re", parent_message_id=dm.id)
            await owner.update(reply.id, body="re2")
            await owner.remove(dm.id)
            got = [await _next_event(stream) for _ in range(5)]
        payloads = [(e.type, e.payload.model_dump()) for e in got]
        assert payloads[:3] == [
            (
                "message.created",
                {
                    "message_id": dm.id,
                    "channel_id": None,
                    "conversation_id": conversation_id,
                    "parent_message_id": None,
                    "body": "dm",
                    "has_attachment": False,
                },
            ),
            (
                "message.created",
                {
                    "message_id": reply.id,
                    "channel_id": None,
                    "conversation_id": conversation_id,  # the effective, inherited id
                    "parent_message_id": dm.id,
                    "body": "re",
                    "has_attachment": False,
                },
            ),
            ("message.updated", {"message_id": reply.id, "body": "re2"}),
        ]
        assert sorted(p["message_id"] for _, p in payloads[3:]) == sorted([dm.id, reply.id])
        assert {t for t, _ in payloads[3:]} == {"message.deleted"}


# --- reactions --------------------------------------------------------------------------------


class ReactionConformance(_MessagingBase):
    """``persistence.reaction.toggle``."""

    async def test_toggle_adds_then_removes(self, team: Team) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        reactions = team.member.provider.persistence.reaction
        added = await reactions.toggle(message.id, "🔥")
        assert (added.message_id, added.value, added.added) == (message.id, "🔥", True)
        read = await team.p.persistence.message.get_by_id(message.id)
        assert read is not None
        assert [(g.value, g.count, g.member_ids) for g in read.reactions] == [
            ("🔥", 1, (team.member_member.id,))
        ]
        removed = await reactions.toggle(message.id, "🔥")
        assert removed.added is False
        read = await team.p.persistence.message.get_by_id(message.id)
        assert read is not None
        assert read.reactions == ()

    async def test_emoji_sequences_and_short_tokens_are_reactions(self, team: Team) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        for value in ("👩‍💻", "🏳️‍🌈", "+1", "x" * 32):
            assert (await team.p.persistence.reaction.toggle(message.id, value)).added

    @pytest.mark.parametrize("value", ["", " ", "a b", "x" * 33, "\x00", "\u202e"])
    async def test_invalid_reactions_are_refused(self, team: Team, value: str) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        with pytest.raises(InvalidInputError) as caught:
            await team.p.persistence.reaction.toggle(message.id, value)
        assert caught.value.details["field"] == "value"
        read = await team.p.persistence.message.get_by_id(message.id)
        assert read is not None
        assert read.reactions == ()

    async def test_the_message_must_be_visible(self, team: Team) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        for message_id in (message.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError) as caught:
                await team.outsider.provider.persistence.reaction.toggle(message_id, "👍")
            assert caught.value.message == "Message not found."
        read = await team.p.persistence.message.get_by_id(message.id)
        assert read is not None
        assert read.reactions == ()

    async def test_anonymous_callers_are_refused(
        self, team: Team, anonymous: BackendProvider
    ) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        with pytest.raises(NotAuthenticatedError):
            await anonymous.persistence.reaction.toggle(message.id, "👍")

    @pytest.mark.requires_capability("events")
    async def test_toggle_events(self, team: Team) -> None:
        message = await team.p.persistence.message.create(
            team.workspace.id, body="x", channel_id=team.general.id
        )
        async with team.p.events.stream(team.workspace.id, types=["reaction.*"]) as stream:
            await team.member.provider.persistence.reaction.toggle(message.id, "👍")
            await team.member.provider.persistence.reaction.toggle(message.id, "👍")
            got = [await _next_event(stream) for _ in range(2)]
        assert [e.payload.model_dump() for e in got] == [
            {
                "message_id": message.id,
                "reaction": "👍",
                "added": added,
                "member_id": team.member_member.id,
            }
            for added in (True, False)
        ]


# --- conversations ----------------------------------------------------------------------------


class ConversationConformance(_MessagingBase):
    """``persistence.conversation``: one conversation per pair, participants only."""

    async def test_create_or_get_is_one_conversation_per_pair(self, team: Team) -> None:
        pair = {team.owner_member.id, team.member_member.id}
        first = await team.p.persistence.conversation.create_or_get(
            team.workspace.id, team.owner_member.id, team.member_member.id
        )
        assert {first.member_one_id, first.member_two_id} == pair
        assert first.workspace_id == team.workspace.id
        again = await team.p.persistence.conversation.create_or_get(
            team.workspace.id, team.owner_member.id, team.member_member.id
        )
        reverse = await team.member.provider.persistence.conversation.create_or_get(
            team.workspace.id, team.member_member.id, team.owner_member.id
        )
        assert again == reverse == first
        assert await team.member.provider.persistence.conversation.get_by_id(first.id) == first

    async def test_concurrent_calls_agree(self, team: Team) -> None:
        results: list[str] = []

        async def call(who: TestUser, one: str, two: str) -> None:
            conversation = await who.provider.persistence.conversation.create_or_get(
                team.workspace.id, one, two
            )
            results.append(conversation.id)

        owner_id, bob_id = team.owner_member.id, team.member_member.id
        async with anyio.create_task_group() as tg:
            for i in range(10):
                if i % 2:
                    tg.start_soon(call, team.owner, owner_id, bob_id)
                else:
                    tg.start_soon(call, team.member, bob_id, owner_id)
        assert len(results) == 10
        assert len(set(results)) == 1
        assert [c.id for c in await team.p.persistence.conversation.get(team.workspace.id)] == [
            results[0]
        ]

    async def test_no_conversation_with_yourself(self, team: Team) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await team.p.persistence.conversation.create_or_get(
                team.workspace.id, team.owner_member.id, team.owner_member.id
            )
        assert caught.value.message == "Cannot start a conversation with yourself."
        assert await team.p.persistence.conversation.get(team.workspace.id) == []

    async def test_the_caller_must_be_one_of_the_two(self, team: Team, make_user: MakeUser) -> None:
        carol = await make_user("Carol")
        carol_member = await join_member(team.owner, team.workspace, carol)
        with pytest.raises(PermissionDeniedError):
            await team.p.persistence.conversation.create_or_get(
                team.workspace.id, team.member_member.id, carol_member.id
            )
        assert await carol.provider.persistence.conversation.get(team.workspace.id) == []

    async def test_both_members_must_belong_to_the_workspace(self, team: Team) -> None:
        """Bug S5: no conversation with a member of another workspace."""
        eve = await team.outsider.provider.persistence.member.get_current(team.foreign.id)
        assert eve is not None
        conversations = team.p.persistence.conversation
        for other in (eve.id, MISSING, MALFORMED):
            for one, two in ((team.owner_member.id, other), (other, team.owner_member.id)):
                with pytest.raises(NotFoundError) as caught:
                    await conversations.create_or_get(team.workspace.id, one, two)
                assert caught.value.message == "Member not found."
        assert await conversations.get(team.workspace.id) == []

    async def test_outsiders_cannot_create_or_see(self, team: Team) -> None:
        conversation = await team.p.persistence.conversation.create_or_get(
            team.workspace.id, team.owner_member.id, team.member_member.id
        )
        eve = await team.outsider.provider.persistence.member.get_current(team.foreign.id)
        assert eve is not None
        outsider = team.outsider.provider.persistence.conversation
        for workspace_id in (team.workspace.id, MISSING, MALFORMED):
            with pytest.raises(NotFoundError):
                await outsider.create_or_get(workspace_id, eve.id, team.owner_member.id)
            assert await outsider.get(workspace_id) == []
        assert await outsider.get_by_id(conversation.id) is None
        assert await outsider.get_by_id(MALFORMED) is None
        assert await outsider.get_by_id(MISSING) is None

    async def test_get_lists_only_the_callers_conversations(
        self, team: Team, make_user: MakeUser
    ) -> None:
        carol = await make_user("Carol")
        carol_member = await join_member(team.owner, team.workspace, carol)
        conversations = team.p.persistence.conversation
        with_bob = await conversations.create_or_get(
            team.workspace.id, team.owner_member.id, team.member_member.id
        )
        with_carol = await carol.provider.persistence.conversation.create_or_get(
            team.workspace.id, carol_member.id, team.owner_member.id
        )
        assert [c.id for c in await conversations.get(team.workspace.id)] == [
            with_bob.id,
            with_carol.id,
        ]
        bob = team.member.provider.persistence.conversation
        assert [c.id for c in await bob.get(team.workspace.id)] == [with_bob.id]
        assert await bob.get_by_id(with_carol.id) is None
        assert await carol.provider.persistence.conversation.get_by_id(with_bob.id) is None

    async def test_anonymous_callers_are_refused(
        self, team: Team, anonymous: BackendProvider
    ) -> None:
        conversation = await team.p.persistence.conversation.create_or_get(
            team.workspace.id, team.owner_member.id, team.member_member.id
        )
        conversations = anonymous.persistence.conversation
        with pytest.raises(NotAuthenticatedError):
            await conversations.create_or_get(
                team.workspace.id, team.owner_member.id, team.member_member.id
            )
        with pytest.raises(NotAuthenticatedError):
            await conversations.get(team.workspace.id)
        with pytest.raises(NotAuthenticatedError):
            await conversations.get_by_id(conversation.id)

    @pytest.mark.requires_capability("events")
    async def test_created_event_only_once(self, team: Team) -> None:
        async with team.member.provider.events.stream(
            team.workspace.id, types=["conversation.*", "test.*"]
        ) as stream:
            conversation = await team.p.persistence.conversation.create_or_get(
                team.workspace.id, team.owner_member.id, team.member_member.id
            )
            await team.member.provider.persistence.conversation.create_or_get(
                team.workspace.id, team.member_member.id, team.owner_member.id
            )
            created = await _next_event(stream)
            # A marker event proves nothing else was emitted in between.
            await team.p.events.emit(AppEvent(type="test.marker", workspace_id=team.workspace.id))
            marker = await _next_event(stream)
        assert created.type == "conversation.created"
        assert created.payload.model_dump() == {
            "conversation_id": conversation.id,
            "member_one_id": conversation.member_one_id,
            "member_two_id": conversation.member_two_id,
        }
        assert marker.type == "test.marker"

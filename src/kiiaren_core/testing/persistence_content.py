"""Conformance area ``persistence`` (part): workspaces, members, docs, boards, invites, domains.

Written against the protocols only, so the same tests run against any provider, including
the hosted one over HTTP. What needs control a client does not have (a DNS zone, the clock,
concurrency) is tested in each provider's own tests.

Every test makes its own users and workspaces. Signing up costs a password hash, so a test
asks only for the users it needs: ``user`` (the owner of ``workspace``), ``member`` (joined
with the join code), ``outsider`` (owner of ``foreign_workspace``) and ``anonymous``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from kiiaren_core.errors import (
    ConflictError,
    InvalidInputError,
    InviteLinkError,
    KiiarenError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kiiaren_core.events import EventEnvelope
from kiiaren_core.models import (
    ChannelScope,
    DomainStatus,
    InviteLinkStatus,
    Member,
    Role,
    Workspace,
    WorkspaceScope,
)
from kiiaren_core.protocols import BackendProvider, EventStream
from kiiaren_core.testing.base import ConformanceBase, TestUser

__all__ = [
    "BoardConformance",
    "DocConformance",
    "DomainConformance",
    "InviteConformance",
    "MemberConformance",
    "WorkspaceConformance",
]

MakeUser = Callable[..., Awaitable[TestUser]]
MISSING_ID = "00000000-0000-4000-8000-000000000000"
"""A well-formed id that names nothing."""
MALFORMED_IDS = ("not-an-id", "", "x" * 500)
TOO_LARGE = "x" * (8 * 1024 * 1024)
"""Bigger than any sensible limit on a doc body or a board scene."""
INVITE_CODE = re.compile(r"^[A-Za-z0-9_-]{22}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{32}$")


async def join_with_code(owner: TestUser, workspace: Workspace, other: TestUser) -> Member:
    """Let ``other`` join ``workspace`` with its join code (read by the owner)."""
    current = await owner.provider.persistence.workspace.get(workspace.id)
    assert current is not None
    assert current.join_code is not None
    return await other.provider.persistence.workspace.join(
        workspace.id, join_code=current.join_code
    )


async def each_raises(
    error: type[KiiarenError], *calls: Callable[[], Awaitable[object]], message: str | None = None
) -> None:
    """Assert that every call raises ``error`` (with exactly ``message`` when given)."""
    for call in calls:
        with pytest.raises(error) as caught:
            await call()
        if message is not None:
            assert caught.value.message == message, call


async def next_events(stream: EventStream, count: int) -> list[EventEnvelope]:
    """The stream's next ``count`` items, which must all be events (5 seconds at most)."""
    with anyio.fail_after(5):
        items = [await stream.__anext__() for _ in range(count)]
    assert all(isinstance(item, EventEnvelope) for item in items), items
    return [item for item in items if isinstance(item, EventEnvelope)]


def unique_domain() -> str:
    """A fresh, valid domain name nobody has claimed."""
    return f"kiiaren-{secrets.token_hex(6)}.example.com"


class _Team(ConformanceBase):
    """Fixtures for the roles around ``workspace`` (owned by ``user``)."""

    @pytest.fixture
    async def member(self, make_user: MakeUser, user: TestUser, workspace: Workspace) -> TestUser:
        """A plain member of ``workspace``."""
        member = await make_user("Member")
        await join_with_code(user, workspace, member)
        return member

    @pytest.fixture
    async def outsider(self, make_user: MakeUser) -> TestUser:
        """A signed-in user who is not a member of ``workspace``."""
        return await make_user("Outsider")

    @pytest.fixture
    async def foreign_workspace(self, outsider: TestUser) -> Workspace:
        """A workspace owned by ``outsider``."""
        return await outsider.provider.persistence.workspace.create(f"ws-{secrets.token_hex(4)}")

    @pytest.fixture
    async def anonymous(self, provider: BackendProvider) -> AsyncIterator[BackendProvider]:
        """A signed-out view."""
        view = provider.with_session(None)
        yield view
        await view.aclose()


# --- workspaces -----------------------------------------------------------------------------


class WorkspaceConformance(_Team):
    """``persistence.workspace``: lifecycle, visibility, join codes, invites, ownership."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    async def test_workspace_create(self, user: TestUser) -> None:
        ws = await user.provider.persistence.workspace.create("  Acme Team  ")
        assert ws.name == "Acme Team"
        assert ws.owner_id == user.user_id
        assert ws.join_code is not None
        assert len(ws.join_code) == 6
        assert (ws.domain_verified, ws.join_code_enabled) == (False, True)
        me = await user.provider.persistence.member.get_current(ws.id)
        assert me is not None
        assert me.role is Role.OWNER
        channels = await user.provider.persistence.channel.get(ws.id)
        assert [c.name for c in channels] == ["general"]

    @pytest.mark.parametrize("name", ["ab", "   ab   ", "x" * 21, ""])
    async def test_workspace_invalid_name(self, user: TestUser, name: str) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await user.provider.persistence.workspace.create(name)
        assert caught.value.message == "Invalid workspace name."

    async def test_workspace_visibility(
        self, user: TestUser, workspace: Workspace, member: TestUser, outsider: TestUser
    ) -> None:
        store = user.provider.persistence.workspace
        assert (await store.get(workspace.id)) == workspace
        seen = await member.provider.persistence.workspace.get(workspace.id)
        assert seen is not None
        assert seen.join_code is None, "only admins see the join code"
        assert await outsider.provider.persistence.workspace.get(workspace.id) is None
        assert await store.get(MISSING_ID) is None
        for bad in MALFORMED_IDS:
            assert await store.get(bad) is None
        mine = await member.provider.persistence.workspace.get_by_user_id()
        assert [w.id for w in mine] == [workspace.id]
        assert await member.provider.persistence.workspace.get_by_user_id(member.user_id) == mine
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.workspace.get_by_user_id(user.user_id)

    async def test_workspace_anonymous(
        self, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        store = anonymous.persistence.workspace
        assert await store.get_by_user_id() == []
        with pytest.raises(NotAuthenticatedError):
            await store.get(workspace.id)
        with pytest.raises(NotAuthenticatedError):
            await store.create("Anonymous")
        with pytest.raises(NotAuthenticatedError):
            await store.join(workspace.id, join_code="AAAAAA")

    async def test_workspace_get_info(
        self, workspace: Workspace, member: TestUser, outsider: TestUser
    ) -> None:
        info = await outsider.provider.persistence.workspace.get_info(workspace.id)
        assert info is not None
        assert (info.id, info.name, info.is_member, info.role) == (
            workspace.id,
            workspace.name,
            False,
            None,
        )
        info = await member.provider.persistence.workspace.get_info(workspace.id)
        assert info is not None
        assert (info.is_member, info.role) == (True, Role.MEMBER)
        assert await outsider.provider.persistence.workspace.get_info(MISSING_ID) is None

    async def test_workspace_update(
        self, user: TestUser, workspace: Workspace, member: TestUser, outsider: TestUser
    ) -> None:
        renamed = await user.provider.persistence.workspace.update(workspace.id, name=" Renamed ")
        assert renamed.name == "Renamed"
        with pytest.raises(InvalidInputError):
            await user.provider.persistence.workspace.update(workspace.id, name="no")
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.workspace.update(workspace.id, name="Mine now")
        with pytest.raises(NotFoundError):
            await outsider.provider.persistence.workspace.update(workspace.id, name="Mine now")
        current = await user.provider.persistence.workspace.get(workspace.id)
        assert current is not None
        assert current.name == "Renamed"

    async def test_workspace_only_the_owner_removes(
        self, user: TestUser, workspace: Workspace, member: TestUser, outsider: TestUser
    ) -> None:
        admin = await member.provider.persistence.member.get_current(workspace.id)
        assert admin is not None
        await user.provider.persistence.member.update_role(admin.id, Role.ADMIN)
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.workspace.remove(workspace.id)
        with pytest.raises(NotFoundError):
            await outsider.provider.persistence.workspace.remove(workspace.id)
        assert await user.provider.persistence.workspace.get(workspace.id) is not None

    async def test_workspace_remove_with_content(
        self,
        user: TestUser,
        workspace: Workspace,
        member: TestUser,
        anonymous: BackendProvider,
    ) -> None:
        p = user.provider.persistence
        general = (await p.channel.get(workspace.id))[0]
        parent = await p.doc.create(workspace.id, title="Doomed")
        await p.doc.create(workspace.id, title="Child", parent_document_id=parent.id)
        await p.board.create(workspace.id, title="Doomed")
        invite = await p.invite.create(workspace.id, scope=ChannelScope(channel_id=general.id))
        await p.domain.add(workspace.id, unique_domain())
        message = await member.provider.persistence.message.create(
            workspace.id, body="hello", channel_id=general.id
        )
        await p.reaction.toggle(message.id, "+1")
        await p.workspace.remove(workspace.id)
        assert await p.workspace.get(workspace.id) is None
        assert await p.workspace.get_info(workspace.id) is None
        assert await p.workspace.get_by_user_id() == []
        assert await member.provider.persistence.workspace.get_by_user_id() == []
        assert await anonymous.persistence.invite.get_by_code(invite.code) is None
        with pytest.raises(NotFoundError):
            await p.workspace.remove(workspace.id)

    async def test_workspace_join_with_code(
        self, user: TestUser, workspace: Workspace, make_user: MakeUser
    ) -> None:
        joiner = await make_user("Joiner")
        store = joiner.provider.persistence.workspace
        code = workspace.join_code
        assert code is not None
        with pytest.raises(InvalidInputError) as caught:
            await store.join(workspace.id)
        assert caught.value.message == "Join code is required."
        wrong = "A" * 6 if code != "A" * 6 else "B" * 6
        with pytest.raises(InvalidInputError) as caught:
            await store.join(workspace.id, join_code=wrong)
        assert caught.value.message == "Invalid join code."
        with pytest.raises(NotFoundError):
            await store.join(MISSING_ID, join_code=code)
        member = await store.join(workspace.id, join_code=code.lower())
        assert (member.user_id, member.workspace_id, member.role) == (
            joiner.user_id,
            workspace.id,
            Role.MEMBER,
        )
        with pytest.raises(ConflictError) as conflict:
            await store.join(workspace.id, join_code=code)
        assert conflict.value.message == "Already a member of this workspace."

    async def test_workspace_join_with_invite_without_verified_domain(
        self,
        user: TestUser,
        workspace: Workspace,
        make_user: MakeUser,
        foreign_workspace: Workspace,
        outsider: TestUser,
    ) -> None:
        invite = await user.provider.persistence.invite.create(workspace.id, max_uses=1)
        foreign = await outsider.provider.persistence.invite.create(foreign_workspace.id)
        joiner = await make_user("Invited")
        store = joiner.provider.persistence.workspace
        with pytest.raises(InviteLinkError) as caught:
            await store.join(workspace.id, invite_code="no-such-code")
        assert caught.value.message == "Invalid invite link."
        with pytest.raises(InviteLinkError) as caught:
            await store.join(workspace.id, invite_code=foreign.code)
        assert caught.value.message == "Invalid invite link for this workspace."
        member = await store.join(workspace.id, invite_code=invite.code)
        assert member.role is Role.MEMBER
        (link,) = await user.provider.persistence.invite.list(workspace.id)
        assert (link.used_count, link.status) == (1, InviteLinkStatus.EXHAUSTED)
        (foreign_link,) = await outsider.provider.persistence.invite.list(foreign_workspace.id)
        assert foreign_link.used_count == 0, "a refused join takes no use"

    async def test_workspace_regenerate_join_code(
        self, user: TestUser, workspace: Workspace, member: TestUser, make_user: MakeUser
    ) -> None:
        old = workspace.join_code
        assert old is not None
        new = await user.provider.persistence.workspace.regenerate_join_code(workspace.id)
        assert new != old
        assert len(new) == 6
        current = await user.provider.persistence.workspace.get(workspace.id)
        assert current is not None
        assert current.join_code == new
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.workspace.regenerate_join_code(workspace.id)
        joiner = await make_user("Late")
        with pytest.raises(InvalidInputError):
            await joiner.provider.persistence.workspace.join(workspace.id, join_code=old)
        await joiner.provider.persistence.workspace.join(workspace.id, join_code=new)

    async def test_workspace_transfer_ownership(
        self,
        user: TestUser,
        workspace: Workspace,
        member: TestUser,
        outsider: TestUser,
        foreign_workspace: Workspace,
    ) -> None:
        target = await member.provider.persistence.member.get_current(workspace.id)
        assert target is not None
        foreign_owner = await outsider.provider.persistence.member.get_current(foreign_workspace.id)
        assert foreign_owner is not None
        store = user.provider.persistence.workspace
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.workspace.transfer_ownership(workspace.id, target.id)
        with pytest.raises(NotFoundError):
            await store.transfer_ownership(workspace.id, foreign_owner.id)
        with pytest.raises(NotFoundError):
            await store.transfer_ownership(workspace.id, MISSING_ID)
        me = await user.provider.persistence.member.get_current(workspace.id)
        assert me is not None
        with pytest.raises(InvalidInputError):
            await store.transfer_ownership(workspace.id, me.id)
        promoted = await store.transfer_ownership(workspace.id, target.id)
        assert promoted.role is Role.OWNER
        after = await member.provider.persistence.workspace.get(workspace.id)
        assert after is not None
        assert after.owner_id == member.user_id
        me = await user.provider.persistence.member.get_current(workspace.id)
        assert me is not None
        assert me.role is Role.ADMIN
        with pytest.raises(PermissionDeniedError):
            await store.remove(workspace.id)


# --- members --------------------------------------------------------------------------------


class MemberConformance(_Team):
    """``persistence.member``: reads, roles (owner protected), removal, leaving, cascades."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    async def test_member_list_shows_emails_to_admins_only(
        self, user: TestUser, workspace: Workspace, member: TestUser, outsider: TestUser
    ) -> None:
        as_owner = await user.provider.persistence.member.get(workspace.id)
        assert [(m.user_id, m.role) for m in as_owner] == [
            (user.user_id, Role.OWNER),
            (member.user_id, Role.MEMBER),
        ]
        assert all(m.user is not None and m.user.email for m in as_owner)
        assert as_owner[1].user is not None
        assert as_owner[1].user.name == "Member"
        as_member = await member.provider.persistence.member.get(workspace.id)
        assert [m.id for m in as_member] == [m.id for m in as_owner]
        owner_seen = next(m for m in as_member if m.user_id == user.user_id)
        assert owner_seen.user is not None
        assert owner_seen.user.email is None, "members do not see other members' emails"
        assert await outsider.provider.persistence.member.get(workspace.id) == []
        assert await outsider.provider.persistence.member.get(MISSING_ID) == []

    async def test_member_get_by_id_and_current(
        self, user: TestUser, workspace: Workspace, member: TestUser, outsider: TestUser
    ) -> None:
        mine = await member.provider.persistence.member.get_current(workspace.id)
        assert mine is not None
        assert (mine.user_id, mine.workspace_id, mine.role) == (
            member.user_id,
            workspace.id,
            Role.MEMBER,
        )
        seen = await user.provider.persistence.member.get_by_id(mine.id)
        assert seen is not None
        assert seen.id == mine.id
        assert await outsider.provider.persistence.member.get_by_id(mine.id) is None
        assert await outsider.provider.persistence.member.get_current(workspace.id) is None
        for bad in (MISSING_ID, *MALFORMED_IDS):
            assert await user.provider.persistence.member.get_by_id(bad) is None

    async def test_member_anonymous_reads(
        self, user: TestUser, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        me = await user.provider.persistence.member.get_current(workspace.id)
        assert me is not None
        store = anonymous.persistence.member
        await each_raises(
            NotAuthenticatedError,
            lambda: store.get(workspace.id),
            lambda: store.get_by_id(me.id),
            lambda: store.get_current(workspace.id),
        )

    async def test_member_anonymous_writes(
        self, user: TestUser, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        me = await user.provider.persistence.member.get_current(workspace.id)
        assert me is not None
        store = anonymous.persistence.member
        with pytest.raises(NotAuthenticatedError):
            await store.update_role(me.id, Role.ADMIN)
        with pytest.raises(NotAuthenticatedError):
            await store.remove(me.id)

    async def test_member_update_role(
        self,
        user: TestUser,
        workspace: Workspace,
        member: TestUser,
        make_user: MakeUser,
        outsider: TestUser,
    ) -> None:
        owner_store = user.provider.persistence.member
        target = await member.provider.persistence.member.get_current(workspace.id)
        owner = await owner_store.get_current(workspace.id)
        assert target is not None
        assert owner is not None
        other = await make_user("Other")
        await join_with_code(user, workspace, other)
        other_member = await other.provider.persistence.member.get_current(workspace.id)
        assert other_member is not None
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.member.update_role(other_member.id, Role.ADMIN)
        with pytest.raises(NotFoundError):
            await outsider.provider.persistence.member.update_role(target.id, Role.ADMIN)
        with pytest.raises(NotFoundError):
            await owner_store.update_role(MISSING_ID, Role.ADMIN)
        promoted = await owner_store.update_role(target.id, Role.ADMIN)
        assert promoted.role is Role.ADMIN
        # An admin manages members but cannot touch the owner or grant ownership.
        admin_store = member.provider.persistence.member
        assert (await admin_store.update_role(other_member.id, Role.ADMIN)).role is Role.ADMIN
        assert (await admin_store.update_role(other_member.id, Role.MEMBER)).role is Role.MEMBER
        with pytest.raises(PermissionDeniedError):
            await admin_store.update_role(owner.id, Role.MEMBER)
        with pytest.raises(PermissionDeniedError):
            await owner_store.update_role(owner.id, Role.ADMIN)
        with pytest.raises(PermissionDeniedError):
            await owner_store.update_role(target.id, Role.OWNER)
        demoted = await owner_store.update_role(target.id, Role.MEMBER)
        assert demoted.role is Role.MEMBER
        assert (await owner_store.get_current(workspace.id)).role is Role.OWNER  # type: ignore[union-attr]

    async def test_member_remove_and_leave_rules(
        self, user: TestUser, workspace: Workspace, member: TestUser, make_user: MakeUser
    ) -> None:
        owner_store = user.provider.persistence.member
        owner = await owner_store.get_current(workspace.id)
        plain = await member.provider.persistence.member.get_current(workspace.id)
        first, second = await make_user("Admin A"), await make_user("Admin B")
        a = await join_with_code(user, workspace, first)
        b = await join_with_code(user, workspace, second)
        assert owner is not None
        assert plain is not None
        await owner_store.update_role(a.id, Role.ADMIN)
        await owner_store.update_role(b.id, Role.ADMIN)
        admin_store = first.provider.persistence.member
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.member.remove(a.id)  # members remove no one
        with pytest.raises(PermissionDeniedError):
            await owner_store.remove(owner.id)  # the owner cannot leave
        with pytest.raises(PermissionDeniedError):
            await admin_store.remove(owner.id)
        with pytest.raises(PermissionDeniedError):
            await admin_store.remove(b.id)  # only the owner removes admins
        await owner_store.remove(b.id)
        assert await owner_store.get_by_id(b.id) is None
        await member.provider.persistence.member.remove(plain.id)  # leave
        assert await member.provider.persistence.member.get_current(workspace.id) is None
        assert await member.provider.persistence.workspace.get(workspace.id) is None
        with pytest.raises(NotFoundError):
            await admin_store.remove(plain.id)
        rejoined = await join_with_code(user, workspace, member)
        await admin_store.remove(rejoined.id)  # admins remove members
        await admin_store.remove(a.id)  # an admin may leave
        remaining = await owner_store.get(workspace.id)
        assert [m.user_id for m in remaining] == [user.user_id]

    async def test_member_removal_cascades(
        self, user: TestUser, workspace: Workspace, member: TestUser
    ) -> None:
        owner_p, member_p = user.provider.persistence, member.provider.persistence
        general = (await owner_p.channel.get(workspace.id))[0]
        me = await member_p.member.get_current(workspace.id)
        owner = await owner_p.member.get_current(workspace.id)
        assert me is not None
        assert owner is not None
        theirs = await member_p.message.create(workspace.id, body="mine", channel_id=general.id)
        kept = await owner_p.message.create(workspace.id, body="owner's", channel_id=general.id)
        reply = await owner_p.message.create(
            workspace.id, body="reply to theirs", parent_message_id=theirs.id
        )
        await member_p.reaction.toggle(kept.id, "+1")
        dm = await member_p.conversation.create_or_get(workspace.id, me.id, owner.id)
        in_dm = await owner_p.message.create(workspace.id, body="dm", conversation_id=dm.id)
        await owner_p.member.remove(me.id)
        assert await owner_p.message.get_by_id(theirs.id) is None
        assert await owner_p.message.get_by_id(reply.id) is None, "replies go with the parent"
        assert await owner_p.message.get_by_id(in_dm.id) is None, "the DM goes, both sides"
        assert await owner_p.conversation.get_by_id(dm.id) is None
        survivor = await owner_p.message.get_by_id(kept.id)
        assert survivor is not None
        assert survivor.reactions == (), "the removed member's reactions are gone"


# --- docs -----------------------------------------------------------------------------------


class DocConformance(_Team):
    """``persistence.doc``: the tree, archive/restore, updates, search, isolation."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    async def test_doc_create_and_read(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        doc = await store.create(workspace.id, title="  Plan  ")
        assert (doc.workspace_id, doc.title, doc.created_by) == (workspace.id, "Plan", user.user_id)
        assert (doc.content, doc.icon, doc.cover_image_id, doc.parent_document_id) == (
            None,
            None,
            None,
            None,
        )
        assert (doc.is_archived, doc.is_published) == (False, False)
        assert doc.created_at == doc.updated_at
        assert await store.get_by_id(doc.id) == doc
        assert await store.get(workspace.id) == [doc]
        untitled = await store.create(workspace.id, title="")
        assert untitled.title == ""
        with pytest.raises(InvalidInputError):
            await store.create(workspace.id, title="x" * 256)

    async def test_doc_tree_levels_newest_first(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        a = await store.create(workspace.id, title="A")
        b = await store.create(workspace.id, title="B")
        c = await store.create(workspace.id, title="C", parent_document_id=a.id)
        d = await store.create(workspace.id, title="D", parent_document_id=a.id)
        e = await store.create(workspace.id, title="E", parent_document_id=d.id)
        assert c.parent_document_id == a.id
        assert [x.id for x in await store.get(workspace.id)] == [b.id, a.id]
        assert [x.id for x in await store.get(workspace.id, parent_document_id=a.id)] == [
            d.id,
            c.id,
        ]
        assert [x.id for x in await store.get(workspace.id, parent_document_id=d.id)] == [e.id]
        assert await store.get(workspace.id, parent_document_id=MISSING_ID) == []
        assert await store.get(workspace.id, parent_document_id="garbage") == []

    async def test_doc_invalid_parent(
        self,
        user: TestUser,
        workspace: Workspace,
        outsider: TestUser,
        foreign_workspace: Workspace,
    ) -> None:
        store = user.provider.persistence.doc
        foreign = await outsider.provider.persistence.doc.create(foreign_workspace.id, title="F")
        archived = await store.create(workspace.id, title="Old")
        await store.archive(archived.id)
        for parent in (foreign.id, archived.id, MISSING_ID, "garbage"):
            with pytest.raises(InvalidInputError) as caught:
                await store.create(workspace.id, title="Child", parent_document_id=parent)
            assert caught.value.message == "Invalid parent document."
        assert await store.get(workspace.id) == []

    async def test_doc_update_and_clear(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        doc = await store.create(workspace.id, title="Draft")
        updated = await store.update(
            doc.id, title=" Final ", content='{"blocks": []}', icon="📄", is_published=True
        )
        assert (updated.title, updated.content, updated.icon, updated.is_published) == (
            "Final",
            '{"blocks": []}',
            "📄",
            True,
        )
        assert updated.updated_at >= doc.updated_at
        assert updated.created_at == doc.created_at
        cleared = await store.update(doc.id, content=None, icon=None)
        assert (cleared.title, cleared.content, cleared.icon, cleared.is_published) == (
            "Final",
            None,
            None,
            True,
        )
        assert await store.get_by_id(doc.id) == cleared
        with pytest.raises(InvalidInputError):
            await store.update(doc.id, title=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await store.update(doc.id, title="x" * 256)
        with pytest.raises(PayloadTooLargeError):
            await store.update(doc.id, content=TOO_LARGE)
        with pytest.raises(NotFoundError) as caught:
            await store.update(doc.id, cover_image_id=MISSING_ID)
        assert caught.value.message == "Image not found."
        assert await store.get_by_id(doc.id) == cleared

    async def test_doc_archive_and_restore(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        a = await store.create(workspace.id, title="A")
        b = await store.create(workspace.id, title="B", parent_document_id=a.id)
        c = await store.create(workspace.id, title="C", parent_document_id=b.id)
        archived = await store.archive(a.id)
        assert archived.is_archived
        assert await store.get(workspace.id) == []
        assert [d.id for d in await store.list_archived(workspace.id)] == [c.id, b.id, a.id]
        got = await store.get_by_id(c.id)
        assert got is not None
        assert got.is_archived, "archived docs are still readable"
        restored = await store.restore(b.id)
        assert (restored.is_archived, restored.parent_document_id) == (False, None)
        assert [d.id for d in await store.get(workspace.id)] == [b.id]
        assert [d.id for d in await store.list_archived(workspace.id)] == [c.id, a.id]
        restored = await store.restore(c.id)
        assert restored.parent_document_id == b.id, "an active parent is kept"

    async def test_doc_archived_parent_refuses_children(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        store = user.provider.persistence.doc
        parent = await store.create(workspace.id, title="Parent")
        await store.archive(parent.id)
        with pytest.raises(InvalidInputError):
            await store.create(workspace.id, title="Child", parent_document_id=parent.id)

    async def test_doc_remove_recursive(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        a = await store.create(workspace.id, title="A")
        b = await store.create(workspace.id, title="B", parent_document_id=a.id)
        c = await store.create(workspace.id, title="C", parent_document_id=b.id)
        keep = await store.create(workspace.id, title="Keep")
        await store.archive(c.id)
        await store.remove(a.id)
        for gone in (a, b, c):
            assert await store.get_by_id(gone.id) is None
        assert await store.get(workspace.id) == [keep]
        assert await store.list_archived(workspace.id) == []
        with pytest.raises(NotFoundError) as caught:
            await store.remove(a.id)
        assert caught.value.message == "Document not found."

    async def test_doc_search(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        plan = await store.create(workspace.id, title="Quarterly Plan")
        review = await store.create(workspace.id, title="quarterly review")
        old = await store.create(workspace.id, title="Quarterly archive")
        percent = await store.create(workspace.id, title="100% done")
        underscore = await store.create(workspace.id, title="a_b")
        umlaut = await store.create(workspace.id, title="Über uns")
        await store.archive(old.id)

        async def ids(query: str) -> list[str]:
            return [d.id for d in await store.search(workspace.id, query)]

        assert await ids("QUARTERLY") == [review.id, plan.id]
        assert await ids("rly pl") == [plan.id]
        assert await ids("%") == [percent.id]
        assert await ids("_") == [underscore.id]
        assert await ids("über") == [umlaut.id]
        assert await ids("nothing like this") == []
        assert await ids("") == [umlaut.id, underscore.id, percent.id, review.id, plan.id]
        assert await ids("x" * 300) == []

    async def test_doc_members_may_write(
        self, user: TestUser, workspace: Workspace, member: TestUser
    ) -> None:
        doc = await user.provider.persistence.doc.create(workspace.id, title="Owner's")
        store = member.provider.persistence.doc
        assert (await store.update(doc.id, title="Edited")).title == "Edited"
        assert (await store.archive(doc.id)).is_archived
        assert not (await store.restore(doc.id)).is_archived
        mine = await store.create(workspace.id, title="Member's", parent_document_id=doc.id)
        assert mine.created_by == member.user_id
        await store.remove(doc.id)
        assert await user.provider.persistence.doc.get_by_id(mine.id) is None

    async def test_doc_outsiders_see_nothing(
        self, user: TestUser, workspace: Workspace, outsider: TestUser
    ) -> None:
        doc = await user.provider.persistence.doc.create(workspace.id, title="Secret")
        store = outsider.provider.persistence.doc
        assert await store.get(workspace.id) == []
        assert await store.list_archived(workspace.id) == []
        assert await store.get_by_id(doc.id) is None
        assert await store.search(workspace.id, "Secret") == []
        await each_raises(
            NotFoundError,
            lambda: store.update(MISSING_ID, title="x"),
            lambda: store.update(doc.id, title="Hacked"),
            lambda: store.archive(doc.id),
            lambda: store.restore(doc.id),
            lambda: store.remove(doc.id),
            message="Document not found.",
        )
        with pytest.raises(NotFoundError):
            await store.create(workspace.id, title="Intruder")
        assert await user.provider.persistence.doc.get_by_id(doc.id) == doc

    async def test_doc_anonymous_and_malformed(
        self, user: TestUser, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        doc = await user.provider.persistence.doc.create(workspace.id, title="Doc")
        store = anonymous.persistence.doc
        await each_raises(
            NotAuthenticatedError,
            lambda: store.get(workspace.id),
            lambda: store.get_by_id(doc.id),
            lambda: store.create(workspace.id, title="x"),
            lambda: store.update(doc.id, title="x"),
            lambda: store.remove(doc.id),
            lambda: store.search(workspace.id, ""),
        )
        for bad in MALFORMED_IDS:
            assert await user.provider.persistence.doc.get_by_id(bad) is None
            with pytest.raises(NotFoundError):
                await user.provider.persistence.doc.archive(bad)
        assert await user.provider.persistence.doc.get("garbage") == []

    @pytest.mark.requires_capability("storage")
    async def test_doc_cover_image(
        self,
        user: TestUser,
        workspace: Workspace,
        outsider: TestUser,
        foreign_workspace: Workspace,
    ) -> None:
        store, storage = user.provider.persistence.doc, user.provider.storage
        doc = await store.create(workspace.id, title="Covered")
        first = await storage.upload(workspace.id, b"first", content_type="image/png")
        second = await storage.upload(workspace.id, b"second", content_type="image/png")
        foreign = await outsider.provider.storage.upload(
            foreign_workspace.id, b"foreign", content_type="image/png"
        )
        with pytest.raises(NotFoundError) as caught:
            await store.update(doc.id, cover_image_id=foreign.id)
        assert caught.value.message == "Image not found."
        assert (await store.update(doc.id, cover_image_id=first.id)).cover_image_id == first.id
        assert (await store.update(doc.id, cover_image_id=second.id)).cover_image_id == second.id
        assert await storage.get_metadata(first.id) is None, "the replaced cover is deleted"
        other = await store.create(workspace.id, title="Other")
        with pytest.raises(ConflictError):
            await store.update(other.id, cover_image_id=second.id)
        await store.remove(doc.id)
        assert await storage.get_metadata(second.id) is None, "the cover goes with the doc"

    @pytest.mark.requires_capability("events")
    async def test_doc_events(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.doc
        async with user.provider.events.stream(workspace.id, types=["doc.*"]) as stream:
            parent = await store.create(workspace.id, title="P")
            child = await store.create(workspace.id, title="C", parent_document_id=parent.id)
            await store.update(child.id, content="body")
            await store.archive(parent.id)
            await store.restore(parent.id)
            await store.remove(parent.id)
            got = await next_events(stream, 8)
        seen = [(e.type, e.payload.doc_id) for e in got]
        assert seen[:3] == [
            ("doc.created", parent.id),
            ("doc.created", child.id),
            ("doc.updated", child.id),
        ]
        assert set(seen[3:5]) == {("doc.archived", parent.id), ("doc.archived", child.id)}
        assert seen[5] == ("doc.restored", parent.id)
        assert set(seen[6:]) == {("doc.deleted", parent.id), ("doc.deleted", child.id)}
        assert got[1].payload.parent_document_id == parent.id
        assert all(e.actor_id == user.user_id for e in got)


# --- boards ---------------------------------------------------------------------------------


class BoardConformance(_Team):
    """``persistence.board``: create, autosave updates, delete, search, isolation."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    async def test_board_create_read_update(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.board
        first = await store.create(workspace.id, title=" Sketch ")
        second = await store.create(workspace.id, title="Plan")
        assert (first.title, first.created_by, first.excalidraw_data, first.thumbnail_id) == (
            "Sketch",
            user.user_id,
            None,
            None,
        )
        assert [b.id for b in await store.get(workspace.id)] == [second.id, first.id]
        assert await store.get_by_id(first.id) == first
        scene = '{"elements": [], "appState": {}, "files": {}}'
        saved = await store.update(first.id, excalidraw_data=scene)
        assert (saved.title, saved.excalidraw_data) == ("Sketch", scene)
        assert saved.updated_at >= first.updated_at
        renamed = await store.update(first.id, title="Renamed")
        assert (renamed.title, renamed.excalidraw_data) == ("Renamed", scene)
        cleared = await store.update(first.id, excalidraw_data=None)
        assert cleared.excalidraw_data is None
        assert await store.get_by_id(first.id) == cleared
        with pytest.raises(InvalidInputError):
            await store.update(first.id, title=None)  # type: ignore[arg-type]
        with pytest.raises(PayloadTooLargeError):
            await store.update(first.id, excalidraw_data=TOO_LARGE)
        with pytest.raises(NotFoundError) as caught:
            await store.update(first.id, thumbnail_id=MISSING_ID)
        assert caught.value.message == "Image not found."

    async def test_board_remove(
        self, user: TestUser, workspace: Workspace, member: TestUser
    ) -> None:
        board = await user.provider.persistence.board.create(workspace.id, title="Gone")
        store = member.provider.persistence.board
        assert (await store.update(board.id, title="Member edit")).title == "Member edit"
        await store.remove(board.id)
        assert await store.get_by_id(board.id) is None
        assert await store.get(workspace.id) == []
        with pytest.raises(NotFoundError) as caught:
            await store.remove(board.id)
        assert caught.value.message == "Board not found."

    async def test_board_search(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.board
        a = await store.create(workspace.id, title="Roadmap 2026")
        b = await store.create(workspace.id, title="ROADMAP draft")
        c = await store.create(workspace.id, title="50% off")
        assert [x.id for x in await store.search(workspace.id, "roadmap")] == [b.id, a.id]
        assert [x.id for x in await store.search(workspace.id, "%")] == [c.id]
        assert [x.id for x in await store.search(workspace.id, "")] == [c.id, b.id, a.id]
        assert await store.search(workspace.id, "absent") == []

    async def test_board_isolation(
        self,
        user: TestUser,
        workspace: Workspace,
        outsider: TestUser,
        anonymous: BackendProvider,
    ) -> None:
        board = await user.provider.persistence.board.create(workspace.id, title="Private")
        store = outsider.provider.persistence.board
        assert await store.get(workspace.id) == []
        assert await store.get_by_id(board.id) is None
        assert await store.search(workspace.id, "") == []
        await each_raises(
            NotFoundError,
            lambda: store.update(board.id, title="Hacked"),
            lambda: store.update(board.id, excalidraw_data="{}"),
            lambda: store.remove(board.id),
            lambda: store.update(MISSING_ID, title="x"),
            lambda: store.update("garbage", title="x"),
            message="Board not found.",
        )
        with pytest.raises(NotFoundError):
            await store.create(workspace.id, title="Intruder")
        await each_raises(
            NotAuthenticatedError,
            lambda: anonymous.persistence.board.get(workspace.id),
            lambda: anonymous.persistence.board.get_by_id(board.id),
            lambda: anonymous.persistence.board.update(board.id, title="x"),
        )
        assert await user.provider.persistence.board.get_by_id(board.id) == board

    @pytest.mark.requires_capability("storage")
    async def test_board_thumbnail(self, user: TestUser, workspace: Workspace) -> None:
        store, storage = user.provider.persistence.board, user.provider.storage
        board = await store.create(workspace.id, title="Thumb")
        first = await storage.upload(workspace.id, b"first", content_type="image/png")
        second = await storage.upload(workspace.id, b"second", content_type="image/png")
        assert (await store.update(board.id, thumbnail_id=first.id)).thumbnail_id == first.id
        assert (await store.update(board.id, thumbnail_id=second.id)).thumbnail_id == second.id
        assert await storage.get_metadata(first.id) is None
        await store.remove(board.id)
        assert await storage.get_metadata(second.id) is None


# --- invites --------------------------------------------------------------------------------


class InviteConformance(_Team):
    """``persistence.invite``: creation rules, public reads, listing, revocation, redemption."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    async def test_invite_create_and_list(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.invite
        created = await store.create(workspace.id)
        assert INVITE_CODE.match(created.code)
        limited = await store.create(workspace.id, expires_in_hours=720, max_uses=3)
        links = await store.list(workspace.id)
        assert [link.id for link in links] == [limited.id, created.id]
        link = links[1]
        assert (link.code, link.workspace_id, link.scope, link.status) == (
            created.code,
            workspace.id,
            WorkspaceScope(),
            InviteLinkStatus.ACTIVE,
        )
        assert (link.created_by.id, link.created_by.name) == (user.user_id, "Owner")
        assert (link.max_uses, link.used_count, link.revoked_at) == (None, 0, None)
        hours = (link.expires_at - link.created_at).total_seconds() / 3600
        assert hours == pytest.approx(24, abs=0.01)
        assert links[0].max_uses == 3

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"expires_in_hours": 0}, "Expiry must be between 1 and 720 hours (30 days)."),
            ({"expires_in_hours": 0.5}, "Expiry must be between 1 and 720 hours (30 days)."),
            ({"expires_in_hours": 721}, "Expiry must be between 1 and 720 hours (30 days)."),
            ({"expires_in_hours": -5}, "Expiry must be between 1 and 720 hours (30 days)."),
            ({"max_uses": 0}, "Max uses must be at least 1."),
            ({"max_uses": -1}, "Max uses must be at least 1."),
        ],
        ids=["0h", "half-hour", "721h", "negative-hours", "0-uses", "negative-uses"],
    )
    async def test_invite_create_validation(
        self, user: TestUser, workspace: Workspace, options: dict[str, float], message: str
    ) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await user.provider.persistence.invite.create(workspace.id, **options)  # type: ignore[arg-type]
        assert caught.value.message == message
        assert await user.provider.persistence.invite.list(workspace.id) == []

    async def test_invite_channel_scope(
        self,
        user: TestUser,
        workspace: Workspace,
        outsider: TestUser,
        foreign_workspace: Workspace,
        make_user: MakeUser,
    ) -> None:
        store = user.provider.persistence.invite
        general = (await user.provider.persistence.channel.get(workspace.id))[0]
        foreign = (await outsider.provider.persistence.channel.get(foreign_workspace.id))[0]
        for channel_id in (foreign.id, MISSING_ID, "garbage"):
            with pytest.raises(NotFoundError) as caught:
                await store.create(workspace.id, scope=ChannelScope(channel_id=channel_id))
            assert caught.value.message == "Channel not found in this workspace."
        created = await store.create(workspace.id, scope=ChannelScope(channel_id=general.id))
        preview = await outsider.provider.persistence.invite.get_by_code(created.code)
        assert preview is not None
        assert preview.scope == ChannelScope(channel_id=general.id)
        joiner = await make_user("Guest")
        redemption = await joiner.provider.persistence.invite.redeem(created.code)
        assert (redemption.workspace_id, redemption.channel_id) == (workspace.id, general.id)
        me = await joiner.provider.persistence.member.get_current(workspace.id)
        assert me is not None
        assert (me.id, me.role) == (redemption.member_id, Role.MEMBER)

    async def test_invite_admins_only(
        self,
        user: TestUser,
        workspace: Workspace,
        member: TestUser,
        outsider: TestUser,
        anonymous: BackendProvider,
    ) -> None:
        created = await user.provider.persistence.invite.create(workspace.id)
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.invite.create(workspace.id)
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.invite.list(workspace.id)
        with pytest.raises(PermissionDeniedError):
            await member.provider.persistence.invite.revoke(created.id)
        with pytest.raises(NotFoundError):
            await outsider.provider.persistence.invite.create(workspace.id)
        assert await outsider.provider.persistence.invite.list(workspace.id) == []
        with pytest.raises(NotFoundError) as caught:
            await outsider.provider.persistence.invite.revoke(created.id)
        assert caught.value.message == "Invite link not found."
        await each_raises(
            NotAuthenticatedError,
            lambda: anonymous.persistence.invite.create(workspace.id),
            lambda: anonymous.persistence.invite.list(workspace.id),
            lambda: anonymous.persistence.invite.revoke(created.id),
            lambda: anonymous.persistence.invite.redeem(created.code),
        )
        (link,) = await user.provider.persistence.invite.list(workspace.id)
        assert link.status is InviteLinkStatus.ACTIVE

    async def test_invite_public_reads(
        self, user: TestUser, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        created = await user.provider.persistence.invite.create(workspace.id, max_uses=5)
        store = anonymous.persistence.invite
        preview = await store.get_by_code(created.code)
        assert preview is not None
        assert (preview.id, preview.workspace_id, preview.workspace_name, preview.scope) == (
            created.id,
            workspace.id,
            workspace.name,
            WorkspaceScope(),
        )
        valid = await store.validate_for_redemption(created.code)
        assert (valid.valid, valid.error, valid.workspace_id, valid.workspace_name) == (
            True,
            None,
            workspace.id,
            workspace.name,
        )
        for code in ("no-such-code", "", "x" * 10_000):
            assert await store.get_by_code(code) is None
            missing = await store.validate_for_redemption(code)
            assert (missing.valid, missing.error) == (False, "Invite link not found.")
        await user.provider.persistence.invite.revoke(created.id)
        assert await store.get_by_code(created.code) is None
        revoked = await store.validate_for_redemption(created.code)
        assert (revoked.valid, revoked.error) == (False, "Invite link has been revoked.")

    async def test_invite_revoke(
        self,
        user: TestUser,
        workspace: Workspace,
        outsider: TestUser,
        foreign_workspace: Workspace,
        make_user: MakeUser,
    ) -> None:
        store = user.provider.persistence.invite
        created = await store.create(workspace.id)
        foreign = await outsider.provider.persistence.invite.create(foreign_workspace.id)
        await store.revoke(created.id)
        with pytest.raises(ConflictError) as conflict:
            await store.revoke(created.id)
        assert conflict.value.message == "Invite link is already revoked."
        for invite_id in (foreign.id, MISSING_ID, "garbage"):
            with pytest.raises(NotFoundError) as caught:
                await store.revoke(invite_id)
            assert caught.value.message == "Invite link not found."
        (link,) = await store.list(workspace.id)
        assert link.status is InviteLinkStatus.REVOKED
        assert link.revoked_at is not None
        joiner = await make_user("Late")
        with pytest.raises(InviteLinkError) as refused:
            await joiner.provider.persistence.invite.redeem(created.code)
        assert refused.value.message == "Invite link has been revoked."
        with pytest.raises(InviteLinkError) as refused:
            await joiner.provider.persistence.workspace.join(workspace.id, invite_code=created.code)
        assert refused.value.message == "Invite link has been revoked."
        assert await joiner.provider.persistence.member.get_current(workspace.id) is None

    async def test_invite_redeem(
        self, user: TestUser, workspace: Workspace, make_user: MakeUser
    ) -> None:
        store = user.provider.persistence.invite
        created = await store.create(workspace.id, max_uses=1)
        with pytest.raises(ConflictError) as conflict:
            await store.redeem(created.code)
        assert conflict.value.message == "Already a member of this workspace."
        first, second = await make_user("First"), await make_user("Second")
        with pytest.raises(InviteLinkError) as missing:
            await first.provider.persistence.invite.redeem("no-such-code")
        assert missing.value.message == "Invite link not found."
        redemption = await first.provider.persistence.invite.redeem(created.code)
        assert (redemption.workspace_id, redemption.channel_id) == (workspace.id, None)
        with pytest.raises(ConflictError):
            await first.provider.persistence.invite.redeem(created.code)
        with pytest.raises(InviteLinkError) as exhausted:
            await second.provider.persistence.invite.redeem(created.code)
        assert exhausted.value.message == "Invite link has reached maximum uses."
        check = await second.provider.persistence.invite.validate_for_redemption(created.code)
        assert check.error == "Invite link has reached maximum uses."
        assert await second.provider.persistence.invite.get_by_code(created.code) is None
        (link,) = await store.list(workspace.id)
        assert (link.used_count, link.status) == (1, InviteLinkStatus.EXHAUSTED)
        members = await user.provider.persistence.member.get(workspace.id)
        assert {m.user_id for m in members} == {user.user_id, first.user_id}

    @pytest.mark.requires_capability("events")
    async def test_invite_events(
        self, user: TestUser, workspace: Workspace, make_user: MakeUser
    ) -> None:
        joiner = await make_user("Joiner")
        store = user.provider.persistence.invite
        async with user.provider.events.stream(
            workspace.id, types=["invite.*", "member.joined"]
        ) as stream:
            created = await store.create(workspace.id)
            redemption = await joiner.provider.persistence.invite.redeem(created.code)
            await store.revoke(created.id)
            got = await next_events(stream, 4)
        assert [e.type for e in got] == [
            "invite.created",
            "member.joined",
            "invite.redeemed",
            "invite.revoked",
        ]
        assert got[2].payload.member_id == redemption.member_id
        assert got[2].actor_id == joiner.user_id


# --- domains --------------------------------------------------------------------------------


class DomainConformance(_Team):
    """``persistence.domain`` without DNS: claims, instructions, permissions, email checks."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("persistence")]

    async def test_domain_add_and_read(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.domain
        name = unique_domain()
        domain = await store.add(workspace.id, f"  WWW.{name.upper()}. ")
        assert (domain.domain, domain.workspace_id, domain.status) == (
            name,
            workspace.id,
            DomainStatus.PENDING,
        )
        assert TOKEN.match(domain.verification_token)
        assert (domain.verified_at, domain.created_by) == (None, user.user_id)
        assert await store.get_by_id(domain.id) == domain
        second = await store.add(workspace.id, unique_domain())
        assert await store.list(workspace.id) == [domain, second]
        assert second.verification_token != domain.verification_token
        ws = await user.provider.persistence.workspace.get(workspace.id)
        assert ws is not None
        assert (ws.domain_verified, ws.join_code_enabled) == (False, True)

    @pytest.mark.parametrize("raw", ["acme", "192.168.0.1", "acme..com", "-acme.com", "a b.com"])
    async def test_domain_invalid_domain(
        self, user: TestUser, workspace: Workspace, raw: str
    ) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await user.provider.persistence.domain.add(workspace.id, raw)
        assert caught.value.message == (
            f'Invalid domain format: "{raw}". Please enter a valid domain like "acme.com".'
        )

    async def test_domain_claims(
        self,
        user: TestUser,
        workspace: Workspace,
        outsider: TestUser,
        foreign_workspace: Workspace,
    ) -> None:
        name = unique_domain()
        await user.provider.persistence.domain.add(workspace.id, name)
        with pytest.raises(ConflictError) as caught:
            await user.provider.persistence.domain.add(workspace.id, f"www.{name}")
        assert caught.value.message == f'Domain "{name}" is already added to this workspace.'
        # A pending claim is not exclusive: another workspace may claim the same domain.
        other = await outsider.provider.persistence.domain.add(foreign_workspace.id, name)
        assert other.status is DomainStatus.PENDING

    async def test_domain_instructions(self, user: TestUser, workspace: Workspace) -> None:
        name = unique_domain()
        domain = await user.provider.persistence.domain.add(workspace.id, name)
        got = await user.provider.persistence.domain.get_verification_instructions(domain.id)
        value = f"kiiaren-verification={domain.verification_token}"
        assert (got.record_type, got.record_name, got.record_value) == (
            "TXT",
            f"_kiiaren-verification.{name}",
            value,
        )
        assert got.instructions[:5] == (
            f"Go to your DNS provider for {name}",
            "Add a new TXT record",
            "Set the record name to: _kiiaren-verification",
            f"Set the record value to: {value}",
            "Wait for DNS propagation (usually 5-15 minutes)",
        )
        assert len(got.instructions) == 6
        assert got.instructions[5].startswith('Click "Verify"')

    async def test_domain_admins_only(
        self,
        user: TestUser,
        workspace: Workspace,
        member: TestUser,
        outsider: TestUser,
        anonymous: BackendProvider,
    ) -> None:
        domain = await user.provider.persistence.domain.add(workspace.id, unique_domain())
        as_member = member.provider.persistence.domain
        assert await as_member.get_by_id(domain.id) is None, "the token is for admins only"
        await each_raises(
            PermissionDeniedError,
            lambda: as_member.add(workspace.id, unique_domain()),
            lambda: as_member.list(workspace.id),
            lambda: as_member.get_verification_instructions(domain.id),
            lambda: as_member.verify(domain.id),
            lambda: as_member.remove(domain.id),
        )
        as_outsider = outsider.provider.persistence.domain
        assert await as_outsider.get_by_id(domain.id) is None
        assert await as_outsider.list(workspace.id) == []
        await each_raises(
            NotFoundError,
            lambda: as_outsider.get_verification_instructions(domain.id),
            lambda: as_outsider.verify(domain.id),
            lambda: as_outsider.remove(domain.id),
            lambda: as_outsider.remove(MISSING_ID),
            lambda: as_outsider.verify("garbage"),
            message="Domain not found.",
        )
        with pytest.raises(NotFoundError):
            await as_outsider.add(workspace.id, unique_domain())
        await each_raises(
            NotAuthenticatedError,
            lambda: anonymous.persistence.domain.add(workspace.id, unique_domain()),
            lambda: anonymous.persistence.domain.list(workspace.id),
            lambda: anonymous.persistence.domain.get_by_id(domain.id),
            lambda: anonymous.persistence.domain.verify(domain.id),
            lambda: anonymous.persistence.domain.remove(domain.id),
        )
        assert await user.provider.persistence.domain.list(workspace.id) == [domain]

    async def test_domain_remove(self, user: TestUser, workspace: Workspace) -> None:
        store = user.provider.persistence.domain
        domain = await store.add(workspace.id, unique_domain())
        await store.remove(domain.id)
        assert await store.get_by_id(domain.id) is None
        assert await store.list(workspace.id) == []
        with pytest.raises(NotFoundError):
            await store.remove(domain.id)
        ws = await user.provider.persistence.workspace.get(workspace.id)
        assert ws is not None
        assert (ws.domain_verified, ws.join_code_enabled) == (False, True)
        assert (await store.add(workspace.id, domain.domain)).domain == domain.domain

    async def test_domain_check_email_is_public_and_needs_a_verified_domain(
        self, user: TestUser, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        name = unique_domain()
        await user.provider.persistence.domain.add(workspace.id, name)
        store = anonymous.persistence.domain
        for email in (f"ada@{name}", "no-at-sign", "a@b@c", "", "x" * 1000 + f"@{name}"):
            assert (await store.check_email(workspace.id, email)).matches is False
        assert (await store.check_email(MISSING_ID, f"ada@{name}")).matches is False
        assert (await store.check_email("garbage", f"ada@{name}")).matches is False

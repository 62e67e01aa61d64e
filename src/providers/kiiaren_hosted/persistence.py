"""``provider.persistence`` over the wire: one store per entity, one operation per method.

Each method names its :data:`~kiiaren_core.wire.OPERATIONS_BY_NAME` entry and passes its
arguments by name; :func:`~kiiaren_hosted.transport.build_request` places them in the path,
query or body as the table says, so the contract's semantics (``UNSET`` leaves a field, ``None``
clears it, a missing target reads as ``None``) travel unchanged. The server validates and
authorises; nothing is checked twice here.
"""

from __future__ import annotations

from typing import Any

from kiiaren_core.models import (
    UNSET,
    Board,
    Channel,
    ChannelScope,
    Conversation,
    CreatedInvite,
    Doc,
    Domain,
    DomainVerificationInstructions,
    DomainVerificationResult,
    EmailDomainCheck,
    InviteLink,
    InvitePreview,
    InviteRedemption,
    InviteValidation,
    Member,
    Message,
    Page,
    ReactionToggle,
    Role,
    Unset,
    Workspace,
    WorkspaceInfo,
    WorkspaceScope,
)
from kiiaren_hosted.auth import Caller

__all__ = [
    "HostedBoardStore",
    "HostedChannelStore",
    "HostedConversationStore",
    "HostedDocStore",
    "HostedDomainStore",
    "HostedInviteStore",
    "HostedMemberStore",
    "HostedMessageStore",
    "HostedPersistence",
    "HostedReactionStore",
    "HostedWorkspaceStore",
]


class _Store:
    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    async def _call(self, name: str, /, **arguments: Any) -> Any:
        return await self._caller.call(name, **arguments)


class HostedWorkspaceStore(_Store):
    """Workspaces (``workspace.*`` operations)."""

    async def create(self, name: str) -> Workspace:
        result: Workspace = await self._call("workspace.create", name=name)
        return result

    async def get(self, workspace_id: str) -> Workspace | None:
        result: Workspace | None = await self._call("workspace.get", workspace_id=workspace_id)
        return result

    async def get_by_user_id(self, user_id: str | None = None) -> list[Workspace]:
        result: list[Workspace] = await self._call("workspace.list", user_id=user_id)
        return result

    async def get_info(self, workspace_id: str) -> WorkspaceInfo | None:
        result: WorkspaceInfo | None = await self._call("workspace.info", workspace_id=workspace_id)
        return result

    async def update(self, workspace_id: str, *, name: str) -> Workspace:
        result: Workspace = await self._call(
            "workspace.update", workspace_id=workspace_id, name=name
        )
        return result

    async def remove(self, workspace_id: str) -> None:
        await self._call("workspace.remove", workspace_id=workspace_id)

    async def join(
        self,
        workspace_id: str,
        *,
        join_code: str | None = None,
        invite_code: str | None = None,
    ) -> Member:
        result: Member = await self._call(
            "workspace.join",
            workspace_id=workspace_id,
            join_code=join_code,
            invite_code=invite_code,
        )
        return result

    async def regenerate_join_code(self, workspace_id: str) -> str:
        result: str = await self._call("workspace.regenerate_join_code", workspace_id=workspace_id)
        return result

    async def transfer_ownership(self, workspace_id: str, member_id: str) -> Member:
        result: Member = await self._call(
            "workspace.transfer_ownership", workspace_id=workspace_id, member_id=member_id
        )
        return result


class HostedChannelStore(_Store):
    """Channels (``channel.*``)."""

    async def create(self, workspace_id: str, name: str) -> Channel:
        result: Channel = await self._call("channel.create", workspace_id=workspace_id, name=name)
        return result

    async def get(self, workspace_id: str) -> list[Channel]:
        result: list[Channel] = await self._call("channel.list", workspace_id=workspace_id)
        return result

    async def get_by_id(self, channel_id: str) -> Channel | None:
        result: Channel | None = await self._call("channel.get", channel_id=channel_id)
        return result

    async def update(self, channel_id: str, *, name: str) -> Channel:
        result: Channel = await self._call("channel.update", channel_id=channel_id, name=name)
        return result

    async def remove(self, channel_id: str) -> None:
        await self._call("channel.remove", channel_id=channel_id)


class HostedMemberStore(_Store):
    """Members (``member.*``)."""

    async def get(self, workspace_id: str) -> list[Member]:
        result: list[Member] = await self._call("member.list", workspace_id=workspace_id)
        return result

    async def get_by_id(self, member_id: str) -> Member | None:
        result: Member | None = await self._call("member.get", member_id=member_id)
        return result

    async def get_current(self, workspace_id: str) -> Member | None:
        result: Member | None = await self._call("member.current", workspace_id=workspace_id)
        return result

    async def update_role(self, member_id: str, role: Role) -> Member:
        result: Member = await self._call("member.update_role", member_id=member_id, role=role)
        return result

    async def remove(self, member_id: str) -> None:
        await self._call("member.remove", member_id=member_id)


class HostedMessageStore(_Store):
    """Messages and threads (``message.*``)."""

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
        result: Message = await self._call(
            "message.create",
            workspace_id=workspace_id,
            body=body,
            channel_id=channel_id,
            conversation_id=conversation_id,
            parent_message_id=parent_message_id,
            image_id=image_id,
        )
        return result

    async def get(
        self,
        *,
        channel_id: str | None = None,
        conversation_id: str | None = None,
        parent_message_id: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> Page[Message]:
        result: Page[Message] = await self._call(
            "message.list",
            channel_id=channel_id,
            conversation_id=conversation_id,
            parent_message_id=parent_message_id,
            cursor=cursor,
            limit=limit,
        )
        return result

    async def get_by_id(self, message_id: str) -> Message | None:
        result: Message | None = await self._call("message.get", message_id=message_id)
        return result

    async def update(self, message_id: str, *, body: str) -> Message:
        result: Message = await self._call("message.update", message_id=message_id, body=body)
        return result

    async def remove(self, message_id: str) -> None:
        await self._call("message.remove", message_id=message_id)


class HostedReactionStore(_Store):
    """Reactions (``reaction.toggle``)."""

    async def toggle(self, message_id: str, value: str) -> ReactionToggle:
        result: ReactionToggle = await self._call(
            "reaction.toggle", message_id=message_id, value=value
        )
        return result


class HostedConversationStore(_Store):
    """Direct conversations (``conversation.*``)."""

    async def create_or_get(
        self, workspace_id: str, member_one_id: str, member_two_id: str
    ) -> Conversation:
        result: Conversation = await self._call(
            "conversation.create_or_get",
            workspace_id=workspace_id,
            member_one_id=member_one_id,
            member_two_id=member_two_id,
        )
        return result

    async def get_by_id(self, conversation_id: str) -> Conversation | None:
        result: Conversation | None = await self._call(
            "conversation.get", conversation_id=conversation_id
        )
        return result

    async def get(self, workspace_id: str) -> list[Conversation]:
        result: list[Conversation] = await self._call(
            "conversation.list", workspace_id=workspace_id
        )
        return result


class HostedDocStore(_Store):
    """Docs (``doc.*``)."""

    async def create(
        self, workspace_id: str, *, title: str, parent_document_id: str | None = None
    ) -> Doc:
        result: Doc = await self._call(
            "doc.create",
            workspace_id=workspace_id,
            title=title,
            parent_document_id=parent_document_id,
        )
        return result

    async def get(self, workspace_id: str, *, parent_document_id: str | None = None) -> list[Doc]:
        result: list[Doc] = await self._call(
            "doc.list", workspace_id=workspace_id, parent_document_id=parent_document_id
        )
        return result

    async def list_archived(self, workspace_id: str) -> list[Doc]:
        result: list[Doc] = await self._call("doc.list_archived", workspace_id=workspace_id)
        return result

    async def get_by_id(self, doc_id: str) -> Doc | None:
        result: Doc | None = await self._call("doc.get", doc_id=doc_id)
        return result

    async def update(
        self,
        doc_id: str,
        *,
        title: str | Unset = UNSET,
        content: str | Unset | None = UNSET,
        icon: str | Unset | None = UNSET,
        cover_image_id: str | Unset | None = UNSET,
        is_published: bool | Unset = UNSET,
    ) -> Doc:
        result: Doc = await self._call(
            "doc.update",
            doc_id=doc_id,
            title=title,
            content=content,
            icon=icon,
            cover_image_id=cover_image_id,
            is_published=is_published,
        )
        return result

    async def archive(self, doc_id: str) -> Doc:
        result: Doc = await self._call("doc.archive", doc_id=doc_id)
        return result

    async def restore(self, doc_id: str) -> Doc:
        result: Doc = await self._call("doc.restore", doc_id=doc_id)
        return result

    async def remove(self, doc_id: str) -> None:
        await self._call("doc.remove", doc_id=doc_id)

    async def search(self, workspace_id: str, query: str) -> list[Doc]:
        result: list[Doc] = await self._call("doc.search", workspace_id=workspace_id, query=query)
        return result


class HostedBoardStore(_Store):
    """Whiteboards (``board.*``)."""

    async def create(self, workspace_id: str, *, title: str) -> Board:
        result: Board = await self._call("board.create", workspace_id=workspace_id, title=title)
        return result

    async def get(self, workspace_id: str) -> list[Board]:
        result: list[Board] = await self._call("board.list", workspace_id=workspace_id)
        return result

    async def get_by_id(self, board_id: str) -> Board | None:
        result: Board | None = await self._call("board.get", board_id=board_id)
        return result

    async def update(
        self,
        board_id: str,
        *,
        title: str | Unset = UNSET,
        excalidraw_data: str | Unset | None = UNSET,
        thumbnail_id: str | Unset | None = UNSET,
    ) -> Board:
        result: Board = await self._call(
            "board.update",
            board_id=board_id,
            title=title,
            excalidraw_data=excalidraw_data,
            thumbnail_id=thumbnail_id,
        )
        return result

    async def remove(self, board_id: str) -> None:
        await self._call("board.remove", board_id=board_id)

    async def search(self, workspace_id: str, query: str) -> list[Board]:
        result: list[Board] = await self._call(
            "board.search", workspace_id=workspace_id, query=query
        )
        return result


class HostedInviteStore(_Store):
    """Invite links (``invite.*``; codes travel in bodies, never in URLs)."""

    async def create(
        self,
        workspace_id: str,
        *,
        expires_in_hours: float = 24,
        scope: WorkspaceScope | ChannelScope | None = None,
        max_uses: int | None = None,
    ) -> CreatedInvite:
        result: CreatedInvite = await self._call(
            "invite.create",
            workspace_id=workspace_id,
            expires_in_hours=expires_in_hours,
            scope=scope,
            max_uses=max_uses,
        )
        return result

    async def get_by_code(self, code: str) -> InvitePreview | None:
        result: InvitePreview | None = await self._call("invite.preview", code=code)
        return result

    async def validate_for_redemption(self, code: str) -> InviteValidation:
        result: InviteValidation = await self._call("invite.validate", code=code)
        return result

    async def list(self, workspace_id: str) -> list[InviteLink]:
        result: list[InviteLink] = await self._call("invite.list", workspace_id=workspace_id)
        return result

    async def revoke(self, invite_id: str) -> None:
        await self._call("invite.revoke", invite_id=invite_id)

    async def redeem(self, code: str) -> InviteRedemption:
        result: InviteRedemption = await self._call("invite.redeem", code=code)
        return result


class HostedDomainStore(_Store):
    """Email-domain verification (``domain.*``)."""

    async def add(self, workspace_id: str, domain: str) -> Domain:
        result: Domain = await self._call("domain.add", workspace_id=workspace_id, domain=domain)
        return result

    async def get_by_id(self, domain_id: str) -> Domain | None:
        result: Domain | None = await self._call("domain.get", domain_id=domain_id)
        return result

    async def list(self, workspace_id: str) -> list[Domain]:
        result: list[Domain] = await self._call("domain.list", workspace_id=workspace_id)
        return result

    async def get_verification_instructions(self, domain_id: str) -> DomainVerificationInstructions:
        result: DomainVerificationInstructions = await self._call(
            "domain.instructions", domain_id=domain_id
        )
        return result

    async def verify(self, domain_id: str) -> DomainVerificationResult:
        result: DomainVerificationResult = await self._call("domain.verify", domain_id=domain_id)
        return result

    async def remove(self, domain_id: str) -> None:
        await self._call("domain.remove", domain_id=domain_id)

    async def check_email(self, workspace_id: str, email: str) -> EmailDomainCheck:
        result: EmailDomainCheck = await self._call(
            "domain.check_email", workspace_id=workspace_id, email=email
        )
        return result


class HostedPersistence:
    """``provider.persistence``: the ten stores, sharing one session's :class:`Caller`."""

    def __init__(self, caller: Caller) -> None:
        self._workspace = HostedWorkspaceStore(caller)
        self._channel = HostedChannelStore(caller)
        self._member = HostedMemberStore(caller)
        self._message = HostedMessageStore(caller)
        self._reaction = HostedReactionStore(caller)
        self._conversation = HostedConversationStore(caller)
        self._doc = HostedDocStore(caller)
        self._board = HostedBoardStore(caller)
        self._invite = HostedInviteStore(caller)
        self._domain = HostedDomainStore(caller)

    @property
    def workspace(self) -> HostedWorkspaceStore:
        return self._workspace

    @property
    def channel(self) -> HostedChannelStore:
        return self._channel

    @property
    def member(self) -> HostedMemberStore:
        return self._member

    @property
    def message(self) -> HostedMessageStore:
        return self._message

    @property
    def reaction(self) -> HostedReactionStore:
        return self._reaction

    @property
    def conversation(self) -> HostedConversationStore:
        return self._conversation

    @property
    def doc(self) -> HostedDocStore:
        return self._doc

    @property
    def board(self) -> HostedBoardStore:
        return self._board

    @property
    def invite(self) -> HostedInviteStore:
        return self._invite

    @property
    def domain(self) -> HostedDomainStore:
        return self._domain

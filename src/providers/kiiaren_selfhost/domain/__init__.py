"""The collaboration domain of the self-host provider: one store per entity.

Every store method is one database transaction (see :mod:`._unit`) that checks the caller's
session and membership inside it, writes its kernel events to the event log with it, and calls
the extension hooks after commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiiaren_selfhost.domain.boards import BoardStoreImpl
from kiiaren_selfhost.domain.channels import ChannelStoreImpl
from kiiaren_selfhost.domain.conversations import ConversationStoreImpl
from kiiaren_selfhost.domain.docs import DocStoreImpl
from kiiaren_selfhost.domain.domains import DomainStoreImpl
from kiiaren_selfhost.domain.invites import InviteStoreImpl
from kiiaren_selfhost.domain.members import MemberStoreImpl
from kiiaren_selfhost.domain.messages import MessageStoreImpl, ReactionStoreImpl
from kiiaren_selfhost.domain.workspaces import WorkspaceStoreImpl

if TYPE_CHECKING:
    from kiiaren_selfhost.auth.service import SelfHostAuth
    from kiiaren_selfhost.runtime import Runtime

__all__ = ["SelfHostPersistence"]


class SelfHostPersistence:
    """``provider.persistence``: the stores of one provider view."""

    def __init__(self, runtime: Runtime, auth: SelfHostAuth) -> None:
        self.workspace = WorkspaceStoreImpl(runtime, auth)
        self.channel = ChannelStoreImpl(runtime, auth)
        self.member = MemberStoreImpl(runtime, auth)
        self.message = MessageStoreImpl(runtime, auth)
        self.reaction = ReactionStoreImpl(runtime, auth)
        self.conversation = ConversationStoreImpl(runtime, auth)
        self.doc = DocStoreImpl(runtime, auth)
        self.board = BoardStoreImpl(runtime, auth)
        self.invite = InviteStoreImpl(runtime, auth)
        self.domain = DomainStoreImpl(runtime, auth)

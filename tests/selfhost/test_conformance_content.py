"""The content conformance areas (workspaces, members, docs, boards, invites, domains) on the
self-host provider."""

from __future__ import annotations

import pytest

from kiiaren_core.testing.persistence_content import (
    BoardConformance,
    DocConformance,
    DomainConformance,
    InviteConformance,
    MemberConformance,
    WorkspaceConformance,
)
from kiiaren_selfhost import SelfHostProvider


class TestSelfHostContent(
    WorkspaceConformance,
    MemberConformance,
    DocConformance,
    BoardConformance,
    InviteConformance,
    DomainConformance,
):
    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

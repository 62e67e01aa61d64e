"""The conformance area persistence (messaging: channels, messages, reactions, conversations),
run against the self-host provider on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from kiiaren_core.testing.persistence_messaging import (
    ChannelConformance,
    ConversationConformance,
    MessageConformance,
    ReactionConformance,
)
from kiiaren_selfhost import SelfHostProvider


class TestSelfHostMessaging(
    ChannelConformance, MessageConformance, ReactionConformance, ConversationConformance
):
    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

"""The KIIAREN conformance suite: prove that a provider honours the contract.

A provider's own tests subclass the ``*Conformance`` mixins and override one fixture,
``provider``, that yields an initialised provider (function scope: lifecycle tests close it)::

    # tests/test_my_provider_conformance.py
    import pytest
    from kiiaren_core.testing import LifecycleConformance, ExtensionsConformance

    pytest_plugins = ["kiiaren_core.testing.plugin"]

    class TestMyProvider(LifecycleConformance, ExtensionsConformance):
        @pytest.fixture
        async def provider(self):
            async with MyProvider(...) as provider:
                yield provider

Every test makes its own users and workspaces (``make_user``, ``user``, ``workspace``), so the
suite runs against a shared database. Tests marked ``requires_capability("presence")`` are
skipped unless ``provider.capabilities`` declares it.
"""

import pytest

pytest.register_assert_rewrite(
    "kiiaren_core.testing.base",
    "kiiaren_core.testing.suites",
    "kiiaren_core.testing.auth",
    "kiiaren_core.testing.events",
    "kiiaren_core.testing.storage",
    "kiiaren_core.testing.persistence_content",
    "kiiaren_core.testing.persistence_messaging",
)

from kiiaren_core.testing.auth import AuthConformance  # noqa: E402
from kiiaren_core.testing.base import ConformanceBase, TestUser, unique_email  # noqa: E402
from kiiaren_core.testing.events import EventsConformance  # noqa: E402
from kiiaren_core.testing.persistence_content import (  # noqa: E402
    BoardConformance,
    DocConformance,
    DomainConformance,
    InviteConformance,
    MemberConformance,
    WorkspaceConformance,
)
from kiiaren_core.testing.persistence_messaging import (  # noqa: E402
    ChannelConformance,
    ConversationConformance,
    MessageConformance,
    ReactionConformance,
)
from kiiaren_core.testing.storage import StorageConformance  # noqa: E402
from kiiaren_core.testing.suites import (  # noqa: E402
    ExtensionsConformance,
    LifecycleConformance,
)

ALL_CONFORMANCE: tuple[type[ConformanceBase], ...] = (
    LifecycleConformance,
    ExtensionsConformance,
    AuthConformance,
    WorkspaceConformance,
    MemberConformance,
    ChannelConformance,
    MessageConformance,
    ReactionConformance,
    ConversationConformance,
    DocConformance,
    BoardConformance,
    InviteConformance,
    DomainConformance,
    EventsConformance,
    StorageConformance,
)
"""Every area, for ``class TestMine(*ALL_CONFORMANCE): ...``."""

__all__ = [
    "ALL_CONFORMANCE",
    "AuthConformance",
    "BoardConformance",
    "ChannelConformance",
    "ConformanceBase",
    "ConversationConformance",
    "DocConformance",
    "DomainConformance",
    "EventsConformance",
    "ExtensionsConformance",
    "InviteConformance",
    "LifecycleConformance",
    "MemberConformance",
    "MessageConformance",
    "ReactionConformance",
    "StorageConformance",
    "TestUser",
    "WorkspaceConformance",
    "unique_email",
]

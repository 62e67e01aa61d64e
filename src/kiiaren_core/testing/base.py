"""Shared fixtures of every conformance mixin."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from kiiaren_core.models import Workspace
from kiiaren_core.protocols import BackendProvider

__all__ = ["ConformanceBase", "TestUser", "unique_email"]


def unique_email(prefix: str = "user") -> str:
    """A fresh address on a reserved test domain."""
    return f"{prefix}-{secrets.token_hex(6)}@example.com"


@dataclass(slots=True)
class TestUser:
    """A signed-up user and a provider view signed in as them."""

    __test__ = False  # not a test class, despite the name

    provider: BackendProvider
    email: str
    password: str
    name: str
    user_id: str
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class ConformanceBase:
    """Fixtures every conformance mixin uses. Subclasses override :meth:`provider`."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    @pytest.fixture
    async def provider(self) -> BackendProvider:
        """Override in your test class: yield an initialised provider (function scope)."""
        pytest.fail("Override the `provider` fixture to run the conformance suite.")

    @pytest.fixture(autouse=True)
    def _required_capabilities(
        self, request: pytest.FixtureRequest, provider: BackendProvider
    ) -> None:
        """Skip tests whose ``requires_capability`` the provider does not declare."""
        for marker in request.node.iter_markers("requires_capability"):
            for name in marker.args:
                if not provider.capabilities.has(name):
                    pytest.skip(f"provider {provider.id!r} does not declare {name!r}")

    @pytest.fixture
    def password(self) -> str:
        """A password that satisfies every provider's policy."""
        return f"Conformance-{secrets.token_hex(8)}!"

    @pytest.fixture
    async def make_user(
        self, provider: BackendProvider, password: str
    ) -> AsyncIterator[Callable[..., Awaitable[TestUser]]]:
        """Factory: ``await make_user(name="Ada")`` signs up a fresh user in its own view."""
        views: list[BackendProvider] = []

        async def make(name: str = "Test User", *, email: str | None = None) -> TestUser:
            view = provider.with_session(None)
            views.append(view)
            address = email or unique_email()
            session = await view.auth.sign_up_with_password(address, password, name=name)
            return TestUser(view, address, password, name, session.user_id)

        yield make
        for view in views:
            await view.aclose()

    @pytest.fixture
    async def user(self, make_user: Callable[..., Awaitable[TestUser]]) -> TestUser:
        """A fresh signed-in user."""
        return await make_user("Owner")

    @pytest.fixture
    async def workspace(self, user: TestUser) -> Workspace:
        """A fresh workspace owned by ``user``."""
        return await user.provider.persistence.workspace.create(f"ws-{secrets.token_hex(4)}")

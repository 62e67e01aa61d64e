"""What every endpoint of one app shares: the provider, the settings, the idempotency store.

Routers (the REST routes, the events WebSocket) reach it with :func:`server_state`; it is
``app.state.kiiaren`` of the app :func:`~selfhost_server.create_app` built.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.types import Scope

from kiiaren_core.models import ClientContext, SessionTokens
from kiiaren_core.protocols import BackendProvider, IdempotencyStore
from selfhost_server._context import Network, client_context, client_ip
from selfhost_server.settings import ServerSettings

__all__ = ["ServerState", "server_state"]


@dataclass(slots=True)
class ServerState:
    """The hosted provider and how requests reach it.

    Attributes:
        provider: the root provider; requests act through views of it.
        settings: the server settings.
        idempotency: where ``Idempotency-Key`` answers are kept.
        networks: the trusted proxies, parsed.
    """

    provider: BackendProvider
    settings: ServerSettings
    idempotency: IdempotencyStore
    networks: tuple[Network, ...] = field(default=())

    def client_ip(self, scope: Scope) -> str | None:
        """The client's address (``X-Forwarded-For`` only from trusted proxies)."""
        return client_ip(scope, self.networks)

    def client_context(self, scope: Scope) -> ClientContext:
        """The client facts a provider view gets (address, user agent)."""
        return client_context(scope, self.networks)

    @asynccontextmanager
    async def view(
        self, scope: Scope, tokens: SessionTokens | str | None
    ) -> AsyncIterator[BackendProvider]:
        """A provider view acting for ``tokens`` for this connection, closed afterwards."""
        view = self.provider.with_session(tokens, context=self.client_context(scope))
        try:
            yield view
        finally:
            await view.aclose()


def server_state(connection: HTTPConnection) -> ServerState:
    """The :class:`ServerState` of the app serving ``connection`` (a request or WebSocket)."""
    state: ServerState = connection.app.state.kiiaren
    return state

"""``HostedProvider``: the KIIAREN contract as a client of the HTTP + WebSocket API.

::

    async with HostedProvider(base_url="https://kiiaren.example.com") as provider:
        await provider.auth.sign_in_with_password("ada@example.com", "…")
        workspaces = await provider.persistence.workspace.get_by_user_id()
        bob = provider.with_session(bob_tokens)     # another session, same HTTP pool

What the provider is (``is_managed``), what it can do (``capabilities``) and which managed
features it offers (``features``) come from the server's ``GET /v1/capabilities``, read once
by :meth:`HostedProvider.initialize`; until then they say "nothing".
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import ValidationError

from kiiaren_core.capabilities import Capabilities
from kiiaren_core.errors import ConfigurationError, KiiarenError
from kiiaren_core.extensions import ExtensionHooks, FeatureGate
from kiiaren_core.models import ClientContext, SessionTokens
from kiiaren_core.settings import load_settings
from kiiaren_core.wire import API_PREFIX, CapabilitiesReport
from kiiaren_hosted.auth import Caller, HostedAuth, MemoryTokenStore, SessionState, TokenStore
from kiiaren_hosted.events import EventConnection, HostedEvents
from kiiaren_hosted.extensions import hosted_hooks
from kiiaren_hosted.persistence import HostedPersistence
from kiiaren_hosted.settings import HostedSettings
from kiiaren_hosted.storage import HostedStorage
from kiiaren_hosted.transport import Transport, error_from_response

__all__ = ["HostedProvider"]

PROTOCOL_VERSION = 1


class _Shared:
    """What a provider and its views share: the HTTP client and the server's report."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.report: CapabilitiesReport | None = None
        self.gate = FeatureGate.self_hosted()
        self.lock = asyncio.Lock()
        self.views: set[HostedProvider] = set()

    async def load_report(self) -> None:
        async with self.lock:
            if self.report is not None:
                return
            settings = self.transport.settings
            request = httpx.Request(
                "GET",
                f"{settings.base_url}{API_PREFIX}/capabilities",
                headers={"Accept": "application/json"},
            )
            response = await self.transport.send(request)
            if not response.is_success:
                raise error_from_response(response)
            try:
                report = CapabilitiesReport.model_validate_json(response.content)
            except ValidationError:
                raise KiiarenError(
                    f"{settings.base_url} did not answer GET /v1/capabilities with a KIIAREN "
                    "capabilities report. Check KIIAREN_HOSTED_BASE_URL.",
                    details={"variable": "KIIAREN_HOSTED_BASE_URL"},
                ) from None
            if report.protocol_version != PROTOCOL_VERSION:
                raise ConfigurationError(
                    f"The server speaks wire protocol {report.protocol_version}; this client "
                    f"speaks {PROTOCOL_VERSION}.",
                    details={"variable": "KIIAREN_HOSTED_BASE_URL"},
                )
            self.gate = FeatureGate(report.available_features)
            self.report = report


class HostedProvider:
    """The hosted :class:`~kiiaren_core.protocols.BackendProvider`.

    Args:
        settings: a full settings object; otherwise built from ``KIIAREN_HOSTED_*`` and
            ``options`` (keyword names are the settings' field names, e.g. ``base_url``).
        http_client: an ``httpx.AsyncClient`` to send with (kept open by ``aclose``: it is
            the application's). Requests use absolute URLs built from ``base_url``.
        transport: an httpx transport for the client this provider creates (for example
            ``httpx.MockTransport`` in tests). Not together with ``http_client``.
        token_store: where the root provider keeps its session between runs (loaded by
            :meth:`initialize`, saved on every change); in memory by default.
    """

    id = "hosted"

    def __init__(
        self,
        settings: HostedSettings | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        token_store: TokenStore | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = load_settings(HostedSettings, options)
        elif options:
            settings = settings.model_copy(update=options)
        self._root = True
        self._shared = _Shared(Transport(settings, client=http_client, transport=transport))
        self._build(SessionState(store=token_store or MemoryTokenStore()))

    def _build(self, state: SessionState) -> None:
        self._state = state
        self._caller = Caller(self._shared.transport, state)
        self._auth = HostedAuth(self._caller)
        self._persistence = HostedPersistence(self._caller)
        self._events = HostedEvents(self._caller, EventConnection(self._caller))
        self._storage = HostedStorage(self._caller)
        self._extensions = hosted_hooks(self._caller, lambda: self._shared.gate)

    # --- BackendProvider ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        report = self._shared.report
        return f"KIIAREN Hosted ({report.provider_name})" if report else "KIIAREN Hosted"

    @property
    def is_managed(self) -> bool:
        """What the server says (False before :meth:`initialize`)."""
        report = self._shared.report
        return report.is_managed if report is not None else False

    @property
    def capabilities(self) -> Capabilities:
        """The server's capabilities (none declared before :meth:`initialize`)."""
        report = self._shared.report
        return report.capabilities if report is not None else Capabilities()

    @property
    def server(self) -> CapabilitiesReport | None:
        """The server's whole ``GET /v1/capabilities`` answer, once initialised."""
        return self._shared.report

    @property
    def settings(self) -> HostedSettings:
        return self._shared.transport.settings

    @property
    def auth(self) -> HostedAuth:
        return self._auth

    @property
    def persistence(self) -> HostedPersistence:
        return self._persistence

    @property
    def events(self) -> HostedEvents:
        return self._events

    @property
    def storage(self) -> HostedStorage:
        return self._storage

    @property
    def extensions(self) -> ExtensionHooks:
        return self._extensions

    @property
    def features(self) -> FeatureGate:
        """Built from the server's ``available_features`` (nothing before initialize)."""
        return self._shared.gate

    async def initialize(self) -> None:
        """Read the server's capabilities and, for the root, the stored session. Idempotent.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            KiiarenError: ``base_url`` does not point at a KIIAREN server.
        """
        self._caller.check_open()
        await self._shared.load_report()
        if self._root and self._state.tokens is None:
            self._state.tokens = await self._state.store.load()

    async def aclose(self) -> None:
        """Close the provider (its views, sockets and HTTP client) or, for a view, only the
        view. Idempotent; afterwards every operation raises ProviderClosedError."""
        if self._state.closed:
            return
        self._state.closed = True
        await self._events.aclose()
        if self._root:
            for view in list(self._shared.views):
                await view.aclose()
            await self._shared.transport.aclose()
        else:
            self._shared.views.discard(self)

    async def destroy(self) -> None:
        """Alias of :meth:`aclose`."""
        await self.aclose()

    def with_session(
        self,
        tokens: SessionTokens | str | None,
        *,
        context: ClientContext | None = None,
    ) -> HostedProvider:
        """A view acting as another session (tokens, a bare access token, or ``None`` for a
        signed-out view that may sign in on its own). Shares the HTTP pool and the server's
        report; has its own tokens (in memory) and its own event WebSocket.

        ``context.user_agent`` is sent as the view's ``User-Agent``; ``context.ip_address``
        is not sent (a client cannot vouch for its own address).
        """
        self._caller.check_open()
        if isinstance(tokens, str):
            tokens = SessionTokens(access_token=tokens)
        view = HostedProvider.__new__(HostedProvider)
        view._root = False
        view._shared = self._shared
        view._build(
            SessionState(
                store=MemoryTokenStore(tokens),
                tokens=tokens,
                user_agent=context.user_agent if context is not None else None,
            )
        )
        self._shared.views.add(view)
        return view

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        kind = "provider" if self._root else "view"
        return f"<HostedProvider {kind} {self.settings.base_url}>"

"""KIIAREN hosted provider: the :class:`~kiiaren_core.protocols.BackendProvider` contract as a
client of the KIIAREN HTTP + WebSocket API (a managed service, or the bundled server).

::

    from kiiaren_hosted import HostedProvider

    async with HostedProvider(base_url="http://127.0.0.1:8000") as provider:
        await provider.auth.sign_up_with_password("ada@example.com", "…", name="Ada")
        workspace = await provider.persistence.workspace.create("Analytical")
        async with provider.events.stream(workspace.id) as events:
            async for event in events:
                ...

Configuration: ``KIIAREN_HOSTED_*`` (:class:`HostedSettings`). The wire protocol is
``docs/wire-protocol.md``; this package imports neither the self-host provider nor the server.
"""

from kiiaren_hosted.auth import MemoryTokenStore, TokenStore
from kiiaren_hosted.events import ConnectionState, HostedEventStream
from kiiaren_hosted.provider import HostedProvider
from kiiaren_hosted.settings import HostedSettings

__all__ = [
    "ConnectionState",
    "HostedEventStream",
    "HostedProvider",
    "HostedSettings",
    "MemoryTokenStore",
    "TokenStore",
]

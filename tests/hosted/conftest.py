"""Fixtures for the hosted provider's tests.

``live_server`` is the bundled server hosting a self-host provider, once per database
backend (SQLite, and PostgreSQL when ``KIIAREN_TEST_DATABASE_URL`` is set) and session;
``hosted_provider`` is a fresh, initialised hosted client of it for each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from kiiaren_hosted import HostedProvider
from tests.hosted.live import DistinctClients, LiveServer, serving
from tests.selfhost.conftest import selfhost_url, sqlite_url

__all__ = ["hosted_provider", "live_server", "selfhost_url", "sqlite_url"]


@pytest.fixture(scope="session")
def live_server(
    selfhost_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The bundled server over a migrated database (parametrized: sqlite, postgres)."""
    with serving(selfhost_url, tmp_path_factory.mktemp("hosted-files")) as server:
        yield server


@pytest.fixture
async def hosted_provider(live_server: LiveServer) -> AsyncIterator[HostedProvider]:
    """A fresh, initialised hosted provider talking to ``live_server``."""
    provider = HostedProvider(base_url=live_server.url, transport=DistinctClients())
    await provider.initialize()
    try:
        yield provider
    finally:
        await provider.aclose()

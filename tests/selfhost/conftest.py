"""Fixtures for the self-host provider's tests: one migrated database per backend and session.

``selfhost_url`` is parametrized over SQLite (a file in a temp dir) and PostgreSQL (marker
``postgres``); ``selfhost_provider`` builds a fresh provider on it for each test (cheap: the
schema is migrated once per session). Tests isolate themselves by creating their own users and
workspaces, as the conformance suite does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kiiaren_selfhost import SelfHostProvider, migrate

# Fast but still above the OWASP floor is impossible to go below: the floor *is* the default.
# Tests keep the floor and a short refresh grace so the reuse test does not wait long.
TEST_OPTIONS: dict[str, Any] = {
    "refresh_reuse_grace_seconds": 1.0,
    "jwt_secret": "test-secret-" + "x" * 40,
}


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("selfhost") / "kiiaren.db"
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(
    scope="session",
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)],
)
def selfhost_url(request: pytest.FixtureRequest) -> str:
    """A migrated database URL, once per backend per session."""
    import anyio

    url: str = request.getfixturevalue(
        "sqlite_url" if request.param == "sqlite" else "postgres_url"
    )
    anyio.run(migrate, url)
    return url


@pytest.fixture
async def selfhost_provider(selfhost_url: str, tmp_path: Path) -> AsyncIterator[SelfHostProvider]:
    """A fresh, initialised self-host provider on the session's database."""
    provider = SelfHostProvider(
        database_url=selfhost_url, storage_path=str(tmp_path / "files"), **TEST_OPTIONS
    )
    await provider.initialize()
    try:
        yield provider
    finally:
        await provider.aclose()

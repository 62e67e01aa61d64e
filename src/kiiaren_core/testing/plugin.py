"""Opt-in pytest plugin for the conformance suite.

Enable it with ``pytest_plugins = ["kiiaren_core.testing.plugin"]``.

It registers the ``requires_capability`` marker and runs async tests on anyio's asyncio
backend (one event loop per session, so session-scoped async fixtures work).
"""

from __future__ import annotations

import pytest

pytest_plugins = ["anyio"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_capability(name): skip unless the provider declares this capability",
    )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Conformance tests run on asyncio."""
    return "asyncio"

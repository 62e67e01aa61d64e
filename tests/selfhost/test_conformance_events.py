"""The events conformance area against the self-host provider (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from kiiaren_core.testing.events import EventsConformance
from kiiaren_selfhost import SelfHostProvider


class TestSelfHostEvents(EventsConformance):
    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

"""The conformance areas lifecycle, extensions and auth, run against the self-host provider."""

from __future__ import annotations

import pytest

from kiiaren_core.testing import ExtensionsConformance, LifecycleConformance
from kiiaren_core.testing.auth import AuthConformance
from kiiaren_selfhost import SelfHostProvider


class TestSelfHostCore(LifecycleConformance, ExtensionsConformance, AuthConformance):
    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

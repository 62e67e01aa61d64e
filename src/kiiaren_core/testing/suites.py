"""Conformance areas that need no particular backend: lifecycle and extensions.

Later areas (auth, persistence, events, storage) live in their own modules and reuse
:class:`~kiiaren_core.testing.base.ConformanceBase`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kiiaren_core.errors import ManagedOnlyError, ProviderClosedError
from kiiaren_core.extensions import (
    AIHook,
    AIMemory,
    AIRequest,
    AuditEvent,
    AuditHook,
    AuditQueryParams,
    DeviceToken,
    KMSHook,
    ManagedFeature,
    NotificationHook,
    PushNotification,
    SearchHook,
    SearchIndexEvent,
    SearchParams,
)
from kiiaren_core.protocols import (
    AuthProvider,
    BackendProvider,
    EventsProvider,
    PersistenceProvider,
    StorageProvider,
)
from kiiaren_core.testing.base import ConformanceBase

__all__ = ["ExtensionsConformance", "LifecycleConformance"]

_NOW = datetime(2026, 1, 1, tzinfo=UTC)


class LifecycleConformance(ConformanceBase):
    """Construction, ``async with``, ``aclose`` idempotency, use after close, views."""

    async def test_satisfies_the_protocols(self, provider: BackendProvider) -> None:
        assert isinstance(provider, BackendProvider)
        assert isinstance(provider.auth, AuthProvider)
        assert isinstance(provider.events, EventsProvider)
        assert isinstance(provider.persistence, PersistenceProvider)
        assert isinstance(provider.storage, StorageProvider)
        assert isinstance(provider.id, str)
        assert provider.id
        assert isinstance(provider.name, str)
        assert provider.name
        assert isinstance(provider.is_managed, bool)

    async def test_initialize_is_idempotent(self, provider: BackendProvider) -> None:
        await provider.initialize()
        assert await provider.auth.get_session() is None

    async def test_double_aclose_is_a_noop(self, provider: BackendProvider) -> None:
        await provider.aclose()
        await provider.aclose()
        await provider.destroy()

    async def test_use_after_close_raises(self, provider: BackendProvider) -> None:
        await provider.aclose()
        with pytest.raises(ProviderClosedError):
            await provider.auth.get_session()
        with pytest.raises(ProviderClosedError):
            await provider.persistence.workspace.get_by_user_id()
        with pytest.raises(ProviderClosedError):
            provider.with_session(None)

    async def test_async_with_returns_the_provider_and_closes_it(
        self, provider: BackendProvider
    ) -> None:
        async with provider as entered:
            assert entered is provider
        with pytest.raises(ProviderClosedError):
            await provider.auth.get_session()

    async def test_closing_a_view_leaves_the_provider_open(self, provider: BackendProvider) -> None:
        view = provider.with_session(None)
        assert await view.auth.get_session() is None
        await view.aclose()
        await view.aclose()
        with pytest.raises(ProviderClosedError):
            await view.auth.get_session()
        assert await provider.auth.get_session() is None
        other = provider.with_session(None)
        assert await other.auth.get_session() is None
        await other.aclose()

    async def test_closing_the_provider_closes_its_views(self, provider: BackendProvider) -> None:
        view = provider.with_session(None)
        await provider.aclose()
        with pytest.raises(ProviderClosedError):
            await view.auth.get_session()

    async def test_signed_out_view_has_no_tokens(self, provider: BackendProvider) -> None:
        view = provider.with_session(None)
        try:
            assert view.auth.tokens is None
            assert await view.auth.get_current_user() is None
        finally:
            await view.aclose()


class ExtensionsConformance(ConformanceBase):
    """The feature gate and the hooks tell the truth about what is available."""

    async def test_hooks_satisfy_the_protocols(self, provider: BackendProvider) -> None:
        hooks = provider.extensions
        assert isinstance(hooks.audit, AuditHook)
        assert isinstance(hooks.search, SearchHook)
        assert isinstance(hooks.ai, AIHook)
        assert isinstance(hooks.notification, NotificationHook)
        assert isinstance(hooks.kms, KMSHook)

    async def test_gate_matches_capabilities(self, provider: BackendProvider) -> None:
        gate = provider.features
        available = set(gate.list_available())
        assert available == set(provider.capabilities.managed_features)
        assert available | set(gate.list_managed_only()) == set(ManagedFeature)
        assert not available & set(gate.list_managed_only())
        if not provider.is_managed:
            assert available == set(), "a self-hosted provider offers no managed feature"

    async def test_unavailable_features_raise_managed_only(self, provider: BackendProvider) -> None:
        for feature in provider.features.list_managed_only():
            answer = provider.features.is_available(feature)
            assert answer.available is False
            assert answer.requires_managed is True
            with pytest.raises(ManagedOnlyError) as caught:
                provider.features.require_feature(feature)
            assert caught.value.feature == feature
            assert caught.value.code == "managed_only"
        for feature in provider.features.list_available():
            assert provider.features.is_available(feature).available is True
            provider.features.require_feature(feature)

    async def test_emit_style_hooks_never_raise(self, provider: BackendProvider) -> None:
        """Emit-style hooks are fire-and-forget on every deployment: they complete quietly."""
        hooks = provider.extensions
        event = AuditEvent(
            action="message.create",
            actor_id="u1",
            resource_type="message",
            resource_id="m1",
            workspace_id="w1",
            timestamp=_NOW,
        )
        await hooks.audit.log(event)
        await hooks.search.index(
            SearchIndexEvent(
                document_type="message", document_id="m1", workspace_id="w1", content="x"
            )
        )
        await hooks.ai.store_memory(AIMemory(agent_id="a1", workspace_id="w1", key="k", value="v"))
        await hooks.notification.send_push(PushNotification(user_id="u1", title="t", body="b"))
        await hooks.notification.register_device(
            DeviceToken(user_id="u1", platform="web", token="tok")
        )

    @pytest.mark.parametrize(
        ("feature", "call"),
        [
            (
                ManagedFeature.AUDIT_LOGS,
                lambda h: h.audit.query(
                    AuditQueryParams(workspace_id="w1", start_date=_NOW, end_date=_NOW)
                ),
            ),
            (
                ManagedFeature.INDEXED_SEARCH,
                lambda h: h.search.search(SearchParams(workspace_id="w1", query="q")),
            ),
            (
                ManagedFeature.AI_AGENTS,
                lambda h: h.ai.process(
                    AIRequest(type="completion", workspace_id="w1", context="c")
                ),
            ),
            (ManagedFeature.KMS, lambda h: h.kms.encrypt("data")),
            (ManagedFeature.KMS, lambda h: h.kms.decrypt("ciphertext")),
            (ManagedFeature.KMS, lambda h: h.kms.rotate_key("key")),
        ],
        ids=[
            "audit.query",
            "search.search",
            "ai.process",
            "kms.encrypt",
            "kms.decrypt",
            "kms.rotate",
        ],
    )
    async def test_query_hooks_raise_when_the_feature_is_unavailable(
        self, provider: BackendProvider, feature: ManagedFeature, call: object
    ) -> None:
        if provider.features.is_available(feature).available:
            pytest.skip(f"{feature} is available on this deployment")
        with pytest.raises(ManagedOnlyError) as caught:
            await call(provider.extensions)  # type: ignore[operator]
        assert caught.value.feature == feature
        assert str(feature) in str(caught.value)

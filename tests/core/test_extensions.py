"""Managed features, the FeatureGate and the OSS stubs of the extension hooks (reference 5)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from kiiaren_core.errors import ManagedOnlyError, PermissionDeniedError
from kiiaren_core.extensions import (
    MANAGED_ONLY_FEATURES,
    OSS_FEATURES,
    AIHook,
    AIMemory,
    AIRequest,
    AuditEvent,
    AuditHook,
    AuditQueryParams,
    DeviceToken,
    ExtensionHooks,
    FeatureGate,
    KMSHook,
    ManagedFeature,
    NotificationHook,
    PushNotification,
    SearchHook,
    SearchIndexEvent,
    SearchParams,
    create_oss_stubs,
)
from kiiaren_core.extensions.gate import EDITIONING_URL
from kiiaren_core.extensions.stubs import (
    OSSAIHook,
    OSSAuditHook,
    OSSKMSHook,
    OSSNotificationHook,
    OSSSearchHook,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# Reference section 5.1, in its order.
REFERENCE_MANAGED = [
    "kms",
    "encrypted_sync",
    "indexed_search",
    "audit_logs",
    "ediscovery",
    "sso_saml",
    "ai_agents",
    "push_notifications",
    "sla_monitoring",
    "backup_restore",
    "analytics",
    "admin_console",
]
REFERENCE_OSS = [
    "workspaces",
    "channels",
    "direct_messages",
    "threads",
    "reactions",
    "file_uploads",
    "docs",
    "boards",
    "basic_auth",
    "basic_search",
    "real_time",
    "domain_verification",
    "invite_links",
]


# --- feature identifiers --------------------------------------------------------------------------


def test_managed_feature_has_exactly_the_twelve_reference_values() -> None:
    assert [feature.value for feature in ManagedFeature] == REFERENCE_MANAGED
    assert set(MANAGED_ONLY_FEATURES) == set(ManagedFeature)
    assert len(MANAGED_ONLY_FEATURES) == 12


def test_oss_features_are_the_thirteen_of_the_reference() -> None:
    assert list(OSS_FEATURES) == REFERENCE_OSS
    assert not set(OSS_FEATURES) & {feature.value for feature in ManagedFeature}


# --- the gate -------------------------------------------------------------------------------------


def test_a_self_hosted_gate_offers_nothing() -> None:
    gate = FeatureGate.self_hosted()
    assert gate.list_available() == []
    assert gate.list_managed_only() == list(ManagedFeature)
    assert [f.value for f in gate.list_managed_only()] == REFERENCE_MANAGED
    for feature in ManagedFeature:
        answer = gate.is_available(feature)
        assert answer.feature is feature
        assert answer.available is False
        assert answer.requires_managed is True
        assert answer.reason == f"'{feature}' requires a managed KIIAREN deployment."
        assert answer.documentation_url == EDITIONING_URL == "https://kiiaren.com/docs/editioning"


def test_the_default_gate_is_self_hosted() -> None:
    assert FeatureGate().list_available() == []


def test_a_managed_gate_offers_everything() -> None:
    gate = FeatureGate.managed()
    assert gate.list_available() == list(ManagedFeature)
    assert gate.list_managed_only() == []
    for feature in ManagedFeature:
        answer = gate.is_available(feature)
        assert answer.available is True
        assert answer.reason is None
        assert answer.documentation_url is None
        gate.require_feature(feature)


def test_managed_entitlements_narrow_the_gate() -> None:
    gate = FeatureGate.managed(["audit_logs", ManagedFeature.KMS])
    # Declaration order, whatever the order given.
    assert gate.list_available() == [ManagedFeature.KMS, ManagedFeature.AUDIT_LOGS]
    assert gate.list_managed_only() == [f for f in ManagedFeature if f not in gate.list_available()]
    assert len(gate.list_managed_only()) == 10
    assert gate.is_available("kms").available is True
    assert gate.is_available("sso_saml").available is False
    gate.require_feature("audit_logs")
    with pytest.raises(ManagedOnlyError) as caught:
        gate.require_feature(ManagedFeature.SSO_SAML)
    assert caught.value.feature == "sso_saml"


def test_empty_entitlements_are_not_everything() -> None:
    assert FeatureGate.managed([]).list_available() == []


@pytest.mark.parametrize("feature", list(ManagedFeature))
def test_require_feature_raises_managed_only_naming_the_feature(feature: ManagedFeature) -> None:
    with pytest.raises(ManagedOnlyError) as caught:
        FeatureGate.self_hosted().require_feature(feature.value)
    error = caught.value
    assert error.feature == feature.value
    assert error.details == {"feature": feature.value}
    assert error.message.startswith(f'[KIIAREN] "{feature.value}" requires managed tier.')
    assert isinstance(error, PermissionDeniedError)


@pytest.mark.parametrize(
    "call",
    [
        lambda gate: gate.is_available("teleportation"),
        lambda gate: gate.require_feature("teleportation"),
        lambda gate: gate.is_available("KMS"),  # values are lowercase
        lambda _gate: FeatureGate(["teleportation"]),
        lambda _gate: FeatureGate.managed(["kms", "teleportation"]),
    ],
    ids=["is_available", "require_feature", "case", "constructor", "entitlements"],
)
def test_unknown_feature_names_raise_value_error(call: Callable[[FeatureGate], Any]) -> None:
    with pytest.raises(ValueError, match="is not a valid ManagedFeature"):
        call(FeatureGate.self_hosted())


def test_gates_are_immutable_values() -> None:
    gate = FeatureGate.managed(["kms"])
    with pytest.raises(AttributeError):
        gate.extra = 1  # type: ignore[attr-defined]
    assert repr(gate) == "FeatureGate(available=['kms'])"


# --- OSS stubs ------------------------------------------------------------------------------------


def test_create_oss_stubs_builds_the_five_hooks() -> None:
    hooks = create_oss_stubs()
    assert isinstance(hooks, ExtensionHooks)
    assert isinstance(hooks.audit, OSSAuditHook)
    assert isinstance(hooks.search, OSSSearchHook)
    assert isinstance(hooks.ai, OSSAIHook)
    assert isinstance(hooks.notification, OSSNotificationHook)
    assert isinstance(hooks.kms, OSSKMSHook)
    assert isinstance(hooks.audit, AuditHook)
    assert isinstance(hooks.search, SearchHook)
    assert isinstance(hooks.ai, AIHook)
    assert isinstance(hooks.notification, NotificationHook)
    assert isinstance(hooks.kms, KMSHook)
    assert create_oss_stubs() is not hooks
    with pytest.raises(AttributeError):
        hooks.audit = OSSAuditHook()  # type: ignore[misc]


NO_OPS: dict[str, Callable[[ExtensionHooks], Awaitable[Any]]] = {
    "audit.log": lambda h: h.audit.log(
        AuditEvent(
            action="message.create",
            actor_id="u1",
            resource_type="message",
            resource_id="m1",
            workspace_id="w1",
            timestamp=NOW,
        )
    ),
    "search.index": lambda h: h.search.index(
        SearchIndexEvent(document_type="doc", document_id="d1", workspace_id="w1", content="x")
    ),
    "ai.store_memory": lambda h: h.ai.store_memory(
        AIMemory(agent_id="a1", workspace_id="w1", key="k", value="v")
    ),
    "notification.send_push": lambda h: h.notification.send_push(
        PushNotification(user_id="u1", title="t", body="b")
    ),
    "notification.register_device": lambda h: h.notification.register_device(
        DeviceToken(user_id="u1", platform="android", token="tok")
    ),
}

# Reference section 5.3: the throwing stubs and the exact feature string each names.
THROWING: dict[str, tuple[str, Callable[[ExtensionHooks], Awaitable[Any]]]] = {
    "audit.query": (
        "audit_logs",
        lambda h: h.audit.query(AuditQueryParams(workspace_id="w1", start_date=NOW, end_date=NOW)),
    ),
    "search.search": (
        "indexed_search",
        lambda h: h.search.search(SearchParams(workspace_id="w1", query="q")),
    ),
    "ai.process": (
        "ai_agents",
        lambda h: h.ai.process(AIRequest(type="agent", workspace_id="w1", context="c")),
    ),
    "kms.encrypt": ("kms", lambda h: h.kms.encrypt("plaintext", "key-1")),
    "kms.decrypt": ("kms", lambda h: h.kms.decrypt("ciphertext")),
    "kms.rotate_key": ("kms", lambda h: h.kms.rotate_key("key-1")),
}


def test_the_stub_tables_cover_every_hook_method() -> None:
    hooks = create_oss_stubs()
    methods = {
        f"{hook}.{name}"
        for hook in ("audit", "search", "ai", "notification", "kms")
        for name in dir(getattr(hooks, hook))
        if not name.startswith("_")
    }
    assert methods == set(NO_OPS) | set(THROWING)


@pytest.mark.anyio
@pytest.mark.parametrize("method", sorted(NO_OPS))
async def test_emit_style_stubs_are_silent_no_ops(method: str) -> None:
    assert await NO_OPS[method](create_oss_stubs()) is None


@pytest.mark.anyio
@pytest.mark.parametrize("method", sorted(THROWING))
async def test_query_style_stubs_raise_managed_only(method: str) -> None:
    feature, call = THROWING[method]
    with pytest.raises(ManagedOnlyError) as caught:
        await call(create_oss_stubs())
    error = caught.value
    assert error.feature == feature
    assert type(error.feature) is str
    assert error.message == (
        f'[KIIAREN] "{feature}" requires managed tier. This feature is not available in '
        "self-hosted deployments. See https://kiiaren.com/docs/editioning for feature "
        "availability."
    )
    assert error.to_wire()["details"] == {"feature": feature}

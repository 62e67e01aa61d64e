"""Extension hooks (audit, search, AI, notification, KMS), their OSS stubs and the feature gate."""

from kiiaren_core.extensions.gate import (
    MANAGED_ONLY_FEATURES,
    OSS_FEATURES,
    FeatureAvailability,
    FeatureGate,
    ManagedFeature,
)
from kiiaren_core.extensions.hooks import (
    AIHook,
    AuditHook,
    ExtensionHooks,
    KMSHook,
    NotificationHook,
    SearchHook,
)
from kiiaren_core.extensions.stubs import create_oss_stubs
from kiiaren_core.extensions.types import (
    AIMemory,
    AIRequest,
    AIResponse,
    AuditEvent,
    AuditQueryParams,
    AuditRecord,
    DeviceToken,
    EncryptedData,
    KeyInfo,
    PushNotification,
    SearchHit,
    SearchIndexEvent,
    SearchParams,
)

__all__ = [
    "MANAGED_ONLY_FEATURES",
    "OSS_FEATURES",
    "AIHook",
    "AIMemory",
    "AIRequest",
    "AIResponse",
    "AuditEvent",
    "AuditHook",
    "AuditQueryParams",
    "AuditRecord",
    "DeviceToken",
    "EncryptedData",
    "ExtensionHooks",
    "FeatureAvailability",
    "FeatureGate",
    "KMSHook",
    "KeyInfo",
    "ManagedFeature",
    "NotificationHook",
    "PushNotification",
    "SearchHit",
    "SearchHook",
    "SearchIndexEvent",
    "SearchParams",
    "create_oss_stubs",
]

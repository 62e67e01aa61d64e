"""The open-source stubs of the managed hooks, with the reference's exact semantics.

Emit-style calls are silent no-ops; query-style calls raise
:class:`~kiiaren_core.errors.ManagedOnlyError` naming the feature (``audit_logs``,
``indexed_search``, ``ai_agents``, ``kms``). They are what a self-hosted deployment gets unless
a contributor plugs in a real implementation; plugging one in never makes a managed feature
"available" in the self-host provider's :class:`FeatureGate`.
"""

from __future__ import annotations

from kiiaren_core.errors import ManagedOnlyError
from kiiaren_core.extensions.gate import ManagedFeature
from kiiaren_core.extensions.hooks import ExtensionHooks
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
    "OSSAIHook",
    "OSSAuditHook",
    "OSSKMSHook",
    "OSSNotificationHook",
    "OSSSearchHook",
    "create_oss_stubs",
]


class OSSAuditHook:
    """``log`` is a no-op; ``query`` raises ManagedOnlyError("audit_logs")."""

    async def log(self, event: AuditEvent) -> None:
        return None

    async def query(self, params: AuditQueryParams) -> list[AuditRecord]:
        raise ManagedOnlyError(ManagedFeature.AUDIT_LOGS)


class OSSSearchHook:
    """``index`` is a no-op; ``search`` raises ManagedOnlyError("indexed_search")."""

    async def index(self, event: SearchIndexEvent) -> None:
        return None

    async def search(self, params: SearchParams) -> list[SearchHit]:
        raise ManagedOnlyError(ManagedFeature.INDEXED_SEARCH)


class OSSAIHook:
    """``store_memory`` is a no-op; ``process`` raises ManagedOnlyError("ai_agents")."""

    async def process(self, request: AIRequest) -> AIResponse:
        raise ManagedOnlyError(ManagedFeature.AI_AGENTS)

    async def store_memory(self, memory: AIMemory) -> None:
        return None


class OSSNotificationHook:
    """Both methods are no-ops."""

    async def send_push(self, notification: PushNotification) -> None:
        return None

    async def register_device(self, device: DeviceToken) -> None:
        return None


class OSSKMSHook:
    """Every method raises ManagedOnlyError("kms")."""

    async def encrypt(self, data: str, key_id: str | None = None) -> EncryptedData:
        raise ManagedOnlyError(ManagedFeature.KMS)

    async def decrypt(self, ciphertext: str, key_id: str | None = None) -> str:
        raise ManagedOnlyError(ManagedFeature.KMS)

    async def rotate_key(self, key_id: str) -> KeyInfo:
        raise ManagedOnlyError(ManagedFeature.KMS)


def create_oss_stubs() -> ExtensionHooks:
    """The reference's ``createOSSStubs()``: all five hooks as open-source stubs."""
    return ExtensionHooks(
        audit=OSSAuditHook(),
        search=OSSSearchHook(),
        ai=OSSAIHook(),
        notification=OSSNotificationHook(),
        kms=OSSKMSHook(),
    )

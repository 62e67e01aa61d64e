"""Extension hook protocols and the container a provider exposes as ``provider.extensions``.

Contract shared by every implementation (reference section 5.3): emit-style methods
(``audit.log``, ``search.index``, ``ai.store_memory``, ``notification.send_push``,
``notification.register_device``) return nothing and must not fail the write that triggered
them; query-style methods return real results on a managed deployment and raise
:class:`~kiiaren_core.errors.ManagedOnlyError` where the feature is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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
    "AIHook",
    "AuditHook",
    "ExtensionHooks",
    "KMSHook",
    "NotificationHook",
    "SearchHook",
]


@runtime_checkable
class AuditHook(Protocol):
    """Audit trail (managed feature ``audit_logs``)."""

    async def log(self, event: AuditEvent) -> None:
        """Record one write. Called after commit for every mutation; never raises to callers."""
        ...

    async def query(self, params: AuditQueryParams) -> list[AuditRecord]:
        """Return audit records. Raises ManagedOnlyError("audit_logs") where unavailable."""
        ...


@runtime_checkable
class SearchHook(Protocol):
    """Indexed search (managed feature ``indexed_search``)."""

    async def index(self, event: SearchIndexEvent) -> None:
        """(Re)index a message, doc or board after it was written."""
        ...

    async def search(self, params: SearchParams) -> list[SearchHit]:
        """Search. Raises ManagedOnlyError("indexed_search") where unavailable."""
        ...


@runtime_checkable
class AIHook(Protocol):
    """AI agents with memory (managed feature ``ai_agents``)."""

    async def process(self, request: AIRequest) -> AIResponse:
        """Run a completion, embedding or agent. Raises ManagedOnlyError("ai_agents")."""
        ...

    async def store_memory(self, memory: AIMemory) -> None:
        """Store an agent memory (a no-op where unavailable)."""
        ...


@runtime_checkable
class NotificationHook(Protocol):
    """Push notifications (managed feature ``push_notifications``)."""

    async def send_push(self, notification: PushNotification) -> None:
        """Send a push (a no-op where unavailable)."""
        ...

    async def register_device(self, device: DeviceToken) -> None:
        """Register a device token (a no-op where unavailable)."""
        ...


@runtime_checkable
class KMSHook(Protocol):
    """Key management (managed feature ``kms``); every method raises where unavailable."""

    async def encrypt(self, data: str, key_id: str | None = None) -> EncryptedData:
        """Encrypt ``data``. Raises ManagedOnlyError("kms") where unavailable."""
        ...

    async def decrypt(self, ciphertext: str, key_id: str | None = None) -> str:
        """Decrypt ``ciphertext``. Raises ManagedOnlyError("kms") where unavailable."""
        ...

    async def rotate_key(self, key_id: str) -> KeyInfo:
        """Rotate a key. Raises ManagedOnlyError("kms") where unavailable."""
        ...


@dataclass(frozen=True, slots=True)
class ExtensionHooks:
    """The five hooks a provider exposes as ``provider.extensions``."""

    audit: AuditHook
    search: SearchHook
    ai: AIHook
    notification: NotificationHook
    kms: KMSHook

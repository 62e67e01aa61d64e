"""``provider.extensions`` over the wire: the hooks call ``/v1/extensions/...``.

Where the server offers a feature (its ``available_features``, read at ``initialize()``), the
hook is a plain call and returns the server's real result. Where it does not, the answer is
known without asking: the contract of the OSS stubs (emit-style methods are silent no-ops,
query-style ones raise :class:`~kiiaren_core.errors.ManagedOnlyError` naming the feature),
which is what the server would answer, so no request is sent. Emit-style hooks never raise
to their caller: a failure of an offered hook is logged and swallowed (the contract's "must
not fail the write that triggered them"); only use after close raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kiiaren_core.errors import KiiarenError, ManagedOnlyError, ProviderClosedError
from kiiaren_core.extensions import (
    AIMemory,
    AIRequest,
    AIResponse,
    AuditEvent,
    AuditQueryParams,
    AuditRecord,
    DeviceToken,
    EncryptedData,
    ExtensionHooks,
    FeatureGate,
    KeyInfo,
    ManagedFeature,
    PushNotification,
    SearchHit,
    SearchIndexEvent,
    SearchParams,
)
from kiiaren_hosted.auth import Caller

__all__ = [
    "HostedAIHook",
    "HostedAuditHook",
    "HostedKMSHook",
    "HostedNotificationHook",
    "HostedSearchHook",
    "hosted_hooks",
]

logger = logging.getLogger("kiiaren.hosted.extensions")


class _Hook:
    feature: ManagedFeature

    def __init__(self, caller: Caller, gate: Callable[[], FeatureGate]) -> None:
        self._caller = caller
        self._gate = gate

    def _offered(self) -> bool:
        self._caller.check_open()
        return self._gate().is_available(self.feature).available

    async def _query(self, name: str, /, **arguments: Any) -> Any:
        if not self._offered():
            raise ManagedOnlyError(self.feature)
        return await self._caller.call(name, **arguments)

    async def _emit(self, name: str, /, **arguments: Any) -> None:
        if not self._offered():
            return
        try:
            await self._caller.call(name, **arguments)
        except ProviderClosedError:
            raise
        except KiiarenError as exc:
            logger.warning("extension hook %s failed: %s", name, exc.code)


class HostedAuditHook(_Hook):
    """``audit_logs``: ``log`` is fire-and-forget, ``query`` returns the server's records."""

    feature = ManagedFeature.AUDIT_LOGS

    async def log(self, event: AuditEvent) -> None:
        await self._emit("extensions.audit.log", event=event)

    async def query(self, params: AuditQueryParams) -> list[AuditRecord]:
        records: list[AuditRecord] = await self._query("extensions.audit.query", params=params)
        return records


class HostedSearchHook(_Hook):
    """``indexed_search``: ``index`` is fire-and-forget, ``search`` returns hits."""

    feature = ManagedFeature.INDEXED_SEARCH

    async def index(self, event: SearchIndexEvent) -> None:
        await self._emit("extensions.search.index", event=event)

    async def search(self, params: SearchParams) -> list[SearchHit]:
        hits: list[SearchHit] = await self._query("extensions.search.search", params=params)
        return hits


class HostedAIHook(_Hook):
    """``ai_agents``: ``process`` answers, ``store_memory`` is fire-and-forget."""

    feature = ManagedFeature.AI_AGENTS

    async def process(self, request: AIRequest) -> AIResponse:
        response: AIResponse = await self._query("extensions.ai.process", request=request)
        return response

    async def store_memory(self, memory: AIMemory) -> None:
        await self._emit("extensions.ai.store_memory", memory=memory)


class HostedNotificationHook(_Hook):
    """``push_notifications``: both methods are fire-and-forget."""

    feature = ManagedFeature.PUSH_NOTIFICATIONS

    async def send_push(self, notification: PushNotification) -> None:
        await self._emit("extensions.notification.send_push", notification=notification)

    async def register_device(self, device: DeviceToken) -> None:
        await self._emit("extensions.notification.register_device", device=device)


class HostedKMSHook(_Hook):
    """``kms``: every method answers (or raises ManagedOnlyError where not offered)."""

    feature = ManagedFeature.KMS

    async def encrypt(self, data: str, key_id: str | None = None) -> EncryptedData:
        result: EncryptedData = await self._query(
            "extensions.kms.encrypt", data=data, key_id=key_id
        )
        return result

    async def decrypt(self, ciphertext: str, key_id: str | None = None) -> str:
        plaintext: str = await self._query(
            "extensions.kms.decrypt", ciphertext=ciphertext, key_id=key_id
        )
        return plaintext

    async def rotate_key(self, key_id: str) -> KeyInfo:
        result: KeyInfo = await self._query("extensions.kms.rotate_key", key_id=key_id)
        return result


def hosted_hooks(caller: Caller, gate: Callable[[], FeatureGate]) -> ExtensionHooks:
    """The five hooks of one hosted provider object; ``gate`` gives the server's current gate."""
    return ExtensionHooks(
        audit=HostedAuditHook(caller, gate),
        search=HostedSearchHook(caller, gate),
        ai=HostedAIHook(caller, gate),
        notification=HostedNotificationHook(caller, gate),
        kms=HostedKMSHook(caller, gate),
    )

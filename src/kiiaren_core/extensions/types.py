"""Payloads and results of the extension hooks (reference section 5.3, plus real result types)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from kiiaren_core.models import KiiarenModel, TextDateTime

__all__ = [
    "AIMemory",
    "AIRequest",
    "AIResponse",
    "AuditEvent",
    "AuditQueryParams",
    "AuditRecord",
    "DeviceToken",
    "EncryptedData",
    "KeyInfo",
    "PushNotification",
    "SearchHit",
    "SearchIndexEvent",
    "SearchParams",
]

DocumentType = Literal["message", "doc", "board"]


class AuditEvent(KiiarenModel):
    """One write, as the audit sink receives it."""

    action: str
    actor_id: str | None
    resource_type: str
    resource_id: str
    workspace_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    timestamp: TextDateTime


class AuditQueryParams(KiiarenModel):
    """Filter for ``audit.query``."""

    workspace_id: str
    start_date: TextDateTime
    end_date: TextDateTime
    actor_id: str | None = None
    action: str | None = None
    limit: int | None = Field(default=None, ge=1, le=1000)


class AuditRecord(KiiarenModel):
    """A stored audit entry returned by a managed ``audit.query``."""

    id: str
    event: AuditEvent


class SearchIndexEvent(KiiarenModel):
    """A document to (re)index after a write."""

    document_type: DocumentType
    document_id: str
    workspace_id: str
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchParams(KiiarenModel):
    """A query for ``search.search``."""

    workspace_id: str
    query: str
    types: tuple[DocumentType, ...] | None = None
    limit: int | None = Field(default=None, ge=1, le=100)


class SearchHit(KiiarenModel):
    """One result of a managed ``search.search``."""

    document_type: DocumentType
    document_id: str
    workspace_id: str
    score: float
    snippet: str | None = None


class AIRequest(KiiarenModel):
    """A request for ``ai.process``."""

    type: Literal["completion", "embedding", "agent"]
    workspace_id: str
    context: str
    system_prompt: str | None = None


class AIResponse(KiiarenModel):
    """The answer of a managed ``ai.process``."""

    type: Literal["completion", "embedding", "agent"]
    text: str | None = None
    embedding: tuple[float, ...] | None = None


class AIMemory(KiiarenModel):
    """A memory an agent stores with ``ai.store_memory``."""

    agent_id: str
    workspace_id: str
    key: str
    value: str
    expires_at: TextDateTime | None = None


class PushNotification(KiiarenModel):
    """A push message for ``notification.send_push``."""

    user_id: str
    title: str
    body: str
    data: dict[str, Any] = Field(default_factory=dict)


class DeviceToken(KiiarenModel):
    """A device registration for ``notification.register_device``."""

    user_id: str
    platform: Literal["ios", "android", "web"]
    token: str = Field(repr=False)


class EncryptedData(KiiarenModel):
    """Ciphertext from a managed ``kms.encrypt``."""

    ciphertext: str
    key_id: str


class KeyInfo(KiiarenModel):
    """Key metadata from a managed ``kms.rotate_key``."""

    key_id: str
    version: int
    rotated_at: datetime

"""What a provider can do, declared once and read by the conformance suite and the server.

The suite skips tests whose capability a provider does not declare (``requires_capability``
marker); the server publishes this model at ``GET /v1/capabilities``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kiiaren_core.extensions.gate import ManagedFeature
from kiiaren_core.models import KiiarenModel

__all__ = ["CAPABILITY_FLAGS", "Capabilities", "Limits"]


class Limits(KiiarenModel):
    """Size limits a provider enforces (and a client may check before sending)."""

    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_message_bytes: int = Field(default=64 * 1024, ge=1)
    max_page_size: int = Field(default=100, ge=1)
    upload_url_ttl_seconds: int = Field(default=300, ge=1)
    allowed_upload_types: tuple[str, ...] = (
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
        "text/plain",
    )


class Capabilities(KiiarenModel):
    """Frozen description of a provider's abilities.

    Attributes:
        areas: contract areas the provider implements (the suite runs only these).
        resume: ``events.stream(since=...)`` replays from the event log.
        presence: presence snapshots and ``presence.changed`` events.
        cross_process_events: subscribers in other processes receive events.
        presigned_storage: upload/download URLs go straight to an object store.
        oauth_providers: OAuth providers configured for sign-in.
        email_verification: the email verification and password reset flows work.
        managed_features: managed features this deployment offers.
        limits: enforced size limits.
    """

    areas: frozenset[Literal["auth", "persistence", "events", "storage", "extensions"]] = (
        frozenset()
    )
    resume: bool = False
    presence: bool = False
    cross_process_events: bool = False
    presigned_storage: bool = False
    email_verification: bool = False
    oauth_providers: tuple[Literal["google", "github"], ...] = ()
    managed_features: frozenset[ManagedFeature] = frozenset()
    limits: Limits = Limits()

    def has(self, name: str) -> bool:
        """True if the boolean flag ``name`` is set, or ``name`` is a declared area."""
        if name in CAPABILITY_FLAGS:
            return bool(getattr(self, name))
        return name in self.areas


CAPABILITY_FLAGS = frozenset(
    {"resume", "presence", "cross_process_events", "presigned_storage", "email_verification"}
)

"""Managed features and the :class:`FeatureGate` that answers, per feature, whether it is offered.

Gating is architectural, not configurational (reference section 5.2): a gate is built by the
provider from what the deployment really offers (``is_managed`` plus the managed entitlement
set a managed server reports). No setting or environment variable unlocks a managed feature.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from kiiaren_core.errors import ManagedOnlyError
from kiiaren_core.models import KiiarenModel

__all__ = [
    "MANAGED_ONLY_FEATURES",
    "OSS_FEATURES",
    "FeatureAvailability",
    "FeatureGate",
    "ManagedFeature",
]

EDITIONING_URL: Final = "https://kiiaren.com/docs/editioning"


class ManagedFeature(StrEnum):
    """The twelve features only a managed deployment offers."""

    KMS = "kms"
    ENCRYPTED_SYNC = "encrypted_sync"
    INDEXED_SEARCH = "indexed_search"
    AUDIT_LOGS = "audit_logs"
    EDISCOVERY = "ediscovery"
    SSO_SAML = "sso_saml"
    AI_AGENTS = "ai_agents"
    PUSH_NOTIFICATIONS = "push_notifications"
    SLA_MONITORING = "sla_monitoring"
    BACKUP_RESTORE = "backup_restore"
    ANALYTICS = "analytics"
    ADMIN_CONSOLE = "admin_console"


MANAGED_ONLY_FEATURES: Final[frozenset[ManagedFeature]] = frozenset(ManagedFeature)
OSS_FEATURES: Final[tuple[str, ...]] = (
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
)


class FeatureAvailability(KiiarenModel):
    """The gate's answer for one feature."""

    feature: ManagedFeature
    available: bool
    requires_managed: bool = True
    reason: str | None = None
    documentation_url: str | None = EDITIONING_URL


class FeatureGate:
    """Answers which managed features a deployment offers.

    Args:
        available: the managed features this deployment offers. A self-hosted provider
            passes nothing; a managed one passes its entitlements (by default all).
    """

    __slots__ = ("_available",)

    def __init__(self, available: Iterable[ManagedFeature | str] = ()) -> None:
        self._available = frozenset(ManagedFeature(feature) for feature in available)

    @classmethod
    def self_hosted(cls) -> FeatureGate:
        """A gate where no managed feature is available."""
        return cls(())

    @classmethod
    def managed(cls, entitlements: Iterable[ManagedFeature | str] | None = None) -> FeatureGate:
        """A managed deployment's gate: all features unless ``entitlements`` narrows them."""
        return cls(MANAGED_ONLY_FEATURES if entitlements is None else entitlements)

    def is_available(self, feature: ManagedFeature | str) -> FeatureAvailability:
        """Whether ``feature`` is offered. An unknown name raises ``ValueError``."""
        feature = ManagedFeature(feature)
        if feature in self._available:
            return FeatureAvailability(feature=feature, available=True, documentation_url=None)
        return FeatureAvailability(
            feature=feature,
            available=False,
            reason=f"'{feature}' requires a managed KIIAREN deployment.",
        )

    def require_feature(self, feature: ManagedFeature | str) -> None:
        """Return if ``feature`` is offered, else raise :class:`ManagedOnlyError`."""
        if not self.is_available(feature).available:
            raise ManagedOnlyError(ManagedFeature(feature))

    def list_available(self) -> list[ManagedFeature]:
        """The managed features this deployment offers, in declaration order."""
        return [feature for feature in ManagedFeature if feature in self._available]

    def list_managed_only(self) -> list[ManagedFeature]:
        """The managed features this deployment does not offer, in declaration order."""
        return [feature for feature in ManagedFeature if feature not in self._available]

    def __repr__(self) -> str:
        return f"FeatureGate(available={[str(f) for f in self.list_available()]})"

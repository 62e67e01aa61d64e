"""KIIAREN core: the provider contract every backend implements.

Applications pick a backend by configuration and code against :class:`BackendProvider`::

    from kiiaren_core import open_provider

    async with open_provider() as provider:          # KIIAREN_PROVIDER, default "selfhost"
        await provider.auth.sign_in_with_password("ada@example.com", "correct horse")
        workspace = await provider.persistence.workspace.create("Analytical")

This package imports no I/O library; providers live in their own packages.
"""

from kiiaren_core import errors, events, models
from kiiaren_core._registry import (
    ENTRY_POINT_GROUP,
    EXTENSIONS_GROUP,
    available_providers,
    create_provider,
    get_provider_factory,
    load_extension_hooks,
    open_provider,
    register_provider,
    unregister_provider,
)
from kiiaren_core.capabilities import Capabilities, Limits
from kiiaren_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    KiiarenError,
    ManagedOnlyError,
    NotAuthenticatedError,
    NotFoundError,
    PermissionDeniedError,
    ProviderClosedError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
    UnsupportedError,
)
from kiiaren_core.events import AppEvent, EventEnvelope, KernelEvent, NotRecovered
from kiiaren_core.extensions import ExtensionHooks, FeatureGate, ManagedFeature
from kiiaren_core.models import UNSET, Page, Role, SessionTokens
from kiiaren_core.protocols import (
    AuthProvider,
    BackendProvider,
    EventsProvider,
    PersistenceProvider,
    StorageProvider,
)
from kiiaren_core.settings import KiiarenSettings, ProviderSettings, load_settings

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXTENSIONS_GROUP",
    "UNSET",
    "AppEvent",
    "AuthProvider",
    "BackendProvider",
    "BackendUnavailableError",
    "Capabilities",
    "ConfigurationError",
    "ConflictError",
    "EventEnvelope",
    "EventsProvider",
    "ExtensionHooks",
    "FeatureGate",
    "InvalidInputError",
    "KernelEvent",
    "KiiarenError",
    "KiiarenSettings",
    "Limits",
    "ManagedFeature",
    "ManagedOnlyError",
    "NotAuthenticatedError",
    "NotFoundError",
    "NotRecovered",
    "Page",
    "PermissionDeniedError",
    "PersistenceProvider",
    "ProviderClosedError",
    "ProviderNotFoundError",
    "ProviderSettings",
    "ProviderUnavailableError",
    "RateLimitedError",
    "Role",
    "SessionTokens",
    "StorageProvider",
    "UnsupportedError",
    "__version__",
    "available_providers",
    "create_provider",
    "errors",
    "events",
    "get_provider_factory",
    "load_extension_hooks",
    "load_settings",
    "models",
    "open_provider",
    "register_provider",
    "unregister_provider",
]

"""Provider registry: names -> factories, from explicit registration and entry points.

Lookup order for a name: providers registered in code with :func:`register_provider` first,
then the ``kiiaren.providers`` entry-point group (loaded lazily, only when asked for). A
provider factory is any callable accepting keyword options and returning a
:class:`~kiiaren_core.protocols.BackendProvider` (usually the provider class itself).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from kiiaren_core.errors import (
    ConfigurationError,
    ProviderNotFoundError,
    ProviderUnavailableError,
)
from kiiaren_core.extensions.hooks import ExtensionHooks
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.settings import KiiarenSettings, load_settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXTENSIONS_GROUP",
    "ProviderFactory",
    "available_providers",
    "create_provider",
    "get_provider_factory",
    "load_extension_hooks",
    "open_provider",
    "register_provider",
    "unregister_provider",
]

ENTRY_POINT_GROUP: Final = "kiiaren.providers"
EXTENSIONS_GROUP: Final = "kiiaren.extensions"
"""Entry points naming a zero-argument factory that returns an :class:`ExtensionHooks`."""
ProviderFactory = Callable[..., BackendProvider]
_ALIASES: Final = {"self-host": "selfhost", "self_host": "selfhost"}

_lock = threading.Lock()
_registered: dict[str, ProviderFactory] = {}


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return _ALIASES.get(name, name)


def register_provider(name: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Register ``factory`` under ``name`` (takes precedence over entry points).

    Raises:
        ValueError: ``name`` is already registered in code and ``replace`` is False.
    """
    key = _canonical(name)
    with _lock:
        if key in _registered and not replace:
            raise ValueError(f"A provider named {key!r} is already registered.")
        _registered[key] = factory


def unregister_provider(name: str) -> None:
    """Remove a provider registered in code (entry points are untouched). Idempotent."""
    with _lock:
        _registered.pop(_canonical(name), None)


def _entry_points() -> dict[str, EntryPoint]:
    return {_canonical(ep.name): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_providers() -> list[str]:
    """Every provider name known, registered or from entry points (installed or not)."""
    with _lock:
        names = set(_registered)
    return sorted(names | set(_entry_points()))


def _install_hint(name: str, entry_point: EntryPoint) -> str:
    dist = entry_point.dist.name if entry_point.dist is not None else None
    if dist is None:
        return "install the package that provides it"
    if dist.lower() == "kiiaren":
        return f'pip install "kiiaren[{name}]"'
    return f"pip install {dist}"


def get_provider_factory(name: str) -> ProviderFactory:
    """The factory registered for ``name``.

    Raises:
        ProviderNotFoundError: no such provider; the message lists the available ones.
        ProviderUnavailableError: the provider's optional dependencies are missing; the
            message gives the pip command that installs them.
    """
    key = _canonical(name)
    with _lock:
        factory = _registered.get(key)
    if factory is not None:
        return factory
    entry_point = _entry_points().get(key)
    if entry_point is None:
        raise ProviderNotFoundError(key, available_providers())
    try:
        loaded: ProviderFactory = entry_point.load()
    except AttributeError as exc:
        raise ProviderUnavailableError(
            f"The {key!r} provider's entry point {entry_point.value!r} names nothing "
            f"importable ({exc}). Reinstall the package that provides it.",
            details={"name": key, "variable": "KIIAREN_PROVIDER"},
        ) from exc
    except ImportError as exc:
        hint = _install_hint(key, entry_point)
        raise ProviderUnavailableError(
            f"The {key!r} provider is installed without its dependencies ({exc}). "
            f"Install them with: {hint}",
            details={"name": key, "install": hint, "variable": "KIIAREN_PROVIDER"},
        ) from exc
    return loaded


def create_provider(name: str | None = None, **options: Any) -> BackendProvider:
    """Build (not initialise) the provider ``name``, or ``KIIAREN_PROVIDER``'s, with options."""
    chosen = name if name is not None else load_settings(KiiarenSettings).provider
    return get_provider_factory(chosen)(**options)


@asynccontextmanager
async def open_provider(name: str | None = None, **options: Any) -> AsyncIterator[BackendProvider]:
    """Create, initialise and finally close a provider::

    async with open_provider("selfhost", database_url="sqlite+aiosqlite:///:memory:") as p:
        ...
    """
    provider = create_provider(name, **options)
    try:
        await provider.initialize()
        yield provider
    finally:
        await provider.aclose()


def load_extension_hooks(name: str, *, variable: str = "extensions") -> ExtensionHooks:
    """The hooks a ``kiiaren.extensions`` entry point's factory builds (e.g. a real audit sink).

    Plugging hooks in never changes what a provider's ``FeatureGate`` reports: that is decided
    by the deployment, not by configuration.

    Raises:
        ConfigurationError: no such entry point (the message lists the installed ones and
            ``details["variable"]`` names the setting), it cannot be imported, or its factory
            does not return an ``ExtensionHooks``.
    """
    installed = {ep.name: ep for ep in entry_points(group=EXTENSIONS_GROUP)}
    entry_point = installed.get(name)
    if entry_point is None:
        listed = ", ".join(sorted(installed)) or "none installed"
        raise ConfigurationError(
            f"No KIIAREN extension named {name!r} (entry point group {EXTENSIONS_GROUP!r}; "
            f"available: {listed}).",
            details={"variable": variable},
        )
    try:
        hooks = entry_point.load()()
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"The extension {name!r} could not be loaded ({exc}).", details={"variable": variable}
        ) from exc
    if not isinstance(hooks, ExtensionHooks):
        raise ConfigurationError(
            f"The extension {name!r} did not return an ExtensionHooks.",
            details={"variable": variable},
        )
    return hooks

"""Typed configuration from the environment (pydantic-settings).

``KIIAREN_PROVIDER`` selects the provider; each provider reads its own
``KIIAREN_<PROVIDER>_<FIELD>`` variables through a :class:`ProviderSettings` subclass. Options
passed in code win over the environment. Invalid values fail at startup with a
:class:`~kiiaren_core.errors.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from kiiaren_core.errors import ConfigurationError

__all__ = ["KiiarenSettings", "ProviderSettings", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


class KiiarenSettings(BaseSettings):
    """SDK-wide settings.

    Attributes:
        provider: name of the provider ``open_provider()`` uses when none is given
            (``KIIAREN_PROVIDER``, default ``selfhost``).
    """

    model_config = SettingsConfigDict(env_prefix="KIIAREN_", extra="ignore", frozen=True)

    provider: str = "selfhost"

    @field_validator("provider")
    @classmethod
    def _normalise(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("must not be empty")
        return value


class ProviderSettings(BaseSettings):
    """Base of a provider's settings; subclasses set ``env_prefix = "KIIAREN_<NAME>_"``."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_nested_delimiter="__")
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields whose values are never echoed in error messages."""


def load_settings(cls: type[S], overrides: Mapping[str, Any] | None = None) -> S:
    """Build ``cls`` from the environment and ``overrides``.

    Raises:
        ConfigurationError: naming the environment variable (or option) that is invalid,
            with pydantic's reason; ``details["variable"]`` holds the variable name.
    """
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(cls.model_fields))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigurationError(
            f"Unknown option{plural} {', '.join(map(repr, unknown))} for {cls.__name__}. "
            f"Known options: {', '.join(sorted(cls.model_fields))}.",
            details={"variable": unknown[0]},
        )
    try:
        return cls(**overrides)
    except SettingsError as exc:
        # A value pydantic-settings must decode as JSON first (lists, tuples) and cannot.
        found = re.search(r'field "([^"]+)"', str(exc))
        variable = f"{prefix}{found.group(1).upper()}" if found else prefix
        raise ConfigurationError(
            f"Invalid configuration {variable}: the value is not valid JSON.",
            details={"variable": variable},
        ) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = field if field in overrides else f"{prefix}{field.upper()}"
        raise ConfigurationError(
            f"Invalid configuration {variable}: {error['msg']}.", details={"variable": variable}
        ) from None

"""Server settings: ``KIIAREN_SERVER_<FIELD>`` environment variables.

Every field has a working default, so ``kiiaren-server serve`` runs with no configuration at
all. The provider the server hosts reads its own variables (``KIIAREN_PROVIDER``,
``KIIAREN_SELFHOST_*``, ...); see ``docs/configuration.md``. List values are JSON, as
everywhere in KIIAREN (``KIIAREN_SERVER_CORS_ORIGINS='["https://app.example.com"]'``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiiaren_core.settings import load_settings

__all__ = ["ServerSettings", "load_server_settings"]

MIB = 1024 * 1024


class ServerSettings(BaseSettings):
    """Configuration of the bundled server (all optional).

    Attributes:
        host: interface to listen on.
        port: TCP port to listen on.
        workers: server processes (each hosts its own provider; use PostgreSQL for more than
            one, SQLite is single-process).
        body_limit_bytes: largest request body accepted, checked while reading (uploads to
            the local-storage endpoint use the provider's upload limit instead).
        cors_origins: origins browsers may call the API from (none by default: no CORS).
        ws_allowed_origins: origins browsers may open the events WebSocket from.
        ws_*: limits and timings of the events socket (see ``ws.WebSocketConfig``; unset
            means its default).
        trusted_proxies: addresses or networks of reverse proxies whose
            ``X-Forwarded-For`` is believed (none by default: the socket's peer is the client).
        idempotency_ttl_seconds: how long an ``Idempotency-Key`` answer is kept for replay.
        shutdown_timeout_seconds: how long a stopping server waits for requests in flight.
        log_format: ``text`` for people, ``json`` for one JSON object per line.
        log_level: the root log level.
    """

    model_config = SettingsConfigDict(env_prefix="KIIAREN_SERVER_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65_535)
    workers: int = Field(default=1, ge=1, le=64)
    body_limit_bytes: int = Field(default=MIB, ge=1024)
    cors_origins: tuple[str, ...] = ()
    ws_allowed_origins: tuple[str, ...] = ()
    # Events socket tuning; None keeps the default documented in ws.WebSocketConfig, which
    # also validates the ranges when the app starts.
    ws_heartbeat_interval_seconds: float | None = None
    ws_heartbeat_timeout_seconds: float | None = None
    ws_auth_timeout_seconds: float | None = None
    ws_max_frame_bytes: int | None = None
    ws_send_queue_size: int | None = None
    ws_send_timeout_seconds: float | None = None
    ws_close_timeout_seconds: float | None = None
    ws_session_recheck_seconds: float | None = None
    ws_max_subscriptions: int | None = None
    ws_max_malformed_frames: int | None = None
    ws_ephemeral_frames_per_second: float | None = None
    trusted_proxies: tuple[str, ...] = ()
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """:attr:`trusted_proxies` parsed."""
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies)


def load_server_settings(overrides: Mapping[str, Any] | None = None) -> ServerSettings:
    """Build the settings from the environment and ``overrides`` (which win).

    Raises:
        ConfigurationError: an invalid value; the message and ``details["variable"]`` name
            the environment variable (or the override).
    """
    return load_settings(ServerSettings, overrides)

"""Hosted provider settings: ``KIIAREN_HOSTED_<FIELD>`` environment variables.

Every field has a working default: with no configuration the provider talks to the bundled
server on ``http://127.0.0.1:8000`` (``make serve``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from kiiaren_core.settings import ProviderSettings

__all__ = ["HostedSettings"]


class HostedSettings(ProviderSettings):
    """Configuration of the hosted provider (all optional).

    Attributes:
        base_url: the server's root URL (scheme, host, port, optional path prefix); the API
            lives under ``<base_url>/v1`` and the event stream at ``ws(s)://.../v1/events``.
        connect_timeout_seconds: bound on opening one TCP/TLS connection.
        read_timeout_seconds: bound on waiting for one answer.
        write_timeout_seconds: bound on sending one request body.
        pool_timeout_seconds: bound on waiting for a free pooled connection.
        max_attempts: attempts per call, the first included (retries happen only where safe).
        deadline_seconds: overall bound on one call, its retries and waits included.
        backoff_base_seconds: first retry's backoff ceiling (doubles per attempt, full jitter).
        backoff_cap_seconds: largest backoff ceiling, for calls and WebSocket reconnects.
        max_retry_after_seconds: the longest ``Retry-After`` a call waits out by itself; a
            longer one (a rate-limit window, say) is raised at once (``retry_after`` set) so
            the application decides.
        ws_heartbeat_seconds: WebSocket ping interval; a connection whose pong is this late
            is considered dead and replaced.
        ws_open_timeout_seconds: bound on opening and authenticating the WebSocket.
        ws_stream_buffer: events buffered per stream for a slow reader before the client
            pauses that subscription (it resumes from the log once the reader catches up).
        refresh_margin_seconds: refresh the access token this long before it expires.
        user_agent: ``User-Agent`` sent with every request.
    """

    model_config = SettingsConfigDict(env_prefix="KIIAREN_HOSTED_")

    base_url: str = "http://127.0.0.1:8000"
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    write_timeout_seconds: float = Field(default=30.0, gt=0)
    pool_timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    deadline_seconds: float = Field(default=60.0, gt=0)
    backoff_base_seconds: float = Field(default=0.1, ge=0)
    backoff_cap_seconds: float = Field(default=5.0, ge=0)
    max_retry_after_seconds: float = Field(default=10.0, ge=0)
    ws_heartbeat_seconds: float = Field(default=20.0, gt=0)
    ws_open_timeout_seconds: float = Field(default=10.0, gt=0)
    ws_stream_buffer: int = Field(default=10_000, ge=1)
    refresh_margin_seconds: float = Field(default=30.0, ge=0)
    user_agent: str = "kiiaren-python-hosted/0.1"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or a fragment")
        return value.strip().rstrip("/")

    @property
    def api_url(self) -> str:
        """``<base_url>/v1`` without a trailing slash."""
        return f"{self.base_url}/v1"

    @property
    def events_url(self) -> str:
        """The WebSocket URL of the event stream (``ws://`` or ``wss://``)."""
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/events"

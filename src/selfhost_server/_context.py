"""Per-request facts: the request id, the client's address and the bearer token.

The request id lives in a context variable for the duration of a request, so every log line
written while serving it (the provider's included) can carry it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Final

from starlette.datastructures import Headers
from starlette.types import Scope

from kiiaren_core.models import ClientContext

__all__ = [
    "REQUEST_ID_HEADER",
    "Network",
    "bearer_token",
    "client_context",
    "client_ip",
    "current_request_id",
    "new_request_id",
    "request_id_of",
    "request_id_var",
]

REQUEST_ID_HEADER: Final = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_TOKEN_LENGTH: Final = 4096
_MAX_USER_AGENT: Final = 512

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

request_id_var: ContextVar[str | None] = ContextVar("kiiaren_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return request_id_var.get()


def new_request_id(incoming: str | None) -> str:
    """``incoming`` if it is a sane id (1-128 characters of ``[A-Za-z0-9._:-]``), else a
    fresh one: a client's id is echoed for correlation, never trusted to be unique."""
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return os.urandom(16).hex()  # 128 random bits, like uuid4().hex without the UUID object


def request_id_of(scope: Scope) -> str:
    """The request id the middleware stored in ``scope`` (a fresh one outside it)."""
    state = scope.get("state") or {}
    value = state.get("request_id")
    return value if isinstance(value, str) else new_request_id(None)


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str | None:
    """The client's address: the socket's peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is walked from the right (the entries the
    proxies appended) to the first address that is not itself a trusted proxy; everything to
    its left was written by the client and is ignored. A malformed entry stops the walk at
    the last trusted hop's view.
    """
    peer = scope.get("client")
    address: str | None = str(peer[0]) if peer else None
    if not trusted or address is None:
        return address
    parsed = _parse_ip(address)
    if parsed is None or not any(parsed in network for network in trusted):
        return address
    forwarded = Headers(scope=scope).getlist("x-forwarded-for")
    hops = [hop for header in forwarded for hop in header.split(",")]
    for hop in reversed(hops):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            return address
        if not any(hop_ip in network for network in trusted):
            return str(hop_ip)
        address = str(hop_ip)
    return address


def client_context(scope: Scope, trusted: Sequence[Network]) -> ClientContext:
    """The :class:`ClientContext` a provider view gets for this request."""
    agent = Headers(scope=scope).get("user-agent")
    return ClientContext(
        ip_address=client_ip(scope, trusted),
        user_agent=agent[:_MAX_USER_AGENT] if agent else None,
    )


def bearer_token(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when absent or malformed."""
    header = Headers(scope=scope).get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    return token

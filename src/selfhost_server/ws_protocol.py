"""Frames of the events WebSocket (``/v1/events``, subprotocol ``kiiaren.v1``).

Every frame is one JSON object in a text message, told apart by ``type``. Client frames are
parsed with :data:`CLIENT_FRAME`; unknown fields are ignored (so a newer client can talk to an
older server), an unknown ``type`` is a malformed frame. Server frames are built from the models
below, except ``event`` frames, which :func:`event_frame_prefix` assembles around the event's
cached JSON so one event fanned out to many sockets is serialised once.

The prose contract (order, resume, close codes) is ``docs/wire-protocol-events.md``. This module
imports only pydantic and ``kiiaren_core`` so a client implementation can share it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kiiaren_core.models import PresenceStatus

__all__ = [
    "CLIENT_FRAME",
    "CLOSE_AUTH_FAILED",
    "CLOSE_FORBIDDEN_ORIGIN",
    "CLOSE_FRAME_TOO_LARGE",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MALFORMED",
    "CLOSE_NORMAL",
    "CLOSE_SLOW_CONSUMER",
    "SUBPROTOCOL",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "AuthFrame",
    "ClientFrame",
    "ErrorFrame",
    "NotRecoveredFrame",
    "PingFrame",
    "PongFrame",
    "PresenceFrame",
    "ReadyFrame",
    "SubscribeFrame",
    "SubscribedFrame",
    "TypingFrame",
    "UnsubscribeFrame",
    "UnsubscribeReason",
    "UnsubscribedFrame",
    "event_frame_prefix",
]

SUBPROTOCOL: Final = "kiiaren.v1"
"""The subprotocol the server selects whenever the client offers it."""
TOKEN_SUBPROTOCOL_PREFIX: Final = "bearer."
"""An offered subprotocol ``bearer.<access token>`` authenticates the socket at once."""

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
"""The server is shutting down: reconnect (elsewhere) and resume."""
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_MALFORMED: Final = 4400
CLOSE_AUTH_FAILED: Final = 4401
"""No or bad token, authentication timeout, session revoked or expired."""
CLOSE_FORBIDDEN_ORIGIN: Final = 4403
CLOSE_SLOW_CONSUMER: Final = 4408
CLOSE_FRAME_TOO_LARGE: Final = 4409

UnsubscribeReason = Literal[
    "unsubscribed", "removed", "workspace_deleted", "slow_consumer", "error"
]
"""Why a subscription ended (``unsubscribed.reason``)."""

_Id = Annotated[str, Field(min_length=1, max_length=128)]
_ResourceId = Annotated[str, Field(min_length=1, max_length=128)]


class _ClientFrame(BaseModel):
    # Unknown fields are ignored: forward compatibility with newer clients.
    model_config = ConfigDict(frozen=True, extra="ignore")


class AuthFrame(_ClientFrame):
    """``auth``: the first frame (unless a ``bearer.`` subprotocol was offered); sent again
    later with a fresh access token of the same user to extend the connection's session."""

    type: Literal["auth"]
    access_token: str = Field(min_length=1, max_length=8192, repr=False)


class SubscribeFrame(_ClientFrame):
    """``subscribe``: open subscription ``id`` on one workspace (members only)."""

    type: Literal["subscribe"]
    id: _Id
    workspace_id: _ResourceId
    types: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=50)
    since: int | None = Field(default=None, ge=0)
    epoch: str | None = Field(default=None, max_length=128)


class UnsubscribeFrame(_ClientFrame):
    """``unsubscribe``: close subscription ``id``."""

    type: Literal["unsubscribe"]
    id: _Id


class PingFrame(_ClientFrame):
    """``ping``: answered with ``pong`` carrying the same ``id``."""

    type: Literal["ping"]
    id: _Id | None = None


class PresenceFrame(_ClientFrame):
    """``presence``: report the user's presence in a workspace (no answer unless it fails)."""

    type: Literal["presence"]
    workspace_id: _ResourceId
    status: PresenceStatus
    id: _Id | None = None


class TypingFrame(_ClientFrame):
    """``typing``: broadcast a ``typing.changed`` event (no answer unless it fails)."""

    type: Literal["typing"]
    workspace_id: _ResourceId
    channel_id: _ResourceId | None = None
    conversation_id: _ResourceId | None = None
    parent_message_id: _ResourceId | None = None
    is_typing: bool = True
    id: _Id | None = None


ClientFrame = Annotated[
    AuthFrame | SubscribeFrame | UnsubscribeFrame | PingFrame | PresenceFrame | TypingFrame,
    Field(discriminator="type"),
]
"""Every frame a client may send."""
CLIENT_FRAME: Final[TypeAdapter[ClientFrame]] = TypeAdapter(ClientFrame)
"""Parses one client text message (``CLIENT_FRAME.validate_json(text)``)."""


class _ServerFrame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReadyFrame(_ServerFrame):
    """``ready``: the socket is authenticated (also the answer to a later ``auth``)."""

    type: Literal["ready"] = "ready"
    user_id: str
    session_id: str
    heartbeat_interval: float
    """Seconds between the server's WebSocket pings."""
    max_frame_bytes: int
    """The largest client message accepted (UTF-8 bytes); larger ones close with 4409."""


class SubscribedFrame(_ServerFrame):
    """``subscribed``: subscription ``id`` is open; events with a seq above ``seq`` follow."""

    type: Literal["subscribed"] = "subscribed"
    id: str
    workspace_id: str
    seq: int
    epoch: str


class NotRecoveredFrame(_ServerFrame):
    """``not_recovered``: ``since`` could not be honoured; live events follow after ``seq``."""

    type: Literal["not_recovered"] = "not_recovered"
    subscription: str
    workspace_id: str
    reason: Literal["future", "expired", "epoch_changed"]
    requested_since: int | None
    seq: int
    epoch: str


class UnsubscribedFrame(_ServerFrame):
    """``unsubscribed``: subscription ``id`` ended; resume from ``last_seq`` where allowed."""

    type: Literal["unsubscribed"] = "unsubscribed"
    id: str
    reason: UnsubscribeReason
    last_seq: int | None
    error: dict[str, Any] | None = None
    """With reason ``error``: the error object (``code``, ``message``, ``details``)."""


class ErrorFrame(_ServerFrame):
    """``error``: a client frame failed; ``id`` is the frame's ``id`` when it had one."""

    type: Literal["error"] = "error"
    id: str | None
    error: dict[str, Any]
    """The shared error object: ``{"code", "message", "details"}``."""


class PongFrame(_ServerFrame):
    """``pong``: the answer to ``ping``."""

    type: Literal["pong"] = "pong"
    id: str | None


def event_frame_prefix(subscription_id: str) -> str:
    """The text before an event's JSON in an ``event`` frame of ``subscription_id``.

    An ``event`` frame is ``prefix + <envelope JSON> + "}"``, i.e.
    ``{"type":"event","subscription":"<id>","event":{...}}``.
    """
    return '{"type":"event","subscription":' + json.dumps(subscription_id) + ',"event":'

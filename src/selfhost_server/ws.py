"""The events WebSocket, ``/v1/events``: many workspace subscriptions over one socket.

The wire contract (frames, order, resume, close codes) is ``docs/wire-protocol-events.md``;
the frame models are :mod:`selfhost_server.ws_protocol`. This module only reaches the provider
through :mod:`kiiaren_core` protocols: the app's :class:`~kiiaren_core.protocols.BackendProvider`,
one ``with_session`` view per socket, and one ``events.stream`` per subscription.

A socket is served by a handful of tasks that share nothing with other sockets:

* the *reader* authenticates, then handles client frames one at a time, in order;
* one *pump* per subscription forwards the stream's items to the socket;
* a *writer*, started only while frames are queued, drains the bounded send queue.

A frame is written by whoever produces it when nothing is queued before it (no task
hand-over); only a write the transport cannot take at once (a client reading slowly) leaves
frames in the queue. A live event of a stream that offers a sink (the self-host provider's)
does not even wake the pump: the provider's fan-out writes it to the socket itself, and the
event JSON is serialised once per event for every socket (:class:`ConnectionRegistry`).

Back-pressure runs socket -> queue -> pumps -> provider streams, so a replay of any length
never overflows anything, and a client that stops reading holds only bounded memory: when one
frame cannot be written for ``send_timeout_seconds`` the socket is cut with 4408 (slow
consumer), and no other socket ever waits for it. A provider stream that falls behind because
its pump was blocked ends with ``unsubscribed {reason: "slow_consumer", last_seq}``.

Mount :data:`router` (``app.include_router(ws.router)``) on an app whose ``app.state.kiiaren``
is the :class:`~selfhost_server._state.ServerState` (provider, settings with ``ws_*`` fields as
in :class:`WebSocketConfig`, trusted proxies); an app without one may set
``app.state.provider`` and ``app.state.settings`` instead. The per-app
:class:`ConnectionRegistry` lives in ``app.state.ws_connections``; a graceful shutdown calls
``await connection_registry(app).close_all()`` (close code 1001) *before* the ASGI server closes
sockets on its own (uvicorn does that with 1012 before the lifespan shutdown runs), then closes
the provider. Protocol-level pings are the ASGI server's job: run uvicorn with
:func:`uvicorn_options`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Scope
from starlette.websockets import WebSocket, WebSocketDisconnect

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    KiiarenError,
    NotAuthenticatedError,
    NotFoundError,
    PermissionDeniedError,
    ProviderClosedError,
    RateLimitedError,
)
from kiiaren_core.events import EventEnvelope, NotRecovered, new_event
from kiiaren_core.models import ClientContext
from kiiaren_core.protocols import BackendProvider, EventStream
from kiiaren_core.wire import API_PREFIX
from selfhost_server._context import request_id_of
from selfhost_server._errors import error_response
from selfhost_server._state import ServerState
from selfhost_server.ws_protocol import (
    CLIENT_FRAME,
    CLOSE_AUTH_FAILED,
    CLOSE_FRAME_TOO_LARGE,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_MALFORMED,
    CLOSE_SLOW_CONSUMER,
    SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    AuthFrame,
    ClientFrame,
    ErrorFrame,
    NotRecoveredFrame,
    PingFrame,
    PongFrame,
    PresenceFrame,
    ReadyFrame,
    SubscribedFrame,
    SubscribeFrame,
    TypingFrame,
    UnsubscribedFrame,
    UnsubscribeFrame,
    UnsubscribeReason,
    event_frame_prefix,
)

__all__ = [
    "EVENTS_PATH",
    "REGISTRY_STATE_NAME",
    "ConnectionRegistry",
    "WebSocketConfig",
    "connection_registry",
    "router",
    "uvicorn_options",
]

logger = logging.getLogger("kiiaren.server.ws")

EVENTS_PATH: Final = f"{API_PREFIX}/events"
REGISTRY_STATE_NAME: Final = "ws_connections"
"""The ``app.state`` attribute holding the app's :class:`ConnectionRegistry`."""

_SESSION_ENDED = "session ended"
_SHUTTING_DOWN = "server shutting down"
_INTERNAL_ERROR = "An internal error occurred."
# A fan-out serialises an event for every local subscriber within one burst, so a few hundred
# identity-keyed entries suffice; more would only pin large payloads in memory.
_EVENT_CACHE_SIZE: Final = 256


class WebSocketConfig(BaseModel):
    """Limits and timings of the events socket, read from the server settings' ``ws_*`` fields.

    Each field ``<name>`` comes from ``settings.ws_<name>`` when the settings object has it
    (and it is not ``None``); otherwise the default below applies.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed to connect (``"*"``: any). Requests without ``Origin``
    (non-browser clients) are always allowed; an empty list refuses every browser."""
    heartbeat_interval_seconds: float = Field(default=20.0, gt=0)
    """Seconds between the server's WebSocket pings (sent by the ASGI server)."""
    heartbeat_timeout_seconds: float = Field(default=20.0, gt=0)
    """A ping not answered within this closes the socket (ASGI server; uvicorn uses 1011)."""
    auth_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time allowed for the ``auth`` frame after the upgrade (then 4401)."""
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest client message in UTF-8 bytes (larger: 4409)."""
    send_queue_size: int = Field(default=256, ge=1)
    """Frames buffered per socket before its producers wait."""
    send_timeout_seconds: float = Field(default=10.0, gt=0)
    """A frame that cannot be written for this long (checked every half of it, so at most
    1.5 times this) cuts the socket with 4408."""
    close_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a closing socket may take to write its close frame."""
    session_recheck_seconds: float = Field(default=1.0, gt=0)
    """How often a socket without subscriptions re-checks its session (streams re-check
    on their own), so a revoked session closes every socket within about two seconds."""
    max_subscriptions: int = Field(default=100, ge=1)
    """Open subscriptions allowed per socket."""
    max_malformed_frames: int = Field(default=3, ge=1)
    """The malformed frame that reaches this count closes the socket with 4400."""
    ephemeral_frames_per_second: float = Field(default=10.0, gt=0)
    """Sustained rate of ``presence`` and ``typing`` frames per socket (burst: twice this)."""

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @classmethod
    def from_settings(cls, settings: object) -> WebSocketConfig:
        """Build from ``settings.ws_<field>`` attributes (missing or ``None``: the default)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = getattr(settings, f"ws_{name}", None)
            if value is not None:
                values[name] = value
        return cls.model_validate(values)

    def origin_allowed(self, origin: str) -> bool:
        """True if a browser ``Origin`` header value is on the allow-list."""
        allowed = {_normalise_origin(item) for item in self.allowed_origins}
        return "*" in allowed or _normalise_origin(origin) in allowed


def _normalise_origin(origin: str) -> str:
    # Origins compare case-insensitively in scheme and host; a trailing slash is a typo.
    return origin.strip().rstrip("/").lower()


def uvicorn_options(settings: object) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` that this endpoint relies on.

    ASGI gives an application no way to send WebSocket pings, so the heartbeat is uvicorn's
    (``ws_ping_interval``/``ws_ping_timeout`` from the ``ws_heartbeat_*`` settings).
    ``ws_max_size`` bounds what uvicorn buffers per message: above ``max_frame_bytes`` this
    endpoint closes with 4409, far above it uvicorn closes with 1009 before buffering it all.
    Compression is off (see below).
    """
    config = WebSocketConfig.from_settings(settings)
    return {
        "ws_ping_interval": config.heartbeat_interval_seconds,
        "ws_ping_timeout": config.heartbeat_timeout_seconds,
        "ws_max_size": max(4 * config.max_frame_bytes, 1024 * 1024),
        # Events are small JSON: permessage-deflate costs more CPU per delivery (measured
        # +15-20 us, a fan-out's main cost) and a zlib context per socket than it saves.
        "ws_per_message_deflate": False,
    }


# --- the registry -----------------------------------------------------------------------------


class ConnectionRegistry:
    """The open event sockets of one app, for graceful shutdown and inspection.

    Also caches each event's JSON by object identity: the provider hands the same event
    object to every local subscriber, so a fan-out serialises it once, not once per socket.
    """

    def __init__(self, config: WebSocketConfig) -> None:
        self.config = config
        self._connections: set[_Connection] = set()
        self._closing = False
        # id(event) -> (event, json). Holding the event keeps its id() from being reused.
        self._json: dict[int, tuple[EventEnvelope, str]] = {}

    def __len__(self) -> int:
        return len(self._connections)

    @property
    def closing(self) -> bool:
        """True once :meth:`close_all` ran: new sockets are closed with 1001 at once."""
        return self._closing

    @property
    def close_codes(self) -> list[int | None]:
        """The close code chosen for each open socket (``None`` while it is not closing)."""
        return [connection.close_code for connection in self._connections]

    async def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = _SHUTTING_DOWN) -> None:
        """Close every open socket with ``code`` and refuse new ones (same code).

        Waits until each socket has released its subscriptions and sent its close frame, at
        most ``close_timeout_seconds`` plus one second. Idempotent.
        """
        self._closing = True
        connections = list(self._connections)
        for connection in connections:
            connection.close(code, reason)
        if connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.close_timeout_seconds + 1.0):
                    await asyncio.gather(*(c.wait_finished() for c in connections))

    def event_json(self, event: EventEnvelope) -> str:
        """The envelope's JSON, serialised once per event object."""
        key = id(event)
        cached = self._json.get(key)
        if cached is not None and cached[0] is event:
            return cached[1]
        text = event.model_dump_json()
        if len(self._json) >= _EVENT_CACHE_SIZE:
            # Dicts keep insertion order: drop the oldest entry.
            self._json.pop(next(iter(self._json)))
        self._json[key] = (event, text)
        return text

    def _add(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def _discard(self, connection: _Connection) -> None:
        self._connections.discard(connection)


def connection_registry(app: Starlette) -> ConnectionRegistry:
    """The app's registry (``app.state.ws_connections``), created from its settings on first use.

    Call it at startup to validate the ``ws_*`` settings early; call ``close_all`` on it
    during graceful shutdown.
    """
    registry = getattr(app.state, REGISTRY_STATE_NAME, None)
    if not isinstance(registry, ConnectionRegistry):
        registry = ConnectionRegistry(WebSocketConfig.from_settings(_binding(app).settings))
        setattr(app.state, REGISTRY_STATE_NAME, registry)
    return registry


@dataclass(frozen=True, slots=True)
class _Binding:
    provider: BackendProvider
    settings: object
    client_context: Callable[[Scope], ClientContext]


def _binding(app: Starlette) -> _Binding:
    """What the app hosts: its ``ServerState``, else ``app.state.provider``/``settings``."""
    state = getattr(app.state, "kiiaren", None)
    if isinstance(state, ServerState):
        return _Binding(state.provider, state.settings, state.client_context)
    provider: BackendProvider = app.state.provider
    return _Binding(provider, getattr(app.state, "settings", None), _peer_context)


def _peer_context(scope: Scope) -> ClientContext:
    client = scope.get("client")
    agent = dict(scope.get("headers") or ()).get(b"user-agent")
    return ClientContext(
        ip_address=client[0] if client else None,
        user_agent=agent.decode("latin-1")[:512] if agent else None,
    )


# --- one socket -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Subscription:
    id: str
    workspace_id: str
    types: Sequence[str] | None
    stream: EventStream
    last_seq: int | None = None
    """Seq of the last durable event *queued* for the client (resume point)."""
    epoch: str = ""
    task: asyncio.Task[None] | None = None


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


@dataclass(eq=False)
class _Closing:
    code: int | None
    reason: str = ""


@dataclass(eq=False)
class _Connection:
    """One accepted socket: its session view, subscriptions, send queue and tasks."""

    websocket: WebSocket
    binding: _Binding
    registry: ConnectionRegistry
    config: WebSocketConfig = field(init=False)
    view: BackendProvider | None = field(default=None, init=False)
    user_id: str | None = field(default=None, init=False)
    _subs: dict[str, _Subscription] = field(default_factory=dict, init=False)
    _pumps: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    # Made on first use: an idle socket holds no queue (memory per idle connection).
    _queue: asyncio.Queue[str] | None = field(default=None, init=False)
    # Futures rather than asyncio.Event: one waiter each, a fraction of the memory.
    _done: asyncio.Future[None] | None = field(default=None, init=False)
    _finished: asyncio.Future[None] | None = field(default=None, init=False)
    _closing: _Closing | None = field(default=None, init=False)
    _malformed: int = field(default=0, init=False)
    _bucket: _TokenBucket = field(init=False)
    _reader: asyncio.Task[None] | None = field(default=None, init=False)
    _writer: asyncio.Task[None] | None = field(default=None, init=False)
    _writer_busy: bool = field(default=False, init=False)
    _inflight: asyncio.Task[None] | None = field(default=None, init=False)
    _send_started: float | None = field(default=None, init=False)
    _watchdog: asyncio.TimerHandle | None = field(default=None, init=False)
    _session_timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _checker: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.config = self.registry.config
        rate = self.config.ephemeral_frames_per_second
        self._bucket = _TokenBucket(rate, 2 * rate)

    # --- life cycle -------------------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        return self._closing.code if self._closing else None

    def close(self, code: int | None, reason: str = "") -> None:
        """Ask the socket to close with ``code`` (``None``: the peer is gone). First call wins."""
        if self._closing is None:
            self._closing = _Closing(code, reason)
            if self._done is not None and not self._done.done():
                self._done.set_result(None)

    async def wait_finished(self) -> None:
        if self._finished is not None:
            await asyncio.shield(self._finished)

    async def serve(self) -> None:
        """Accept, authenticate, serve frames until someone closes, then release everything."""
        loop = asyncio.get_running_loop()
        self._done, self._finished = loop.create_future(), loop.create_future()
        offered = [str(p) for p in self.websocket.scope.get("subprotocols") or ()]
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        self.registry._add(self)
        try:
            if self.registry.closing:
                self.close(CLOSE_GOING_AWAY, _SHUTTING_DOWN)
            else:
                token = next(
                    (
                        p.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
                        for p in offered
                        if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)
                    ),
                    None,
                )
                self._reader = self._spawn(self._read_loop(token), "reader")
            if self._closing is None:
                await self._done
        finally:
            await self._teardown()

    def _spawn(self, coro: Coroutine[Any, Any, None], role: str) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._guard(coro), name=f"kiiaren-ws-{role}")

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a connection task; an unexpected failure closes the socket (never a hang)."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except WebSocketDisconnect:
            self.close(None)
        except Exception:
            logger.exception("events socket task failed")
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    async def _teardown(self) -> None:
        for timer in (self._watchdog, self._session_timer):
            if timer is not None:
                timer.cancel()
        self._watchdog = self._session_timer = None
        tasks = [
            t
            for t in (self._reader, self._writer, self._inflight, self._checker, *self._pumps)
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in list(self._subs.values()):
            await self._close_stream(sub.stream)
        self._subs.clear()
        if self.view is not None:
            with contextlib.suppress(Exception):
                await self.view.aclose()
        # No close chosen: the handler itself was cancelled, i.e. the server is stopping.
        closing = self._closing or _Closing(CLOSE_GOING_AWAY, _SHUTTING_DOWN)
        if closing.code is not None:
            # A client that stopped reading never takes the close frame: give up after a while
            # (the ASGI server then drops the TCP connection when the handler returns).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.close_timeout_seconds):
                    await self.websocket.close(closing.code, closing.reason)
        self.registry._discard(self)
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
        logger.debug("events socket closed (%s) for user %s", closing.code, self.user_id)

    @staticmethod
    async def _close_stream(stream: EventStream) -> None:
        try:
            await stream.aclose()
        except Exception:
            logger.debug("closing an event stream failed", exc_info=True)

    # --- writing ----------------------------------------------------------------------------

    # Frames go out in the order they are offered. A frame offered while nothing is waiting
    # or being written is written at once by the caller (no hand-over to another task); a
    # write that cannot finish at once (the transport is paused: the client reads slowly)
    # continues in an *in-flight* task, and frames offered meanwhile wait in the bounded
    # queue, which a writer task (started on demand) drains behind it.

    def _can_write_now(self) -> bool:
        return (
            self._inflight is None
            and not self._writer_busy
            and (self._queue is None or self._queue.empty())
        )

    def _write_now(self, text: str) -> None:
        """Start writing one frame; raises WebSocketDisconnect when the peer is gone."""
        try:
            task = _start_eagerly(self.websocket.send({"type": "websocket.send", "text": text}))
        except WebSocketDisconnect:
            self.close(None)
            raise
        if task is not None:
            self._inflight = task
            # Almost every write completes at once, so no timer per frame: a watchdog armed
            # at most once per half send-timeout looks for a write that is stuck.
            self._send_started = asyncio.get_running_loop().time()
            if self._watchdog is None:
                self._arm_watchdog()
            task.add_done_callback(self._inflight_done)

    def _inflight_done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        self._send_started = None
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, WebSocketDisconnect):
            self.close(None)
        elif error is not None:
            logger.error("events socket: a write failed", exc_info=error)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def _offer(self, text: str) -> bool:
        """Write or queue a frame without waiting; False when the queue is full. Frames
        for a peer that is gone are dropped (the socket is being torn down)."""
        if self._closing is not None and self._closing.code is None:
            return True
        if self._can_write_now():
            self._write_now(text)
            return True
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.config.send_queue_size)
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        self._ensure_writer()
        return True

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = self._spawn(self._write_loop(), "writer")

    async def _deliver(self, text: str) -> None:
        """Send a frame in order, waiting while the queue is full (back-pressure)."""
        if not self._offer(text):
            assert self._queue is not None  # _offer refuses only when it is full
            await self._queue.put(text)
            # The writer that made room may have emptied the queue and ended meanwhile.
            self._ensure_writer()

    async def _write_loop(self) -> None:
        """Drain the queue behind any in-flight write, then end (restarted on demand)."""
        queue = self._queue
        try:
            while queue is not None and not queue.empty():
                text = queue.get_nowait()
                self._writer_busy = True  # holds a frame: nobody may overtake it
                while self._inflight is not None:
                    await asyncio.wait((self._inflight,))
                self._write_now(text)
                self._writer_busy = False
        finally:
            self._writer_busy = False
            self._writer = None

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.config.send_timeout_seconds / 2, self._check_send)

    def _check_send(self) -> None:
        """Cut the socket (4408) when one frame has been waiting for the client too long."""
        self._watchdog = None
        started = self._send_started
        if started is None or self._closing is not None:
            return  # idle: disarmed until the next stuck write
        if asyncio.get_running_loop().time() - started >= self.config.send_timeout_seconds:
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
        else:
            self._arm_watchdog()

    async def _send(self, frame: BaseModel) -> None:
        await self._deliver(frame.model_dump_json())

    async def _send_error(self, frame_id: str | None, error: KiiarenError) -> None:
        await self._send(ErrorFrame(id=frame_id, error=_public_error(error)))

    # --- reading ----------------------------------------------------------------------------

    async def _read_loop(self, token: str | None) -> None:
        if token is None:
            token = await self._await_auth()
            if token is None:
                return
        if not await self._authenticate(token, first=True):
            return
        self._arm_session_check()
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.close(None)
                return
            frame = await self._parse(message)
            if self._closing is not None:
                return
            if frame is not None:
                await self._dispatch(frame)

    async def _await_auth(self) -> str | None:
        """The first frame's access token, or None after closing the socket."""
        try:
            async with asyncio.timeout(self.config.auth_timeout_seconds):
                message = await self.websocket.receive()
        except TimeoutError:
            self.close(CLOSE_AUTH_FAILED, "authentication timeout")
            return None
        if message["type"] == "websocket.disconnect":
            self.close(None)
            return None
        text = self._text_of(message)
        if text is None:  # an oversized frame already chose 4409: the first close wins
            self.close(CLOSE_AUTH_FAILED, "authenticate first")
            return None
        try:
            frame = CLIENT_FRAME.validate_json(text)
        except ValidationError:
            frame = None
        if not isinstance(frame, AuthFrame):
            self.close(CLOSE_AUTH_FAILED, "authenticate first")
            return None
        return frame.access_token

    def _text_of(self, message: Mapping[str, Any]) -> str | None:
        """The message's text if it is a text frame within the size limit (else None; an
        oversized frame closes the socket with 4409)."""
        limit = self.config.max_frame_bytes
        text: str | None = message.get("text")
        if text is not None:
            # Cheap bounds first: a character is 1 to 4 UTF-8 bytes.
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                self.close(CLOSE_FRAME_TOO_LARGE, "frame too large")
                return None
            return text
        data: bytes | None = message.get("bytes")
        if data is not None and len(data) > limit:
            self.close(CLOSE_FRAME_TOO_LARGE, "frame too large")
        return None

    async def _parse(self, message: Mapping[str, Any]) -> ClientFrame | None:
        text = self._text_of(message)
        if text is None:
            if self._closing is None:
                await self._malformed_frame(None, "Frames are JSON objects in text messages.", [])
            return None
        try:
            return CLIENT_FRAME.validate_json(text)
        except ValidationError as exc:
            problems = [
                {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                for error in exc.errors(include_url=False, include_input=False)
            ]
            await self._malformed_frame(_frame_id(text), "Malformed frame.", problems)
            return None

    async def _malformed_frame(
        self, frame_id: str | None, message: str, problems: list[dict[str, str]]
    ) -> None:
        self._malformed += 1
        if self._malformed >= self.config.max_malformed_frames:
            self.close(CLOSE_MALFORMED, "too many malformed frames")
            return
        details: dict[str, Any] = {"errors": problems}
        if problems:
            details["field"] = problems[0]["field"]
        await self._send_error(frame_id, InvalidInputError(message, details=details))

    async def _dispatch(self, frame: ClientFrame) -> None:
        frame_id = getattr(frame, "id", None)
        try:
            if isinstance(frame, AuthFrame):
                await self._authenticate(frame.access_token, first=False)
            elif isinstance(frame, SubscribeFrame):
                await self._subscribe(frame)
            elif isinstance(frame, UnsubscribeFrame):
                await self._unsubscribe(frame)
            elif isinstance(frame, PingFrame):
                await self._send(PongFrame(id=frame.id))
            elif isinstance(frame, PresenceFrame):
                self._limit_ephemeral()
                await self._active_view().events.set_presence(frame.workspace_id, frame.status)
            elif isinstance(frame, TypingFrame):
                self._limit_ephemeral()
                await self._typing(frame)
        except WebSocketDisconnect:
            raise  # the peer is gone: the guard closes the socket
        except NotAuthenticatedError:
            self.close(CLOSE_AUTH_FAILED, _SESSION_ENDED)
        except ProviderClosedError:
            self.close(CLOSE_GOING_AWAY, _SHUTTING_DOWN)
        except KiiarenError as exc:
            await self._send_error(frame_id, exc)
        except Exception:
            logger.exception("events socket: handling a %s frame failed", frame.type)
            await self._send_error(frame_id, KiiarenError(_INTERNAL_ERROR))

    def _active_view(self) -> BackendProvider:
        assert self.view is not None, "frames are dispatched only after authentication"
        return self.view

    def _limit_ephemeral(self) -> None:
        wait = self._bucket.take()
        if wait:
            raise RateLimitedError(wait, "Too many presence or typing frames.")

    # --- authentication ---------------------------------------------------------------------

    async def _authenticate(self, token: str, *, first: bool) -> bool:
        """Bind the socket to ``token``'s session and answer ``ready``.

        The first time, a bad token closes the socket (4401). Later (a refreshed token), a bad
        token or another user's token answers ``error`` and the current session stays; a good
        one moves every subscription to the new session from its last queued seq (no gap, no
        duplicate). Returns False when the socket is closing.
        """
        context = self.binding.client_context(self.websocket.scope)
        view = self.binding.provider.with_session(token, context=context)
        try:
            session = await view.auth.get_session()
        except ProviderClosedError:
            self.close(CLOSE_GOING_AWAY, _SHUTTING_DOWN)
            return False
        except KiiarenError as exc:
            await view.aclose()
            if first:
                logger.warning("events socket: the session could not be checked: %s", exc.code)
                self.close(CLOSE_INTERNAL_ERROR, "session check failed")
                return False
            await self._send_error(None, exc)
            return True
        refusal: KiiarenError | None = None
        if session is None:
            refusal = NotAuthenticatedError("Invalid or expired access token.")
        elif not first and session.user_id != self.user_id:
            refusal = PermissionDeniedError("The new access token belongs to another user.")
        if refusal is not None or session is None:
            await view.aclose()
            if first:
                self.close(CLOSE_AUTH_FAILED, "invalid or expired access token")
                return False
            await self._send_error(None, refusal or NotAuthenticatedError())
            return True
        previous, self.view, self.user_id = self.view, view, session.user_id
        if previous is not None:
            try:
                await self._rebind(view)
            finally:
                with contextlib.suppress(Exception):
                    await previous.aclose()
        await self._send(
            ReadyFrame(
                user_id=session.user_id,
                session_id=session.session_id,
                heartbeat_interval=self.config.heartbeat_interval_seconds,
                max_frame_bytes=self.config.max_frame_bytes,
            )
        )
        return True

    def _arm_session_check(self) -> None:
        """Re-check the session every ``session_recheck_seconds`` while the socket has no
        subscription (streams re-check theirs in the provider). A timer, not a task: idle
        sockets with subscriptions cost nothing here."""
        if self._session_timer is None and self._closing is None:
            loop = asyncio.get_running_loop()
            self._session_timer = loop.call_later(
                self.config.session_recheck_seconds, self._session_check_due
            )

    def _session_check_due(self) -> None:
        self._session_timer = None
        if self._subs or self._closing is not None or self.view is None:
            return  # a new subscription re-checks in the provider; the next end re-arms

        async def check() -> None:
            if await self._session_alive():
                self._arm_session_check()

        self._checker = self._spawn(check(), "session-check")

    async def _session_alive(self) -> bool:
        try:
            session = await self._active_view().auth.get_session()
        except ProviderClosedError:
            self.close(CLOSE_GOING_AWAY, _SHUTTING_DOWN)
            return False
        except KiiarenError:
            # A database blip must not drop every idle socket: check again next time.
            logger.debug("events socket: session re-check failed", exc_info=True)
            return True
        if session is None:
            self.close(CLOSE_AUTH_FAILED, _SESSION_ENDED)
            return False
        return True

    async def _rebind(self, view: BackendProvider) -> None:
        """Reopen every subscription on ``view`` from the seq last queued for the client.

        A subscription that cannot be reopened ends with ``unsubscribed`` (``removed`` when
        the user lost access meanwhile); a dead session or provider propagates (close).
        """
        for sub in list(self._subs.values()):
            if self._subs.get(sub.id) is not sub:
                continue
            await self._stop_pump(sub)
            old = sub.stream
            try:
                sub.stream = view.events.stream(
                    sub.workspace_id, types=sub.types, since=sub.last_seq, epoch=sub.epoch
                )
                # Start the new stream before closing the old one: presence stays online.
                await sub.stream.__aenter__()
            except (NotAuthenticatedError, ProviderClosedError):
                await self._close_stream(old)  # the new one is closed by the teardown
                raise
            except NotFoundError as exc:
                await self._close_stream(old)
                await self._end(sub, _ended_reason(exc))
                continue
            except KiiarenError as exc:
                await self._close_stream(old)
                await self._end(sub, "error", exc)
                continue
            await self._close_stream(old)
            self._start_pump(sub)

    # --- subscriptions ----------------------------------------------------------------------

    async def _subscribe(self, frame: SubscribeFrame) -> None:
        if frame.id in self._subs:
            raise ConflictError(
                "A subscription with this id is already open.", details={"field": "id"}
            )
        if len(self._subs) >= self.config.max_subscriptions:
            raise InvalidInputError(
                "Too many subscriptions on this connection.",
                details={"field": "id", "limit": self.config.max_subscriptions},
            )
        events = self._active_view().events
        stream = events.stream(
            frame.workspace_id, types=frame.types, since=frame.since, epoch=frame.epoch
        )
        sub = _Subscription(frame.id, frame.workspace_id, frame.types, stream)
        # Registered before it starts, so a teardown in the middle still closes it.
        self._subs[frame.id] = sub
        try:
            await stream.__aenter__()  # checks membership: NotFoundError like a missing one
            position = await events.position(frame.workspace_id)
        except BaseException:
            self._subs.pop(frame.id, None)
            await self._close_stream(stream)
            raise
        sub.last_seq = stream.last_seq if stream.last_seq is not None else position.seq
        sub.epoch = position.epoch
        await self._send(
            SubscribedFrame(
                id=sub.id, workspace_id=sub.workspace_id, seq=sub.last_seq, epoch=sub.epoch
            )
        )
        self._start_pump(sub)

    async def _unsubscribe(self, frame: UnsubscribeFrame) -> None:
        sub = self._subs.pop(frame.id, None)
        if sub is None:
            raise NotFoundError("No open subscription with this id.", details={"field": "id"})
        await self._stop_pump(sub)
        await self._close_stream(sub.stream)
        if not self._subs:
            self._arm_session_check()
        await self._send_unsubscribed(sub, "unsubscribed")

    def _start_pump(self, sub: _Subscription) -> None:
        task = self._spawn(self._pump(sub), "pump")
        sub.task = task
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _stop_pump(self, sub: _Subscription) -> None:
        if sub.task is not None:
            sub.task.cancel()
            await asyncio.gather(sub.task, return_exceptions=True)
            sub.task = None

    def _sink(self, sub: _Subscription, prefix: str) -> Callable[[EventEnvelope], bool]:
        """The fast path offered to a stream that supports it (see :class:`_SinkStream`):
        the provider's fan-out writes a live event straight to this socket when nothing is
        waiting before it, instead of waking the subscription's pump."""

        def take(event: EventEnvelope) -> bool:
            if self._closing is not None or self._subs.get(sub.id) is not sub:
                return False
            try:
                taken = self._offer(prefix + self.registry.event_json(event) + "}")
            except WebSocketDisconnect:
                self.close(None)
                return False
            if taken and event.seq is not None:
                sub.last_seq = event.seq
            return taken

        return take

    async def _pump(self, sub: _Subscription) -> None:
        """Forward one stream to the socket until it ends or is cancelled."""
        stream, prefix = sub.stream, event_frame_prefix(sub.id)
        if isinstance(stream, _SinkStream):
            stream.set_sink(self._sink(sub, prefix))
        try:
            while True:
                item = await stream.__anext__()
                position = stream.last_seq
                if isinstance(item, NotRecovered):
                    sub.epoch = item.epoch
                    text = NotRecoveredFrame(
                        subscription=sub.id,
                        workspace_id=item.workspace_id,
                        reason=item.reason,
                        requested_since=item.requested_since,
                        seq=item.seq,
                        epoch=item.epoch,
                    ).model_dump_json()
                else:
                    text = prefix + self.registry.event_json(item) + "}"
                # Waits while the client is behind (back-pressure). The resume point moves only
                # once the frame is queued or written, so a cancelled one is replayed, never lost.
                await self._deliver(text)
                if position is not None:
                    sub.last_seq = position
        except WebSocketDisconnect:
            raise  # the peer is gone: the guard closes the socket
        except NotAuthenticatedError:
            self.close(CLOSE_AUTH_FAILED, _SESSION_ENDED)
        except ProviderClosedError:
            self.close(CLOSE_GOING_AWAY, _SHUTTING_DOWN)
        except NotFoundError as exc:
            await self._end(sub, _ended_reason(exc))
        except BackendUnavailableError as exc:
            if exc.details.get("reason") == "slow_consumer":
                await self._end(sub, "slow_consumer")
            else:
                await self._end(sub, "error", exc)
        except KiiarenError as exc:
            await self._end(sub, "error", exc)
        except StopAsyncIteration:
            await self._end(sub, "error", BackendUnavailableError("The subscription ended."))
        except Exception:
            logger.exception("events socket: subscription %s failed", sub.workspace_id)
            await self._end(sub, "error", KiiarenError(_INTERNAL_ERROR))

    async def _end(
        self, sub: _Subscription, reason: UnsubscribeReason, error: KiiarenError | None = None
    ) -> None:
        """The server ends ``sub`` (unless an ``unsubscribe`` already took it)."""
        if self._subs.get(sub.id) is not sub:
            return
        del self._subs[sub.id]
        await self._close_stream(sub.stream)
        if not self._subs:
            self._arm_session_check()
        await self._send_unsubscribed(sub, reason, error)

    async def _send_unsubscribed(
        self, sub: _Subscription, reason: UnsubscribeReason, error: KiiarenError | None = None
    ) -> None:
        await self._send(
            UnsubscribedFrame(
                id=sub.id,
                reason=reason,
                last_seq=sub.last_seq,
                error=_public_error(error) if error else None,
            )
        )

    # --- ephemeral frames -------------------------------------------------------------------

    async def _typing(self, frame: TypingFrame) -> None:
        assert self.user_id is not None
        event = new_event(
            "typing.changed",
            workspace_id=frame.workspace_id,
            actor_id=self.user_id,
            payload={
                "user_id": self.user_id,
                "channel_id": frame.channel_id,
                "conversation_id": frame.conversation_id,
                "parent_message_id": frame.parent_message_id,
                "is_typing": frame.is_typing,
            },
        )
        await self._active_view().events.emit(event)


@runtime_checkable
class _SinkStream(Protocol):
    """A stream with a synchronous fast path for live events (the self-host provider's).

    ``set_sink(sink)``: while the consumer waits in ``__anext__`` with nothing queued, live
    events go to ``sink(event) -> bool`` from the fan-out itself (True: taken and counted as
    delivered; False: queued for ``__anext__`` as usual). Other streams are only iterated.
    """

    def set_sink(self, sink: Callable[[EventEnvelope], bool] | None) -> None: ...


def _start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` in the caller up to its first suspension (what Python 3.12's eager
    tasks do); None when it finished there, else the task that finishes it.

    An ASGI send completes without suspending unless the transport is paused, so a frame
    costs no task hand-over. Exceptions raised before the first suspension propagate.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, yielded))


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive a coroutine that suspended on ``yielded`` the way a task would."""
    while True:
        if yielded is None:
            await asyncio.sleep(0)  # a bare yield: give the loop one turn
        else:
            # The coroutine awaits this future; await it here on its behalf. Its outcome
            # (including a cancellation of this task, which cancels it) reaches the
            # coroutine when it resumes and reads the future's result.
            yielded._asyncio_future_blocking = False
            with contextlib.suppress(BaseException):
                await yielded
        try:
            yielded = coro.send(None)
        except StopIteration:
            return


def _public_error(error: KiiarenError) -> dict[str, Any]:
    """The wire error object; internal errors keep their code, never their text (as REST)."""
    if error.http_status == 500 and (
        type(error) is KiiarenError or isinstance(error, ConfigurationError)
    ):
        return {"code": error.code, "message": _INTERNAL_ERROR, "details": {}}
    return error.to_wire()


def _ended_reason(error: NotFoundError) -> Literal["removed", "workspace_deleted"]:
    reason = error.details.get("reason")
    return "workspace_deleted" if reason == "workspace_deleted" else "removed"


def _frame_id(text: str) -> str | None:
    """The ``id`` of a frame that failed validation, when it is a JSON object with one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    frame_id = data.get("id") if isinstance(data, dict) else None
    return frame_id if isinstance(frame_id, str) and 0 < len(frame_id) <= 128 else None


# --- the endpoint -----------------------------------------------------------------------------


async def events_socket(websocket: WebSocket) -> None:
    """The events WebSocket (see the module docstring and docs/wire-protocol-events.md)."""
    app = websocket.app
    registry = connection_registry(app)
    origin = websocket.headers.get("origin")
    if origin is not None and not registry.config.origin_allowed(origin):
        await _refuse_origin(websocket)
        return
    await _Connection(websocket, _binding(app), registry).serve()


router = APIRouter(
    # A plain Starlette route: FastAPI's WebSocket route adds dependency solving and exit
    # stacks that this endpoint does not use, several KiB per open socket.
    routes=[WebSocketRoute(EVENTS_PATH, events_socket, name="events_socket")]
)
"""Include with ``app.include_router(router)``; serves :data:`EVENTS_PATH`."""


async def _refuse_origin(websocket: WebSocket) -> None:
    """Refuse the upgrade with HTTP 403 and the error envelope (before accepting)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        error = PermissionDeniedError("This origin may not open the events socket.")
        await websocket.send_denial_response(error_response(error, request_id_of(websocket.scope)))
    else:
        # ASGI: closing before accepting is an HTTP 403 without a body.
        await websocket.close()

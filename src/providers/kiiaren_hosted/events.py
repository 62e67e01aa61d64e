"""``provider.events`` over the wire: one multiplexed WebSocket per session, plus REST.

Streams and callback subscriptions of one provider object (root or view, i.e. one session)
share one WebSocket to ``/v1/events`` (frames in ``docs/wire-protocol-events.md``). The
:class:`EventConnection` opens it when the first stream starts and closes it when the last
one ends. It is kept alive by the server's pings and its own (``ws_heartbeat_seconds``); a
connection that fails or closes is replaced with full-jitter backoff, and every stream is
subscribed again with ``since`` = the last seq it received and the stream's ``epoch``, so the
application sees no gap and no duplicate (events at or below that seq are dropped should a
server repeat one). When the log cannot fill the gap the stream yields one
:class:`~kiiaren_core.events.NotRecovered` and goes on live: reload, then carry on.

Close codes: ``4401`` (session refused) refreshes the access token and reconnects, or ends
every stream with NotAuthenticatedError when the refresh is refused too; ``4408`` (this
socket was too slow) and ``1001`` (server going away) reconnect and resume; ``4400``,
``4403`` and ``4409`` are protocol faults that end the streams. A stream whose own reader
falls ``ws_stream_buffer`` events behind is paused (unsubscribed, later events not buffered)
and resumed from its last seq once the reader has caught up, so a slow reader costs bounded
memory and never delays the others; a server-side ``slow_consumer`` unsubscription is
resumed the same way.

The connection's state (:class:`ConnectionState`) is observable:
:attr:`HostedEvents.connection_state` and :meth:`HostedEvents.on_connection_state_change`.
``emit``, ``position`` and presence go over REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from kiiaren_core.errors import (
    BackendUnavailableError,
    InvalidInputError,
    KiiarenError,
    NotAuthenticatedError,
    NotFoundError,
    ProviderClosedError,
    error_from_wire,
)
from kiiaren_core.events import (
    EventEnvelope,
    NotRecovered,
    StreamItem,
    compile_patterns,
    parse_event,
)
from kiiaren_core.models import AuthState, PresenceEntry, PresenceStatus, StreamPosition
from kiiaren_core.protocols import EventCallback, Unsubscribe
from kiiaren_hosted.auth import Caller

__all__ = [
    "ConnectionState",
    "ConnectionStateCallback",
    "EventConnection",
    "HostedEventStream",
    "HostedEvents",
]

logger = logging.getLogger("kiiaren.hosted.events")

SUBPROTOCOL: Final = Subprotocol("kiiaren.v1")
CLOSE_AUTH_FAILED: Final = 4401
CLOSE_SLOW_CONSUMER: Final = 4408
FATAL_CLOSE_CODES: Final = frozenset({4400, 4403, 4409})
"""Protocol faults: reconnecting would fail the same way."""
MIN_REFRESH_WAIT: Final = 1.0
SESSION_ENDED: Final = "Your session has ended. Please sign in again."
WORKSPACE_NOT_FOUND: Final = "Workspace not found."


class ConnectionState(StrEnum):
    """State of a session's event WebSocket.

    ``closed``: no socket (no stream open, or the provider closed). ``connecting``: opening
    the first socket. ``open``: authenticated, every stream subscribed. ``degraded``: the
    socket was lost, reconnecting with backoff (streams wait, nothing is lost).
    ``resuming``: reconnected, streams are being resumed from their last seq.
    """

    CLOSED = "closed"
    CONNECTING = "connecting"
    OPEN = "open"
    DEGRADED = "degraded"
    RESUMING = "resuming"


ConnectionStateCallback = Callable[[ConnectionState], Awaitable[None] | None]


ErrorFactory = Callable[[], BaseException]


class _FatalError(Exception):
    """The connection cannot go on; every stream ends with a fresh ``error()``."""

    def __init__(self, error: ErrorFactory) -> None:
        super().__init__("event connection ended")
        self.error = error


class HostedEventStream:
    """An :class:`~kiiaren_core.protocols.EventStream` multiplexed on the session's socket.

    Membership is checked when the stream starts (``async with``, or the first
    ``__anext__``): a foreign or missing workspace raises NotFoundError, a signed-out
    provider NotAuthenticatedError. Iteration yields events in seq order (ephemeral ones
    interleaved as they come), across reconnects without gap or duplicate; it raises
    NotFoundError when the member is removed or the workspace deleted, NotAuthenticatedError
    when the session ends.
    """

    def __init__(
        self,
        connection: EventConnection,
        workspace_id: str,
        patterns: tuple[str, ...],
        since: int | None,
        epoch: str | None,
    ) -> None:
        self._connection = connection
        self.workspace_id = workspace_id
        self.patterns = patterns
        self.since = since
        self.epoch = epoch
        self.cursor: int | None = since
        """The highest seq received (or the position the server started at): resume here."""
        self._last_seq: int | None = since
        self._items: deque[StreamItem] = deque()
        self._wake = asyncio.Event()
        self._acked: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._started = False
        self._closed = False
        self.paused = False
        self.frame_id: str | None = None
        self.generation = -1
        """The connection generation this stream's current subscription was sent on."""
        self.confirmed = False
        self.error_retries = 0
        """Consecutive server-side failures of this subscription (reset by an event)."""

    @property
    def last_seq(self) -> int | None:
        """The seq of the last durable event delivered to the reader (to resume from)."""
        return self._last_seq

    @property
    def ended(self) -> bool:
        return self._closed or self._error is not None

    # --- called by the connection --------------------------------------------------------

    def subscribe_frame(self, frame_id: str) -> dict[str, Any]:
        """The ``subscribe`` frame resuming this stream under a new ``frame_id``."""
        self.frame_id = frame_id
        self.confirmed = False
        frame: dict[str, Any] = {
            "type": "subscribe",
            "id": frame_id,
            "workspace_id": self.workspace_id,
            "types": list(self.patterns),
        }
        if self.cursor is not None:
            frame["since"] = self.cursor
            if self.epoch is not None:
                frame["epoch"] = self.epoch
        return frame

    def on_subscribed(self, seq: int, epoch: str) -> None:
        self.confirmed = True
        if self.cursor is None:
            self.cursor = seq
            if self._last_seq is None:
                self._last_seq = seq
        self.epoch = epoch
        if self._acked is not None and not self._acked.done():
            self._acked.set_result(None)

    def on_not_recovered(self, item: NotRecovered) -> None:
        # Live events follow after item.seq in this epoch: that is where to resume now.
        self.cursor, self.epoch = item.seq, item.epoch
        self._push(item)

    def on_event(self, event: EventEnvelope) -> bool:
        """Buffer ``event``; False when the reader is too far behind (pause the stream)."""
        if event.seq is not None and self.cursor is not None and event.seq <= self.cursor:
            return True  # a repeat across a resume: already buffered or delivered
        if len(self._items) >= self._connection.buffer_limit:
            return False
        if event.seq is not None:
            self.cursor = event.seq
        self.error_retries = 0
        self._push(event)
        return True

    def end(self, error: BaseException | None) -> None:
        """End the stream: buffered items are still delivered, then ``error`` is raised
        (``None``: iteration just stops)."""
        if self.ended:
            return
        self._error = error if error is not None else StopAsyncIteration()
        if self._acked is not None and not self._acked.done():
            self._acked.set_exception(self._error)
            self._acked.exception()  # retrieved: a stream that never awaits it is fine
        self._wake.set()

    def _push(self, item: StreamItem) -> None:
        self._items.append(item)
        self._wake.set()

    # --- EventStream ---------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and wait for the server's answer. Idempotent.

        Raises:
            NotAuthenticatedError: signed out (no request is sent).
            NotFoundError: the workspace is missing or the caller is not a member.
            BackendUnavailableError: no answer within the call deadline.
        """
        if self._started:
            return
        self._started = True
        connection = self._connection
        connection.caller.check_open()
        if connection.caller.state.tokens is None:
            self.end(NotAuthenticatedError())
            self._closed = True
            raise NotAuthenticatedError()
        self._acked = asyncio.get_running_loop().create_future()
        await connection.register(self)
        deadline = connection.caller.transport.settings.deadline_seconds
        try:
            await asyncio.wait_for(asyncio.shield(self._acked), deadline)
        except TimeoutError:
            await self.aclose()
            raise BackendUnavailableError(
                "The event stream did not answer within the deadline.",
                details={"reason": "deadline", "state": str(connection.state)},
            ) from None
        except BaseException:
            await self.aclose()
            raise

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        return self

    async def __anext__(self) -> StreamItem:
        await self.start()
        while True:
            if self._items:
                item = self._items.popleft()
                if isinstance(item, NotRecovered) or item.seq is not None:
                    self._last_seq = item.seq
                if not self._items and self.paused and not self.ended:
                    await self._connection.resume(self)
                return item
            if self._error is not None:
                self._closed = True
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self) -> None:
        """Stop the subscription (the server is told); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        await self._connection.unregister(self)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventConnection:
    """The WebSocket of one session, multiplexing its streams (see the module docstring)."""

    def __init__(self, caller: Caller, *, rng: random.Random | None = None) -> None:
        self.caller = caller
        settings = caller.transport.settings
        self.url = settings.events_url
        self.buffer_limit = settings.ws_stream_buffer
        self._settings = settings
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not a secret)
        self._streams: list[HostedEventStream] = []
        self._by_id: dict[str, HostedEventStream] = {}
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._state = ConnectionState.CLOSED
        self._listeners: list[ConnectionStateCallback] = []
        self._closed = False
        self._frame_counter = 0
        self._timers: set[asyncio.Task[None]] = set()
        self._prefix = uuid.uuid4().hex[:12]
        caller.state.subscribe(self._on_auth_state)

    # --- state -----------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def latency(self) -> float | None:
        """Round trip of the last WebSocket ping, in seconds (``None`` when not connected)."""
        ws = self._ws
        return ws.latency if ws is not None else None

    def on_state_change(self, callback: ConnectionStateCallback) -> Unsubscribe:
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    async def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        logger.debug("event connection %s", state)
        for callback in list(self._listeners):
            try:
                result = callback(state)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("connection state listener failed")

    # --- streams ---------------------------------------------------------------------------

    def _next_id(self) -> str:
        self._frame_counter += 1
        return f"{self._prefix}-{self._frame_counter}"

    async def register(self, stream: HostedEventStream) -> None:
        """Add a stream; subscribe it now if the socket is ready, else when it is."""
        if self._closed:
            raise ProviderClosedError()
        self._streams.append(stream)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="kiiaren-hosted-events"
            )
        elif self._ws is not None:
            await self._subscribe(stream)

    async def unregister(self, stream: HostedEventStream) -> None:
        """Drop a stream, tell the server, and close the socket if it was the last one."""
        if stream in self._streams:
            self._streams.remove(stream)
        if stream.frame_id is not None:
            self._by_id.pop(stream.frame_id, None)
            if not stream.paused and self._ws is not None and stream.generation == self._generation:
                await self._send({"type": "unsubscribe", "id": stream.frame_id})
        if not self._streams and self._ws is not None:
            # The runner sees no stream left once the socket has closed, and stops.
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def resume(self, stream: HostedEventStream) -> None:
        """Subscribe a paused stream again from its last seq (its reader caught up)."""
        stream.paused = False
        if self._ws is not None:
            await self._subscribe(stream)

    async def _pause(self, stream: HostedEventStream) -> None:
        stream.paused = True
        if stream.frame_id is not None:
            self._by_id.pop(stream.frame_id, None)
            await self._send({"type": "unsubscribe", "id": stream.frame_id})

    async def _subscribe(self, stream: HostedEventStream) -> None:
        if stream.frame_id is not None:
            self._by_id.pop(stream.frame_id, None)
        frame_id = self._next_id()
        frame = stream.subscribe_frame(frame_id)
        stream.generation = self._generation
        self._by_id[frame_id] = stream
        await self._send(frame)

    async def _send(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return  # every live stream is subscribed again on the next connection
        with contextlib.suppress(ConnectionClosed):  # the runner notices and reconnects
            await ws.send(json.dumps(frame, separators=(",", ":")))

    def _end_all(self, error: ErrorFactory) -> None:
        """End every stream, each with its own exception (raised once per reader)."""
        for stream in list(self._streams):
            stream.end(error())
        self._streams.clear()
        self._by_id.clear()

    async def _on_auth_state(self, state: AuthState) -> None:
        if state.event in ("signed_out", "session_revoked") and self._streams:
            self._end_all(_session_ended)
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()
        elif state.event == "token_refreshed" and self._ws is not None:
            # Extends the socket's session; the server answers with a new ``ready``.
            tokens = self.caller.state.tokens
            if tokens is not None:
                await self._send({"type": "auth", "access_token": tokens.access_token})

    # --- the runner ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        s = self._settings
        ceiling = min(s.backoff_cap_seconds, s.backoff_base_seconds * 2 ** max(0, attempt - 1))
        return self._rng.uniform(0.0, ceiling)

    async def _run(self) -> None:
        failures = 0  # consecutive attempts that did not reach ``ready``
        auth_failures = 0  # consecutive 4401 closes
        try:
            while self._streams and not self._closed:
                reconnecting = failures > 0 or self._generation > 0
                await self._set_state(
                    ConnectionState.DEGRADED if reconnecting else ConnectionState.CONNECTING
                )
                generation = self._generation
                code: int | None = None
                try:
                    code = await self._connect_and_serve(resuming=self._generation > 0)
                except _FatalError as fatal:
                    self._end_all(fatal.error)
                    break
                except (OSError, TimeoutError, WebSocketException) as exc:
                    logger.info("event connection failed: %s", type(exc).__name__)
                if not self._streams or self._closed:
                    break
                connected = self._generation != generation
                if code == CLOSE_AUTH_FAILED:
                    auth_failures = 1 if connected else auth_failures + 1
                    if not await self._reauthenticate(auth_failures):
                        break
                    continue
                auth_failures = 0
                # A socket that worked (or a slow-consumer cut) reconnects at once, with a
                # little jitter; repeated failures back off up to the cap.
                failures = 1 if connected or code == CLOSE_SLOW_CONSUMER else failures + 1
                await self._set_state(ConnectionState.DEGRADED)
                await asyncio.sleep(self._backoff(failures))
        finally:
            self._ws = None
            self._task = None
            self._by_id.clear()
            if not self._closed and self._streams:
                # Only a bug gets here with streams left: do not leave them hanging.
                self._end_all(lambda: BackendUnavailableError("The event connection stopped."))
            await self._set_state(ConnectionState.CLOSED)

    async def _reauthenticate(self, attempt: int) -> bool:
        """After a 4401: refresh the access token once; False ends every stream."""
        tokens = self.caller.state.tokens
        if tokens is None or tokens.refresh_token is None or attempt > 2:
            await self.caller.state.drop("session_revoked")
            self._end_all(_session_ended)
            return False
        try:
            await self.caller.refresh(tokens)
        except NotAuthenticatedError:
            self._end_all(_session_ended)
            return False
        except KiiarenError as exc:
            logger.info("refresh after 4401 failed: %s", exc.code)
        return True

    async def _connect_and_serve(self, *, resuming: bool) -> int | None:
        """Open, authenticate, (re)subscribe every stream and dispatch until the socket
        closes; returns the close code."""
        tokens = await self.caller.fresh_tokens()
        if tokens is None:
            raise _FatalError(_session_ended)
        s = self._settings
        async with connect(
            self.url,
            subprotocols=[SUBPROTOCOL],
            open_timeout=s.ws_open_timeout_seconds,
            ping_interval=s.ws_heartbeat_seconds,
            ping_timeout=s.ws_heartbeat_seconds,
            close_timeout=s.ws_open_timeout_seconds,
            user_agent_header=s.user_agent,
            max_size=None,
        ) as ws:
            await ws.send(json.dumps({"type": "auth", "access_token": tokens.access_token}))
            try:
                async with asyncio.timeout(s.ws_open_timeout_seconds):
                    first = json.loads(await ws.recv())
            except ConnectionClosed:
                return ws.close_code
            if first.get("type") != "ready":
                await ws.close()
                return CLOSE_AUTH_FAILED if first.get("type") == "error" else ws.close_code
            self._generation += 1
            self._ws = ws
            await self._set_state(
                ConnectionState.RESUMING if resuming else ConnectionState.CONNECTING
            )
            keeper = asyncio.get_running_loop().create_task(self._keep_token_fresh())
            try:
                for stream in list(self._streams):
                    if not stream.paused and not stream.ended:
                        await self._subscribe(stream)
                await self._check_open()
                async for message in ws:
                    await self._dispatch(message)
            except ConnectionClosed:
                pass
            finally:
                self._ws = None
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            code = ws.close_code
        if code in FATAL_CLOSE_CODES:
            raise _FatalError(
                lambda: KiiarenError(
                    f"The event server closed the connection ({code}).",
                    details={"close_code": code},
                )
            )
        return code

    async def _keep_token_fresh(self) -> None:
        """Refresh the access token before it expires, so the socket's session never lapses
        (the new token reaches the socket through the ``token_refreshed`` listener)."""
        margin = self._settings.refresh_margin_seconds
        while True:
            tokens = self.caller.state.tokens
            if tokens is None or tokens.refresh_token is None or tokens.expires_at is None:
                return
            wait = (tokens.expires_at - datetime.now(UTC)).total_seconds() - margin
            await asyncio.sleep(max(wait, MIN_REFRESH_WAIT))
            if self.caller.state.tokens is tokens:
                try:
                    await self.caller.refresh(tokens)
                except KiiarenError as exc:
                    logger.info("background token refresh failed: %s", exc.code)
                    return

    async def _check_open(self) -> None:
        live = [s for s in self._streams if not s.paused and not s.ended]
        if self._ws is not None and all(s.confirmed for s in live):
            await self._set_state(ConnectionState.OPEN)

    async def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
            kind = frame["type"]
        except (ValueError, KeyError, TypeError):
            logger.warning("malformed frame from the event server ignored")
            return
        if kind == "event":
            stream = self._by_id.get(frame.get("subscription", ""))
            if stream is None:
                return  # a subscription this client already left
            try:
                event = parse_event(frame["event"])
            except (ValueError, TypeError):
                logger.warning("an event this client cannot read was skipped")
                return
            if not stream.on_event(event):
                await self._pause(stream)
        elif kind == "subscribed":
            stream = self._by_id.get(frame.get("id", ""))
            if stream is not None:
                stream.on_subscribed(int(frame["seq"]), str(frame["epoch"]))
                if self._state is not ConnectionState.OPEN:
                    await self._check_open()
        elif kind == "not_recovered":
            stream = self._by_id.get(frame.get("subscription", ""))
            if stream is not None:
                stream.on_not_recovered(
                    NotRecovered(
                        workspace_id=frame["workspace_id"],
                        reason=frame["reason"],
                        requested_since=frame.get("requested_since"),
                        seq=frame["seq"],
                        epoch=frame["epoch"],
                    )
                )
        elif kind == "unsubscribed":
            await self._on_unsubscribed(frame)
        elif kind == "error":
            stream = self._by_id.pop(frame.get("id") or "", None)
            error = _wire_error(frame.get("error"))
            if stream is not None:
                self._drop(stream)
                stream.end(error)
            elif frame.get("id") is None:
                # E.g. a refreshed token the server refused: it keeps the current session.
                logger.warning("event server error: %s", error.code)
            else:
                logger.debug("event server error for a frame already dropped: %s", error.code)
        # ``ready`` (answer to a renewed ``auth``) and ``pong`` need nothing.

    def _drop(self, stream: HostedEventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    async def _on_unsubscribed(self, frame: dict[str, Any]) -> None:
        stream = self._by_id.get(frame.get("id", ""))
        if stream is None:
            return  # the answer to our own unsubscribe
        reason = frame.get("reason")
        if reason == "slow_consumer":
            # The server cut this subscription off: resume from what we have.
            await self._subscribe(stream)
            return
        self._by_id.pop(stream.frame_id or "", None)
        if reason == "error":
            stream.error_retries += 1
            if stream.error_retries < self._settings.max_attempts:
                # The server could not go on with it: resume after a back-off.
                self._spawn(self._resubscribe_later(stream, self._backoff(stream.error_retries)))
                return
        self._drop(stream)
        if reason in ("removed", "workspace_deleted"):
            stream.end(NotFoundError(WORKSPACE_NOT_FOUND, details={"reason": reason}))
        elif reason == "error":
            stream.end(_wire_error(frame.get("error")))
        else:
            stream.end(None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _resubscribe_later(self, stream: HostedEventStream, delay: float) -> None:
        await asyncio.sleep(delay)
        # While disconnected, the next connection subscribes every live stream anyway.
        live = stream in self._streams and not stream.ended and not stream.paused
        if live and self._ws is not None:
            await self._subscribe(stream)

    async def aclose(self) -> None:
        """End every stream (ProviderClosedError) and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._end_all(ProviderClosedError)
        for timer in list(self._timers):
            timer.cancel()
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._set_state(ConnectionState.CLOSED)


def _session_ended() -> NotAuthenticatedError:
    return NotAuthenticatedError(SESSION_ENDED)


def _wire_error(error: object) -> KiiarenError:
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = error.get("details")
        return error_from_wire(
            error["code"],
            str(error.get("message", "")),
            details if isinstance(details, dict) else None,
        )
    return KiiarenError("The event server reported an error.")


class HostedEvents:
    """``provider.events`` of one hosted provider object (see the module docstring)."""

    def __init__(self, caller: Caller, connection: EventConnection) -> None:
        self._caller = caller
        self._connection = connection
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connection_state(self) -> ConnectionState:
        """The state of this session's event WebSocket."""
        return self._connection.state

    @property
    def latency(self) -> float | None:
        """The last heartbeat's round trip in seconds, ``None`` when not connected."""
        return self._connection.latency

    def on_connection_state_change(self, callback: ConnectionStateCallback) -> Unsubscribe:
        """Call ``callback`` (sync or async) with each new :class:`ConnectionState`."""
        self._caller.check_open()
        return self._connection.on_state_change(callback)

    def stream(
        self,
        workspace_id: str,
        *,
        types: Sequence[str] | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> HostedEventStream:
        """Open a subscription as an async iterator (membership is checked on first use).

        Raises:
            InvalidInputError: a malformed type pattern or a ``since`` that is not an int.
            ProviderClosedError: the provider is closed.
        """
        self._caller.check_open()
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise InvalidInputError("since must be an integer seq.", details={"field": "since"})
        return HostedEventStream(
            self._connection, workspace_id, compile_patterns(types), since, epoch
        )

    async def subscribe(
        self,
        workspace_id: str,
        types: Sequence[str] | None,
        callback: EventCallback,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Unsubscribe:
        """Deliver each item to ``callback`` (sync or async) from a background task.

        Subscribing is checked before this returns (NotFoundError, NotAuthenticatedError).
        A failing callback is logged and the next item still delivered.
        """
        stream = self.stream(workspace_id, types=types, since=since, epoch=epoch)
        await stream.start()
        task = asyncio.get_running_loop().create_task(
            self._pump(stream, callback), name="kiiaren-hosted-subscription"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def unsubscribe() -> None:
            task.cancel()

        return unsubscribe

    @staticmethod
    async def _pump(stream: HostedEventStream, callback: EventCallback) -> None:
        try:
            async for item in stream:
                try:
                    result = callback(item)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("event callback failed")
        except KiiarenError as exc:
            logger.info("subscription ended: %s", exc.code)
        finally:
            await stream.aclose()

    async def emit(self, event: EventEnvelope) -> EventEnvelope:
        """Publish an application event (or ``typing.changed``); returns it as delivered."""
        if not isinstance(event, EventEnvelope):
            raise InvalidInputError("emit() takes an event envelope.", details={"field": "event"})
        sent: EventEnvelope = await self._caller.call(
            "events.emit", workspace_id=event.workspace_id, type=event.type, payload=event.payload
        )
        return parse_event(sent.model_dump())

    async def position(self, workspace_id: str) -> StreamPosition:
        """The workspace stream's current seq and epoch (members only)."""
        position: StreamPosition = await self._caller.call(
            "events.position", workspace_id=workspace_id
        )
        return position

    async def set_presence(self, workspace_id: str, status: PresenceStatus) -> None:
        """Report the user's presence in the workspace."""
        await self._caller.call("events.set_presence", workspace_id=workspace_id, status=status)

    async def get_presence(self, workspace_id: str) -> list[PresenceEntry]:
        """Presence of every member seen recently (members only)."""
        entries: list[PresenceEntry] = await self._caller.call(
            "events.presence", workspace_id=workspace_id
        )
        return entries

    async def aclose(self) -> None:
        """Stop the callback subscriptions and close the socket. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._connection.aclose()

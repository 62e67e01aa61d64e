"""``provider.events`` of the self-host provider: streams, callbacks, emit, position, presence."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import sqlalchemy as sa

from kiiaren_core.errors import (
    BackendUnavailableError,
    InvalidInputError,
    KiiarenError,
    NotAuthenticatedError,
    NotFoundError,
    ProviderClosedError,
)
from kiiaren_core.events import (
    AppEvent,
    EventEnvelope,
    NotRecovered,
    StreamItem,
    compile_patterns,
    validate_app_event_type,
)
from kiiaren_core.models import PresenceEntry, PresenceStatus, StreamPosition
from kiiaren_core.protocols import EventCallback, Unsubscribe
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import find_membership, require_membership
from kiiaren_selfhost.domain._unit import Store
from kiiaren_selfhost.events.broker import (
    PAGE_SIZE,
    SubscriberState,
    Subscription,
    read_log,
    stream_head,
)
from kiiaren_selfhost.session import Principal

if TYPE_CHECKING:
    from kiiaren_selfhost.runtime import Runtime

__all__ = ["SelfHostEventStream", "SelfHostEvents"]

logger = logging.getLogger("kiiaren.selfhost.events")

WORKSPACE_NOT_FOUND = "Workspace not found."


class SelfHostEventStream:
    """An :class:`~kiiaren_core.protocols.EventStream` over the log and the broker."""

    def __init__(
        self,
        events: SelfHostEvents,
        workspace_id: str,
        patterns: tuple[str, ...],
        since: int | None,
        epoch: str | None,
    ) -> None:
        self._events = events
        self._workspace_id = workspace_id
        self._patterns = patterns
        self._since = since
        self._epoch = epoch
        self._subscription: Subscription | None = None
        # Made for a replay page and dropped once drained: a live stream holds no buffer.
        self._pending: deque[StreamItem] | None = None
        self._started = False
        self._closed = False
        self._session_id = ""
        self._last_seq: int | None = since
        self._sink: Callable[[EventEnvelope], bool] | None = None

    @property
    def last_seq(self) -> int | None:
        """Seq of the last durable event delivered (or skipped by the type filter)."""
        return self._last_seq

    @property
    def workspace_id(self) -> str:
        return self._workspace_id

    def set_sink(self, sink: Callable[[EventEnvelope], bool] | None) -> None:
        """Offer a synchronous fast path for live events (``None``: withdraw it).

        While the consumer waits in ``__anext__`` with nothing queued, each live event
        (durable or ephemeral) is passed to ``sink`` in the fan-out itself instead of waking
        the consumer. ``sink`` returns True when it took the event (it then counts as
        delivered: :attr:`last_seq` moves), False to have it queued and returned by
        ``__anext__`` as usual. It must not block and must keep the order of what it takes
        relative to what the consumer forwards; it runs in whichever task fans out. Replays,
        ``NotRecovered`` and the end of the stream always come through ``__anext__``.
        """
        self._sink = sink

    def _take(self, event: EventEnvelope) -> bool:
        sink = self._sink
        if sink is None or not sink(event):
            return False
        if event.seq is not None:
            self._last_seq = event.seq
        return True

    async def start(self) -> None:
        """Check access and position the stream (done by the first ``__anext__`` otherwise)."""
        if self._started:
            return
        self._started = True
        rt = self._events.runtime
        principal = await self._events.caller(self._workspace_id)
        user_id, self._session_id = principal.user_id, principal.session_id
        head, epoch = await stream_head(rt.db, self._workspace_id)
        cursor = head
        if self._since is not None:
            reason = await self._unrecoverable(head, epoch)
            if reason is None:
                cursor = self._since
            else:
                self._pend(
                    NotRecovered(
                        workspace_id=self._workspace_id,
                        reason=reason,
                        requested_since=self._since,
                        seq=head,
                        epoch=epoch or "",
                    )
                )
        self._last_seq = cursor
        self._subscription = Subscription(
            workspace_id=self._workspace_id,
            user_id=user_id,
            session_id=self._session_id,
            patterns=self._patterns,
            queue_size=rt.settings.subscriber_queue_size,
            cursor=cursor,
        )
        # The broker's poller re-checks every stream's session and keeps its presence fresh
        # (one pass per process, not a timer per stream).
        rt.broker.watch_sessions(rt.liveness.is_live, rt.presence.heartbeat)
        await rt.broker.attach(self._subscription)
        if not self._pending and cursor == head:
            # Nothing to replay: receive pushes (ephemeral events included) from now on.
            await rt.broker.go_live(self._subscription)
        await rt.presence.set(self._workspace_id, user_id, PresenceStatus.ONLINE)

    async def _unrecoverable(
        self, head: int, epoch: str | None
    ) -> Literal["future", "expired", "epoch_changed"] | None:
        """Why ``since`` cannot be honoured, or None when the log still holds what follows it."""
        assert self._since is not None
        if self._epoch is not None and epoch is not None and self._epoch != epoch:
            return "epoch_changed"
        if self._since > head or self._since < 0:
            return "future"
        if self._since == head:
            return None
        async with self._events.runtime.db.read() as conn:
            oldest = (
                await conn.execute(
                    sa.select(sa.func.min(t.events.c.seq)).where(
                        t.events.c.workspace_id == self._workspace_id
                    )
                )
            ).scalar_one_or_none()
        if oldest is None or int(oldest) > self._since + 1:
            return "expired"
        return None

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        return self

    async def __anext__(self) -> StreamItem:
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        sub = self._subscription
        assert sub is not None
        while True:
            if self._pending:
                pending = self._pending.popleft()
                if not self._pending:
                    self._pending = None
                return self._deliver(pending)
            if sub.state is SubscriberState.CATCHING_UP:
                await self._catch_up(sub)
                continue
            if sub.state is SubscriberState.CLOSED and sub.queue.empty():
                self._finish(sub.close_reason)
            # Everything returned so far has been forwarded (the consumer is back here), so
            # the sink may take live events until one is queued or this wait ends.
            sub.sink = self._take if self._sink is not None else None
            try:
                item = await sub.queue.get()
            finally:
                sub.sink = None
            if item is None:
                continue  # a close() wake-up: the state check above ends the stream
            return self._deliver(item)

    def _pend(self, item: StreamItem) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(item)

    def _deliver(self, item: StreamItem) -> StreamItem:
        if (isinstance(item, EventEnvelope) and item.seq is not None) or isinstance(
            item, NotRecovered
        ):
            self._last_seq = item.seq
        return item

    async def _catch_up(self, sub: Subscription) -> None:
        rt = self._events.runtime
        page = await read_log(rt.db, self._workspace_id, sub.cursor)
        for event in page:
            sub.cursor = event.seq or sub.cursor
            if sub.wants(event):
                self._pend(event)
            else:
                self._last_seq = event.seq
        if len(page) < PAGE_SIZE and not self._pending:
            await rt.broker.go_live(sub)

    def _finish(self, reason: str | None) -> None:
        self._closed = True
        self._detach()
        errors: dict[str, KiiarenError] = {
            "removed": NotFoundError(WORKSPACE_NOT_FOUND, details={"reason": "removed"}),
            "workspace_deleted": NotFoundError(
                WORKSPACE_NOT_FOUND, details={"reason": "workspace_deleted"}
            ),
            "session_revoked": NotAuthenticatedError(
                "Your session has ended. Please sign in again."
            ),
            "provider_closed": ProviderClosedError(),
            "slow_consumer": BackendUnavailableError(
                "The subscriber fell too far behind and was cut off; resume from last_seq.",
                details={"reason": "slow_consumer", "last_seq": self._last_seq},
            ),
        }
        error = errors.get(reason or "")
        if error is None:
            raise StopAsyncIteration
        raise error

    async def aclose(self) -> None:
        """Stop the subscription. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._subscription is not None:
            self._subscription.close("unsubscribed")
            self._detach()
            if not self._events.runtime.closed and not any(
                other.user_id == self._subscription.user_id
                for other in self._events.runtime.broker.subscribers(self._workspace_id)
            ):
                await self._events.runtime.presence.set(
                    self._workspace_id, self._subscription.user_id, PresenceStatus.OFFLINE
                )

    def _detach(self) -> None:
        if self._subscription is not None:
            self._events.runtime.broker.detach(self._subscription)

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


class SelfHostEvents(Store):
    """``provider.events`` of one self-host view."""

    @property
    def runtime(self) -> Runtime:
        return self._rt

    async def caller(self, workspace_id: str) -> Principal:
        """The verified caller if they are a member, else NotFoundError (like a missing one)."""
        await self._auth.ready()
        claims = await self._auth.claims()
        async with self._rt.db.read() as conn:
            principal = await self._auth.principal(conn, claims)
            await require_membership(
                conn, workspace_id, principal.user_id, missing=WORKSPACE_NOT_FOUND
            )
        return principal

    def stream(
        self,
        workspace_id: str,
        *,
        types: Sequence[str] | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> SelfHostEventStream:
        self._rt.check_open()
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise InvalidInputError("since must be an integer seq.", details={"field": "since"})
        return SelfHostEventStream(self, workspace_id, compile_patterns(types), since, epoch)

    async def subscribe(
        self,
        workspace_id: str,
        types: Sequence[str] | None,
        callback: EventCallback,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Unsubscribe:
        """Deliver to ``callback`` from a background task; a slow callback resumes from the
        log instead of losing events."""
        stream = self.stream(workspace_id, types=types, since=since, epoch=epoch)
        await stream.start()
        task = asyncio.get_running_loop().create_task(
            self._pump(stream, types, callback, epoch), name="kiiaren-subscription"
        )
        self._rt.track(task)

        def unsubscribe() -> None:
            task.cancel()

        return unsubscribe

    async def _pump(
        self,
        stream: SelfHostEventStream,
        types: Sequence[str] | None,
        callback: EventCallback,
        epoch: str | None,
    ) -> None:
        try:
            while True:
                try:
                    async for item in stream:
                        try:
                            result = callback(item)
                            if inspect.isawaitable(result):
                                await result
                        except Exception:
                            logger.exception("event callback failed")
                    return
                except BackendUnavailableError as exc:
                    if exc.details.get("reason") != "slow_consumer":
                        raise
                    resume_from = stream.last_seq
                    await stream.aclose()
                    stream = self.stream(
                        stream.workspace_id, types=types, since=resume_from, epoch=epoch
                    )
        except KiiarenError as exc:
            logger.info("subscription ended: %s", exc.code)
        finally:
            await stream.aclose()

    async def emit(self, event: EventEnvelope) -> EventEnvelope:
        """Publish an application event (logged) or an ephemeral kernel event (not logged)."""
        if not isinstance(event, EventEnvelope):
            raise InvalidInputError("emit() takes an event envelope.", details={"field": "event"})
        if type(event).ephemeral:
            async with self.query() as q:
                assert q.user_id is not None
                await require_membership(
                    q.conn, event.workspace_id, q.user_id, missing=WORKSPACE_NOT_FOUND
                )
            delivered = event.model_copy(update={"seq": None, "actor_id": q.user_id})
            await self._rt.publish_ephemeral(delivered)
            return delivered
        if not isinstance(event, AppEvent):
            raise InvalidInputError(
                f"{event.type!r} is a kernel event; the provider emits it itself.",
                details={"field": "type"},
            )
        validate_app_event_type(event.type)
        async with self.mutation() as tx:
            membership = await require_membership(
                tx.conn, event.workspace_id, tx.user_id, missing=WORKSPACE_NOT_FOUND
            )
            tx.emit(membership.workspace_id, event.type, event.payload)
        return tx.logged[-1]

    async def position(self, workspace_id: str) -> StreamPosition:
        await self.caller(workspace_id)  # members only
        head, epoch = await stream_head(self._rt.db, workspace_id)
        return StreamPosition(workspace_id=workspace_id, seq=head, epoch=epoch or "")

    async def set_presence(self, workspace_id: str, status: PresenceStatus) -> None:
        user_id = (await self.caller(workspace_id)).user_id
        await self._rt.presence.set(workspace_id, user_id, PresenceStatus(status))

    async def get_presence(self, workspace_id: str) -> list[PresenceEntry]:
        async with self.query() as q:
            if await find_membership(q.conn, workspace_id, q.user_id) is None:
                raise NotFoundError(WORKSPACE_NOT_FOUND)
        return await self._rt.presence.snapshot(workspace_id)

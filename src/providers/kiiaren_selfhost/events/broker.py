"""In-process fan-out of logged events, in ``seq`` order, with no gap and no duplicate.

Design (QUALITY.md, "Realtime delivery"):

* The event log is the source of truth; the broker only moves what the log holds. For each
  workspace with local subscribers a :class:`_Channel` keeps ``cursor``, the last seq it fanned
  out. A committed mutation hands its events over (:meth:`Broker.published`); when they follow
  the cursor they are fanned out from memory, otherwise (another process wrote in between, or
  two local commits finished in the other order) the missing range is read from the log. A
  wake-up from another process (:meth:`Broker.wake`, PostgreSQL NOTIFY) and a periodic poll do
  the same catch-up read, so a lost notification or a lost LISTEN connection loses nothing.
  Seqs are allocated under a row lock held until commit, so once seq N is visible every seq
  below it is committed: a catch-up read never skips an in-flight event.
* A subscriber starts *catching up*: it pages through the log itself from its ``since`` until it
  reaches the channel's cursor, then (under the channel lock) becomes *live* and receives pushes.
  Replays of any length therefore cost no memory in the broker.
* Each live subscriber has a bounded queue. A subscriber that lets it fill up is cut off with
  reason ``slow_consumer`` (it can resume from its last seq); the others never wait for it.
* A consumer that forwards events somewhere in order (the server's WebSocket) may arm a *sink*
  while it waits with nothing queued: the fan-out then hands it each event synchronously
  instead of queueing it and waking the consumer's task, which is most of a delivery's cost.
  The sink takes the event or refuses it (then it is queued as usual), so order and the
  bounded queue are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import sqlalchemy as sa

from kiiaren_core.errors import ProviderClosedError
from kiiaren_core.events import EventEnvelope, matches_any, parse_event
from kiiaren_selfhost.db import Database
from kiiaren_selfhost.db import tables as t

__all__ = ["Broker", "SubscriberState", "Subscription", "read_log", "stream_head"]

logger = logging.getLogger("kiiaren.selfhost.events")

PAGE_SIZE: Final = 500
_MEMO_SIZE: Final = 64
"""Event types whose pattern match a subscription remembers (types are few and fixed)."""

Sink = Callable[[EventEnvelope], bool]
"""Takes one live event synchronously: True when it took it, False to have it queued."""
_CHECKS_AT_ONCE: Final = 32
"""Sessions whose liveness the poller checks concurrently."""


async def stream_head(db: Database, workspace_id: str) -> tuple[int, str | None]:
    """(last seq, epoch) of a workspace's stream; (0, None) before its first event."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                sa.select(t.event_streams.c.last_seq, t.event_streams.c.epoch).where(
                    t.event_streams.c.workspace_id == workspace_id
                )
            )
        ).one_or_none()
    return (int(row.last_seq), str(row.epoch)) if row else (0, None)


async def read_log(
    db: Database, workspace_id: str, after: int, *, limit: int = PAGE_SIZE
) -> list[EventEnvelope]:
    """Logged events of a workspace with seq > ``after``, in order, at most ``limit``."""
    ev = t.events
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    ev.c.seq, ev.c.id, ev.c.type, ev.c.actor_id, ev.c.payload, ev.c.created_at
                )
                .where(ev.c.workspace_id == workspace_id, ev.c.seq > after)
                .order_by(ev.c.seq)
                .limit(limit)
            )
        ).all()
    return [
        parse_event(
            {
                "id": str(row.id),
                "seq": int(row.seq),
                "type": row.type,
                "timestamp": row.created_at,
                "workspace_id": workspace_id,
                "actor_id": str(row.actor_id) if row.actor_id else None,
                "payload": row.payload,
            }
        )
        for row in rows
    ]


def _contiguous(events: Sequence[EventEnvelope], after: int) -> bool:
    """True if the events' seqs are ``after + 1, after + 2, ...`` (nothing missing)."""
    return all(event.seq == after + n for n, event in enumerate(events, 1))


class Mailbox:
    """A bounded FIFO with one consumer: what ``asyncio.Queue`` does here, in less memory.

    An idle subscription holds no buffer at all (a deque is made for a burst and dropped
    once drained) and at most one future while its consumer waits; an ``asyncio.Queue``
    holds three deques for life, a few KiB per subscriber.
    """

    __slots__ = ("_items", "_size", "_waiter")

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: deque[EventEnvelope | None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: EventEnvelope | None) -> None:
        """Append ``item``; raises asyncio.QueueFull when ``size`` items wait already."""
        items = self._items
        if items is None:
            items = self._items = deque()
        elif len(items) >= self._size:
            raise asyncio.QueueFull
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> EventEnvelope | None:
        """The oldest item, waiting for one (one consumer at a time)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        assert self._items is not None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item


class SubscriberState(enum.Enum):
    """Where a subscriber is in its life."""

    CATCHING_UP = "catching_up"
    LIVE = "live"
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class Subscription:
    """One subscriber of one workspace (owned by an event stream)."""

    workspace_id: str
    user_id: str
    session_id: str
    patterns: tuple[str, ...]
    queue_size: int
    cursor: int
    state: SubscriberState = SubscriberState.CATCHING_UP
    close_reason: str | None = None
    queue: Mailbox = field(init=False)
    sink: Sink | None = None
    """Armed by the consumer only while it waits with nothing queued (see the module doc)."""
    _wanted: dict[str, bool] | None = None

    def __post_init__(self) -> None:
        self.queue = Mailbox(self.queue_size)

    def wants(self, event: EventEnvelope) -> bool:
        # Matching splits both strings per pattern; a fan-out asks once per subscriber per
        # event, so each subscription remembers the answer per type.
        wanted = self._wanted
        if wanted is None:
            wanted = self._wanted = {}
        hit = wanted.get(event.type)
        if hit is None:
            hit = matches_any(self.patterns, event.type)
            if len(wanted) < _MEMO_SIZE:
                wanted[event.type] = hit
        return hit

    def close(self, reason: str) -> None:
        """Stop the subscription; the consumer sees ``reason`` after what it already has."""
        if self.state is SubscriberState.CLOSED:
            return
        self.state = SubscriberState.CLOSED
        self.close_reason = reason
        # Wake a waiting consumer; with a full queue it finds the state when it drains it.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def push(self, event: EventEnvelope) -> None:
        """Hand an event to a live subscriber: to its armed sink when nothing is queued (and
        the sink takes it), else to its queue, cutting it off when that queue is full."""
        if self.state is not SubscriberState.LIVE:
            return
        if event.seq is not None:
            if event.seq <= self.cursor:
                return
            self.cursor = event.seq
        if not self.wants(event):
            return
        sink = self.sink
        if sink is not None and self.queue.empty():
            try:
                if sink(event):
                    return
            except Exception:
                logger.exception("event sink failed; the event is queued instead")
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.close("slow_consumer")


@dataclass(eq=False, slots=True)
class _Channel:
    """Fan-out state of one workspace in this process."""

    workspace_id: str
    cursor: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    subscribers: set[Subscription] = field(default_factory=set)


class Broker:
    """Per-process router from committed events to subscriptions."""

    def __init__(self, db: Database, *, poll_interval: float = 1.0) -> None:
        self._db = db
        self._channels: dict[str, _Channel] = {}
        self._poll_interval = poll_interval
        self._poller: asyncio.Task[None] | None = None
        self._is_live: Callable[[str, str], Awaitable[bool]] | None = None
        self._heartbeat: Callable[[str, str], Awaitable[None]] | None = None

    def watch_sessions(
        self,
        is_live: Callable[[str, str], Awaitable[bool]],
        heartbeat: Callable[[str, str], Awaitable[None]],
    ) -> None:
        """Have the poller check every subscription's session each ``poll_interval``.

        ``is_live(session_id, user_id)`` False closes the session's subscriptions with
        ``session_revoked`` (a revoked session stops streaming within about two poll
        intervals); ``heartbeat(workspace_id, user_id)`` runs for each live pair (presence).
        Removal and workspace deletion need no polling: their events close subscriptions.
        """
        self._is_live, self._heartbeat = is_live, heartbeat

    # --- subscriptions ------------------------------------------------------------------------

    async def attach(self, subscription: Subscription) -> None:
        """Register a catching-up subscription (its channel is created on first use)."""
        channel = self._channels.get(subscription.workspace_id)
        if channel is None:
            head, _ = await stream_head(self._db, subscription.workspace_id)
            channel = self._channels.setdefault(
                subscription.workspace_id, _Channel(subscription.workspace_id, head)
            )
        channel.subscribers.add(subscription)
        self._ensure_poller()

    def detach(self, subscription: Subscription) -> None:
        """Forget a subscription; drop the channel when it was the last one."""
        channel = self._channels.get(subscription.workspace_id)
        if channel is None:
            return
        channel.subscribers.discard(subscription)
        if not channel.subscribers:
            self._channels.pop(subscription.workspace_id, None)

    async def go_live(self, subscription: Subscription) -> bool:
        """Switch a caught-up subscription to push delivery.

        Returns False when the channel has moved past the subscription's cursor meanwhile
        (the caller reads the log again and retries).
        """
        channel = self._channels.get(subscription.workspace_id)
        if channel is None:
            return False
        async with channel.lock:
            if subscription.cursor < channel.cursor:
                return False
            subscription.cursor = max(subscription.cursor, channel.cursor)
            if subscription.state is SubscriberState.CATCHING_UP:
                subscription.state = SubscriberState.LIVE
            return True

    def subscribers(self, workspace_id: str) -> frozenset[Subscription]:
        """The current subscriptions of a workspace in this process."""
        channel = self._channels.get(workspace_id)
        return frozenset(channel.subscribers) if channel else frozenset()

    # --- delivery -----------------------------------------------------------------------------

    async def published(self, events: Sequence[EventEnvelope]) -> None:
        """Fan out events this process just committed (durable ones in seq order)."""
        by_workspace: dict[str, list[EventEnvelope]] = {}
        for event in events:
            by_workspace.setdefault(event.workspace_id, []).append(event)
        for workspace_id, batch in by_workspace.items():
            channel = self._channels.get(workspace_id)
            if channel is not None:
                await self._advance(channel, batch)

    async def wake(
        self, workspace_id: str, seq: int | None = None, events: Sequence[EventEnvelope] = ()
    ) -> None:
        """Another process committed up to ``seq`` (unknown: ``None``): fan out ``events``
        (what it committed, when known) if they follow the cursor, else catch up from the log."""
        channel = self._channels.get(workspace_id)
        if channel is not None and (seq is None or seq > channel.cursor):
            await self._advance(channel, events)

    async def wake_all(self) -> None:
        """Catch every channel up from the log (after a lost LISTEN connection)."""
        for workspace_id in list(self._channels):
            await self.wake(workspace_id)

    def deliver_ephemeral(self, event: EventEnvelope) -> None:
        """Push an event without seq (presence, typing) to the live subscribers."""
        channel = self._channels.get(event.workspace_id)
        if channel is None:
            return
        for subscription in list(channel.subscribers):
            subscription.push(event)

    async def _advance(self, channel: _Channel, hint: Sequence[EventEnvelope]) -> None:
        async with channel.lock:
            # What the channel has fanned out already (a wake-up racing a local publish)
            # is dropped, so a hint that overlaps the cursor still needs no log read.
            known = [e.seq for e in hint if e.seq is not None]
            durable = [e for e in hint if e.seq is not None and e.seq > channel.cursor]
            if known and not durable:
                return
            if durable and _contiguous(durable, channel.cursor):
                batches = [durable]
            else:
                batches = []
                cursor = channel.cursor
                while True:
                    page = await read_log(self._db, channel.workspace_id, cursor)
                    if not page:
                        break
                    batches.append(page)
                    cursor = page[-1].seq or cursor
                    if len(page) < PAGE_SIZE:
                        break
            for batch in batches:
                for event in batch:
                    for subscription in list(channel.subscribers):
                        subscription.push(event)
                        self._react(subscription, event)
                    channel.cursor = event.seq or channel.cursor

    @staticmethod
    def _react(subscription: Subscription, event: EventEnvelope) -> None:
        """Close subscriptions the event makes illegal (removed member, deleted workspace)."""
        if event.type == "workspace.deleted":
            subscription.close("workspace_deleted")
        elif event.type == "member.left" and event.payload.user_id == subscription.user_id:
            subscription.close("removed")

    # --- safety net ---------------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="kiiaren-event-poll"
            )

    async def _poll(self) -> None:
        """Catch up every channel periodically (covers missed wake-ups of any cause), and
        re-check the subscribers' sessions."""
        while self._channels:
            await asyncio.sleep(self._poll_interval)
            for workspace_id in list(self._channels):
                try:
                    head, _ = await stream_head(self._db, workspace_id)
                    await self.wake(workspace_id, head)
                except Exception:
                    logger.exception("event catch-up failed for workspace %s", workspace_id)
            await self._recheck_sessions()

    async def _recheck_sessions(self) -> None:
        is_live, heartbeat = self._is_live, self._heartbeat
        if is_live is None or heartbeat is None:
            return
        by_session: dict[tuple[str, str], list[Subscription]] = {}
        for channel in list(self._channels.values()):
            for sub in channel.subscribers:
                if sub.state is not SubscriberState.CLOSED:
                    by_session.setdefault((sub.session_id, sub.user_id), []).append(sub)
        sessions = list(by_session)
        for start in range(0, len(sessions), _CHECKS_AT_ONCE):
            batch = sessions[start : start + _CHECKS_AT_ONCE]
            answers = await asyncio.gather(
                *(is_live(session_id, user_id) for session_id, user_id in batch),
                return_exceptions=True,
            )
            for key, answer in zip(batch, answers, strict=True):
                if isinstance(answer, ProviderClosedError):
                    for sub in by_session[key]:
                        sub.close("provider_closed")
                elif isinstance(answer, BaseException):
                    # A database blip must not end every stream: check again next time.
                    logger.debug("session re-check failed", exc_info=answer)
                elif not answer:
                    for sub in by_session[key]:
                        sub.close("session_revoked")
        present = {
            (sub.workspace_id, sub.user_id)
            for subs in by_session.values()
            for sub in subs
            if sub.state is not SubscriberState.CLOSED
        }
        for workspace_id, user_id in present:
            try:
                await heartbeat(workspace_id, user_id)
            except Exception:
                logger.debug("presence heartbeat failed", exc_info=True)

    async def aclose(self) -> None:
        """Close every subscription and stop the poller."""
        for channel in list(self._channels.values()):
            for subscription in list(channel.subscribers):
                subscription.close("provider_closed")
        self._channels.clear()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

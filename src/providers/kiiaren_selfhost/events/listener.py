"""Cross-process wake-ups through PostgreSQL LISTEN/NOTIFY.

After a commit, a process sends one ``NOTIFY kiiaren_events`` per workspace:
``{"w": <workspace>, "s": <highest seq>, "d": [<event json>, ...]}``, the committed events
themselves when they fit in a notification (PostgreSQL refuses 8000 bytes or more), else
without ``"d"``. Ephemeral events travel whole: ``{"e": <event json>, "o": <origin>}``.
NOTIFY is sent *after* commit on a separate statement: inside the writing transaction it would
take a cluster-wide lock through commit and collapse concurrent writers (QUALITY.md). The
writer does not wait for it either: :meth:`PgNotifier.notify` queues the payloads and one
sender task per process sends whatever is queued in one statement (one round trip for a
burst of commits), in queue order, so a workspace's notifications arrive in seq order.

The receiving broker fans the carried events out at once when they follow what it has
delivered (no read of the log: the round trip was most of the cross-process latency); after a
gap, or for a notification without events, it reads the log. So a lost notification (or a
lost LISTEN connection, re-established with backoff, followed by a full catch-up) still loses
nothing: the next wake-up or the broker's poll reads what was missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
from sqlalchemy.engine import make_url

from kiiaren_core.events import EventEnvelope, parse_event

__all__ = ["CHANNEL", "PgNotifier", "notification_payloads"]

logger = logging.getLogger("kiiaren.selfhost.events")

CHANNEL: Final = "kiiaren_events"
_MAX_PAYLOAD: Final = 7_900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
_MAX_QUEUED: Final = 10_000
"""Payloads held while the database does not take them; the oldest go first beyond this (the
receivers' poll reads what their notifications would have said)."""
_FLUSH_SECONDS: Final = 5.0
"""How long :meth:`PgNotifier.aclose` waits for the queue to be sent."""
_BATCH_STATEMENTS: Final = 64
"""Batch sizes whose statement text is kept; larger batches are sent in chunks of this."""


def _notify_statement(size: int) -> str:
    """One statement for ``size`` payloads; pg_notify is volatile, so PostgreSQL calls it
    after the ORDER BY, in queue order (one transaction's notifications are delivered in
    order). Payloads are plain text parameters: as a text[] array, psycopg escaped each
    JSON payload with a regular expression, a cost per commit on the event loop."""
    rows = ", ".join(f"({n}, %s::text)" for n in range(size))
    # Only our constants and integers are formatted in; the payloads are parameters.
    return f"SELECT pg_notify('{CHANNEL}', p) FROM (VALUES {rows}) AS q(n, p) ORDER BY n"  # noqa: S608


_NOTIFY_STATEMENTS: Final = [_notify_statement(size) for size in range(_BATCH_STATEMENTS + 1)]


def notification_payloads(events: Sequence[EventEnvelope], origin: str) -> list[str]:
    """One payload per workspace for durable events, one per ephemeral event.

    A workspace's payload names its highest seq and carries its events when they fit.
    Ephemeral events carry ``origin`` (the sending process) so that process, which delivered
    them locally already, skips its own notification.
    """
    durable: dict[str, list[EventEnvelope]] = {}
    payloads: list[str] = []
    for event in events:
        if event.seq is not None:
            durable.setdefault(event.workspace_id, []).append(event)
        else:
            body = json.dumps(
                {"e": event.model_dump(mode="json"), "o": origin}, separators=(",", ":")
            )
            if len(body.encode()) <= _MAX_PAYLOAD:
                payloads.append(body)
    for workspace, batch in durable.items():
        head = json.dumps(workspace) + ',"s":' + str(max(e.seq or 0 for e in batch))
        body = '{"w":' + head + ',"d":[' + ",".join(e.model_dump_json() for e in batch) + "]}"
        if len(body) > _MAX_PAYLOAD or len(body.encode()) > _MAX_PAYLOAD:
            body = '{"w":' + head + "}"  # the receivers read the log instead
        payloads.append(body)
    return payloads


def _conninfo(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgNotifier:
    """Sends notifications and keeps one LISTEN connection that calls back on each."""

    def __init__(
        self,
        database_url: str,
        *,
        on_wake: Callable[[str, int | None, Sequence[EventEnvelope]], Awaitable[None]],
        on_ephemeral: Callable[[dict[str, Any]], Awaitable[None]],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self._conninfo = _conninfo(database_url)
        self._origin = uuid.uuid4().hex
        self._on_wake = on_wake
        self._on_ephemeral = on_ephemeral
        self._on_reconnect = on_reconnect
        self._send_conn: psycopg.AsyncConnection[Any] | None = None
        self._queued: list[str] = []
        self._wakeup = asyncio.Event()  # set: the queue has payloads for the sender
        self._drained = asyncio.Event()  # set: nothing queued and nothing being sent
        self._drained.set()
        self._sending = False
        self._sender: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Start listening and the sender in the background (idempotent)."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen_forever(), name="kiiaren-pg-listen"
            )
        self._start_sender()

    def _start_sender(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(
                self._send_forever(), name="kiiaren-pg-notify"
            )

    def notify(self, events: Sequence[EventEnvelope]) -> bool:
        """Queue the notifications of ``events`` for the sender task; never waits.

        Returns True when the sender was idle and has just been woken: a caller about to do
        long work without yielding (a large local fan-out) should yield once first, so the
        NOTIFY goes on the wire before that work rather than after it. Failures to send are
        logged by the sender (the other processes' poll catches up).
        """
        payloads = notification_payloads(events, self._origin)
        if not payloads:
            return False
        self._queued.extend(payloads)
        if len(self._queued) > _MAX_QUEUED:
            dropped = len(self._queued) - _MAX_QUEUED
            del self._queued[:dropped]
            logger.warning("NOTIFY queue full; dropped the %d oldest notifications", dropped)
        self._drained.clear()
        idle = not self._sending and not self._wakeup.is_set()
        self._wakeup.set()
        self._start_sender()
        return idle

    async def flush(self) -> None:
        """Wait until everything queued so far was sent (or failed to send)."""
        if self._sender is not None and not self._sender.done():
            await self._drained.wait()

    async def _send_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self._sending = True
            try:
                while self._queued:
                    batch, self._queued = self._queued, []
                    await self._send(batch)
            finally:
                self._sending = False
            if not self._wakeup.is_set():
                self._drained.set()

    async def _send(self, batch: list[str]) -> None:
        try:
            if self._send_conn is None or self._send_conn.closed:
                self._send_conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                )
            for start in range(0, len(batch), _BATCH_STATEMENTS):
                chunk = batch[start : start + _BATCH_STATEMENTS]
                await self._send_conn.execute(_NOTIFY_STATEMENTS[len(chunk)], chunk)
        except (psycopg.Error, OSError) as error:
            logger.warning(
                "NOTIFY of %d notifications failed (%s); other processes will catch up by polling",
                len(batch),
                error,
            )
            await self._close_send()

    async def _close_send(self) -> None:
        if self._send_conn is not None:
            await self._send_conn.close()
            self._send_conn = None

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                self._listen_conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                )
                await self._listen_conn.execute(f"LISTEN {CHANNEL}")
                self.connected.set()
                delay = 0.1
                await self._on_reconnect()  # anything committed while we were away
                async for notice in self._listen_conn.notifies():
                    await self._dispatch(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("LISTEN connection lost; reconnecting in %.1fs", delay)
            finally:
                self.connected.clear()
                if self._listen_conn is not None:
                    await self._listen_conn.close()
                    self._listen_conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            if "e" in message:
                if message.get("o") != self._origin:
                    await self._on_ephemeral(message["e"])
            else:
                carried = [parse_event(data) for data in message.get("d", ())]
                await self._on_wake(str(message["w"]), int(message["s"]), carried)
        except Exception:
            logger.exception("bad or failed notification")

    async def drop_listen_connection(self) -> None:
        """Close the LISTEN connection (it reconnects); used to prove nothing is lost."""
        if self._listen_conn is not None:
            await self._listen_conn.close()

    async def aclose(self) -> None:
        """Send what is queued (waiting up to a few seconds), stop, close both connections."""
        try:
            async with asyncio.timeout(_FLUSH_SECONDS):
                await self.flush()
        except TimeoutError:
            logger.warning("closing with %d notifications not sent", len(self._queued))
        for task in (self._listener, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._close_send()

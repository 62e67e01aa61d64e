"""Child processes of ``bench.realtime``: bare ``websockets`` baselines and subscriber clients.

``python -m bench._ws_baselines <role> [options]``; every role prints one JSON line on stdout
when it is ready and exits when its stdin closes (or on SIGTERM).

* ``broadcast``: a bare ``websockets`` server. A connection to ``/publish`` is the trigger:
  each text message it sends is passed to ``websockets.broadcast`` for every other connection
  (each of which is greeted with ``{"type":"ready"}`` once it is registered).
* ``notify``: the same server, but the trigger is a PostgreSQL ``LISTEN`` connection: each
  notification's payload is broadcast (the raw INSERT + NOTIFY -> LISTEN -> broadcast path).
* ``subscribers``: opens ``--count`` WebSocket connections to a KIIAREN server (authenticated
  with the ``bearer.`` subprotocol, subscribed to ``message.created`` of one workspace) or to
  a bare server, prints ``{"ready": count}``, and stamps each event frame with
  ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine, so the
  writer in another process can subtract its own send time). On the stdin line
  ``report <n>`` it waits (bounded) until every connection holds ``n`` events, then prints
  ``{"times": {key: [t, ...]}, "duplicates": d, "closed": c, "frame_bytes": b}``. The key
  of an event is marked in its message body (:func:`event_key`); the writer makes it unique.

Servers run on uvloop when it is installed, like uvicorn, so the baselines and the server
under test share an event loop implementation. Every process raises its open-files soft limit
to the hard limit (idle-connection runs hold thousands of sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

READY_FRAME = '{"type":"ready"}'
PUBLISH_PATH = "/publish"
REPORT_TIMEOUT_SECONDS = 15.0
CONNECT_CONCURRENCY = 32
CONNECT_ATTEMPTS = 10


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the new value."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


KEY_MARK = "#k"


def event_key(text: str) -> str | None:
    """The key in an event frame (``None`` for other frames): the text between ``#k`` and
    the next ``#``, which the writer puts in each message body. A substring scan, not a JSON
    parse, keeps the client side cheap at a thousand subscribers and works whatever wraps the
    body (a Quill delta in a JSON string, a PocketBase record)."""
    start = text.find(KEY_MARK)
    if start < 0:
        return None
    start += len(KEY_MARK)
    end = text.find("#", start)
    return text[start:end] if end > 0 else None


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin, then ``None`` at its end or on SIGTERM. A daemon thread reads them:
    an executor thread blocked on a read would hold up the event loop's shutdown."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    loop.add_signal_handler(signal.SIGTERM, lines.put_nowait, None)
    return lines


async def _until_stdin_closes() -> None:
    """Return when the parent closes our stdin or sends SIGTERM."""
    lines = _stdin_lines()
    while await lines.get() is not None:
        pass


# --- bare servers ---------------------------------------------------------------------------


async def _serve_bare(
    port: int, feed: Callable[[set[ServerConnection]], Coroutine[Any, Any, None]]
) -> None:
    subscribers: set[ServerConnection] = set()

    async def handler(connection: ServerConnection) -> None:
        if connection.request is not None and connection.request.path == PUBLISH_PATH:
            with contextlib.suppress(ConnectionClosed):
                async for message in connection:
                    broadcast(subscribers, message)
            return
        subscribers.add(connection)
        try:
            await connection.send(READY_FRAME)
            await connection.wait_closed()
        finally:
            subscribers.discard(connection)

    # No compression and the default 20 s pings: what the KIIAREN server does too.
    async with serve(handler, "127.0.0.1", port, compression=None) as server:
        feeding = asyncio.create_task(feed(subscribers))
        bound = next(iter(server.sockets)).getsockname()[1]
        _emit({"port": bound})
        await _until_stdin_closes()
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding


async def _no_feed(subscribers: set[ServerConnection]) -> None:
    await asyncio.Event().wait()


def _notify_feed(
    conninfo: str, channel: str
) -> Callable[[set[ServerConnection]], Coroutine[Any, Any, None]]:
    async def feed(subscribers: set[ServerConnection]) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {channel}")
            async for notification in conn.notifies():
                broadcast(subscribers, notification.payload)

    return feed


# --- subscriber clients ---------------------------------------------------------------------


class _Subscribers:
    """``count`` connections recording ``(key, monotonic receipt time)`` of event frames."""

    def __init__(self, url: str, count: int, token: str | None, workspace_id: str | None) -> None:
        self.url = url
        self.count = count
        self.token = token
        self.workspace_id = workspace_id
        self.received: list[dict[str, float]] = [{} for _ in range(count)]
        self.duplicates = 0
        self.closed = 0
        self.frame_bytes = 0
        self.arrived = asyncio.Event()
        self.retries = 0
        self.connections: list[ClientConnection] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(index: int) -> None:
            async with gate:
                connection = await self._connect()
            self.connections.append(connection)
            self.tasks.append(asyncio.create_task(self._read(connection, self.received[index])))

        await asyncio.gather(*(one(i) for i in range(self.count)))

    async def _connect(self) -> ClientConnection:
        """Open, authenticate and subscribe one socket, backing off like a real client when
        the server sheds load (a connection storm: ``backend_unavailable``/``rate_limited``
        with ``retry_after``, or a socket closed before ``ready``)."""
        subprotocols = None
        if self.token is not None:
            subprotocols = [Subprotocol("kiiaren.v1"), Subprotocol(f"bearer.{self.token}")]
        for attempt in range(CONNECT_ATTEMPTS):
            connection = await connect(
                self.url,
                subprotocols=subprotocols,
                compression=None,
                open_timeout=60,
                ping_interval=None,  # the server pings; answering is automatic
                max_queue=None,
            )
            try:
                ready = json.loads(await connection.recv())
                if ready.get("type") != "ready":
                    raise SystemExit(f"expected a ready frame, got {ready}")
                if self.workspace_id is None or await self._subscribe(connection):
                    return connection
            except ConnectionClosed:
                pass
            await connection.close()
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt) * (0.5 + random.random()))
        raise SystemExit(f"could not subscribe after {CONNECT_ATTEMPTS} attempts")

    async def _subscribe(self, connection: ClientConnection) -> bool:
        """Subscribe (retrying on load shedding); False if the socket should be reopened."""
        subscribe = {
            "type": "subscribe",
            "id": "s",
            "workspace_id": self.workspace_id,
            "types": ["message.created"],
        }
        for _ in range(CONNECT_ATTEMPTS):
            await connection.send(json.dumps(subscribe))
            answer = json.loads(await connection.recv())
            if answer.get("type") == "subscribed":
                return True
            error = answer.get("error") or {}
            if error.get("code") not in ("backend_unavailable", "rate_limited"):
                raise SystemExit(f"subscribe refused: {answer}")
            self.retries += 1
            delay = float(error.get("details", {}).get("retry_after", 1))
            await asyncio.sleep(delay * (0.5 + random.random()))
        return False

    async def _read(self, connection: ClientConnection, received: dict[str, float]) -> None:
        try:
            async for message in connection:
                now = time.monotonic()
                text = message if isinstance(message, str) else message.decode()
                key = event_key(text)
                if key is None:
                    continue
                if not self.frame_bytes:
                    self.frame_bytes = len(text.encode())
                if key in received:
                    self.duplicates += 1
                else:
                    received[key] = now
                    self.arrived.set()
        finally:
            self.closed += 1

    async def report(self, expected: int) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPORT_TIMEOUT_SECONDS):
                while any(len(r) < expected for r in self.received):
                    self.arrived.clear()
                    await self.arrived.wait()
        times: dict[str, list[float]] = defaultdict(list)
        for received in self.received:
            for key, at in received.items():
                times[key].append(at)
            received.clear()
        return {
            "times": times,
            "duplicates": self.duplicates,
            "closed": self.closed,
            "frame_bytes": self.frame_bytes,
        }

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)


async def _subscribers(args: argparse.Namespace) -> None:
    clients = _Subscribers(args.url, args.count, args.token, args.workspace)
    await clients.open()
    _emit({"ready": args.count, "retries": clients.retries})
    lines = _stdin_lines()
    while (line := await lines.get()) is not None:
        command, _, value = line.strip().partition(" ")
        if command == "report":
            _emit(await clients.report(int(value)))
        elif command == "stop":
            break
    await clients.close()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._ws_baselines")
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("broadcast").add_argument("--port", type=int, default=0)
    notify = roles.add_parser("notify")
    notify.add_argument("--port", type=int, default=0)
    notify.add_argument("--conninfo", required=True)
    notify.add_argument("--channel", required=True)
    subs = roles.add_parser("subscribers")
    subs.add_argument("--url", required=True)
    subs.add_argument("--count", type=int, required=True)
    subs.add_argument("--token", help="KIIAREN access token (absent: a bare server)")
    subs.add_argument("--workspace", help="workspace to subscribe to (KIIAREN only)")
    args = parser.parse_args(argv)
    raise_open_files_limit()
    if args.role == "broadcast":
        _run(_serve_bare(args.port, _no_feed))
    elif args.role == "notify":
        _run(_serve_bare(args.port, _notify_feed(args.conninfo, args.channel)))
    else:
        _run(_subscribers(args))


if __name__ == "__main__":
    main(sys.argv[1:])

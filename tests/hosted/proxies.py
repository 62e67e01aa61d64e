"""Loopback proxies that misbehave on purpose, for the hosted client's resilience tests.

:class:`TcpProxy` forwards bytes and can cut every open connection at once (a network
failure under a WebSocket). :class:`FlakyHttpProxy` speaks HTTP/1.1 in front of a real
backend and fails a share of the requests it reads: ``503`` or ``429`` with ``Retry-After``
without forwarding, a connection reset before forwarding (the request is lost), or a reset
after the backend answered (the effect happened, the acknowledgement is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

import httpx

LOOPBACK = "127.0.0.1"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (not a FIN): what a crashed peer or a broken route looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_port``; :meth:`drop` cuts every connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.down = False
        """While set, new connections are reset at once (the route is down)."""
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.down:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            _reset(writer)
            return
        self._open.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        for end in (writer, up_writer):
            self._open.discard(end)
            end.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def drop(self) -> int:
        """Reset every open connection (both sides); returns how many were cut."""
        cut = [w for w in self._open if not w.is_closing()]
        for writer in cut:
            _reset(writer)
        return len(cut) // 2

    async def stop(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class FlakyHttpProxy:
    """HTTP/1.1 (keep-alive) in front of ``backend``; each request read fails with
    probability ``fault_rate`` (kinds weighted as in ``weights``), but no request carrying a
    given ``Idempotency-Key`` fails more than ``max_faults_per_key`` times: the failures are
    transient, so a client that retries correctly always gets through."""

    backend: str
    seed: int = 0
    fault_rate: float = 0.3
    weights: dict[str, float] = field(
        default_factory=lambda: {"503": 1.0, "429": 0.5, "reset_before": 0.5, "reset_after": 1.0}
    )
    max_faults_per_key: int = 2
    counts: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _faults_by_key: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False)
    _server: asyncio.Server | None = None
    _client: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> FlakyHttpProxy:
        self._client = httpx.AsyncClient(base_url=self.backend, timeout=30)
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._client is not None:
            await self._client.aclose()

    def _fault(self, key: str | None) -> str | None:
        if self._rng.random() >= self.fault_rate:
            return None
        if key is not None:
            if self._faults_by_key[key] >= self.max_faults_per_key:
                return None
            self._faults_by_key[key] += 1
        kinds = list(self.weights)
        return self._rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [tuple(line.split(": ", 1)) for line in lines[1:] if ": " in line]
                lowered = {name.lower(): value for name, value in headers}
                body = await reader.readexactly(int(lowered.get("content-length", "0")))
                self.counts["requests"] += 1
                fault = self._fault(lowered.get("idempotency-key"))
                if fault is not None:
                    self.counts[fault] += 1
                if fault == "reset_before":
                    _reset(writer)
                    return
                if fault in ("503", "429"):
                    retry_after = "0" if fault == "503" else "0.01"
                    code = "backend_unavailable" if fault == "503" else "rate_limited"
                    payload = (
                        f'{{"error":{{"code":"{code}","message":"injected","details":{{}}}},'
                        '"request_id":"proxy"}'
                    ).encode()
                    await self._write(writer, int(fault), {"Retry-After": retry_after}, payload)
                    continue
                assert self._client is not None
                forwarded = [(n, v) for n, v in headers if n.lower() not in ("host", "connection")]
                answer = await self._client.request(method, target, headers=forwarded, content=body)
                self.counts["forwarded"] += 1
                if answer.headers.get("idempotent-replayed") == "true":
                    self.counts["replayed"] += 1
                if fault == "reset_after":
                    _reset(writer)
                    return
                kept = {n: v for n, v in answer.headers.items() if n.lower() not in _HOP_BY_HOP}
                await self._write(writer, answer.status_code, kept, answer.content)
        finally:
            if not writer.is_closing():
                writer.close()

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        lines = [f"HTTP/1.1 {status} {httpx.codes.get_reason_phrase(status) or 'Status'}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"Content-Length: {len(body)}", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1") + body)
        await writer.drain()

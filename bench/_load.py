"""The HTTP load generator of the benchmarks, run in its own process.

``python -m bench._load`` reads one :class:`LoadSpec` as JSON on stdin, drives the target
with ``connections`` concurrent clients, each on its own keep-alive HTTP/1.1 connection
sending one request after another (closed loop), warms up for ``warmup`` seconds, then
times ``seconds`` seconds and prints one :class:`LoadResult` as JSON on stdout. Any answer
other than 2xx, a dropped connection or a malformed answer stops the run: it prints
``{"error": ...}`` and exits 1. :func:`run_load` does all that from the benchmark process.

Why a process of its own: a load generator sharing a process (and its GIL) with a server
measures the two together. Why a raw asyncio client instead of httpx: on a 2-vCPU box
httpx itself costs 1.0-1.5 ms of CPU a request (measured against the bare uvicorn endpoint:
~200 req/s where this client drives 2-5k), so it would measure itself; this client costs
0.02-0.05 ms (``--client httpx`` is kept to check that claim: compare the bare-uvicorn
figures and the "load CPU" column of both). Every target is measured with the same client.

With ``idempotency`` set, each request carries a fresh ``Idempotency-Key``
(``<run>-<connection>-<n>``), as the hosted client sends on every mutation.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

__all__ = ["LoadError", "LoadResult", "LoadSpec", "process_cpu_seconds", "run_load"]

ClientKind = Literal["raw", "httpx"]
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One measurement: ``method url+path`` with ``body`` (JSON text) and ``headers``."""

    url: str
    path: str
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    connection_headers: list[dict[str, str]] = field(default_factory=list)
    """Extra headers per connection, cycled (e.g. one ``Authorization`` per user)."""
    method: str = "POST"
    connections: int = 1
    seconds: float = 3.0
    warmup: float = 1.0
    idempotency: bool = False
    client: ClientKind = "raw"
    server_pid: int | None = None
    """A server process (on this machine) whose CPU time over the timed window is reported."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Completed requests in the timed window, its length, and latency percentiles (s)."""

    requests: int
    elapsed: float
    p50: float
    p99: float
    connections: int
    server_cpu: float | None = None
    """CPU seconds the ``server_pid`` process used in the timed window (``None``: not asked)."""
    client_cpu: float = 0.0
    """CPU seconds the load generator itself used in the timed window."""

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def server_cpu_per_request(self) -> float | None:
        """Server CPU seconds per request in the timed window."""
        return None if self.server_cpu is None else self.server_cpu / max(self.requests, 1)

    @property
    def client_cpu_per_request(self) -> float:
        """Load-generator CPU seconds per request (shows when the client is the limit)."""
        return self.client_cpu / max(self.requests, 1)


class LoadError(RuntimeError):
    """The target answered something other than 2xx, or the load process failed."""


# --- the raw HTTP/1.1 client ------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: send a request, await its whole answer.

    Parses just what the benchmark needs (status, ``Content-Length`` or chunked bodies);
    anything else about the answer is checked by the caller's status test.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("the server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            answer = self._parse()
        except ValueError as exc:
            self._waiter.set_exception(exc)
            return
        if answer is not None:
            self._waiter.set_result(answer)

    def _parse(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise ValueError("answer headers too long")
            return None
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length: int | None = None
        chunked = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        start = end + 4
        if chunked:
            return self._parse_chunked(status, start)
        if length is None:
            length = 0 if status in (204, 304) else -1
        if length < 0:
            raise ValueError("answer without Content-Length (cannot keep the connection)")
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        return status, body

    def _parse_chunked(self, status: int, start: int) -> tuple[int, bytes] | None:
        buffer, position, body = self._buffer, start, bytearray()
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            chunk_start = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                del buffer[: trailer_end + 4]
                return status, bytes(body)
            if len(buffer) < chunk_start + size + 2:
                return None
            body += buffer[chunk_start : chunk_start + size]
            position = chunk_start + size + 2

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _request_bytes(spec: LoadSpec, host: str, extra: Mapping[str, str]) -> bytes:
    body = spec.body.encode()
    lines = [f"{spec.method} {spec.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in {**spec.headers, **extra}.items()]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _own_headers(spec: LoadSpec, index: int) -> dict[str, str]:
    if not spec.connection_headers:
        return {}
    return spec.connection_headers[index % len(spec.connection_headers)]


# --- the closed loop ------------------------------------------------------------------------


class _FailedError(Exception):
    pass


async def _drive(spec: LoadSpec) -> LoadResult:
    host_port = spec.url.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.partition(":")
    loop = asyncio.get_running_loop()
    run_id = secrets.token_hex(4)
    start = time.perf_counter()
    measure_from = start + spec.warmup
    deadline = measure_from + spec.seconds
    latencies: list[list[float]] = [[] for _ in range(spec.connections)]
    last_end = [measure_from] * spec.connections

    def check(status: int, body: bytes) -> None:
        if not 200 <= status < 300:
            text = body[:500].decode(errors="replace")
            raise _FailedError(f"{spec.method} {spec.path} answered {status}: {text}")

    async def raw_worker(index: int) -> None:
        _, connection = await loop.create_connection(_Connection, host, int(port or 80))
        own = _own_headers(spec, index)
        fixed = None if spec.idempotency else _request_bytes(spec, host_port, own)
        mine, n = latencies[index], 0
        try:
            while (before := time.perf_counter()) < deadline:
                n += 1
                data = fixed or _request_bytes(
                    spec, host_port, {**own, "Idempotency-Key": f"{run_id}-{index}-{n}"}
                )
                status, body = await connection.request(data)
                check(status, body)
                after = time.perf_counter()
                if before >= measure_from:
                    mine.append(after - before)
                    last_end[index] = after
        finally:
            connection.close()

    async def httpx_worker(index: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {**spec.headers, **_own_headers(spec, index)}
        headers["Content-Type"] = "application/json"
        content = spec.body.encode()
        mine, n = latencies[index], 0
        async with httpx.AsyncClient(base_url=spec.url, limits=limits, timeout=30) as client:
            while (before := time.perf_counter()) < deadline:
                n += 1
                if spec.idempotency:
                    headers["Idempotency-Key"] = f"{run_id}-{index}-{n}"
                response = await client.request(
                    spec.method, spec.path, content=content, headers=headers
                )
                check(response.status_code, response.content)
                after = time.perf_counter()
                if before >= measure_from:
                    mine.append(after - before)
                    last_end[index] = after

    cpu_at_start: list[float] = []

    async def sample_at_start() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        server = process_cpu_seconds(spec.server_pid) if spec.server_pid else 0.0
        cpu_at_start.extend([server, _own_cpu()])

    worker = raw_worker if spec.client == "raw" else httpx_worker
    sampler = asyncio.ensure_future(sample_at_start())
    await asyncio.gather(*(worker(index) for index in range(spec.connections)))
    await sampler
    server_cpu = process_cpu_seconds(spec.server_pid) - cpu_at_start[0] if spec.server_pid else None
    client_cpu = _own_cpu() - cpu_at_start[1]
    merged = sorted(value for values in latencies for value in values)
    if not merged:
        raise _FailedError("no request completed in the timed window")
    return LoadResult(
        requests=len(merged),
        elapsed=max(last_end) - measure_from,
        p50=merged[len(merged) // 2],
        p99=merged[min(len(merged) - 1, int(0.99 * len(merged)))],
        connections=spec.connections,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
    )


def _main() -> int:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
    try:
        result = runner(_drive(spec))
    except (_FailedError, OSError, ValueError) as exc:
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    return 0


# --- from the benchmark process -------------------------------------------------------------


def run_load(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` in a fresh ``python -m bench._load`` process and return its result.

    Raises:
        LoadError: a non-2xx answer, a connection error, or the process failed; the message
            says which and quotes the answer.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench._load"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=spec.warmup + spec.seconds + 120,
    )
    lines = done.stdout.strip().splitlines()
    outcome: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "error" in outcome or not outcome:
        reason = outcome.get("error") or done.stderr.strip()[-2000:] or f"exit {done.returncode}"
        raise LoadError(f"load on {spec.url}{spec.path} failed: {reason}")
    return LoadResult(**outcome)


if __name__ == "__main__":
    sys.exit(_main())

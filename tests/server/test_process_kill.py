"""Several server processes on one PostgreSQL, one of them killed (SIGKILL) mid-run.

QUALITY.md, "Realtime delivery": writers on random processes, subscribers spread over them,
one process killed mid-run: every subscriber ends with the full contiguous sequence.

Three bundled servers (``python -m selfhost_server serve``, one process each) share one
database. Writers post application events to a random process each time and retry a request
that met the dead process on another one with the same ``Idempotency-Key``. Subscribers
start spread over the processes from seq 0; a subscriber whose socket dies reconnects to
another process and resumes from its last seq (what a client behind a load balancer does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from bench._serve import ServerProcess, bootstrap
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from tests.server._server_process import server_process

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

logger = logging.getLogger(__name__)

PROCESSES = 3
SUBSCRIBERS_PER_PROCESS = 2
WRITERS = 4
EVENTS_PER_WRITER = 40
KILL_AFTER = 50
"""Events acknowledged (all writers together) before a process is killed."""
CATCH_UP = 30.0
"""Seconds the subscribers get, after the last write, to reach the last seq."""


@dataclass
class Cluster:
    servers: list[ServerProcess]
    dead: set[int] = field(default_factory=set)

    def alive(self) -> list[ServerProcess]:
        return [server for index, server in enumerate(self.servers) if index not in self.dead]

    def kill(self, index: int) -> None:
        self.dead.add(index)
        self.servers[index].process.kill()
        self.servers[index].process.wait()


@contextlib.contextmanager
def cluster(database_url: str, files: Path) -> Iterator[Cluster]:
    """The servers, started side by side (each start is seconds of imports); all stopped
    at the end, also when one failed to start. The database must be migrated already."""
    managers = [server_process(database_url, files / str(index)) for index in range(PROCESSES)]
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(PROCESSES) as pool:
            started = [pool.submit(manager.__enter__) for manager in managers]
        servers, errors = [], []
        for manager, future in zip(managers, started, strict=True):
            try:
                servers.append(future.result())
            except Exception as exc:
                errors.append(exc)
            else:
                stack.push(manager.__exit__)
        if errors:
            raise errors[0]
        yield Cluster(servers)


@dataclass
class Subscriber:
    """What one subscriber received: every seq, in order, and how often it reconnected."""

    name: str
    seqs: list[int] = field(default_factory=list)
    reconnects: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0


async def subscribe_forever(
    subscriber: Subscriber,
    first: int,
    cluster: Cluster,
    token: str,
    workspace_id: str,
    stop: anyio.Event,
) -> None:
    """Receive every event of the workspace from seq 1; on a dead socket, reconnect to a
    live process and resume after the last seq received."""
    index = first
    epoch: str | None = None
    while not stop.is_set():
        server = cluster.servers[index]
        url = server.url.replace("http://", "ws://") + "/v1/events"
        protocols = [Subprotocol("kiiaren.v1"), Subprotocol(f"bearer.{token}")]
        try:
            async with connect(url, subprotocols=protocols, open_timeout=5, close_timeout=1) as ws:
                frame = json.loads(await ws.recv())
                assert frame["type"] == "ready", frame
                request: dict[str, Any] = {
                    "type": "subscribe",
                    "id": "s",
                    "workspace_id": workspace_id,
                    "since": subscriber.last,
                }
                if epoch is not None:
                    request["epoch"] = epoch
                await ws.send(json.dumps(request))
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "subscribed":
                        epoch = frame["epoch"]
                    elif frame["type"] == "event":
                        seq = frame["event"]["seq"]
                        if seq is None:
                            continue  # presence, typing: ephemeral
                        if seq != subscriber.last + 1:
                            subscriber.problems.append(f"seq {seq} after {subscriber.last}")
                        subscriber.seqs.append(seq)
                    elif frame["type"] in ("not_recovered", "unsubscribed", "error"):
                        subscriber.problems.append(json.dumps(frame))
                        return
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            pass
        if stop.is_set():
            return
        subscriber.reconnects += 1
        index = cluster.servers.index(random.choice(cluster.alive()))
        await anyio.sleep(0.05)


@dataclass
class Writes:
    acknowledged: int = 0
    answer_lost: list[str] = field(default_factory=list)
    """Keys refused as ``answer_unavailable``: carried out by the killed process after its
    commit, answer lost with it (checked in the database: posted once)."""
    failures: list[str] = field(default_factory=list)


def _refusal(response: httpx.Response) -> str | None:
    """The reason of an ``idempotency_conflict`` answer, else None."""
    if response.status_code != 409:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(response.json()["error"]["details"]["reason"])
    return None


async def writer(
    http: httpx.AsyncClient,
    cluster: Cluster,
    token: str,
    workspace_id: str,
    name: str,
    writes: Writes,
) -> None:
    """Post events to random live processes; a request that met a dead process is sent
    again, same key, to another one."""
    headers = {"Authorization": f"Bearer {token}"}
    for number in range(EVENTS_PER_WRITER):
        body = {"type": "test.ping", "payload": {"writer": name, "n": number}}
        key = {**headers, "Idempotency-Key": f"{name}-{number}"}
        for _ in range(40):
            server = random.choice(cluster.alive())
            try:
                response = await http.post(
                    f"{server.url}/v1/workspaces/{workspace_id}/events", json=body, headers=key
                )
            except httpx.TransportError:
                continue
            if response.status_code == 201:
                writes.acknowledged += 1
                break
            reason = _refusal(response)
            if reason == "in_progress":
                # The killed process committed this key's event but had not stored its
                # answer: wait until the server stops expecting it (answer_unavailable).
                await anyio.sleep(0.5)
                continue
            if reason == "answer_unavailable":
                writes.answer_lost.append(key["Idempotency-Key"])
                break
            writes.failures.append(f"{response.status_code} {response.text[:200]}")
            break
        else:
            writes.failures.append(f"{name}-{number}: no process answered")


async def test_one_server_process_killed_mid_run(postgres_url: str, tmp_path: Path) -> None:
    from kiiaren_selfhost import migrate

    await migrate(postgres_url)
    with cluster(postgres_url, tmp_path / "files") as servers:
        boot = await bootstrap(servers.servers[0].url)
        token = boot.tokens[0]
        subscribers = [
            Subscriber(f"s{index}") for index in range(PROCESSES * SUBSCRIBERS_PER_PROCESS)
        ]
        writes = Writes()
        stop = anyio.Event()
        async with (
            httpx.AsyncClient(timeout=10) as http,
            anyio.create_task_group() as tasks,
        ):
            for index, subscriber in enumerate(subscribers):
                tasks.start_soon(
                    subscribe_forever,
                    subscriber,
                    index % PROCESSES,
                    servers,
                    token,
                    boot.workspace_id,
                    stop,
                )
            async with anyio.create_task_group() as writing:
                for index in range(WRITERS):
                    writing.start_soon(
                        writer, http, servers, token, boot.workspace_id, f"w{index}", writes
                    )
                with anyio.fail_after(60):
                    while writes.acknowledged < KILL_AFTER:  # noqa: ASYNC110 - shared counter
                        await anyio.sleep(0.01)
                victim = random.randrange(PROCESSES)
                await anyio.to_thread.run_sync(servers.kill, victim)
            final = await last_seq(postgres_url, boot.workspace_id)
            with anyio.fail_after(CATCH_UP):
                while any(s.last < final for s in subscribers):  # noqa: ASYNC110 - polling
                    await anyio.sleep(0.05)
            stop.set()
            tasks.cancel_scope.cancel()
    logger.info(  # shown on failure
        "acknowledged %d, answer lost %d, final seq %d, reconnects %s",
        writes.acknowledged,
        len(writes.answer_lost),
        final,
        [subscriber.reconnects for subscriber in subscribers],
    )
    assert not writes.failures, writes.failures[:5]
    # Every key ends acknowledged, or carried out with its answer lost (at most one request
    # per writer was past its commit on the killed process); each event was posted once.
    assert writes.acknowledged + len(writes.answer_lost) == WRITERS * EVENTS_PER_WRITER
    assert len(writes.answer_lost) <= WRITERS, writes.answer_lost
    posted = await posted_pings(postgres_url, boot.workspace_id)
    expected = Counter(
        (f"w{index}", number) for index in range(WRITERS) for number in range(EVENTS_PER_WRITER)
    )
    assert posted == expected, posted - expected or expected - posted
    for subscriber in subscribers:
        assert not subscriber.problems, (subscriber.name, subscriber.problems[:5])
        assert subscriber.seqs == list(range(1, final + 1)), subscriber.name
    # The victim's subscribers moved to another process.
    assert sum(subscriber.reconnects for subscriber in subscribers) >= SUBSCRIBERS_PER_PROCESS


async def posted_pings(database_url: str, workspace_id: str) -> Counter[tuple[str, int]]:
    """How many times each writer's event ``(writer, n)`` is in the event log."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cursor = await conn.execute(
            "SELECT payload FROM events WHERE workspace_id = %s AND type = 'test.ping'",
            (workspace_id,),
        )
        rows = await cursor.fetchall()
    pings: Counter[tuple[str, int]] = Counter()
    for (payload,) in rows:
        data = payload if isinstance(payload, dict) else json.loads(payload)
        inner = data.get("payload", data)
        pings[(str(inner["writer"]), int(inner["n"]))] += 1
    return pings


async def last_seq(database_url: str, workspace_id: str) -> int:
    """The workspace's last seq, read from the database itself."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cursor = await conn.execute(
            "SELECT last_seq FROM event_streams WHERE workspace_id = %s", (workspace_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])

"""Database faults under load: PostgreSQL killed with SIGKILL while clients create messages.

QUALITY.md, "Durability and idempotency": every acknowledged create survives the restart,
retries with the same ``Idempotency-Key`` leave exactly one row per key, the workspace's event
``seq`` stays contiguous; during the outage every answer is 503 with ``Retry-After`` within a
bounded time (never a 500, never a hang), and the same server process serves again once the
database is back.

The database is a private cluster (:mod:`tests._pg_instance`), never the shared one. The
server is the bundled one in a subprocess (``python -m selfhost_server serve``, as deployed).
Writers: raw httpx clients that choose their keys and retry each one until it is
acknowledged, and the hosted provider (its own keys and retry policy). A reader and a
``/ready`` probe watch the outage.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from bench._serve import Bootstrap, ServerProcess, bootstrap, message_body

from kiiaren_core.errors import IdempotencyConflictError, KiiarenError
from kiiaren_hosted import HostedProvider
from tests._pg_instance import PostgresInstance, private_postgres, unavailable_reason
from tests.server._server_process import server_process

pytestmark = pytest.mark.anyio

logger = logging.getLogger(__name__)

LIVENESS_BOUND = 10.0
"""Seconds any single answer may take, outage or not (a liveness bound, not performance)."""
KEY_GIVE_UP = 30.0
"""Seconds a writer keeps retrying one key before the test fails."""


@pytest.fixture
def private_pg() -> Iterator[PostgresInstance]:
    """A private PostgreSQL cluster this test may kill (skips where none can run)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"database fault tests need a private PostgreSQL: {reason}")
    with private_postgres() as instance:
        yield instance


@contextlib.asynccontextmanager
async def running_server(
    pg: PostgresInstance, files: Path, env: dict[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """The bundled server in a subprocess on a fresh, migrated database of ``pg``, ready."""
    from kiiaren_selfhost import migrate

    database_url = pg.create_database("kiiaren")
    await migrate(database_url)
    with server_process(database_url, files, env) as server:
        yield server


# --- what the clients saw -------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer (or transport failure) a client got."""

    who: str
    status: int | None  # None: the request failed at the transport level
    seconds: float
    retry_after: str | None = None
    code: str | None = None
    phase: str = ""


@dataclass
class Ledger:
    """Everything the clients observed, for the assertions at the end."""

    phase: str = "before"
    answers: list[Answer] = field(default_factory=list)
    acknowledged: dict[str, str] = field(default_factory=dict)  # marker -> message id
    attempted: set[str] = field(default_factory=set)  # every marker sent at least once
    gave_up: list[str] = field(default_factory=list)
    answer_lost: list[str] = field(default_factory=list)  # carried out, answer lost

    def record(self, who: str, response: httpx.Response | None, seconds: float) -> None:
        if response is None:
            self.answers.append(Answer(who, None, seconds, phase=self.phase))
            return
        code = None
        if response.status_code >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = response.json()["error"]["code"]
        self.answers.append(
            Answer(
                who,
                response.status_code,
                seconds,
                response.headers.get("Retry-After"),
                code,
                self.phase,
            )
        )

    def acks(self, prefix: str) -> int:
        return sum(1 for marker in self.acknowledged if marker.startswith(prefix))


async def _timed(
    ledger: Ledger, who: str, send: Any
) -> tuple[httpx.Response | None, BaseException | None]:
    started = time.monotonic()
    try:
        response: httpx.Response = await send()
    except httpx.TransportError as exc:
        ledger.record(who, None, time.monotonic() - started)
        return None, exc
    ledger.record(who, response, time.monotonic() - started)
    return response, None


def _answer_unavailable(response: httpx.Response | None) -> bool:
    """``409 answer_unavailable``: the create committed, but its answer was lost (only when
    a COMMIT's acknowledgement died with the database: rare, and never a second row)."""
    if response is None or response.status_code != 409:
        return False
    with contextlib.suppress(ValueError, KeyError, TypeError):
        error = response.json()["error"]
        return bool(error["code"] == "idempotency_conflict") and bool(
            error["details"].get("reason") == "answer_unavailable"
        )
    return False


async def raw_writer(
    http: httpx.AsyncClient,
    boot: Bootstrap,
    ledger: Ledger,
    run: str,
    index: int,
    stop: anyio.Event,
) -> None:
    """Create messages one key at a time; retry each key (same key, same body) until it is
    acknowledged with 201, whatever the answers in between."""
    path = f"/v1/workspaces/{boot.workspace_id}/messages"
    auth = {"Authorization": f"Bearer {boot.tokens[0]}"}
    who = f"raw-{index}"
    number = 0
    while not stop.is_set():
        marker = f"{run}-{who}-{number}"
        number += 1
        body = {"body": message_body(marker), "channel_id": boot.channel_id}
        headers = {**auth, "Idempotency-Key": f"{marker}-key"}
        ledger.attempted.add(marker)
        deadline = time.monotonic() + KEY_GIVE_UP
        while True:
            response, _ = await _timed(
                ledger,
                who,
                lambda: http.post(path, json=body, headers=headers),  # noqa: B023
            )
            if response is not None and response.status_code == 201:
                ledger.acknowledged[marker] = response.json()["id"]
                break
            if time.monotonic() > deadline:
                ledger.gave_up.append(marker)
                return
            if _answer_unavailable(response):
                ledger.answer_lost.append(marker)  # checked: its row exists, once
                break
            # Sooner than Retry-After (1 s) on purpose: more requests land in the outage.
            await anyio.sleep(0.1)


async def hosted_writer(
    base_url: str, boot: Bootstrap, ledger: Ledger, run: str, stop: anyio.Event
) -> None:
    """Create messages through the hosted provider, which keys each call and retries it
    itself (honouring Retry-After); enough attempts to outlast the outage."""
    async with HostedProvider(
        base_url=base_url,
        max_attempts=10,
        deadline_seconds=KEY_GIVE_UP,
        read_timeout_seconds=LIVENESS_BOUND,
    ) as provider:
        view = provider.with_session(boot.tokens[0])
        number = 0
        while not stop.is_set():
            marker = f"{run}-hosted-{number}"
            number += 1
            ledger.attempted.add(marker)
            started = time.monotonic()
            try:
                message = await view.persistence.message.create(
                    boot.workspace_id, body=message_body(marker), channel_id=boot.channel_id
                )
            except KiiarenError as exc:
                ledger.answers.append(
                    Answer("hosted", exc.http_status, time.monotonic() - started, code=exc.code)
                )
                if isinstance(exc, IdempotencyConflictError) and (
                    exc.details.get("reason") == "answer_unavailable"
                ):
                    ledger.answer_lost.append(marker)  # as for raw writers
                    continue
                ledger.gave_up.append(marker)
                return
            ledger.answers.append(Answer("hosted", 201, time.monotonic() - started))
            ledger.acknowledged[marker] = message.id


async def reader(
    http: httpx.AsyncClient, boot: Bootstrap, ledger: Ledger, stop: anyio.Event
) -> None:
    """A read in a loop: answered 200, or 503 during the outage."""
    path = f"/v1/workspaces/{boot.workspace_id}/channels"
    headers = {"Authorization": f"Bearer {boot.tokens[0]}"}
    while not stop.is_set():
        await _timed(ledger, "reader", lambda: http.get(path, headers=headers))
        await anyio.sleep(0.05)


async def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` (state the writer tasks update; no event to wait on)."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polling shared state
            await anyio.sleep(0.02)


async def ready_status(http: httpx.AsyncClient, ledger: Ledger) -> httpx.Response | None:
    response, _ = await _timed(ledger, "ready", lambda: http.get("/ready"))
    return response


# --- the database afterwards ----------------------------------------------------------------


@dataclass
class Stored:
    bodies: Counter[str]  # message body -> rows
    ids_by_body: dict[str, str]
    message_ids: set[str]
    seqs: list[int]
    last_seq: int
    created_events: Counter[str]  # message id -> message.created events


def read_back(pg: PostgresInstance, workspace_id: str) -> Stored:
    import psycopg

    with psycopg.connect(pg.conninfo("kiiaren")) as conn:
        rows = conn.execute(
            "SELECT id::text, body FROM messages WHERE workspace_id = %s", (workspace_id,)
        ).fetchall()
        events = conn.execute(
            "SELECT seq, type, payload FROM events WHERE workspace_id = %s ORDER BY seq",
            (workspace_id,),
        ).fetchall()
        stream = conn.execute(
            "SELECT last_seq FROM event_streams WHERE workspace_id = %s", (workspace_id,)
        ).fetchone()
    created: Counter[str] = Counter()
    for _, kind, payload in events:
        if kind == "message.created":
            data = payload if isinstance(payload, dict) else json.loads(payload)
            created[data["message_id"]] += 1
    return Stored(
        bodies=Counter(body for _, body in rows),
        ids_by_body={body: message_id for message_id, body in rows},
        message_ids={message_id for message_id, _ in rows},
        seqs=[seq for seq, _, _ in events],
        last_seq=stream[0] if stream else 0,
        created_events=created,
    )


# --- the test -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    raw_writers: int
    before_acks: int  # acknowledged creates per writer before the crash
    outage_seconds: float  # how long the database stays down
    after_acks: int  # acknowledged creates per writer after the restart
    crashes: int = 1


async def crash_and_recover(
    private_pg: PostgresInstance, tmp_path: Path, scenario: Scenario
) -> None:
    run = secrets.token_hex(3)
    ledger = Ledger()
    async with running_server(private_pg, tmp_path / "files") as server:
        boot = await bootstrap(server.url)
        limits = httpx.Limits(max_connections=scenario.raw_writers + 4)
        timeout = httpx.Timeout(LIVENESS_BOUND)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=timeout, limits=limits) as http,
            anyio.create_task_group() as tasks,
        ):
            stop = anyio.Event()
            writers = [f"raw-{index}" for index in range(scenario.raw_writers)] + ["hosted"]
            for index in range(scenario.raw_writers):
                tasks.start_soon(raw_writer, http, boot, ledger, run, index, stop)
            tasks.start_soon(hosted_writer, server.url, boot, ledger, run, stop)
            tasks.start_soon(reader, http, boot, ledger, stop)

            def each_writer_has(count: int) -> bool:
                return bool(ledger.gave_up) or all(
                    ledger.acks(f"{run}-{who}-") >= count for who in writers
                )

            target = scenario.before_acks
            await wait_for(functools.partial(each_writer_has, target), 60)
            for _ in range(scenario.crashes):
                ledger.phase = "outage"
                await anyio.to_thread.run_sync(private_pg.crash)
                crashed_at = time.monotonic()
                not_ready = 0
                while time.monotonic() - crashed_at < scenario.outage_seconds:
                    answer = await ready_status(http, ledger)
                    if answer is not None and answer.status_code == 503:
                        not_ready += 1
                    await anyio.sleep(0.1)
                assert not_ready > 0, "/ready never answered 503 while the database was down"
                ledger.phase = "recovery"
                await anyio.to_thread.run_sync(private_pg.start)
                restarted_at = time.monotonic()
                while True:
                    answer = await ready_status(http, ledger)
                    if answer is not None and answer.status_code == 200:
                        break
                    assert time.monotonic() - restarted_at < 30, "/ready stayed 503"
                    await anyio.sleep(0.05)
                ledger.phase = "after"
                target = max(ledger.acks(f"{run}-{who}-") for who in writers)
                target += scenario.after_acks
                await wait_for(functools.partial(each_writer_has, target), 60)
            stop.set()
        assert server.process.poll() is None, "the server process died"
    stored = read_back(private_pg, boot.workspace_id)
    check(ledger, stored, writers=scenario.raw_writers + 1, crashes=scenario.crashes)


def check(ledger: Ledger, stored: Stored, *, writers: int, crashes: int) -> None:
    # Liveness: no request outlasted the bound, none failed at the transport level.
    slowest = max(answer.seconds for answer in ledger.answers if answer.who != "hosted")
    assert slowest < LIVENESS_BOUND, f"an answer took {slowest:.1f} s"
    transport = [answer for answer in ledger.answers if answer.status is None]
    assert not transport, f"transport failures (the server must answer): {transport[:5]}"
    # Only success, or 503 with Retry-After; never a 500 or any other refusal (but a
    # duplicate told to wait for, or that lost, the answer of a create that committed).
    statuses = Counter((answer.who.split("-")[0], answer.status) for answer in ledger.answers)
    unexpected = [
        answer
        for answer in ledger.answers
        if answer.status not in (200, 201, 503)
        and not (answer.status == 409 and answer.code == "idempotency_conflict")
    ]
    assert not unexpected, f"unexpected answers {statuses}: {unexpected[:10]}"
    # A lost answer needs a COMMIT acknowledgement lost at the crash: at most one request
    # per writer was committing then.
    assert len(ledger.answer_lost) <= writers * crashes, ledger.answer_lost
    no_retry_after = [
        answer
        for answer in ledger.answers
        if answer.status == 503 and answer.who != "hosted" and not answer.retry_after
    ]
    assert not no_retry_after, f"503 without Retry-After: {no_retry_after[:5]}"
    outage = [answer for answer in ledger.answers if answer.phase == "outage"]
    assert any(answer.status == 503 for answer in outage), "no request met the outage"
    assert not ledger.gave_up, f"keys never acknowledged: {ledger.gave_up}"

    # Durability: every acknowledged create is there, with the id it was acknowledged with.
    for marker, message_id in ledger.acknowledged.items():
        body = message_body(marker)
        assert stored.bodies[body] == 1, f"{marker}: {stored.bodies[body]} rows"
        assert stored.ids_by_body[body] == message_id
    # A key refused as answer_unavailable was carried out: its row is there, once.
    for marker in ledger.answer_lost:
        assert stored.bodies[message_body(marker)] == 1, f"{marker}: answer lost, no row"
    # Exactly once: no marker (attempted by anyone) has two rows; nothing unknown was stored.
    ours = {message_body(marker) for marker in ledger.attempted}
    duplicated = {body: count for body, count in stored.bodies.items() if count > 1}
    assert not duplicated, f"duplicate rows: {duplicated}"
    assert set(stored.bodies) <= ours
    # The event log: seq 1..n without a gap, one message.created per message row.
    assert stored.seqs == list(range(1, len(stored.seqs) + 1))
    assert stored.last_seq == len(stored.seqs)
    assert set(stored.created_events) == stored.message_ids
    assert set(stored.created_events.values()) == {1}
    logger.info(  # shown on failure: what the run went through
        f"answers {dict(statuses)}; slowest {slowest:.2f} s; acknowledged "
        f"{len(ledger.acknowledged)}; answer lost {len(ledger.answer_lost)}; "
        f"events {len(stored.seqs)}"
    )


@pytest.mark.postgres
async def test_postgres_killed_during_concurrent_creates(
    private_pg: PostgresInstance, tmp_path: Path
) -> None:
    """SIGKILL the postmaster while 6 raw writers and the hosted client create messages;
    restart it on the same data directory after ~1.5 s; the same server recovers."""
    await crash_and_recover(
        private_pg,
        tmp_path,
        Scenario(raw_writers=6, before_acks=5, outage_seconds=1.5, after_acks=5),
    )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(400)  # ~100 s alone on a busy 2-core machine
async def test_postgres_killed_repeatedly_under_heavier_load(
    private_pg: PostgresInstance, tmp_path: Path
) -> None:
    """Three crashes in a row, 16 raw writers, longer outages."""
    await crash_and_recover(
        private_pg,
        tmp_path,
        Scenario(raw_writers=16, before_acks=20, outage_seconds=4.0, after_acks=20, crashes=3),
    )


def _blocked_on_a_lock(pg: PostgresInstance) -> bool:
    import psycopg

    with psycopg.connect(pg.conninfo("kiiaren"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'kiiaren-selfhost' AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.postgres
async def test_a_key_interrupted_by_the_outage_can_be_retried(
    private_pg: PostgresInstance, tmp_path: Path
) -> None:
    """A create whose key is claimed but whose transaction dies with the database answers
    503 + Retry-After at once; once the database is back, the same key and body create the
    message exactly once.

    Deterministic: the workspace's event-stream row is locked from another connection, so
    the create waits inside its transaction (its key recorded there, uncommitted) when
    PostgreSQL is killed. The key dies with the transaction, so the retry runs at once.
    """
    import psycopg

    async with running_server(private_pg, tmp_path / "files") as server:
        boot = await bootstrap(server.url)
        path = f"/v1/workspaces/{boot.workspace_id}/messages"
        marker = f"interrupted-{secrets.token_hex(3)}"
        body = {"body": message_body(marker), "channel_id": boot.channel_id}
        headers = {"Authorization": f"Bearer {boot.tokens[0]}", "Idempotency-Key": marker}
        async with httpx.AsyncClient(base_url=server.url, timeout=LIVENESS_BOUND) as http:
            locker = psycopg.connect(private_pg.conninfo("kiiaren"))
            try:
                locker.execute(
                    "SELECT 1 FROM event_streams WHERE workspace_id = %s FOR UPDATE",
                    (boot.workspace_id,),
                )
                answers: list[httpx.Response] = []
                started = time.monotonic()
                async with anyio.create_task_group() as tasks:

                    async def create() -> None:
                        answers.append(await http.post(path, json=body, headers=headers))

                    tasks.start_soon(create)
                    with anyio.fail_after(LIVENESS_BOUND):
                        while not await anyio.to_thread.run_sync(  # noqa: ASYNC110 - polling
                            _blocked_on_a_lock, private_pg
                        ):
                            await anyio.sleep(0.05)
                    await anyio.to_thread.run_sync(private_pg.crash)
            finally:
                with contextlib.suppress(psycopg.Error):
                    locker.close()
            (interrupted,) = answers
            assert time.monotonic() - started < LIVENESS_BOUND
            assert interrupted.status_code == 503, interrupted.text
            assert interrupted.headers.get("Retry-After", "").isdigit()
            assert interrupted.json()["error"]["code"] == "backend_unavailable"

            await anyio.to_thread.run_sync(private_pg.start)
            retried = await http.post(path, json=body, headers=headers)
            assert retried.status_code == 201, retried.text
            assert "idempotent-replayed" not in retried.headers
            replayed = await http.post(path, json=body, headers=headers)
            assert replayed.status_code == 201
            assert replayed.json()["id"] == retried.json()["id"]
    stored = read_back(private_pg, boot.workspace_id)
    assert stored.bodies[message_body(marker)] == 1


FROZEN_DB_TIMEOUT = 4
"""The server's database timeout in the frozen-database test (the default, 10 s, works the
same, only slower): connect timeout, pool timeout and the deadline of a transaction."""


@pytest.mark.postgres
async def test_a_frozen_database_answers_503_within_the_bound(
    private_pg: PostgresInstance, tmp_path: Path
) -> None:
    """Every process of PostgreSQL stopped (SIGSTOP: connections stay open, the kernel still
    accepts, nothing answers; what a hung database or a network partition looks like):
    requests on fresh and on pooled connections answer 503 + Retry-After within the
    database timeout, and the server serves again once the database resumes.

    Without a deadline on transactions, a pooled connection's pre-ping (and any statement)
    waited forever for the frozen server: every request hung.
    """
    bound = FROZEN_DB_TIMEOUT + 3.0
    env = {"KIIAREN_SELFHOST_DB_TIMEOUT_SECONDS": str(FROZEN_DB_TIMEOUT)}
    async with running_server(private_pg, tmp_path / "files", env) as server:
        boot = await bootstrap(server.url)
        headers = {"Authorization": f"Bearer {boot.tokens[0]}"}
        channels = f"/v1/workspaces/{boot.workspace_id}/channels"
        messages = f"/v1/workspaces/{boot.workspace_id}/messages"
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=bound + 10, limits=limits
        ) as http:
            # Several connections in the server's pool, idle when the database freezes.
            async with anyio.create_task_group() as tasks:
                for _ in range(6):
                    tasks.start_soon(functools.partial(http.get, channels, headers=headers))
            answers: dict[str, tuple[float, httpx.Response | None]] = {}

            async def probe(name: str, method: str, path: str, **options: Any) -> None:
                started = time.monotonic()
                try:
                    response: httpx.Response | None = await http.request(method, path, **options)
                except httpx.TimeoutException:
                    response = None
                answers[name] = (time.monotonic() - started, response)

            frozen = await anyio.to_thread.run_sync(private_pg.freeze)
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(probe, "ready", "GET", "/ready")
                    for index in range(4):
                        tasks.start_soon(
                            functools.partial(
                                probe, f"read-{index}", "GET", channels, headers=headers
                            )
                        )
                    create = {"body": message_body("frozen"), "channel_id": boot.channel_id}
                    key = {**headers, "Idempotency-Key": secrets.token_hex(8)}
                    tasks.start_soon(
                        functools.partial(
                            probe, "create", "POST", messages, json=create, headers=key
                        )
                    )
            finally:
                await anyio.to_thread.run_sync(private_pg.thaw, frozen)
            with anyio.fail_after(30):
                while (await http.get("/ready")).status_code != 200:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            assert (await http.get(channels, headers=headers)).status_code == 200
    logger.info(
        "frozen: %s",
        {
            name: (response and response.status_code, round(s, 2))
            for name, (s, response) in answers.items()
        },
    )
    for name, (seconds, response) in answers.items():
        assert response is not None, f"{name}: no answer in {bound + 10:g} s (a hang)"
        assert response.status_code == 503, (name, response.text)
        assert response.headers.get("Retry-After", "").isdigit(), name
        assert seconds < bound, (name, seconds)

"""The notifier's sender: NOTIFY never waits on the writer's path, keeps order, survives failures.

:meth:`PgNotifier.notify` only queues; one sender task per process sends what is queued in
one statement. A real LISTEN connection on the test server checks what arrives: every
notification, in the order queued (so each workspace's seqs arrive ascending), also when
bursts are queued while a batch is in flight; an unreachable server costs the writer nothing
and is logged; closing sends what is still queued.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import psycopg
import pytest
from sqlalchemy.engine import make_url

from kiiaren_core.events import AppEvent
from kiiaren_selfhost.events.listener import CHANNEL, PgNotifier

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def _ignore(*args: object) -> None:
    return None


def notifier_for(url: str) -> PgNotifier:
    return PgNotifier(url, on_wake=_ignore, on_ephemeral=_ignore, on_reconnect=_ignore)


def event(workspace: str, seq: int) -> AppEvent:
    return AppEvent(type="app.test", workspace_id=workspace, seq=seq, payload={"n": seq})


@pytest.fixture
async def listener(postgres_admin_url: str) -> AsyncIterator[psycopg.AsyncConnection[object]]:
    dsn = make_url(postgres_admin_url).set(drivername="postgresql")
    conn = await psycopg.AsyncConnection.connect(
        dsn.render_as_string(hide_password=False), autocommit=True
    )
    await conn.execute(f"LISTEN {CHANNEL}")
    try:
        yield conn
    finally:
        await conn.close()


async def received(conn: psycopg.AsyncConnection[object], count: int) -> list[dict[str, object]]:
    """The next ``count`` notifications on the LISTEN connection, decoded."""
    got: list[dict[str, object]] = []
    with anyio.fail_after(20):
        async for notice in conn.notifies():
            got.append(json.loads(notice.payload))
            if len(got) == count:
                break
    return got


async def test_bursts_arrive_in_order_without_the_writer_waiting(
    postgres_admin_url: str, listener: psycopg.AsyncConnection[object]
) -> None:
    notifier = notifier_for(postgres_admin_url)
    workspaces = ["w-a", "w-b", "w-c"]
    try:
        # Queued from many "writers" while earlier batches are in flight; 100 at once is
        # more than one statement takes.
        for seq in range(1, 151):
            notifier.notify([event(workspaces[seq % 3], seq)])
            if seq >= 100 and seq % 7 == 0:
                await anyio.lowlevel.checkpoint()
        await notifier.flush()
        got = await received(listener, 150)
    finally:
        await notifier.aclose()
    assert [message["s"] for message in got] == list(range(1, 151))
    for workspace in workspaces:
        seqs = [message["s"] for message in got if message["w"] == workspace]
        assert seqs == sorted(seqs)


async def test_close_sends_what_is_queued(
    postgres_admin_url: str, listener: psycopg.AsyncConnection[object]
) -> None:
    notifier = notifier_for(postgres_admin_url)
    notifier.notify([event("w-close", 1), event("w-other", 2)])
    await notifier.aclose()
    got = await received(listener, 2)
    assert sorted((message["w"], message["s"]) for message in got) == [
        ("w-close", 1),
        ("w-other", 2),
    ]


async def test_an_unreachable_server_is_logged_and_costs_the_writer_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Port 1 refuses connections at once: the sender fails, logs, and keeps serving.
    notifier = notifier_for("postgresql+psycopg://postgres@127.0.0.1:1/postgres")
    try:
        notifier.notify([event("w-down", 1)])  # returns at once, raises nothing
        await notifier.flush()
        notifier.notify([event("w-down", 2)])
        await notifier.flush()
    finally:
        await notifier.aclose()
    failures = [r for r in caplog.records if "NOTIFY of 1 notifications failed" in r.message]
    assert len(failures) == 2

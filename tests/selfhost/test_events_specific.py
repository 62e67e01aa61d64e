"""Self-host event delivery beyond the conformance suite.

Concurrency and rollbacks keep ``seq`` contiguous, slow consumers are cut off without hurting
others, retention answers "not recovered", and (PostgreSQL) a second *process* sharing the
database delivers to our subscribers, also after the LISTEN connection is cut.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import BackendUnavailableError
from kiiaren_core.events import AppEvent, EventEnvelope, NotRecovered
from kiiaren_core.models import Workspace
from kiiaren_core.testing.base import unique_email
from kiiaren_core.testing.events import next_events, next_item, ping
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.maintenance import prune_events
from tests.selfhost.conftest import TEST_OPTIONS

pytestmark = pytest.mark.anyio

PASSWORD = "Events-test-password-1"


@pytest.fixture
async def owner(selfhost_provider: SelfHostProvider) -> AsyncIterator[SelfHostProvider]:
    view = selfhost_provider.with_session(None)
    await view.auth.sign_up_with_password(unique_email(), PASSWORD, name="Owner")
    yield view
    await view.aclose()


@pytest.fixture
async def workspace(owner: SelfHostProvider) -> Workspace:
    return await owner.persistence.workspace.create("Events")


async def logged_seqs(provider: SelfHostProvider, workspace_id: str) -> list[int]:
    async with provider._runtime.db.read() as conn:
        rows = await conn.execute(
            sa.select(t.events.c.seq)
            .where(t.events.c.workspace_id == workspace_id)
            .order_by(t.events.c.seq)
        )
        return [int(seq) for seq in rows.scalars()]


async def test_concurrent_writers_with_rollbacks_keep_seq_contiguous(
    owner: SelfHostProvider, workspace: Workspace
) -> None:
    """8 writers, every third transaction rolled back after queuing its event."""
    store = owner.persistence.workspace
    committed = 0

    class RollbackError(Exception):
        pass

    async def writer(index: int) -> None:
        nonlocal committed
        for n in range(12):
            try:
                async with store.mutation() as tx:
                    tx.emit(workspace.id, "test.ping", {"writer": index, "n": n})
                    if (index + n) % 3 == 0:
                        raise RollbackError
                committed += 1
            except RollbackError:
                pass

    before = await logged_seqs(owner, workspace.id)
    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(writer, index)
    seqs = await logged_seqs(owner, workspace.id)
    assert seqs == list(range(1, len(seqs) + 1)), "seq is gap-free"
    assert len(seqs) - len(before) == committed, "one row per committed event, none rolled back"
    head = await owner.events.position(workspace.id)
    assert head.seq == seqs[-1]


async def test_a_slow_consumer_is_cut_off_without_slowing_others(
    selfhost_url: str, tmp_path: Path
) -> None:
    provider = SelfHostProvider(database_url=selfhost_url, subscriber_queue_size=10, **TEST_OPTIONS)
    async with provider:
        view = provider.with_session(None)
        await view.auth.sign_up_with_password(unique_email(), PASSWORD, name="Slow")
        workspace = await view.persistence.workspace.create("Slow")
        slow = view.events.stream(workspace.id, types=["test.*"])
        fast = view.events.stream(workspace.id, types=["test.*"])
        async with slow, fast:
            received = []
            for n in range(40):
                await ping(view, workspace, n)
                received.extend(await next_events(fast, 1))
            assert [e.payload["n"] for e in received] == list(range(40))  # type: ignore[index]
            delivered = await next_events(slow, 10)
            with pytest.raises(BackendUnavailableError) as cut:
                await next_item(slow)
            assert cut.value.details["reason"] == "slow_consumer"
            assert slow.last_seq == delivered[-1].seq
        async with view.events.stream(
            workspace.id, types=["test.*"], since=slow.last_seq
        ) as resumed:
            rest = await next_events(resumed, 30)
        assert [e.payload["n"] for e in [*delivered, *rest]] == list(range(40))  # type: ignore[index]


async def test_resume_from_before_retention_is_not_recovered(
    owner: SelfHostProvider, workspace: Workspace
) -> None:
    for n in range(3):
        await ping(owner, workspace, n)
    async with owner._runtime.db.write() as conn:
        # What pruning does to the oldest events of the workspace.
        await conn.execute(
            t.events.delete().where(t.events.c.workspace_id == workspace.id, t.events.c.seq <= 2)
        )
    async with owner.events.stream(workspace.id, since=1) as stream:
        signal = await next_item(stream)
    assert isinstance(signal, NotRecovered)
    assert signal.reason == "expired"


async def test_retention_pruning_deletes_old_events(selfhost_url: str) -> None:
    provider = SelfHostProvider(database_url=selfhost_url, **TEST_OPTIONS)
    async with provider:
        view = provider.with_session(None)
        await view.auth.sign_up_with_password(unique_email(), PASSWORD, name="Old")
        workspace = await view.persistence.workspace.create("Retention")
        await ping(view, workspace, 1)
        async with provider._runtime.db.write() as conn:
            await conn.execute(
                t.events.update()
                .where(t.events.c.workspace_id == workspace.id)
                .values(created_at=sa.literal(_days_ago(30), t.events.c.created_at.type))
            )
        assert await prune_events(provider._runtime) >= 1
        assert await logged_seqs(provider, workspace.id) == []
        async with view.events.stream(workspace.id, since=0) as stream:
            signal = await next_item(stream)
        assert isinstance(signal, NotRecovered)
        assert signal.reason == "expired"


def _days_ago(days: int) -> object:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(days=days)


_WRITER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from kiiaren_core.events import AppEvent
    from kiiaren_core.models import SessionTokens
    from kiiaren_selfhost import SelfHostProvider

    async def main():
        options = json.loads(os.environ["KIIAREN_TEST_OPTIONS"])
        async with SelfHostProvider(**options) as provider:
            view = provider.with_session(SessionTokens.model_validate_json(os.environ["TOKENS"]))
            start, count = int(sys.argv[1]), int(sys.argv[2])
            for n in range(start, start + count):
                await view.events.emit(
                    AppEvent(type="test.ping", workspace_id=os.environ["WS"], payload={"n": n})
                )
            print("done", flush=True)

    asyncio.run(main())
    """
)


def _run_writer(url: str, tokens: str, workspace_id: str, start: int, count: int) -> None:
    env = {
        **os.environ,
        "KIIAREN_TEST_OPTIONS": json.dumps({"database_url": url, **TEST_OPTIONS}),
        "TOKENS": tokens,
        "WS": workspace_id,
    }
    result = subprocess.run(
        [sys.executable, "-c", _WRITER, str(start), str(count)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.postgres
async def test_events_cross_processes_even_after_listen_is_cut(postgres_url: str) -> None:
    from kiiaren_selfhost import migrate

    await migrate(postgres_url)
    async with SelfHostProvider(database_url=postgres_url, **TEST_OPTIONS) as provider:
        view = provider.with_session(None)
        await view.auth.sign_up_with_password(unique_email(), PASSWORD, name="Cross")
        workspace = await view.persistence.workspace.create("Cross")
        tokens = view.auth.tokens
        assert tokens is not None
        notifier = provider._runtime.notifier
        assert notifier is not None
        with anyio.fail_after(10):
            await notifier.connected.wait()
        async with view.events.stream(workspace.id, types=["test.*"]) as stream:
            await anyio.to_thread.run_sync(
                _run_writer, postgres_url, tokens.model_dump_json(), workspace.id, 0, 20
            )
            first = await next_events(stream, 20)
            await notifier.drop_listen_connection()
            await anyio.to_thread.run_sync(
                _run_writer, postgres_url, tokens.model_dump_json(), workspace.id, 20, 20
            )
            second = await next_events(stream, 20)
        got = [e.payload["n"] for e in [*first, *second]]  # type: ignore[index]
        assert got == list(range(40))
        seqs = [e.seq for e in [*first, *second]]
        assert seqs == list(range(seqs[0], seqs[0] + 40))  # type: ignore[operator]


async def test_app_event_round_trip_through_the_log(
    owner: SelfHostProvider, workspace: Workspace
) -> None:
    sent = await owner.events.emit(
        AppEvent(type="app.chat.ping", workspace_id=workspace.id, payload={"deep": {"x": [1]}})
    )
    async with owner.events.stream(workspace.id, types=["app.*"], since=sent.seq - 1) as s:  # type: ignore[operator]
        (got,) = await next_events(s, 1)
    assert isinstance(got, EventEnvelope)
    assert got.id == sent.id
    assert got.payload == {"deep": {"x": [1]}}

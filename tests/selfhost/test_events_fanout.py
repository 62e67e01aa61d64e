"""The self-host fan-out's fast paths keep every delivery guarantee.

* A stream's *sink* (what the server's WebSocket arms) takes live events synchronously; a
  refused event, and everything after it, comes through ``__anext__`` in order; ``last_seq``
  counts what the sink took.
* A NOTIFY carries the committed events when they fit; the receiving broker fans them out
  without reading the log when they follow its cursor, and reads the log after a gap.

A second provider on the same database stands in for another server process (its commits
reach our broker only through ``Broker.wake``, as a notification would deliver them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from kiiaren_core.events import AppEvent, EventEnvelope, parse_event
from kiiaren_core.models import Workspace
from kiiaren_core.testing.base import unique_email
from kiiaren_core.testing.events import next_events
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.events import broker as broker_module
from kiiaren_selfhost.events.listener import notification_payloads
from tests.selfhost.conftest import TEST_OPTIONS

pytestmark = pytest.mark.anyio

PASSWORD = "Events-test-password-1"


@pytest.fixture
async def owner(selfhost_provider: SelfHostProvider) -> AsyncIterator[SelfHostProvider]:
    # No periodic catch-up during these tests: every log read is one the test caused.
    selfhost_provider._runtime.broker._poll_interval = 3600
    view = selfhost_provider.with_session(None)
    await view.auth.sign_up_with_password(unique_email(), PASSWORD, name="Owner")
    yield view
    await view.aclose()


@pytest.fixture
async def workspace(owner: SelfHostProvider) -> Workspace:
    return await owner.persistence.workspace.create("Fan-out")


@pytest.fixture
async def other_process(
    selfhost_url: str, tmp_path: Path, owner: SelfHostProvider
) -> AsyncIterator[SelfHostProvider]:
    """The owner's session in a second provider on the same database."""
    tokens = owner.auth.tokens  # type: ignore[attr-defined]
    provider = SelfHostProvider(
        database_url=selfhost_url, storage_path=str(tmp_path / "other"), **TEST_OPTIONS
    )
    provider._runtime.notifier = None  # the test delivers its "notifications" itself
    async with provider:
        view = provider.with_session(tokens)
        yield view
        await view.aclose()


def tick(workspace: Workspace, n: int) -> AppEvent:
    return AppEvent(type="test.tick", workspace_id=workspace.id, payload={"n": n})


async def test_a_sink_takes_live_events_and_a_refusal_falls_back_in_order(
    owner: SelfHostProvider, workspace: Workspace
) -> None:
    taken: list[int] = []
    accepting = True

    def sink(event: EventEnvelope) -> bool:
        if not accepting:
            return False
        taken.append(event.payload["n"])  # type: ignore[index]
        return True

    async with owner.events.stream(workspace.id, types=["test.*"]) as stream:
        stream.set_sink(sink)  # type: ignore[attr-defined]
        received: list[EventEnvelope] = []
        three = anyio.Event()

        async def consume() -> None:
            async for item in stream:
                assert isinstance(item, EventEnvelope)
                received.append(item)
                if len(received) == 3:
                    three.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.sleep(0.05)  # the consumer waits: the sink is armed
            first = [await owner.events.emit(tick(workspace, n)) for n in range(3)]
            assert taken == [0, 1, 2]
            assert received == []
            assert stream.last_seq == first[-1].seq
            accepting = False
            for n in range(3, 6):
                await owner.events.emit(tick(workspace, n))
            with anyio.fail_after(5):
                await three.wait()
            accepting = True
            await anyio.sleep(0.05)
            await owner.events.emit(tick(workspace, 6))
            tg.cancel_scope.cancel()
    assert [e.payload["n"] for e in received] == [3, 4, 5]  # type: ignore[index]
    assert taken == [0, 1, 2, 6]


def test_a_notification_carries_the_committed_events_when_they_fit() -> None:
    events = [
        parse_event(
            {
                "id": f"e{n}",
                "seq": 7 + n,
                "type": "test.tick",
                "timestamp": "2026-01-01T00:00:00Z",
                "workspace_id": "w1",
                "payload": {"n": n, "text": "é"},
            }
        )
        for n in range(2)
    ]
    (payload,) = notification_payloads(events, "origin")
    message = json.loads(payload)
    assert (message["w"], message["s"]) == ("w1", 8)
    assert [parse_event(data) for data in message["d"]] == events
    large = [e.model_copy(update={"payload": {"text": "é" * 4000}}) for e in events]
    (payload,) = notification_payloads(large, "origin")
    assert len(payload.encode()) < 8000
    assert json.loads(payload) == {"w": "w1", "s": 8}  # a wake-up: receivers read the log


async def test_carried_events_fan_out_without_a_log_read_and_a_gap_reads_the_log(
    owner: SelfHostProvider,
    workspace: Workspace,
    other_process: SelfHostProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    read_log = broker_module.read_log

    async def counting_read_log(*args: object, **kwargs: object) -> list[EventEnvelope]:
        reads.append(1)
        return await read_log(*args, **kwargs)  # type: ignore[arg-type]

    broker = owner._runtime.broker  # type: ignore[attr-defined]
    async with owner.events.stream(workspace.id, types=["test.*"]) as stream:
        monkeypatch.setattr(broker_module, "read_log", counting_read_log)
        carried = await other_process.events.emit(tick(workspace, 0))
        await broker.wake(workspace.id, carried.seq, [carried])
        assert reads == []
        missed = await other_process.events.emit(tick(workspace, 1))
        latest = await other_process.events.emit(tick(workspace, 2))
        assert missed.seq is not None
        assert latest.seq == missed.seq + 1
        await broker.wake(workspace.id, latest.seq, [latest])  # seq missed.seq never came
        assert reads != []
        await broker.wake(workspace.id, latest.seq, [latest])  # a duplicate: ignored
        got = await next_events(stream, 3)
    assert [e.payload["n"] for e in got] == [0, 1, 2]  # type: ignore[index]
    assert [e.seq for e in got] == [carried.seq, missed.seq, latest.seq]

"""Conformance area ``events``: streams, filters, order, resume, isolation, emit, presence."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable

import anyio
import pytest

from kiiaren_core.errors import InvalidInputError, NotAuthenticatedError, NotFoundError
from kiiaren_core.events import AppEvent, EventEnvelope, NotRecovered, StreamItem, new_event
from kiiaren_core.models import PresenceStatus, Workspace
from kiiaren_core.protocols import BackendProvider, EventStream
from kiiaren_core.testing.base import ConformanceBase, TestUser

__all__ = ["EventsConformance"]

MakeUser = Callable[..., Awaitable[TestUser]]
TIMEOUT = 5.0


async def next_item(stream: EventStream, within: float = TIMEOUT) -> StreamItem:
    """The stream's next item, failing the test after ``within`` seconds."""
    with anyio.fail_after(within):
        return await stream.__anext__()


async def next_events(stream: EventStream, count: int) -> list[EventEnvelope]:
    """The next ``count`` items, which must all be events."""
    items = [await next_item(stream) for _ in range(count)]
    assert all(isinstance(item, EventEnvelope) for item in items), items
    return items  # type: ignore[return-value]


async def ping(provider: BackendProvider, workspace: Workspace, n: int) -> EventEnvelope:
    """Emit the application event ``test.ping`` number ``n``."""
    return await provider.events.emit(
        AppEvent(type="test.ping", workspace_id=workspace.id, payload={"n": n})
    )


async def join(owner: TestUser, workspace: Workspace, other: TestUser) -> None:
    """Let ``other`` join ``workspace`` with its join code (read by the owner)."""
    current = await owner.provider.persistence.workspace.get(workspace.id)
    assert current is not None
    assert current.join_code is not None
    await other.provider.persistence.workspace.join(workspace.id, join_code=current.join_code)


class EventsConformance(ConformanceBase):
    """The ``events`` sub-provider."""

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("events")]

    async def test_stream_delivers_in_seq_order(self, user: TestUser, workspace: Workspace) -> None:
        async with user.provider.events.stream(workspace.id, types=["test.*"]) as stream:
            sent = [await ping(user.provider, workspace, n) for n in range(5)]
            got = await next_events(stream, 5)
        assert [e.payload["n"] for e in got] == [0, 1, 2, 3, 4]
        seqs = [e.seq for e in got]
        assert seqs == [e.seq for e in sent]
        assert all(b == a + 1 for a, b in itertools.pairwise(seqs))  # type: ignore[operator]
        assert all(e.workspace_id == workspace.id and e.actor_id == user.user_id for e in got)
        assert stream.last_seq == seqs[-1]

    async def test_mutations_emit_kernel_events(self, user: TestUser, workspace: Workspace) -> None:
        async with user.provider.events.stream(workspace.id, types=["workspace.*"]) as stream:
            await user.provider.persistence.workspace.update(workspace.id, name="Renamed")
            (event,) = await next_events(stream, 1)
        assert event.type == "workspace.updated"
        assert event.payload.name == "Renamed"
        assert event.seq is not None

    @pytest.mark.parametrize(
        ("patterns", "expected"),
        [
            (["test.*"], ["test.ping"]),
            (["workspace.*"], ["workspace.updated"]),
            (["*.updated"], ["workspace.updated"]),
            (["*"], ["test.ping", "workspace.updated"]),
            (None, ["test.ping", "workspace.updated"]),
        ],
        ids=["namespace", "kernel-namespace", "suffix", "star", "none"],
    )
    async def test_type_filters(
        self,
        user: TestUser,
        workspace: Workspace,
        patterns: list[str] | None,
        expected: list[str],
    ) -> None:
        async with user.provider.events.stream(workspace.id, types=patterns) as stream:
            await ping(user.provider, workspace, 1)
            await user.provider.persistence.workspace.update(workspace.id, name="Filtered")
            got: list[str] = []
            while len(got) < len(expected):
                item = await next_item(stream)
                assert isinstance(item, EventEnvelope)
                if not item.type.startswith("presence."):  # "*" also sees our own presence
                    got.append(item.type)
        assert got == expected

    async def test_invalid_patterns_are_refused(self, user: TestUser, workspace: Workspace) -> None:
        with pytest.raises(InvalidInputError):
            user.provider.events.stream(workspace.id, types=["message..created"])

    async def test_resume_replays_the_gap_without_duplicates(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        async with user.provider.events.stream(workspace.id, types=["test.*"]) as stream:
            await ping(user.provider, workspace, 0)
            (first,) = await next_events(stream, 1)
        for n in range(1, 31):
            await ping(user.provider, workspace, n)
        async with user.provider.events.stream(
            workspace.id, types=["test.*"], since=first.seq
        ) as resumed:
            replayed = await next_events(resumed, 30)
            await ping(user.provider, workspace, 31)
            (live,) = await next_events(resumed, 1)
        assert [e.payload["n"] for e in replayed] == list(range(1, 31))
        assert live.payload["n"] == 31
        assert len({e.id for e in [*replayed, live]}) == 31

    async def test_resume_from_position_sees_only_later_events(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        await ping(user.provider, workspace, 0)
        position = await user.provider.events.position(workspace.id)
        assert position.seq >= 1
        assert position.epoch
        await ping(user.provider, workspace, 1)
        async with user.provider.events.stream(
            workspace.id, since=position.seq, epoch=position.epoch
        ) as stream:
            (event,) = await next_events(stream, 1)
        assert event.seq == position.seq + 1
        assert event.payload["n"] == 1

    async def test_resume_from_the_future_is_not_recovered(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        position = await user.provider.events.position(workspace.id)
        async with user.provider.events.stream(workspace.id, since=position.seq + 100) as stream:
            signal = await next_item(stream)
            assert isinstance(signal, NotRecovered)
            assert signal.reason == "future"
            assert signal.seq == position.seq
            sent = await ping(user.provider, workspace, 1)
            (event,) = await next_events(stream, 1)
        assert event.seq == sent.seq == position.seq + 1

    async def test_resume_with_another_epoch_is_not_recovered(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        async with user.provider.events.stream(
            workspace.id, since=1, epoch="some-other-epoch"
        ) as stream:
            signal = await next_item(stream)
        assert isinstance(signal, NotRecovered)
        assert signal.reason == "epoch_changed"

    async def test_outsiders_and_missing_workspaces_look_the_same(
        self, make_user: MakeUser, workspace: Workspace
    ) -> None:
        outsider = await make_user("Outsider")
        with pytest.raises(NotFoundError) as foreign:
            async with outsider.provider.events.stream(workspace.id):
                pass
        with pytest.raises(NotFoundError) as missing:
            async with outsider.provider.events.stream(str(uuid.uuid4())):
                pass
        assert foreign.value.message == missing.value.message
        with pytest.raises(NotFoundError):
            await outsider.provider.events.subscribe(workspace.id, None, lambda item: None)
        with pytest.raises(NotFoundError):
            await outsider.provider.events.position(workspace.id)
        with pytest.raises(NotFoundError):
            await ping(outsider.provider, workspace, 0)

    async def test_anonymous_cannot_subscribe(
        self, provider: BackendProvider, workspace: Workspace
    ) -> None:
        view = provider.with_session(None)
        with pytest.raises(NotAuthenticatedError):
            async with view.events.stream(workspace.id):
                pass
        await view.aclose()

    async def test_events_stay_in_their_workspace(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        other = await user.provider.persistence.workspace.create("Other space")
        async with user.provider.events.stream(workspace.id, types=["test.*"]) as stream:
            await ping(user.provider, other, 99)
            await ping(user.provider, workspace, 1)
            (event,) = await next_events(stream, 1)
        assert event.payload["n"] == 1

    async def test_a_removed_member_stops_receiving(
        self, user: TestUser, workspace: Workspace, make_user: MakeUser
    ) -> None:
        member = await make_user("Member")
        await join(user, workspace, member)
        me = await member.provider.persistence.member.get_current(workspace.id)
        assert me is not None
        stream = member.provider.events.stream(workspace.id, types=["test.*"])
        async with stream:
            await ping(user.provider, workspace, 1)
            await next_events(stream, 1)
            await user.provider.persistence.member.remove(me.id)
            await ping(user.provider, workspace, 2)

            async def drain() -> None:
                with anyio.fail_after(2.0):
                    async for item in stream:
                        received = isinstance(item, EventEnvelope) and item.type == "test.ping"
                        assert not received, "a removed member received an event"

            with pytest.raises(NotFoundError):
                await drain()

    async def test_subscribe_with_a_callback(self, user: TestUser, workspace: Workspace) -> None:
        seen: list[StreamItem] = []
        received = anyio.Event()

        async def on_item(item: StreamItem) -> None:
            seen.append(item)
            if len(seen) == 3:
                received.set()

        unsubscribe = await user.provider.events.subscribe(workspace.id, ["test.*"], on_item)
        for n in range(3):
            await ping(user.provider, workspace, n)
        with anyio.fail_after(TIMEOUT):
            await received.wait()
        unsubscribe()
        unsubscribe()
        await ping(user.provider, workspace, 3)
        await anyio.sleep(0.3)
        assert [item.payload["n"] for item in seen] == [0, 1, 2]  # type: ignore[union-attr]

    async def test_emit_rules(self, user: TestUser, workspace: Workspace) -> None:
        sent = await ping(user.provider, workspace, 1)
        assert sent.seq is not None
        assert sent.type == "test.ping"
        for bad in ["ping", "message.fake", "Upper.case", "a..b"]:
            with pytest.raises(InvalidInputError):
                await user.provider.events.emit(
                    AppEvent(type=bad, workspace_id=workspace.id, payload={})
                )
        kernel = new_event(
            "workspace.updated", workspace_id=workspace.id, actor_id=None, payload={"name": "x"}
        )
        with pytest.raises(InvalidInputError):
            await user.provider.events.emit(kernel)

    async def test_typing_is_ephemeral(self, user: TestUser, workspace: Workspace) -> None:
        typing = new_event(
            "typing.changed",
            workspace_id=workspace.id,
            actor_id=user.user_id,
            payload={"user_id": user.user_id, "is_typing": True},
        )
        async with user.provider.events.stream(workspace.id, types=["typing.*"]) as stream:
            sent = await user.provider.events.emit(typing)
            (got,) = await next_events(stream, 1)
        assert sent.seq is None
        assert got.seq is None
        assert got.type == "typing.changed"
        position = await user.provider.events.position(workspace.id)
        async with user.provider.events.stream(
            workspace.id, types=["typing.*", "test.*"], since=max(0, position.seq - 5)
        ) as replay:
            await ping(user.provider, workspace, 1)
            (only,) = await next_events(replay, 1)
        assert only.type == "test.ping", "ephemeral events are never replayed"

    @pytest.mark.requires_capability("presence")
    async def test_presence(
        self, user: TestUser, workspace: Workspace, make_user: MakeUser
    ) -> None:
        member = await make_user("Present")
        await join(user, workspace, member)

        async def presence_of(watch: EventStream, user_id: str) -> PresenceStatus:
            """The next presence change of ``user_id`` (the watcher's own are skipped)."""
            while True:
                item = await next_item(watch)
                assert isinstance(item, EventEnvelope)
                if item.payload.user_id == user_id:
                    return PresenceStatus(item.payload.status)

        async with user.provider.events.stream(workspace.id, types=["presence.*"]) as watch:
            async with member.provider.events.stream(workspace.id, types=["test.*"]):
                assert await presence_of(watch, member.user_id) == PresenceStatus.ONLINE
                snapshot = {
                    p.user_id: p.status
                    for p in await user.provider.events.get_presence(workspace.id)
                }
                assert snapshot[member.user_id] == PresenceStatus.ONLINE
                await member.provider.events.set_presence(workspace.id, PresenceStatus.AWAY)
                assert await presence_of(watch, member.user_id) == PresenceStatus.AWAY
            assert await presence_of(watch, member.user_id) == PresenceStatus.OFFLINE

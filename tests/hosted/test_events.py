"""The events client against a scripted WebSocket peer: multiplexing, reconnect and resume,
close codes, not-recovered signals, slow readers, re-authentication and connection state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kiiaren_core.errors import (
    KiiarenError,
    NotAuthenticatedError,
    NotFoundError,
    ProviderClosedError,
)
from kiiaren_core.events import EventEnvelope, NotRecovered, StreamItem
from kiiaren_core.models import SessionTokens
from kiiaren_hosted import ConnectionState, HostedEventStream, HostedProvider
from tests.hosted.fake_server import FakeAuthServer
from tests.hosted.ws_script import ScriptedEventServer, settle

pytestmark = pytest.mark.anyio

WS = "w1"


@pytest.fixture
async def peer() -> AsyncIterator[ScriptedEventServer]:
    server = ScriptedEventServer()
    server.workspace(WS)
    yield server
    await server.stop()


@pytest.fixture
async def auth() -> FakeAuthServer:
    return FakeAuthServer(refresh_delay=0)


@pytest.fixture
async def root(peer: ScriptedEventServer, auth: FakeAuthServer) -> AsyncIterator[HostedProvider]:
    """REST through the fake auth server, events over the scripted socket."""
    peer.token_ok = lambda token: token in auth.access and auth.access[token] not in auth.revoked
    url = await peer.start()
    provider = HostedProvider(
        base_url=url, transport=auth.transport, backoff_base_seconds=0.02, backoff_cap_seconds=0.2
    )
    yield provider
    await provider.aclose()


@pytest.fixture
def client(root: HostedProvider, auth: FakeAuthServer) -> HostedProvider:
    """A view signed in to the fake server."""
    grant = auth.grant()
    return root.with_session(SessionTokens.model_validate(grant["tokens"]))


async def take(stream: HostedEventStream, count: int) -> list[StreamItem]:
    async with asyncio.timeout(5):
        return [await stream.__anext__() for _ in range(count)]


def state_of(provider: HostedProvider) -> ConnectionState:
    """Read afresh each time (a property mypy would otherwise consider narrowed)."""
    return provider.events.connection_state


def numbers(items: list[StreamItem]) -> list[int]:
    assert all(isinstance(item, EventEnvelope) for item in items), items
    return [item.payload["n"] for item in items]  # type: ignore[union-attr]


async def test_reconnect_resumes_from_the_last_seq_without_gap_or_duplicate(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    async with client.events.stream(WS) as stream:
        for n in range(10):
            await peer.publish(WS, n)
        assert numbers(await take(stream, 5)) == [0, 1, 2, 3, 4]
        await settle(lambda: stream.cursor == 10)
        await peer.close_all(1001, "going away")
        await settle(lambda: client.events.connection_state is not ConnectionState.OPEN)
        for n in range(10, 20):
            await peer.publish(WS, n)
        assert numbers(await take(stream, 15)) == list(range(5, 20))
        assert stream.last_seq == 20
    resumed = peer.sent("subscribe")[-1]
    assert (resumed["since"], resumed["epoch"]) == (10, "epoch-1")
    assert peer.connects == 2


async def test_connection_state_is_observable(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    states: list[ConnectionState] = []
    client.events.on_connection_state_change(states.append)
    assert state_of(client) is ConnectionState.CLOSED
    async with client.events.stream(WS) as stream:
        assert state_of(client) is ConnectionState.OPEN
        assert client.events.latency is not None
        await peer.close_all(1011, "internal error")
        await peer.publish(WS, 1)
        assert numbers(await take(stream, 1)) == [1]
        await settle(lambda: client.events.connection_state is ConnectionState.OPEN)
    await settle(lambda: client.events.connection_state is ConnectionState.CLOSED)
    assert states == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.DEGRADED,
        ConnectionState.RESUMING,
        ConnectionState.OPEN,
        ConnectionState.CLOSED,
    ]
    assert client.events.latency is None


async def test_a_server_that_stays_down_keeps_the_stream_degraded(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    async with client.events.stream(WS) as stream:
        await peer.stop()
        await peer.close_all(1001)
        await settle(lambda: client.events.connection_state is ConnectionState.DEGRADED)
        await asyncio.sleep(0.5)
        assert client.events.connection_state is ConnectionState.DEGRADED
        assert peer.connects == 1, "refused connections never reach the handler"
        assert stream.last_seq == 0


async def test_slow_consumer_close_reconnects_at_once_and_resumes(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    async with client.events.stream(WS) as stream:
        await peer.publish(WS, 0)
        assert numbers(await take(stream, 1)) == [0]
        started = asyncio.get_running_loop().time()
        await peer.close_all(4408, "slow consumer")
        await peer.publish(WS, 1)
        assert numbers(await take(stream, 1)) == [1]
        assert asyncio.get_running_loop().time() - started < 1.0
    assert peer.sent("subscribe")[-1]["since"] == 1


async def test_repeated_events_across_a_resume_are_dropped(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    peer.replay_overlap = 3
    async with client.events.stream(WS) as stream:
        for n in range(5):
            await peer.publish(WS, n)
        assert numbers(await take(stream, 5)) == [0, 1, 2, 3, 4]
        await peer.close_all(1012)
        await settle(lambda: peer.connects == 2 and peer.open_connections == 1)
        await peer.publish(WS, 5)
        assert numbers(await take(stream, 1)) == [5]


async def test_an_epoch_change_while_disconnected_is_not_recovered(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    async with client.events.stream(WS) as stream:
        await peer.publish(WS, 0)
        await take(stream, 1)
        peer.epoch = "epoch-2"
        await peer.close_all(1001)
        (signal,) = await take(stream, 1)
        assert isinstance(signal, NotRecovered)
        assert (signal.reason, signal.epoch, signal.requested_since) == (
            "epoch_changed",
            "epoch-2",
            1,
        )
        await peer.publish(WS, 1)
        assert numbers(await take(stream, 1)) == [1]
        assert stream.epoch == "epoch-2"


async def test_since_from_the_future_is_not_recovered_then_live(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    await peer.publish(WS, 0)
    async with client.events.stream(WS, since=50) as stream:
        (signal,) = await take(stream, 1)
        assert isinstance(signal, NotRecovered)
        assert (signal.reason, signal.seq) == ("future", 1)
        await peer.publish(WS, 1)
        assert numbers(await take(stream, 1)) == [1]


async def test_a_4401_refreshes_the_token_and_reconnects(
    client: HostedProvider, peer: ScriptedEventServer, auth: FakeAuthServer
) -> None:
    events: list[str] = []
    client.auth.on_auth_state_change(lambda state: events.append(state.event))
    async with client.events.stream(WS) as stream:
        auth.expire_access_tokens()
        await peer.close_all(4401, "session ended")
        await peer.publish(WS, 7)
        assert numbers(await take(stream, 1)) == [7]
    assert auth.refresh_calls == 1
    assert events == ["token_refreshed"]
    assert peer.connects == 2


async def test_a_revoked_session_ends_every_stream(
    client: HostedProvider, peer: ScriptedEventServer, auth: FakeAuthServer
) -> None:
    events: list[str] = []
    client.auth.on_auth_state_change(lambda state: events.append(state.event))
    first = client.events.stream(WS)
    second = client.events.stream(WS, types=["test.*"])
    async with first, second:
        auth.revoked.update(auth.access.values())
        await peer.close_all(4401, "session ended")
        for stream in (first, second):
            with pytest.raises(NotAuthenticatedError):
                await take(stream, 1)
    assert events == ["session_revoked"]
    assert client.auth.tokens is None
    await settle(lambda: client.events.connection_state is ConnectionState.CLOSED)


async def test_signing_out_ends_the_streams(client: HostedProvider) -> None:
    async with client.events.stream(WS) as stream:
        await client.auth.sign_out()
        with pytest.raises(NotAuthenticatedError):
            await take(stream, 1)


@pytest.mark.parametrize("code", [4400, 4409])
async def test_protocol_faults_end_the_streams(
    client: HostedProvider, peer: ScriptedEventServer, code: int
) -> None:
    async with client.events.stream(WS) as stream:
        await peer.close_all(code)
        with pytest.raises(KiiarenError) as caught:
            await take(stream, 1)
    assert caught.value.details == {"close_code": code}
    assert peer.connects == 1


async def test_a_server_side_slow_consumer_cut_resubscribes(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    async with client.events.stream(WS) as stream:
        await peer.publish(WS, 0)
        await take(stream, 1)
        await peer.end_subscriptions("slow_consumer")
        await settle(lambda: len(peer.sent("subscribe")) == 2)
        await peer.publish(WS, 1)
        assert numbers(await take(stream, 1)) == [1]
    assert peer.sent("subscribe")[-1]["since"] == 1


async def test_a_server_side_error_resubscribes_then_gives_up(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    error = {"code": "backend_unavailable", "message": "Database down.", "details": {}}
    async with client.events.stream(WS) as stream:
        await peer.end_subscriptions("error", error)
        await settle(lambda: len(peer.sent("subscribe")) == 2)
        await peer.publish(WS, 1)
        assert numbers(await take(stream, 1)) == [1]
        for count in (3, 4):
            await peer.end_subscriptions("error", error)
            await settle(lambda count=count: len(peer.sent("subscribe")) == count)  # type: ignore[misc]
        await peer.end_subscriptions("error", error)
        with pytest.raises(KiiarenError) as caught:
            await take(stream, 1)
    assert caught.value.code == "backend_unavailable"


@pytest.mark.parametrize(
    ("reason", "expected"), [("removed", NotFoundError), ("workspace_deleted", NotFoundError)]
)
async def test_removal_ends_the_stream_after_what_was_received(
    client: HostedProvider, peer: ScriptedEventServer, reason: str, expected: type[Exception]
) -> None:
    async with client.events.stream(WS) as stream:
        await peer.publish(WS, 0)
        await peer.end_subscriptions(reason)
        assert numbers(await take(stream, 1)) == [0]
        with pytest.raises(expected) as caught:
            await take(stream, 1)
    assert caught.value.details == {"reason": reason}  # type: ignore[attr-defined]


async def test_a_slow_reader_is_paused_and_resumed_from_its_last_seq(
    root: HostedProvider, peer: ScriptedEventServer, auth: FakeAuthServer
) -> None:
    tokens = SessionTokens.model_validate(auth.grant()["tokens"])
    view = root.with_session(tokens)
    view._events._connection.buffer_limit = 5
    async with view.events.stream(WS) as stream:
        for n in range(20):
            await peer.publish(WS, n)
        await settle(lambda: len(peer.sent("unsubscribe")) == 1)
        assert numbers(await take(stream, 20)) == list(range(20))
    resubscribe = peer.sent("subscribe")[1]
    assert resubscribe["since"] == 5


async def test_a_refreshed_token_is_sent_on_the_open_socket(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    async with client.events.stream(WS):
        await client.auth.refresh_session()
        tokens = client.auth.tokens
        assert tokens is not None
        await settle(lambda: len(peer.sent("auth")) == 2)
    assert peer.sent("auth")[-1]["access_token"] == tokens.access_token
    assert peer.connects == 1


async def test_the_socket_refreshes_its_token_before_it_expires(
    root: HostedProvider, peer: ScriptedEventServer, auth: FakeAuthServer
) -> None:
    tokens = SessionTokens.model_validate(auth.grant()["tokens"])
    soon = datetime.now(UTC) + timedelta(seconds=31.2)  # the margin is 30 s
    view = root.with_session(tokens.model_copy(update={"expires_at": soon}))
    async with view.events.stream(WS):
        await settle(lambda: len(peer.sent("auth")) == 2, within=5)
    assert auth.refresh_calls == 1


async def test_streams_share_one_socket_per_session(
    root: HostedProvider, client: HostedProvider, peer: ScriptedEventServer, auth: FakeAuthServer
) -> None:
    peer.workspace("w2")
    other = root.with_session(SessionTokens.model_validate(auth.grant()["tokens"]))
    async with (
        client.events.stream(WS) as a,
        client.events.stream("w2") as b,
        other.events.stream(WS) as c,
    ):
        assert peer.connects == 2
        await peer.publish(WS, 1)
        await peer.publish("w2", 2)
        assert numbers(await take(a, 1)) == [1]
        assert numbers(await take(b, 1)) == [2]
        assert numbers(await take(c, 1)) == [1]
    await settle(lambda: peer.open_connections == 0)


async def test_subscribe_errors_are_raised_when_the_stream_starts(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    with pytest.raises(NotFoundError) as caught:
        async with client.events.stream("missing"):
            pass
    assert caught.value.message == "Workspace not found."
    with pytest.raises(NotFoundError):
        await client.events.subscribe("missing", None, lambda item: None)


async def test_signed_out_streams_never_connect(
    root: HostedProvider, peer: ScriptedEventServer
) -> None:
    view = root.with_session(None)
    with pytest.raises(NotAuthenticatedError):
        async with view.events.stream(WS):
            pass
    assert peer.connects == 0


async def test_callbacks_sync_async_and_failing(
    client: HostedProvider, peer: ScriptedEventServer
) -> None:
    seen: list[Any] = []

    async def record(item: StreamItem) -> None:
        seen.append(item)

    def explode(item: StreamItem) -> None:
        raise RuntimeError("callback bug")

    stop_record = await client.events.subscribe(WS, ["test.*"], record)
    stop_explode = await client.events.subscribe(WS, None, explode)
    for n in range(3):
        await peer.publish(WS, n)
    await settle(lambda: len(seen) == 3)
    stop_record()
    stop_record()
    stop_explode()
    await settle(lambda: len(peer.sent("unsubscribe")) == 2)
    await peer.publish(WS, 3)
    await asyncio.sleep(0.1)
    assert numbers(seen) == [0, 1, 2]


async def test_closing_the_provider_ends_streams_and_tasks(
    root: HostedProvider, client: HostedProvider, peer: ScriptedEventServer
) -> None:
    before = asyncio.all_tasks()
    stream = client.events.stream(WS)
    await stream.start()
    await client.events.subscribe(WS, None, lambda item: None)
    await root.aclose()
    with pytest.raises(ProviderClosedError):
        await take(stream, 1)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() <= before
    with pytest.raises(ProviderClosedError):
        client.events.stream(WS)
    await settle(lambda: peer.open_connections == 0)

"""The events WebSocket over real sockets: uvicorn on loopback, a self-host provider on SQLite
and PostgreSQL, and the ``websockets`` client (or a bare socket where a client must misbehave).

Covers authentication (first frame, subprotocol, refresh), the origin allow-list, multiplexed
subscriptions, filters, order, resume and "not recovered", tenant isolation, removal and
revocation within 2 s, slow consumers, frame limits, malformed frames, ping/pong, presence and
typing, heartbeats, graceful shutdown and (PostgreSQL) two server processes on one database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from kiiaren_core.events import AppEvent
from kiiaren_core.models import Workspace
from kiiaren_selfhost import SelfHostProvider
from selfhost_server import ws
from selfhost_server.ws_protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_FRAME_TOO_LARGE,
    CLOSE_GOING_AWAY,
    CLOSE_MALFORMED,
    CLOSE_SLOW_CONSUMER,
)
from tests.selfhost import conftest as selfhost_fixtures
from tests.selfhost.conftest import TEST_OPTIONS
from tests.server.ws_helpers import (
    RawClient,
    Server,
    User,
    authenticate,
    build_app,
    client,
    close_code,
    events,
    join,
    nothing_within,
    recv,
    recv_type,
    send,
    serve,
    sign_up,
    subscribe,
)

pytestmark = pytest.mark.anyio

# A fresh self-host provider per test on ``selfhost_url`` (SQLite and PostgreSQL, from
# tests/server/conftest.py); found by name.
selfhost_provider = selfhost_fixtures.selfhost_provider

ALLOWED_ORIGIN = "https://app.example.com"
sqlite_only = pytest.mark.parametrize("selfhost_url", ["sqlite"], indirect=True)
"""For behaviour that does not depend on the database (limits, frames, heartbeats)."""


@pytest.fixture
async def server(selfhost_provider: SelfHostProvider) -> AsyncIterator[Server]:
    async with serve(build_app(selfhost_provider, allowed_origins=(ALLOWED_ORIGIN,))) as srv:
        yield srv


@pytest.fixture
async def owner(selfhost_provider: SelfHostProvider) -> User:
    return await sign_up(selfhost_provider, "Owner")


@pytest.fixture
async def workspace(owner: User) -> Workspace:
    return await owner.provider.persistence.workspace.create("Sockets")


async def ping(user: User, workspace: Workspace, n: int, **extra: Any) -> int:
    """Emit ``test.ping`` number ``n``; returns its seq."""
    event = await user.provider.events.emit(
        AppEvent(type="test.ping", workspace_id=workspace.id, payload={"n": n, **extra})
    )
    assert event.seq is not None
    return event.seq


def numbers(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["event"]["payload"]["n"] for frame in frames]


async def recv_event(
    conn: ClientConnection, wanted: Callable[[dict[str, Any]], bool], within: float = 5.0
) -> dict[str, Any]:
    """The next ``event`` frame whose envelope satisfies ``wanted`` (others are skipped)."""
    with anyio.fail_after(within):
        while True:
            frame = await recv(conn)
            if frame["type"] == "event" and wanted(frame["event"]):
                return frame


# --- authentication ---------------------------------------------------------------------------


async def test_auth_by_first_message(server: Server, owner: User) -> None:
    session = await owner.provider.auth.get_session()
    assert session is not None
    async with client(server.url) as conn:
        assert conn.subprotocol == "kiiaren.v1"
        ready = await authenticate(conn, owner.token)
    assert ready == {
        "type": "ready",
        "user_id": owner.user_id,
        "session_id": session.session_id,
        "heartbeat_interval": 20.0,
        "max_frame_bytes": 65536,
    }


async def test_auth_by_subprotocol(server: Server, owner: User) -> None:
    async with client(server.url, token=owner.token) as conn:
        assert conn.subprotocol == "kiiaren.v1", "the token is never echoed as the subprotocol"
        ready = await recv_type(conn, "ready")
        assert ready["user_id"] == owner.user_id
        await send(conn, {"type": "ping", "id": "after-auth"})
        assert await recv(conn) == {"type": "pong", "id": "after-auth"}


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "access_token": "not-a-token"},
        {"type": "subscribe", "id": "s", "workspace_id": "w"},
        {"type": "ping"},
        "{not json",
    ],
    ids=["bad-token", "subscribe-first", "ping-first", "garbage"],
)
async def test_anything_but_a_good_auth_first_closes_4401(
    server: Server, first: dict[str, Any] | str
) -> None:
    async with client(server.url) as conn:
        await conn.send(first if isinstance(first, str) else json.dumps(first))
        assert await close_code(conn) == CLOSE_AUTH_FAILED


async def test_bad_or_revoked_subprotocol_token_closes_4401(
    server: Server, selfhost_provider: SelfHostProvider
) -> None:
    async with client(server.url, token="forged.token.value") as conn:
        assert await close_code(conn) == CLOSE_AUTH_FAILED
    gone = await sign_up(selfhost_provider, "Gone")
    await gone.provider.auth.sign_out()
    async with client(server.url, token=gone.token) as conn:
        assert await close_code(conn) == CLOSE_AUTH_FAILED


async def test_no_auth_within_the_timeout_closes_4401(server: Server) -> None:
    started = time.monotonic()
    async with client(server.url) as conn:
        assert await close_code(conn) == CLOSE_AUTH_FAILED
    assert time.monotonic() - started < 3.0  # auth_timeout_seconds is 0.5 here


async def test_a_refreshed_token_keeps_the_subscriptions_without_gap_or_duplicate(
    server: Server, owner: User, workspace: Workspace, selfhost_provider: SelfHostProvider
) -> None:
    async with client(server.url, token=owner.token) as conn:
        first = await recv_type(conn, "ready")
        await subscribe(conn, "s", workspace.id, types=["test.*"])
        await ping(owner, workspace, 0)
        assert numbers(await events(conn, 1)) == [0]

        await owner.provider.auth.refresh_session()
        assert owner.provider.auth.tokens is not None
        await ping(owner, workspace, 1)  # in flight while the subscription moves
        await send(conn, {"type": "auth", "access_token": owner.provider.auth.tokens.access_token})
        got: list[dict[str, Any]] = []
        while True:
            frame = await recv(conn)
            if frame["type"] == "ready":
                break
            got.append(frame)
        assert frame["session_id"] == first["session_id"]
        await ping(owner, workspace, 2)
        await ping(owner, workspace, 3)
        while len(got) < 3:
            got.append(await recv_type(conn, "event"))
        assert numbers(got) == [1, 2, 3]
        await nothing_within(conn, 0.3)

        # Another user's token or a bad one is refused; the socket keeps its session.
        stranger = await sign_up(selfhost_provider, "Stranger")
        await send(conn, {"type": "auth", "access_token": stranger.token})
        refused = await recv_type(conn, "error")
        assert refused["error"]["code"] == "permission_denied"
        await send(conn, {"type": "auth", "access_token": "bad"})
        assert (await recv_type(conn, "error"))["error"]["code"] == "not_authenticated"
        await ping(owner, workspace, 4)
        assert numbers(await events(conn, 1)) == [4]


# --- origins ----------------------------------------------------------------------------------


async def test_a_browser_origin_off_the_list_is_refused_before_the_upgrade(
    server: Server, owner: User
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with client(server.url, origin="https://evil.example.com"):
            pass
    response = refused.value.response
    assert response.status_code == 403
    body = json.loads(response.body or b"{}")
    assert body["error"]["code"] == "permission_denied"
    assert len(server.registry) == 0

    for origin in (ALLOWED_ORIGIN, ALLOWED_ORIGIN.upper() + "/", None):
        async with client(server.url, token=owner.token, origin=origin) as conn:
            await recv_type(conn, "ready")


# --- subscriptions ----------------------------------------------------------------------------


async def test_one_socket_multiplexes_several_workspaces(server: Server, owner: User) -> None:
    one = await owner.provider.persistence.workspace.create("One")
    two = await owner.provider.persistence.workspace.create("Two")
    position = await owner.provider.events.position(one.id)
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        subscribed = await subscribe(conn, "a", one.id, types=["test.*"])
        assert subscribed == {
            "type": "subscribed",
            "id": "a",
            "workspace_id": one.id,
            "seq": position.seq,
            "epoch": position.epoch,
        }
        await subscribe(conn, "b", two.id, types=["test.*"])
        await ping(owner, one, 1)
        await ping(owner, two, 2)
        await ping(owner, one, 3)
        got = await events(conn, 3)
    by_subscription = {
        key: [(f["event"]["workspace_id"], f["event"]["payload"]["n"]) for f in group]
        for key, group in itertools.groupby(
            sorted(got, key=lambda f: f["subscription"]), key=lambda f: f["subscription"]
        )
    }
    assert by_subscription == {"a": [(one.id, 1), (one.id, 3)], "b": [(two.id, 2)]}


async def test_type_filters_per_subscription(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await subscribe(conn, "tests", workspace.id, types=["test.*"])
        await subscribe(conn, "updates", workspace.id, types=["*.updated"])
        await ping(owner, workspace, 1)
        await owner.provider.persistence.workspace.update(workspace.id, name="Renamed")
        got = await events(conn, 2)
        await nothing_within(conn, 0.3)
    assert sorted((f["subscription"], f["event"]["type"]) for f in got) == [
        ("tests", "test.ping"),
        ("updates", "workspace.updated"),
    ]


async def test_events_arrive_in_seq_order_as_full_envelopes(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await subscribe(conn, "s", workspace.id, types=["test.*"])
        sent = [await ping(owner, workspace, n) for n in range(20)]
        got = await events(conn, 20)
    assert numbers(got) == list(range(20))
    assert [f["event"]["seq"] for f in got] == sent
    assert sent == list(range(sent[0], sent[0] + 20))
    envelope = got[0]["event"]
    assert set(envelope) == {
        "id",
        "seq",
        "type",
        "timestamp",
        "workspace_id",
        "actor_id",
        "payload",
    }
    assert envelope["actor_id"] == owner.user_id


async def test_resume_with_since_has_no_gap_and_no_duplicate_at_the_seam(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        subscribed = await subscribe(conn, "s", workspace.id, types=["test.*"])
        for n in range(5):
            await ping(owner, workspace, n)
        first = await events(conn, 5)
    last_seq = first[-1]["event"]["seq"]
    for n in range(5, 10):  # missed while disconnected
        await ping(owner, workspace, n)
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await send(
            conn,
            {
                "type": "subscribe",
                "id": "s",
                "workspace_id": workspace.id,
                "types": ["test.*"],
                "since": last_seq,
                "epoch": subscribed["epoch"],
            },
        )
        # Live events race the replay: the seam is where a gap or a duplicate would show.
        async with anyio.create_task_group() as tg:
            for n in range(10, 15):
                tg.start_soon(ping, owner, workspace, n)
            resumed = await recv_type(conn, "subscribed")
            rest = await events(conn, 10)
        await nothing_within(conn, 0.3)
    assert resumed["seq"] == last_seq
    assert sorted(numbers(rest)[:5]) == numbers(rest)[:5] == list(range(5, 10))
    assert sorted(numbers(rest)) == list(range(5, 15))
    seqs = [f["event"]["seq"] for f in rest]
    assert seqs == list(range(last_seq + 1, last_seq + 11))


async def test_resume_from_the_future_or_another_epoch_is_not_recovered(
    server: Server, owner: User, workspace: Workspace
) -> None:
    head = await owner.provider.events.position(workspace.id)
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        future = await subscribe(
            conn, "future", workspace.id, types=["test.*"], since=head.seq + 50
        )
        assert future["seq"] == head.seq
        assert await recv(conn) == {
            "type": "not_recovered",
            "subscription": "future",
            "workspace_id": workspace.id,
            "reason": "future",
            "requested_since": head.seq + 50,
            "seq": head.seq,
            "epoch": head.epoch,
        }
        await subscribe(conn, "epoch", workspace.id, types=["test.*"], since=0, epoch="other")
        signal = await recv_type(conn, "not_recovered")
        assert (signal["subscription"], signal["reason"]) == ("epoch", "epoch_changed")
        # Live delivery continues after the signal, never a partial replay.
        seq = await ping(owner, workspace, 1)
        got = await events(conn, 2)
        assert sorted(f["subscription"] for f in got) == ["epoch", "future"]
        assert {f["event"]["seq"] for f in got} == {seq}


async def test_unsubscribe_and_subscription_id_errors(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        subscribed = await subscribe(conn, "s", workspace.id, types=["test.*"])
        await send(conn, {"type": "subscribe", "id": "s", "workspace_id": workspace.id})
        duplicate = await recv_type(conn, "error")
        assert (duplicate["id"], duplicate["error"]["code"]) == ("s", "conflict")
        await send(
            conn, {"type": "subscribe", "id": "p", "workspace_id": workspace.id, "types": ["a..b"]}
        )
        pattern = await recv_type(conn, "error")
        assert (pattern["id"], pattern["error"]["code"]) == ("p", "invalid_input")

        await send(conn, {"type": "unsubscribe", "id": "s"})
        assert await recv(conn) == {
            "type": "unsubscribed",
            "id": "s",
            "reason": "unsubscribed",
            "last_seq": subscribed["seq"],
            "error": None,
        }
        await ping(owner, workspace, 1)
        await nothing_within(conn, 0.3)
        await send(conn, {"type": "unsubscribe", "id": "s"})
        missing = await recv_type(conn, "error")
        assert (missing["id"], missing["error"]["code"]) == ("s", "not_found")


# --- isolation, removal, revocation -----------------------------------------------------------


async def test_a_foreign_workspace_answers_not_found_exactly_like_a_missing_one(
    server: Server, owner: User, selfhost_provider: SelfHostProvider
) -> None:
    other = await sign_up(selfhost_provider, "Other")
    foreign = await other.provider.persistence.workspace.create("Foreign")
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await send(conn, {"type": "subscribe", "id": "x", "workspace_id": foreign.id})
        refused_foreign = await recv_type(conn, "error")
        await send(conn, {"type": "subscribe", "id": "x", "workspace_id": str(uuid.uuid4())})
        refused_missing = await recv_type(conn, "error")
        await ping(other, foreign, 1)
        await nothing_within(conn, 0.3)
    assert refused_foreign == refused_missing
    assert refused_foreign["id"] == "x"
    assert refused_foreign["error"]["code"] == "not_found"


async def test_a_removed_member_stops_receiving_within_2s_and_keeps_the_socket(
    server: Server, owner: User, workspace: Workspace, selfhost_provider: SelfHostProvider
) -> None:
    member = await sign_up(selfhost_provider, "Member")
    member_id = await join(owner, workspace, member)
    own = await member.provider.persistence.workspace.create("Own")
    async with client(server.url, token=member.token) as conn:
        await recv_type(conn, "ready")
        await subscribe(conn, "shared", workspace.id, types=["test.*"])
        await subscribe(conn, "own", own.id, types=["test.*"])
        seq = await ping(owner, workspace, 1)
        assert numbers(await events(conn, 1)) == [1]

        started = time.monotonic()
        await owner.provider.persistence.member.remove(member_id)
        ended = await recv_type(conn, "unsubscribed", within=2.0)
        assert time.monotonic() - started < 2.0
        assert ended == {
            "type": "unsubscribed",
            "id": "shared",
            "reason": "removed",
            "last_seq": seq,
            "error": None,
        }
        await ping(owner, workspace, 2)
        await ping(member, own, 3)
        (frame,) = await events(conn, 1)
        assert (frame["subscription"], frame["event"]["payload"]["n"]) == ("own", 3)
        await nothing_within(conn, 0.3)


async def test_a_deleted_workspace_ends_its_subscriptions(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await subscribe(conn, "s", workspace.id, types=["test.*"])
        await owner.provider.persistence.workspace.remove(workspace.id)
        ended = await recv_type(conn, "unsubscribed", within=2.0)
        assert (ended["id"], ended["reason"]) == ("s", "workspace_deleted")
        await send(conn, {"type": "ping"})
        assert await recv(conn) == {"type": "pong", "id": None}


async def test_sign_out_closes_open_sockets_with_4401_within_2s(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with (
        client(server.url, token=owner.token) as subscribed,
        client(server.url, token=owner.token) as idle,
    ):
        await recv_type(subscribed, "ready")
        await recv_type(idle, "ready")
        await subscribe(subscribed, "s", workspace.id, types=["test.*"])
        started = time.monotonic()
        await owner.provider.auth.sign_out()
        codes = [await close_code(subscribed, 2.5), await close_code(idle, 2.5)]
        elapsed = time.monotonic() - started
    assert codes == [CLOSE_AUTH_FAILED, CLOSE_AUTH_FAILED]
    assert elapsed < 2.5


async def test_a_socket_whose_last_subscription_ended_still_notices_revocation(
    server: Server, owner: User, workspace: Workspace, selfhost_provider: SelfHostProvider
) -> None:
    member = await sign_up(selfhost_provider, "Leaver")
    member_id = await join(owner, workspace, member)
    async with client(server.url, token=member.token) as conn:
        await recv_type(conn, "ready")
        await subscribe(conn, "s", workspace.id, types=["test.*"])
        await owner.provider.persistence.member.remove(member_id)
        assert (await recv_type(conn, "unsubscribed", within=2.0))["reason"] == "removed"
        started = time.monotonic()
        await member.provider.auth.sign_out()
        assert await close_code(conn, 2.5) == CLOSE_AUTH_FAILED
        assert time.monotonic() - started < 2.5


# --- flow control and limits ------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off_4408_without_slowing_others(
    server: Server, owner: User, workspace: Workspace
) -> None:
    raw = await RawClient.open(server.url, token=owner.token)
    try:
        assert (await raw.read_frame())["type"] == "ready"
        await raw.send_text(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "slow",
                    "workspace_id": workspace.id,
                    "types": ["test.*"],
                }
            )
        )
        assert (await raw.read_frame())["type"] == "subscribed"
        # From here on the raw client reads nothing.
        pad = "x" * 60_000
        async with client(server.url, token=owner.token) as fast:
            await recv_type(fast, "ready")
            await subscribe(fast, "fast", workspace.id, types=["test.*"])
            sent = 0
            with anyio.fail_after(60):
                while (
                    len(server.registry) == 2
                    and CLOSE_SLOW_CONSUMER not in server.registry.close_codes
                ):
                    await ping(owner, workspace, sent, pad=pad)
                    (frame,) = await events(fast, 1, within=2.0)
                    assert frame["event"]["payload"]["n"] == sent, "the fast client never waits"
                    sent += 1
            for n in range(sent, sent + 3):
                await ping(owner, workspace, n, pad=pad)
                assert numbers(await events(fast, 1, within=2.0)) == [n]
        close = await raw.read_to_close(within=10)
        assert close is not None
        assert close.code == CLOSE_SLOW_CONSUMER
        assert raw.received - 2 < sent, "the slow client was cut before it got everything"
    finally:
        raw.aclose()


@sqlite_only
async def test_a_frame_over_the_limit_closes_4409(server: Server, owner: User) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await send(conn, {"type": "ping", "id": "x" * 200, "pad": "y" * 60_000})  # under 64 KiB
        assert (await recv_type(conn, "error"))["error"]["code"] == "invalid_input"
        await conn.send(json.dumps({"type": "ping", "pad": "é" * 40_000}))  # 80 KB of UTF-8
        assert await close_code(conn) == CLOSE_FRAME_TOO_LARGE
    async with client(server.url) as conn:  # also before authentication
        await conn.send("x" * 70_000)
        assert await close_code(conn) == CLOSE_FRAME_TOO_LARGE


@sqlite_only
async def test_malformed_frames_answer_errors_then_close_4400(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await conn.send("{not json")
        bad_json = await recv_type(conn, "error")
        assert bad_json["id"] is None
        assert bad_json["error"]["code"] == "invalid_input"
        # Refusals of well-formed frames are not malformed frames.
        for _ in range(3):
            await send(conn, {"type": "unsubscribe", "id": "nope"})
            assert (await recv_type(conn, "error"))["error"]["code"] == "not_found"
        await send(conn, {"type": "subscribe", "id": "k", "since": -1})
        missing = await recv_type(conn, "error")
        assert missing["id"] == "k"
        fields = {problem["field"] for problem in missing["error"]["details"]["errors"]}
        assert fields == {"subscribe.workspace_id", "subscribe.since"}
        await conn.send(b"\x00binary")
        assert await close_code(conn) == CLOSE_MALFORMED


@sqlite_only
async def test_ping_pong(server: Server, owner: User) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        await send(conn, {"type": "ping", "id": "p1"})
        await send(conn, {"type": "ping"})
        assert [await recv(conn), await recv(conn)] == [
            {"type": "pong", "id": "p1"},
            {"type": "pong", "id": None},
        ]


# --- ephemeral frames -------------------------------------------------------------------------


async def test_presence_and_typing_frames_reach_other_subscribers(
    server: Server, owner: User, workspace: Workspace, selfhost_provider: SelfHostProvider
) -> None:
    member = await sign_up(selfhost_provider, "Member")
    await join(owner, workspace, member)
    channel = (await owner.provider.persistence.channel.get(workspace.id))[0]
    async with (
        client(server.url, token=owner.token) as sender,
        client(server.url, token=member.token) as watcher,
    ):
        await recv_type(sender, "ready")
        await recv_type(watcher, "ready")
        await subscribe(watcher, "live", workspace.id, types=["typing.*", "presence.*"])
        await send(
            sender,
            {
                "type": "typing",
                "workspace_id": workspace.id,
                "channel_id": channel.id,
                "is_typing": True,
            },
        )
        typing = await recv_event(watcher, lambda e: e["type"] == "typing.changed")
        assert typing["event"]["seq"] is None
        assert typing["event"]["actor_id"] == owner.user_id
        assert typing["event"]["payload"] == {
            "user_id": owner.user_id,
            "member_id": None,
            "channel_id": channel.id,
            "conversation_id": None,
            "parent_message_id": None,
            "is_typing": True,
        }
        await send(sender, {"type": "presence", "workspace_id": workspace.id, "status": "away"})
        presence = await recv_event(
            watcher,
            lambda e: e["type"] == "presence.changed" and e["payload"]["user_id"] == owner.user_id,
        )
        assert presence["event"]["payload"]["status"] == "away"
        # A bad status or a foreign workspace is answered, never broadcast.
        await send(
            sender,
            {"type": "presence", "workspace_id": workspace.id, "status": "asleep", "id": "q"},
        )
        assert (await recv_type(sender, "error"))["id"] == "q"
        await send(sender, {"type": "typing", "workspace_id": str(uuid.uuid4()), "id": "t"})
        refused = await recv_type(sender, "error")
        assert (refused["id"], refused["error"]["code"]) == ("t", "not_found")


@sqlite_only
async def test_ephemeral_frames_are_rate_limited(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with client(server.url, token=owner.token) as conn:
        await recv_type(conn, "ready")
        for n in range(25):  # burst of 20 at 10/s
            await send(conn, {"type": "typing", "workspace_id": workspace.id, "id": f"t{n}"})
        await send(conn, {"type": "ping", "id": "end"})
        answers = []
        while (frame := await recv(conn))["type"] != "pong":
            answers.append(frame)
    assert answers, "some typing frames were refused"
    assert all(a["error"]["code"] == "rate_limited" for a in answers)
    assert all(a["error"]["details"]["retry_after"] > 0 for a in answers)


# --- heartbeats and shutdown ------------------------------------------------------------------


@sqlite_only
async def test_heartbeats_close_a_peer_that_never_answers_pings(
    selfhost_provider: SelfHostProvider, owner: User
) -> None:
    settings = SimpleNamespace(ws_heartbeat_interval_seconds=0.3, ws_heartbeat_timeout_seconds=0.3)
    app = build_app(selfhost_provider, heartbeat_interval_seconds=0.3)
    async with serve(app, **ws.uvicorn_options(settings)) as srv:
        raw = await RawClient.open(srv.url, token=owner.token)
        try:
            assert (await raw.read_frame())["heartbeat_interval"] == 0.3
            async with client(srv.url, token=owner.token) as alive:
                await recv_type(alive, "ready")
                started = time.monotonic()
                await raw.read_to_close(within=3.0)  # reads, never answers a ping
                assert time.monotonic() - started < 2.0
                assert raw.close is not None
                assert raw.close.code == 1011
                await anyio.sleep(1.0)  # several heartbeats: the answering client stays
                await send(alive, {"type": "ping", "id": "still"})
                assert await recv(alive) == {"type": "pong", "id": "still"}
        finally:
            raw.aclose()


async def test_close_all_closes_every_socket_with_1001(
    server: Server, owner: User, workspace: Workspace
) -> None:
    async with (
        client(server.url, token=owner.token) as one,
        client(server.url, token=owner.token) as two,
    ):
        await recv_type(one, "ready")
        await recv_type(two, "ready")
        await subscribe(one, "s", workspace.id, types=["test.*"])
        await server.registry.close_all()
        assert len(server.registry) == 0
        assert [await close_code(one), await close_code(two)] == [CLOSE_GOING_AWAY] * 2
    async with client(server.url, token=owner.token) as late:
        assert await close_code(late) == CLOSE_GOING_AWAY


# --- several server processes -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _start_server_process(
    database_url: str, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {
        **os.environ,
        "KIIAREN_WS_TEST_OPTIONS": json.dumps({"database_url": database_url, **TEST_OPTIONS}),
    }
    command = [
        sys.executable, "-m", "uvicorn", "tests.server.ws_helpers:app_from_env", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for over HTTP
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=Path.cwd()
        )
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(30):
            while True:
                if process.poll() is not None:
                    raise AssertionError(await anyio.Path(log).read_text())
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        return process, port
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)


@pytest.mark.postgres
async def test_events_written_through_one_server_process_reach_sockets_of_another(
    postgres_url: str, tmp_path: Path
) -> None:
    from kiiaren_selfhost import migrate

    await migrate(postgres_url)
    processes = []
    try:
        for name in ("a", "b"):
            processes.append(await _start_server_process(postgres_url, tmp_path / f"{name}.log"))
        (_, port_a), (_, port_b) = processes
        async with SelfHostProvider(database_url=postgres_url, **TEST_OPTIONS) as provider:
            owner = await sign_up(provider, "Cross")
            workspace = await owner.provider.persistence.workspace.create("Cross")
        url_b = f"ws://127.0.0.1:{port_b}{ws.EVENTS_PATH}"
        url_a = f"ws://127.0.0.1:{port_a}{ws.EVENTS_PATH}"
        async with (
            client(url_b, token=owner.token) as on_b,
            client(url_a, token=owner.token) as on_a,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}") as http,
        ):
            for conn in (on_a, on_b):
                await recv_type(conn, "ready")
                await subscribe(conn, "s", workspace.id, types=["test.*"])
            headers = {"Authorization": f"Bearer {owner.token}"}
            for n in range(20):
                answer = await http.post(
                    f"/v1/workspaces/{workspace.id}/events",
                    json={"type": "test.ping", "payload": {"n": n}},
                    headers=headers,
                )
                assert answer.status_code == 201, answer.text
            from_b = await events(on_b, 20)
            from_a = await events(on_a, 20)
        for got in (from_a, from_b):
            assert numbers(got) == list(range(20))
            seqs = [f["event"]["seq"] for f in got]
            assert seqs == list(range(seqs[0], seqs[0] + 20))
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            await asyncio.to_thread(process.wait, 10)

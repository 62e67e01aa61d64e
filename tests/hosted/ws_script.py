"""A scripted peer for the events WebSocket: the frames of ``docs/wire-protocol-events.md``
over a real loopback socket, with knobs a real server does not offer (close with any code,
change the epoch, repeat events, end a subscription with any reason)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


@dataclass
class _Sub:
    id: str
    workspace_id: str
    connection: ServerConnection


@dataclass
class ScriptedEventServer:
    """Accepts tokens for which ``token_ok(token)`` is true; one event log per workspace."""

    token_ok: Callable[[str], bool] = lambda token: True
    epoch: str = "epoch-1"
    log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)
    connects: int = 0
    replay_overlap: int = 0
    """Replay this many already-delivered events again on resume (a buggy server)."""
    _subs: dict[str, _Sub] = field(default_factory=dict)
    _connections: set[ServerConnection] = field(default_factory=set)
    _server: Server | None = None

    async def start(self) -> str:
        self._server = await serve(
            self._handle, "127.0.0.1", 0, subprotocols=[Subprotocol("kiiaren.v1")]
        )
        port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def workspace(self, workspace_id: str) -> None:
        self.log.setdefault(workspace_id, [])

    def sent(self, kind: str) -> list[dict[str, Any]]:
        """The client frames of type ``kind`` received so far."""
        return [frame for frame in self.frames if frame.get("type") == kind]

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # --- driving ------------------------------------------------------------------------------

    async def publish(self, workspace_id: str, n: int) -> dict[str, Any]:
        """Append ``test.ping {n}`` to the log and send it to live subscriptions."""
        events = self.log[workspace_id]
        event = {
            "id": str(uuid.uuid4()),
            "seq": len(events) + 1,
            "type": "test.ping",
            "timestamp": datetime.now(UTC).isoformat(),
            "workspace_id": workspace_id,
            "actor_id": "u1",
            "payload": {"n": n},
        }
        events.append(event)
        for sub in list(self._subs.values()):
            if sub.workspace_id == workspace_id:
                await self._send(
                    sub.connection, {"type": "event", "subscription": sub.id, "event": event}
                )
        return event

    async def close_all(self, code: int, reason: str = "") -> None:
        for connection in list(self._connections):
            with contextlib.suppress(ConnectionClosed):
                await connection.close(code, reason)

    async def end_subscriptions(self, reason: str, error: dict[str, Any] | None = None) -> None:
        """End every subscription from the server's side with ``unsubscribed {reason}``."""
        for sub in list(self._subs.values()):
            del self._subs[sub.id]
            events = self.log[sub.workspace_id]
            await self._send(
                sub.connection,
                {
                    "type": "unsubscribed",
                    "id": sub.id,
                    "reason": reason,
                    "last_seq": len(events),
                    "error": error,
                },
            )

    # --- serving ------------------------------------------------------------------------------

    @staticmethod
    async def _send(connection: ServerConnection, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.send(json.dumps(frame))

    async def _handle(self, connection: ServerConnection) -> None:
        self.connects += 1
        try:
            first = json.loads(await connection.recv())
        except ConnectionClosed:
            return
        self.frames.append(first)
        if first.get("type") != "auth" or not self.token_ok(first.get("access_token", "")):
            await connection.close(4401, "invalid or expired access token")
            return
        self._connections.add(connection)
        await self._send(connection, _ready())
        try:
            async for message in connection:
                frame = json.loads(message)
                self.frames.append(frame)
                await self._on_frame(connection, frame)
        except ConnectionClosed:
            pass
        finally:
            self._connections.discard(connection)
            for sub_id in [k for k, sub in self._subs.items() if sub.connection is connection]:
                del self._subs[sub_id]

    async def _on_frame(self, connection: ServerConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "auth":
            if self.token_ok(frame.get("access_token", "")):
                await self._send(connection, _ready())
            else:
                await self._send(connection, _error(None, "not_authenticated", "Invalid token."))
        elif kind == "subscribe":
            await self._subscribe(connection, frame)
        elif kind == "unsubscribe":
            sub = self._subs.pop(frame["id"], None)
            if sub is None:
                await self._send(connection, _error(frame["id"], "not_found", "No subscription."))
            else:
                last = len(self.log[sub.workspace_id])
                await self._send(
                    connection,
                    {
                        "type": "unsubscribed",
                        "id": sub.id,
                        "reason": "unsubscribed",
                        "last_seq": last,
                        "error": None,
                    },
                )
        elif kind == "ping":
            await self._send(connection, {"type": "pong", "id": frame.get("id")})

    async def _subscribe(self, connection: ServerConnection, frame: dict[str, Any]) -> None:
        workspace_id = frame["workspace_id"]
        if workspace_id not in self.log:
            await self._send(connection, _error(frame["id"], "not_found", "Workspace not found."))
            return
        events = self.log[workspace_id]
        head, since, epoch = len(events), frame.get("since"), frame.get("epoch")
        reason = None
        if since is not None and epoch is not None and epoch != self.epoch:
            reason = "epoch_changed"
        elif since is not None and since > head:
            reason = "future"
        cursor = head if since is None or reason else since
        await self._send(
            connection,
            {
                "type": "subscribed",
                "id": frame["id"],
                "workspace_id": workspace_id,
                "seq": cursor,
                "epoch": self.epoch,
            },
        )
        if reason is not None:
            await self._send(
                connection,
                {
                    "type": "not_recovered",
                    "subscription": frame["id"],
                    "workspace_id": workspace_id,
                    "reason": reason,
                    "requested_since": since,
                    "seq": head,
                    "epoch": self.epoch,
                },
            )
        start = max(0, cursor - self.replay_overlap) if since is not None and not reason else cursor
        for event in events[start:]:
            await self._send(
                connection, {"type": "event", "subscription": frame["id"], "event": event}
            )
        self._subs[frame["id"]] = _Sub(frame["id"], workspace_id, connection)


def _ready() -> dict[str, Any]:
    return {
        "type": "ready",
        "user_id": "u1",
        "session_id": "s1",
        "heartbeat_interval": 20.0,
        "max_frame_bytes": 65536,
    }


def _error(frame_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "id": frame_id,
        "error": {"code": code, "message": message, "details": {}},
    }


async def settle(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (TimeoutError after ``within`` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.01)

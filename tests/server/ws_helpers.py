"""Helpers for the events WebSocket tests: a real uvicorn on loopback, clients, users.

``serve`` runs uvicorn inside the test's event loop on a port it binds itself, so a test can
reach the app (its registry, its provider) while talking to it over real sockets.
``RawClient`` is a WebSocket client over a bare socket that reads only when told to (a client
that stops reading, or never answers pings). ``app_from_env`` is the factory the
multi-process test runs in ``uvicorn --factory`` subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from kiiaren_core.models import Workspace
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.testing.base import unique_email
from selfhost_server import ServerSettings, create_app, ws
from selfhost_server.ws import ConnectionRegistry, WebSocketConfig

PASSWORD = "Websocket-test-password-1"
TIMEOUT = 5.0

# Short timings so the tests that wait for them stay fast.
TEST_TIMINGS: dict[str, Any] = {
    "auth_timeout_seconds": 0.5,
    "send_timeout_seconds": 1.0,
    "close_timeout_seconds": 3.0,
}


def build_app(
    provider: BackendProvider,
    *,
    allowed_origins: tuple[str, ...] = (),
    **config: Any,
) -> FastAPI:
    """``create_app`` with the events router and a registry using test timings."""
    settings = ServerSettings(ws_allowed_origins=allowed_origins)
    app = create_app(provider, settings)
    if not any(getattr(route, "path", None) == ws.EVENTS_PATH for route in app.routes):
        app.include_router(ws.router)  # until create_app mounts it itself
    base = WebSocketConfig.from_settings(settings)
    app.state.ws_connections = ConnectionRegistry(
        base.model_copy(update={**TEST_TIMINGS, **config})
    )
    return app


@dataclass
class Server:
    app: FastAPI
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{ws.EVENTS_PATH}"

    @property
    def registry(self) -> ConnectionRegistry:
        return ws.connection_registry(self.app)


@contextlib.asynccontextmanager
async def serve(app: FastAPI, **uvicorn_options: Any) -> AsyncIterator[Server]:
    """Run ``app`` under uvicorn on 127.0.0.1 in this event loop until the block exits,
    with the options production uses (``ws.uvicorn_options``) unless overridden."""
    uvicorn_options = {**ws.uvicorn_options(app.state.kiiaren.settings), **uvicorn_options}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        **uvicorn_options,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield Server(app, port)
    finally:
        server.should_exit = True
        await task
        sock.close()


# --- clients ------------------------------------------------------------------------------


def client(
    url: str,
    *,
    token: str | None = None,
    origin: str | None = None,
    subprotocols: list[str] | None = None,
) -> connect:
    """A ``websockets`` client; with ``token`` it authenticates through the subprotocol."""
    offered = subprotocols if subprotocols is not None else ["kiiaren.v1"]
    if token is not None:
        offered = [*offered, f"bearer.{token}"]
    return connect(
        url,
        subprotocols=[Subprotocol(p) for p in offered],
        origin=Origin(origin) if origin else None,
        open_timeout=TIMEOUT,
        close_timeout=2,
    )


async def send(conn: ClientConnection, frame: dict[str, Any]) -> None:
    await conn.send(json.dumps(frame))


async def recv(conn: ClientConnection, within: float = TIMEOUT) -> dict[str, Any]:
    """The next frame, failing the test after ``within`` seconds."""
    with anyio.fail_after(within):
        frame: dict[str, Any] = json.loads(await conn.recv())
    return frame


async def recv_type(conn: ClientConnection, type_: str, within: float = TIMEOUT) -> dict[str, Any]:
    """The next frame, which must be of ``type_``."""
    frame = await recv(conn, within)
    assert frame["type"] == type_, frame
    return frame


async def authenticate(conn: ClientConnection, token: str) -> dict[str, Any]:
    await send(conn, {"type": "auth", "access_token": token})
    return await recv_type(conn, "ready")


async def subscribe(
    conn: ClientConnection, sub_id: str, workspace_id: str, **options: Any
) -> dict[str, Any]:
    await send(conn, {"type": "subscribe", "id": sub_id, "workspace_id": workspace_id, **options})
    return await recv_type(conn, "subscribed")


async def events(
    conn: ClientConnection, count: int, within: float = TIMEOUT
) -> list[dict[str, Any]]:
    """The next ``count`` frames, which must all be ``event`` frames."""
    return [await recv_type(conn, "event", within) for _ in range(count)]


async def close_code(conn: ClientConnection, within: float = TIMEOUT) -> int | None:
    """Read until the server closes; the close code it sent (None: no close frame)."""
    with anyio.fail_after(within):
        try:
            while True:
                await conn.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def nothing_within(conn: ClientConnection, seconds: float) -> None:
    """Assert no frame arrives for ``seconds``."""
    with anyio.move_on_after(seconds):
        frame = await conn.recv()
        raise AssertionError(f"unexpected frame: {frame!r}")


class RawClient:
    """A WebSocket client over a bare socket that reads only when asked (never on its own).

    It never answers pings unless :meth:`flush` is called after a read, so it also models a
    dead peer.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.unread: deque[str] = deque()
        self.received = 0
        self.close: Close | None = None
        self.response: Response | None = None

    @classmethod
    async def open(
        cls, url: str, *, receive_buffer: int = 4096, token: str | None = None
    ) -> RawClient:
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A tiny receive window: the server's writes block soon after we stop reading.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        offered = ["kiiaren.v1"] + ([f"bearer.{token}"] if token else [])
        raw = cls(sock, ClientProtocol(uri, subprotocols=[Subprotocol(p) for p in offered]))
        try:
            await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
            raw.protocol.send_request(raw.protocol.connect())
            await raw.flush()
            with anyio.fail_after(TIMEOUT):
                while raw.response is None and raw.protocol.handshake_exc is None:
                    if not await raw.read_once():
                        break
            if raw.protocol.handshake_exc is not None:
                raise raw.protocol.handshake_exc
        except BaseException:
            sock.close()
            raise
        return raw

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self.flush()

    async def read_once(self) -> bool:
        """One ``recv`` from the socket; False at EOF."""
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)
        except ConnectionError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.unread.append(bytes(event.data).decode())
                self.received += 1
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.close = Close.parse(bytes(event.data))
        return bool(data)

    async def read_frame(self, within: float = TIMEOUT) -> dict[str, Any]:
        """The next text frame, parsed."""
        with anyio.fail_after(within):
            while not self.unread:
                if not await self.read_once():
                    raise EOFError("the server closed the connection")
        frame: dict[str, Any] = json.loads(self.unread.popleft())
        return frame

    async def read_to_close(self, within: float = TIMEOUT) -> Close | None:
        """Read everything until the server's close frame or EOF; the close frame, if any."""
        with anyio.fail_after(within):
            while self.close is None and await self.read_once():
                pass
        return self.close

    def aclose(self) -> None:
        self.sock.close()


# --- users ----------------------------------------------------------------------------------


@dataclass
class User:
    provider: BackendProvider
    token: str
    user_id: str


async def sign_up(root: BackendProvider, name: str = "Socket") -> User:
    view = root.with_session(None)
    session = await view.auth.sign_up_with_password(unique_email(), PASSWORD, name=name)
    assert view.auth.tokens is not None
    return User(view, view.auth.tokens.access_token, session.user_id)


async def join(owner: User, workspace: Workspace, other: User) -> str:
    """Let ``other`` join ``workspace``; returns their member id."""
    current = await owner.provider.persistence.workspace.get(workspace.id)
    assert current is not None
    assert current.join_code is not None
    member = await other.provider.persistence.workspace.join(
        workspace.id, join_code=current.join_code
    )
    return member.id


# --- the multi-process server ----------------------------------------------------------------


def app_from_env() -> FastAPI:
    """The app a ``uvicorn --factory`` subprocess serves: a self-host provider on the
    database of ``KIIAREN_WS_TEST_OPTIONS`` (JSON keyword options) with the events router."""
    from kiiaren_selfhost import SelfHostProvider

    options = json.loads(os.environ["KIIAREN_WS_TEST_OPTIONS"])
    return build_app(SelfHostProvider(**options))

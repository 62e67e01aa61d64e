"""A real bundled server for the hosted provider's tests: ``create_app(SelfHostProvider)``
under uvicorn on ``127.0.0.1:<ephemeral port>``, in a thread with its own event loop (the
client under test shares nothing with it but sockets), and the client-side test transport.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from kiiaren_selfhost import SelfHostProvider
from selfhost_server import ServerSettings, create_app
from selfhost_server import ws as ws_module
from tests.selfhost.conftest import TEST_OPTIONS

LOOPBACK = "127.0.0.1"


class LiveServer:
    """One server process-in-a-thread; ``url`` is its base URL (``http://127.0.0.1:<port>``)."""

    def __init__(self, database_url: str, storage_path: Path, **provider_options: Any) -> None:
        self.database_url = database_url
        self.storage_path = storage_path
        self.provider_options = {**TEST_OPTIONS, **provider_options}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            provider = SelfHostProvider(
                database_url=self.database_url,
                storage_path=str(self.storage_path),
                public_url=self.url,
                **self.provider_options,
            )
            # Every test client is "behind" this proxy and names its own address (see
            # DistinctClients), so per-address rate limits do not add up across tests.
            settings = ServerSettings(trusted_proxies=(f"{LOOPBACK}/32",))
            app = create_app(provider, settings)
            if not any(getattr(r, "path", None) == ws_module.EVENTS_PATH for r in app.routes):
                app.include_router(ws_module.router)
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=5,
                **ws_module.uvicorn_options(settings),
            )
            self._server = uvicorn.Server(config)
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start()/stop() in the test's thread
            self._failure = exc

    def start(self) -> LiveServer:
        self._thread = threading.Thread(target=self._run, name=f"kiiaren-server-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not (self._server is not None and self._server.started):
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError("the test server did not start") from self._failure
            if time.monotonic() > deadline:
                raise TimeoutError("the test server did not start within 30 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._sock.close()
        if self._failure is not None:
            raise RuntimeError("the test server failed") from self._failure


@contextmanager
def serving(database_url: str, storage_path: Path, **options: Any) -> Iterator[LiveServer]:
    server = LiveServer(database_url, storage_path, **options).start()
    try:
        yield server
    finally:
        server.stop()


class DistinctClients(httpx.AsyncBaseTransport):
    """An HTTP transport that gives each session its own client address.

    Every test talks to the server from 127.0.0.1; the server's per-address rate limits
    (sign-up: 5 a minute) would then add up across the whole suite, which no real
    deployment sees. The server trusts 127.0.0.1 as a proxy, and this transport sets
    ``X-Forwarded-For`` to an address derived from the request's bearer token (one address
    per session), else from its ``Idempotency-Key`` (stable across retries), else at random.
    Per-account limits are untouched.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        seed = (
            request.headers.get("Authorization")
            or request.headers.get("Idempotency-Key")
            or secrets.token_hex(8)
        )
        digest = hashlib.sha256(seed.encode()).digest()
        request.headers["X-Forwarded-For"] = f"10.{digest[0]}.{digest[1]}.{digest[2]}"
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()

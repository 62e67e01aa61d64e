"""Fixtures for the server tests: a real uvicorn on loopback, hosting a self-host provider.

``live_server`` runs uvicorn inside the test's event loop on a port bound beforehand (so the
provider's signed storage URLs can name it), on SQLite and PostgreSQL (``selfhost_url``).
Tests talk to it over real sockets with httpx, and may reach its provider directly to set
things up quickly. ``asgi_app`` builds an app for in-process requests (``httpx.ASGITransport``)
where a test needs its own settings.

The provider's rate limits are raised for these tests (every request comes from 127.0.0.1);
the rate-limit test builds its own provider with tight limits. Emails go to an in-memory
outbox, never to a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from kiiaren_core.testing.base import unique_email
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.auth.mailer import OutgoingEmail
from selfhost_server import ServerSettings, create_app
from tests.selfhost.conftest import TEST_OPTIONS, selfhost_url, sqlite_url
from tests.selfhost.oauth_idp import LoopbackIdP, new_rsa_key
from tests.selfhost.test_content_specific import FakeDns

__all__ = ["selfhost_url", "sqlite_url"]

PASSWORD = "Server-test-password-1"
GENEROUS = "100000/60"
SERVER_OPTIONS: dict[str, Any] = {
    **TEST_OPTIONS,
    **{
        f"rate_limit_{name}": GENEROUS
        for name in (
            "sign_in",
            "sign_up",
            "refresh",
            "verification",
            "password_reset",
            "join",
            "domain_verify",
        )
    },
    # Without a loopback resolver (``dns`` fixture), verification fails fast with dns_error.
    "dns_nameservers": ("127.0.0.1:9",),
    "dns_timeout_seconds": 0.3,
}


class Outbox:
    """A mailer keeping messages in memory (the log mailer would log the secret links)."""

    def __init__(self) -> None:
        self.messages: list[OutgoingEmail] = []
        self._arrived = anyio.Event()

    async def send(self, message: OutgoingEmail) -> None:
        self.messages.append(message)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait_for_token(self, address: str, *, since: int = 0) -> str:
        """The token of a link sent to ``address`` after the first ``since`` messages,
        waiting for it (reset emails are sent in the background)."""
        with anyio.fail_after(5):
            while not any(message.to == address for message in self.messages[since:]):
                await self._arrived.wait()
        return self.token_for(address)

    def token_for(self, address: str) -> str:
        """The ``token`` of the last link sent to ``address``."""
        for message in reversed(self.messages):
            if message.to == address and "token=" in message.text:
                return message.text.split("token=", 1)[1].split()[0]
        raise AssertionError(f"no link was sent to {address}")


@dataclass
class Account:
    """A user signed up over HTTP, with the tokens of one session."""

    email: str
    password: str
    user_id: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class LiveServer:
    """A running server: its base URL, its app and the provider it hosts."""

    url: str
    app: FastAPI
    provider: SelfHostProvider
    outbox: Outbox
    idp: LoopbackIdP | None = None
    accounts: list[Account] = field(default_factory=list)

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **options)

    async def sign_up(self, client: httpx.AsyncClient, name: str = "User") -> Account:
        """A fresh account, signed up over HTTP."""
        email = unique_email(name.lower().replace(" ", "-"))
        response = await client.post(
            "/v1/auth/sign-up", json={"email": email, "password": PASSWORD, "name": name}
        )
        assert response.status_code == 201, response.text
        grant = response.json()
        return Account(
            email,
            PASSWORD,
            grant["session"]["user_id"],
            grant["tokens"]["access_token"],
            grant["tokens"]["refresh_token"],
        )


def provider_options(url: str, files: Path, port: int, **overrides: Any) -> dict[str, Any]:
    """Options of a self-host provider serving its files through a server on ``port``."""
    return {
        **SERVER_OPTIONS,
        "database_url": url,
        "storage_path": str(files),
        "public_url": f"http://127.0.0.1:{port}",
        **overrides,
    }


def bound_socket() -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of TCP-proto sockets,
    # and without it every response written in two parts waits for a delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve(
    database_url: str,
    files: Path,
    *,
    settings: ServerSettings | None = None,
    idp: LoopbackIdP | None = None,
    **overrides: Any,
) -> AsyncIterator[LiveServer]:
    """Run uvicorn with ``create_app`` on a self-host provider until the block ends."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    outbox = Outbox()
    if idp is not None:
        overrides = {**idp_options(idp), **overrides}
    provider = SelfHostProvider(
        mailer=outbox, **provider_options(database_url, files, port, **overrides)
    )
    app = create_app(provider, settings or ServerSettings())
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during startup")
            await asyncio.sleep(0.01)
        yield LiveServer(f"http://127.0.0.1:{port}", app, provider, outbox, idp)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def idp_options(idp: LoopbackIdP) -> dict[str, Any]:
    """Provider options signing in with GitHub and Google at the loopback IdP."""
    google, github = idp.google_endpoints, idp.github_endpoints
    return {
        "oauth_google_client_id": idp.client_id,
        "oauth_google_client_secret": idp.client_secret,
        "oauth_google_issuer": google["issuer"],
        "oauth_google_authorize_url": google["authorize_url"],
        "oauth_google_token_url": google["token_url"],
        "oauth_google_jwks_url": google["jwks_url"],
        "oauth_github_client_id": idp.client_id,
        "oauth_github_client_secret": idp.client_secret,
        "oauth_github_authorize_url": github["authorize_url"],
        "oauth_github_token_url": github["token_url"],
        "oauth_github_api_url": github["api_url"],
    }


@pytest.fixture(scope="module")
def idp() -> Iterator[LoopbackIdP]:
    """A loopback OAuth identity provider for the module."""
    server = LoopbackIdP(key=new_rsa_key())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def dns() -> AsyncIterator[FakeDns]:
    """A loopback DNS server answering NXDOMAIN unless told otherwise."""
    server = FakeDns()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    try:
        yield server
    finally:
        transport.close()


@pytest.fixture(scope="module")
async def live_server(
    selfhost_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    idp: LoopbackIdP,
    dns: FakeDns,
) -> AsyncIterator[LiveServer]:
    """A server for the module, on each database, with OAuth and DNS on loopback."""
    async with serve(
        selfhost_url,
        tmp_path_factory.mktemp("files"),
        idp=idp,
        dns_nameservers=(f"127.0.0.1:{dns.port}",),
    ) as server:
        yield server


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with live_server.client() as http:
        yield http


@pytest.fixture
async def account(live_server: LiveServer, client: httpx.AsyncClient) -> Account:
    """A fresh signed-up account."""
    return await live_server.sign_up(client, "Owner")


@pytest.fixture
async def workspace(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    """A fresh workspace of ``account``."""
    response = await client.post(
        "/v1/workspaces", json={"name": f"ws-{secrets.token_hex(3)}"}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    workspace: dict[str, Any] = response.json()
    return workspace


@pytest.fixture
async def provider(selfhost_url: str, tmp_path: Path) -> AsyncIterator[SelfHostProvider]:
    """An initialised provider for an in-process app (generous rate limits, an outbox)."""
    hosted = SelfHostProvider(
        mailer=Outbox(), **provider_options(selfhost_url, tmp_path / "files", 8000)
    )
    await hosted.initialize()
    try:
        yield hosted
    finally:
        await hosted.aclose()


@asynccontextmanager
async def asgi_client(app: FastAPI, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of ``app`` (no lifespan: the provider is initialised by the caller)."""
    transport = httpx.ASGITransport(app=app, **options)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http

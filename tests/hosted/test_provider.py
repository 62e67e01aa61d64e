"""The hosted provider object: settings, initialisation from the server's report, the
feature gate and the extension hooks, storage tickets, lifecycle, and its public surface."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import httpx
import pytest

import kiiaren_hosted
from kiiaren_core.capabilities import Capabilities
from kiiaren_core.errors import (
    ConfigurationError,
    KiiarenError,
    ManagedOnlyError,
    ProviderClosedError,
)
from kiiaren_core.extensions import (
    AuditEvent,
    AuditQueryParams,
    ManagedFeature,
    SearchIndexEvent,
)
from kiiaren_core.models import ClientContext
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.settings import load_settings
from kiiaren_core.wire import CapabilitiesReport
from kiiaren_hosted import HostedProvider, HostedSettings

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://kiiaren.test"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def report(*, managed: bool, features: tuple[ManagedFeature, ...] = (), version: int = 1) -> bytes:
    return (
        CapabilitiesReport(
            provider_id="managed" if managed else "selfhost",
            provider_name="Test server",
            is_managed=managed,
            capabilities=Capabilities(
                areas=frozenset({"auth", "extensions"}), managed_features=frozenset(features)
            ),
            available_features=features,
            protocol_version=version,
        )
        .model_dump_json()
        .encode()
    )


class Server:
    """Answers capabilities with ``report_body`` and records everything else."""

    def __init__(
        self, report_body: bytes, answer: Callable[[httpx.Request], httpx.Response] | None = None
    ) -> None:
        self.report_body = report_body
        self.answer = answer or (lambda request: httpx.Response(204))
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/capabilities":
            return httpx.Response(200, content=self.report_body)
        self.requests.append(request)
        return self.answer(request)


def provider_for(server: Server, **options: Any) -> HostedProvider:
    return HostedProvider(base_url=BASE, transport=httpx.MockTransport(server), **options)


# --- settings --------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIIAREN_HOSTED_BASE_URL", "https://api.example.com/kiiaren/")
    monkeypatch.setenv("KIIAREN_HOSTED_MAX_ATTEMPTS", "2")
    settings = load_settings(HostedSettings)
    assert settings.base_url == "https://api.example.com/kiiaren"
    assert settings.max_attempts == 2
    assert settings.events_url == "wss://api.example.com/kiiaren/v1/events"
    plain = HostedSettings(base_url="http://127.0.0.1:8000")
    assert plain.events_url == "ws://127.0.0.1:8000/v1/events"
    assert load_settings(HostedSettings, {"deadline_seconds": 5}).deadline_seconds == 5


@pytest.mark.parametrize("value", ["ftp://x", "127.0.0.1:8000", "http://", "http://x/?a=1"])
def test_a_bad_base_url_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KIIAREN_HOSTED_BASE_URL", value)
    with pytest.raises(ConfigurationError) as caught:
        HostedProvider()
    assert caught.value.details["variable"] == "KIIAREN_HOSTED_BASE_URL"


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        HostedProvider(base_uri="http://x")
    assert "base_uri" in caught.value.message


# --- initialisation and the gate --------------------------------------------------------------


async def test_before_initialize_nothing_is_claimed() -> None:
    provider = provider_for(Server(report(managed=True, features=tuple(ManagedFeature))))
    assert provider.is_managed is False
    assert provider.capabilities == Capabilities()
    assert provider.features.list_available() == []
    assert provider.server is None
    await provider.aclose()


async def test_initialize_reads_the_report_once() -> None:
    calls: list[int] = []
    body = report(managed=True, features=(ManagedFeature.AUDIT_LOGS,))

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, content=body)

    async with HostedProvider(base_url=BASE, transport=httpx.MockTransport(handler)) as provider:
        await provider.initialize()
        view = provider.with_session(None)
        await view.initialize()
        assert provider.is_managed is True
        assert view.is_managed is True
        assert provider.features.list_available() == [ManagedFeature.AUDIT_LOGS]
        assert provider.name == "KIIAREN Hosted (Test server)"
        assert provider.server is not None
    assert len(calls) == 1


async def test_a_server_that_is_not_kiiaren_is_named() -> None:
    provider = HostedProvider(
        base_url=BASE, transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"x": 1}))
    )
    with pytest.raises(KiiarenError) as caught:
        await provider.initialize()
    assert caught.value.details == {"variable": "KIIAREN_HOSTED_BASE_URL"}
    await provider.aclose()


async def test_another_protocol_version_is_refused() -> None:
    provider = provider_for(Server(report(managed=False, version=2)))
    with pytest.raises(ConfigurationError):
        await provider.initialize()
    await provider.aclose()


async def test_hooks_the_server_does_not_offer_answer_without_a_request() -> None:
    server = Server(report(managed=False))
    async with provider_for(server) as provider:
        view = provider.with_session("token")
        with pytest.raises(ManagedOnlyError) as caught:
            await view.extensions.audit.query(
                AuditQueryParams(workspace_id="w", start_date=NOW, end_date=NOW)
            )
        assert caught.value.feature == "audit_logs"
        await view.extensions.search.index(
            SearchIndexEvent(document_type="doc", document_id="d", workspace_id="w", content="c")
        )
    assert server.requests == []


async def test_offered_hooks_call_the_server() -> None:
    record = {
        "id": "r1",
        "event": {
            "action": "message.create",
            "actor_id": "u1",
            "resource_type": "message",
            "resource_id": "m1",
            "workspace_id": "w1",
            "metadata": {},
            "timestamp": NOW.isoformat(),
        },
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/extensions/audit/query":
            return httpx.Response(200, json=[record])
        if request.url.path == "/v1/extensions/kms/decrypt":
            return httpx.Response(200, json={"plaintext": "secret"})
        body = {"error": {"code": "backend_unavailable", "message": "x", "details": {}}}
        return httpx.Response(500, json=body)

    server = Server(report(managed=True, features=tuple(ManagedFeature)), answer)
    async with provider_for(server, max_attempts=1) as provider:
        view = provider.with_session("token")
        params = AuditQueryParams(workspace_id="w1", start_date=NOW, end_date=NOW)
        (found,) = await view.extensions.audit.query(params)
        assert found.event.resource_id == "m1"
        assert await view.extensions.kms.decrypt("ciphertext", key_id="k") == "secret"
        # A failing emit-style hook never fails its caller.
        event = AuditEvent(
            action="a",
            actor_id=None,
            resource_type="m",
            resource_id="m",
            workspace_id="w",
            timestamp=NOW,
        )
        await view.extensions.audit.log(event)
    paths = [r.url.path for r in server.requests]
    assert paths == [
        "/v1/extensions/audit/query",
        "/v1/extensions/kms/decrypt",
        "/v1/extensions/audit/log",
    ]
    assert json.loads(server.requests[0].content) == params.model_dump(mode="json")
    assert json.loads(server.requests[1].content) == {"ciphertext": "ciphertext", "key_id": "k"}


# --- storage and headers ----------------------------------------------------------------------


async def test_upload_sends_the_bytes_as_the_ticket_says_without_the_bearer_token() -> None:
    ticket = {
        "storage_id": "s1",
        "url": "https://bucket.example.com/objects/s1?signature=abc",
        "method": "PUT",
        "headers": {"Content-Type": "text/plain", "x-amz-meta-id": "s1"},
        "expires_at": (NOW + timedelta(minutes=5)).isoformat(),
        "max_bytes": 5,
        "content_type": "text/plain",
    }
    stored = {
        "id": "s1",
        "workspace_id": "w1",
        "content_type": "text/plain",
        "size_bytes": 5,
        "uploaded_by": "u1",
        "created_at": NOW.isoformat(),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/workspaces/w1/uploads":
            return httpx.Response(201, json=ticket)
        if request.url.host == "bucket.example.com":
            return httpx.Response(200)
        return httpx.Response(200, json=stored)

    server = Server(report(managed=False), answer)
    async with provider_for(server) as provider:
        view = provider.with_session("bearer-secret")
        result = await view.storage.upload(w := "w1", b"hello", content_type="text/plain")
        assert result.id == "s1"
        assert w == result.workspace_id
    ticket_request, put, metadata = server.requests
    assert json.loads(ticket_request.content) == {
        "content_type": "text/plain",
        "size": 5,
        "filename": None,
    }
    assert put.method == "PUT"
    assert str(put.url) == ticket["url"]
    assert put.content == b"hello"
    assert put.headers["x-amz-meta-id"] == "s1"
    assert "Authorization" not in put.headers
    assert metadata.url.path == "/v1/files/s1"


async def test_a_views_user_agent_is_sent() -> None:
    server = Server(report(managed=False), lambda request: httpx.Response(200, json=[]))
    async with provider_for(server) as provider:
        view = provider.with_session("t", context=ClientContext(user_agent="ada-app/1.0"))
        await view.persistence.workspace.get_by_user_id()
        await provider.with_session("t").persistence.workspace.get_by_user_id()
    first, second = server.requests
    assert first.headers["User-Agent"] == "ada-app/1.0"
    assert second.headers["User-Agent"].startswith("kiiaren-python-hosted/")


# --- lifecycle --------------------------------------------------------------------------------


async def test_an_applications_client_is_used_and_left_open() -> None:
    server = Server(report(managed=False), lambda request: httpx.Response(200, json=[]))
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        provider = HostedProvider(base_url=BASE, http_client=client)
        await provider.initialize()
        assert await provider.with_session("t").persistence.workspace.get_by_user_id() == []
        await provider.aclose()
        assert not client.is_closed
        response = await client.get(f"{BASE}/v1/capabilities")
        assert response.status_code == 200
    with pytest.raises(ValueError, match="not both"):
        HostedProvider(base_url=BASE, http_client=client, transport=httpx.MockTransport(server))


async def test_close_is_idempotent_and_final() -> None:
    provider = provider_for(Server(report(managed=False)))
    await provider.initialize()
    view = provider.with_session("t")
    other = provider.with_session(None)
    await other.aclose()
    await other.aclose()
    await provider.aclose()
    await provider.aclose()
    await provider.destroy()
    for closed in (provider, view, other):
        with pytest.raises(ProviderClosedError):
            await closed.persistence.channel.get("w")
        with pytest.raises(ProviderClosedError):
            closed.events.stream("w")
        with pytest.raises(ProviderClosedError):
            await closed.initialize()
    with pytest.raises(ProviderClosedError):
        provider.with_session(None)
    with pytest.raises(ProviderClosedError):
        provider.auth.on_auth_state_change(lambda state: None)


async def test_it_is_a_backend_provider() -> None:
    provider = provider_for(Server(report(managed=False)))
    assert isinstance(provider, BackendProvider)
    assert isinstance(provider.with_session(None), BackendProvider)
    assert provider.id == "hosted"
    await provider.aclose()


# --- surface ----------------------------------------------------------------------------------


def test_public_names_are_exported() -> None:
    assert sorted(kiiaren_hosted.__all__) == sorted(set(kiiaren_hosted.__all__))
    for name in kiiaren_hosted.__all__:
        assert getattr(kiiaren_hosted, name) is not None


def test_the_registry_entry_point_names_the_provider() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    value = pyproject["project"]["entry-points"]["kiiaren.providers"]["hosted"]
    loaded = EntryPoint(name="hosted", value=value, group="kiiaren.providers").load()
    assert loaded is HostedProvider


def test_importing_the_client_imports_no_selfhost_and_no_server() -> None:
    code = (
        "import sys, kiiaren_hosted, kiiaren_hosted.provider\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('kiiaren_selfhost', 'selfhost_server', 'sqlalchemy', 'fastapi', 'starlette', "
        "'uvicorn', 'boto3', 'psycopg', 'aiosqlite')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("lost_first_answer", [True, False])
async def test_a_single_use_upload_url_met_again_by_a_repeat(lost_first_answer: bool) -> None:
    """The first PUT stored the bytes but its answer was lost; the repeat meets 409."""
    puts: list[int] = []
    ticket = {
        "storage_id": "s1",
        "url": f"{BASE}/v1/storage/objects/s1?signature=abc",
        "method": "PUT",
        "expires_at": (NOW + timedelta(minutes=5)).isoformat(),
        "max_bytes": 5,
        "content_type": "text/plain",
    }
    stored = {
        "id": "s1",
        "workspace_id": "w1",
        "content_type": "text/plain",
        "size_bytes": 5,
        "uploaded_by": "u1",
        "created_at": NOW.isoformat(),
    }
    conflict = {"error": {"code": "conflict", "message": "Already uploaded.", "details": {}}}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/workspaces/w1/uploads":
            return httpx.Response(201, json=ticket)
        if request.url.path == "/v1/storage/objects/s1":
            puts.append(1)
            if len(puts) == 1 and lost_first_answer:
                raise httpx.ReadError("connection reset")
            return httpx.Response(409, json=conflict)
        return httpx.Response(200, json=stored)

    server = Server(report(managed=False), answer)
    async with provider_for(server, backoff_base_seconds=0) as provider:
        view = provider.with_session("t")
        if lost_first_answer:
            result = await view.storage.upload("w1", b"hello", content_type="text/plain")
            assert result.size_bytes == 5
        else:
            with pytest.raises(KiiarenError) as caught:
                await view.storage.upload("w1", b"hello", content_type="text/plain")
            assert caught.value.code == "conflict"
    assert len(puts) == (2 if lost_first_answer else 1)

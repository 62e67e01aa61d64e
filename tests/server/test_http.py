"""The HTTP surface: error envelope, request ids, body limits, client addresses, CORS, health,
capabilities, the OpenAPI document and what reaches the logs."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kiiaren_core.errors import ERROR_CLASSES, BackendUnavailableError
from kiiaren_core.wire import OPERATIONS
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.domain.workspaces import WorkspaceStoreImpl
from selfhost_server import ServerSettings, create_app
from selfhost_server._context import client_ip
from selfhost_server._logging import JsonFormatter
from selfhost_server.settings import MIB
from tests.server.conftest import PASSWORD, Account, LiveServer, asgi_client, provider_options

pytestmark = pytest.mark.anyio


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is the one error envelope, with the code's class status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    if code in ERROR_CLASSES:
        assert ERROR_CLASSES[code].http_status == status
    for leak in ("Traceback", "sqlalchemy", "SELECT ", "/work/", ".py", PASSWORD):
        assert leak not in response.text
    return body


# --- the envelope, status by status ------------------------------------------------------------


async def test_unauthenticated_forbidden_missing(
    live_server: LiveServer, client: httpx.AsyncClient, account: Account
) -> None:
    anonymous = await client.get("/v1/auth/user")
    assert_envelope(anonymous, 401, "not_authenticated")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    bad = {"Authorization": "Bearer not-a-token"}
    assert_envelope(await client.get("/v1/auth/user", headers=bad), 401, "not_authenticated")
    assert_envelope(
        await client.post(
            "/v1/extensions/kms/encrypt", json={"data": "x"}, headers=account.headers
        ),
        403,
        "managed_only",
    )
    assert_envelope(
        await client.get(f"/v1/workspaces/{secrets.token_hex(4)}", headers=account.headers),
        404,
        "not_found",
    )


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/v1/no/such/route"), 404, "not_found")
    assert_envelope(await client.get("/nothing"), 404, "not_found")
    wrong = await client.put("/v1/workspaces")
    body = assert_envelope(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "GET, POST"
    assert body["error"]["details"]["allowed"] == ["GET", "POST"]
    # The literal resource wins over a template that also matches the path.
    literal = await client.get("/v1/auth/sessions/revoke-all")
    assert_envelope(literal, 405, "method_not_allowed")
    assert literal.headers["allow"] == "POST"


async def test_conflict(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    response = await client.post(
        f"/v1/workspaces/{workspace['id']}/join",
        json={"join_code": workspace["join_code"]},
        headers=account.headers,
    )
    assert_envelope(response, 409, "conflict")


async def test_validation_errors_name_fields_and_echo_nothing(client: httpx.AsyncClient) -> None:
    secret = "Hunter2-" + secrets.token_hex(8)
    response = await client.post(
        "/v1/auth/sign-in", json={"email": 42, "password": secret, "extra": secret}
    )
    body = assert_envelope(response, 422, "invalid_input")
    details = body["error"]["details"]
    assert details["field"] == "email"
    assert {tuple(error["loc"]) for error in details["errors"]} == {
        ("body", "email"),
        ("body", "extra"),
    }
    assert secret not in response.text
    malformed = await client.post(
        "/v1/auth/sign-in", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_envelope(malformed, 422, "invalid_input")


async def test_page_sizes_are_bounded(client: httpx.AsyncClient, account: Account) -> None:
    response = await client.get("/v1/messages", params={"limit": 1000}, headers=account.headers)
    assert_envelope(response, 422, "invalid_input")


async def test_provider_failures(
    provider: SelfHostProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception answers a generic 500 and is logged with the request id; a
    backend outage answers 503 with Retry-After."""

    async def explode(self: object, user_id: str | None = None) -> list[Any]:
        raise RuntimeError("SELECT password FROM users -- /srv/kiiaren/secret.py")

    async def unavailable(self: object, user_id: str | None = None) -> list[Any]:
        raise BackendUnavailableError(retry_after=2.5)

    app = create_app(provider, ServerSettings())
    async with asgi_client(app) as client:
        monkeypatch.setattr(WorkspaceStoreImpl, "get_by_user_id", explode)
        with caplog.at_level(logging.ERROR, logger="kiiaren.server"):
            response = await client.get("/v1/workspaces", headers={"X-Request-ID": "trace-500"})
        body = assert_envelope(response, 500, "internal_error")
        assert body["error"]["message"] == "An internal error occurred."
        assert "password" not in response.text
        logged = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-500"]
        assert logged
        assert logged[0].exc_info is not None
        monkeypatch.setattr(WorkspaceStoreImpl, "get_by_user_id", unavailable)
        response = await client.get("/v1/workspaces")
        assert_envelope(response, 503, "backend_unavailable")
        assert response.headers["retry-after"] == "3"


async def test_rate_limit_reaches_the_client_address(selfhost_url: str, tmp_path: Any) -> None:
    """Sign-in attempts are limited per client address, taken from X-Forwarded-For when the
    peer is a trusted proxy: one address is throttled (429 + Retry-After), another is not."""
    provider = SelfHostProvider(
        **provider_options(selfhost_url, tmp_path, 8000, rate_limit_sign_in="2/60")
    )
    await provider.initialize()
    app = create_app(provider, ServerSettings(trusted_proxies=("127.0.0.0/8",)))
    throttled, other = (f"203.0.113.{secrets.randbelow(250) + 1}" for _ in range(2))
    try:
        async with asgi_client(app) as client:

            async def attempt(address: str) -> httpx.Response:
                return await client.post(
                    "/v1/auth/sign-in",
                    json={"email": f"{secrets.token_hex(4)}@example.com", "password": "x" * 12},
                    headers={"X-Forwarded-For": f"198.51.100.9, {address}"},
                )

            for _ in range(2):
                assert (await attempt(throttled)).status_code == 401
            limited = await attempt(throttled)
            assert_envelope(limited, 429, "rate_limited")
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            if other != throttled:
                assert (await attempt(other)).status_code == 401
    finally:
        await provider.aclose()


def test_client_address_from_trusted_proxies_only() -> None:
    def scope(peer: str, forwarded: str | None) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return {"type": "http", "client": (peer, 5000), "headers": headers}

    import ipaddress

    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_ip(scope("192.0.2.1", "203.0.113.5"), proxies) == "192.0.2.1"
    assert client_ip(scope("10.0.0.2", "203.0.113.5"), proxies) == "203.0.113.5"
    assert client_ip(scope("10.0.0.2", "6.6.6.6, 203.0.113.5, 10.0.0.3"), proxies) == (
        "203.0.113.5"
    )
    assert client_ip(scope("10.0.0.2", "garbage, 10.1.1.1"), proxies) == "10.1.1.1"
    assert client_ip(scope("10.0.0.2", None), proxies) == "10.0.0.2"
    assert client_ip(scope("10.0.0.2", "203.0.113.5"), ()) == "10.0.0.2"


# --- request ids ---------------------------------------------------------------------------


async def test_request_ids(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    echoed = await client.get("/health", headers={"X-Request-ID": "client-id.42:a"})
    assert echoed.headers["x-request-id"] == "client-id.42:a"
    for insane in ("a b", "x" * 200, "<script>"):
        replaced = await client.get("/v1/nope", headers={"X-Request-ID": insane})
        assert replaced.headers["x-request-id"] != insane
        assert replaced.json()["request_id"] == replaced.headers["x-request-id"]


# --- body limits ---------------------------------------------------------------------------


async def test_body_limit(client: httpx.AsyncClient, account: Account) -> None:
    big = json.dumps({"name": "x" * (MIB + 10)}).encode()
    declared = await client.post("/v1/workspaces", content=big, headers=account.headers)
    assert_envelope(declared, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000

    streamed = await client.post("/v1/workspaces", content=chunks(), headers=account.headers)
    body = assert_envelope(streamed, 413, "payload_too_large")
    assert body["error"]["details"] == {"max_bytes": MIB}
    # The server still answers on a fresh request.
    assert (await client.get("/health")).status_code == 200


async def test_body_limit_is_configurable(provider: SelfHostProvider) -> None:
    app = create_app(provider, ServerSettings(body_limit_bytes=2048))
    async with asgi_client(app) as client:
        response = await client.post("/v1/auth/sign-in", content=b"{" + b" " * 4096 + b"}")
        assert_envelope(response, 413, "payload_too_large")
        small = await client.post("/v1/auth/sign-in", json={"email": "a@b.c", "password": "x"})
        assert small.status_code == 401


# --- CORS ---------------------------------------------------------------------------------------


async def test_cors(provider: SelfHostProvider) -> None:
    origin = "https://app.example.com"
    async with asgi_client(create_app(provider, ServerSettings())) as client:
        plain = await client.get("/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in plain.headers
    settings = ServerSettings(cors_origins=(origin,))
    async with asgi_client(create_app(provider, settings)) as client:
        preflight = await client.options(
            "/v1/workspaces",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in preflight.headers
        simple = await client.get("/health", headers={"Origin": origin})
        assert simple.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        other = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- health, readiness, capabilities -----------------------------------------------------------


async def test_health_ready_capabilities(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}
    report = (await client.get("/v1/capabilities")).json()
    assert report["provider_id"] == "selfhost"
    assert report["is_managed"] is False
    assert report["available_features"] == []
    assert report["protocol_version"] == 1
    assert "storage" in report["capabilities"]["areas"]


async def test_not_ready_when_the_database_is_down(tmp_path: Any) -> None:
    provider = SelfHostProvider(
        database_url="postgresql+psycopg://kiiaren@127.0.0.1:1/none",
        storage_path=str(tmp_path),
        db_timeout_seconds=1,
    )
    try:
        async with asgi_client(create_app(provider, ServerSettings())) as client:
            assert (await client.get("/health")).status_code == 200
            response = await client.get("/ready")
            assert_envelope(response, 503, "backend_unavailable")
            assert int(response.headers["retry-after"]) >= 1
    finally:
        await provider.aclose()


# --- the OpenAPI document ------------------------------------------------------------------


async def test_openapi_documents_every_operation(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The access token of a session (sign-up, sign-in or refresh).",
    }
    assert "HTTPValidationError" not in json.dumps(document)
    for op in OPERATIONS:
        operation = document["paths"][op.url_path][op.method.lower()]
        assert operation["operationId"] == op.name
        responses = operation["responses"]
        success = responses[str(op.status)]
        assert ("content" in success) == (op.response is not None), op.name
        for status, answer in responses.items():
            assert "X-Request-ID" in answer["headers"]
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, op.name
        assert {"401", "404", "422", "429", "500", "503"} <= set(responses), op.name
        security = operation.get("security", [])
        if op.access == "session":
            assert security == [{"bearer": []}], op.name
        elif op.access == "optional":
            assert {} in security
        else:
            assert security == [], op.name
        keyed = any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
        assert keyed == op.mutating, op.name
    assert "Retry-After" in document["paths"]["/ready"]["get"]["responses"]["503"]["headers"]
    assert "put" in document["paths"]["/v1/storage/objects/{storage_id}"]


async def test_docs_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "/openapi.json" in response.text


# --- logs ------------------------------------------------------------------------------------


async def test_no_secret_reaches_the_logs(
    live_server: LiveServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        account = await live_server.sign_up(client, "Logged")
        signed_in = await client.post(
            "/v1/auth/sign-in", json={"email": account.email, "password": account.password}
        )
        tokens = signed_in.json()["tokens"]
        refreshed = await client.post(
            "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        new_tokens = refreshed.json()["tokens"]
        used = await client.get(
            "/v1/workspaces",
            headers={"Authorization": f"Bearer {new_tokens['access_token']}", "X-Request-ID": "r1"},
        )
        assert used.status_code == 200
    secrets_sent = {
        account.password,
        account.access_token,
        account.refresh_token,
        tokens["access_token"],
        tokens["refresh_token"],
        new_tokens["access_token"],
        new_tokens["refresh_token"],
    }
    formatter = JsonFormatter()
    for record in caplog.records:
        text = formatter.format(record) + repr(record.__dict__)
        for secret in secrets_sent:
            assert secret not in text, f"a secret reached the log: {record.name}"
    access = [r for r in caplog.records if r.name == "kiiaren.server.access"]
    assert {"/v1/auth/sign-in", "/v1/auth/refresh", "/v1/workspaces"} <= {
        getattr(r, "path", None) for r in access
    }
    assert any(getattr(r, "request_id", None) == "r1" for r in access)


def test_json_log_lines() -> None:
    record = logging.LogRecord(
        "kiiaren.server", logging.INFO, __file__, 1, "hello %s", ("you",), None
    )
    record.request_id = "abc"
    record.status = 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you"
    assert line["request_id"] == "abc"
    assert line["status"] == 200
    assert line["level"] == "info"
    assert line["logger"] == "kiiaren.server"


# --- events.emit -----------------------------------------------------------------------------


async def test_emitted_typing_is_the_callers(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    url = f"/v1/workspaces/{workspace['id']}/events"
    typing = await client.post(
        url,
        json={"type": "typing.changed", "payload": {"user_id": "someone-else", "is_typing": True}},
        headers=account.headers,
    )
    assert typing.status_code == 201, typing.text
    event = typing.json()
    assert event["seq"] is None
    assert event["workspace_id"] == workspace["id"]
    assert event["payload"]["user_id"] == event["actor_id"] == account.user_id
    bad = await client.post(
        url, json={"type": "typing.changed", "payload": {"nonsense": 1}}, headers=account.headers
    )
    assert_envelope(bad, 422, "invalid_input")
    assert bad.json()["error"]["details"] == {"field": "payload"}
    kernel = await client.post(
        url, json={"type": "message.created", "payload": {}}, headers=account.headers
    )
    assert_envelope(kernel, 422, "invalid_input")
    app_event = await client.post(
        url, json={"type": "app.ping", "payload": {"n": 1}}, headers=account.headers
    )
    assert app_event.status_code == 201
    assert app_event.json()["seq"] >= 1

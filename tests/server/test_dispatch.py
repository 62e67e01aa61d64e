"""The lean operation path answers exactly as FastAPI's routes do.

Every request of a corpus (valid ones and each way of being invalid) is sent to two apps on
one provider: the app as built, and the same app without its
:class:`~selfhost_server._dispatch.OperationDispatcher`, where FastAPI serves every request.
Failures must be byte-identical (status, body, headers); successes the same status and
shape. Valid requests must not reach FastAPI's route handler at all, invalid ones must.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kiiaren_selfhost import SelfHostProvider
from selfhost_server import ServerSettings, create_app
from selfhost_server._dispatch import OperationDispatcher
from tests.server.conftest import PASSWORD, asgi_client

pytestmark = pytest.mark.anyio

RequestSpec = dict[str, Any]


def _without_dispatcher(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not OperationDispatcher]
    return app


class _Counted:
    """Wraps a route's ASGI app, counting the requests FastAPI's handler serves."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


def _count(app: FastAPI, name: str) -> _Counted:
    route = next(r for r in app.router.routes if isinstance(r, Route) and r.name == name)
    counted = _Counted(route.app)
    route.app = counted
    return counted


def _comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.items() if k != "date")
    return response.status_code, response.content, headers


async def _setup(client: httpx.AsyncClient) -> tuple[dict[str, str], str, str]:
    email = f"lean-{secrets.token_hex(4)}@example.com"
    grant = await client.post(
        "/v1/auth/sign-up", json={"email": email, "password": PASSWORD, "name": "Lean"}
    )
    assert grant.status_code == 201, grant.text
    auth = {"Authorization": f"Bearer {grant.json()['tokens']['access_token']}"}
    workspace = await client.post("/v1/workspaces", json={"name": "lean"}, headers=auth)
    assert workspace.status_code == 201, workspace.text
    workspace_id = workspace.json()["id"]
    channels = await client.get(f"/v1/workspaces/{workspace_id}/channels", headers=auth)
    return auth, workspace_id, channels.json()[0]["id"]


def _invalid(auth: dict[str, str], messages: str, channel_id: str) -> list[RequestSpec]:
    json_type = {**auth, "Content-Type": "application/json"}
    good = f'{{"body": "hi", "channel_id": "{channel_id}"}}'
    return [
        {"method": "POST", "url": messages, "content": b'{"body": ', "headers": json_type},
        {"method": "POST", "url": messages, "content": b"[" * 100_000, "headers": json_type},
        {"method": "POST", "url": messages, "content": b'{"body": "\xff"}', "headers": json_type},
        {"method": "POST", "url": messages, "content": good, "headers": auth},
        {
            "method": "POST",
            "url": messages,
            "content": good,
            "headers": {**auth, "Content-Type": "text/plain"},
        },
        {"method": "POST", "url": messages, "content": b"", "headers": json_type},
        {"method": "POST", "url": messages, "json": {"channel_id": channel_id}, "headers": auth},
        {"method": "POST", "url": messages, "json": [1, 2], "headers": auth},
        {
            "method": "POST",
            "url": messages,
            "json": {"body": "hi", "channel_id": channel_id, "extra": 1},
            "headers": auth,
        },
        {
            "method": "POST",
            "url": messages,
            "json": {"body": 5, "channel_id": channel_id},
            "headers": auth,
        },
        {
            "method": "POST",
            "url": "/v1/workspaces/" + "w" * 513 + "/messages",
            "json": {"body": "hi"},
            "headers": auth,
        },
        *[
            {
                "method": "POST",
                "url": messages,
                "json": {"body": "hi", "channel_id": channel_id},
                "headers": {**auth, "Idempotency-Key": key},
            }
            for key in ("a b", "k" * 256, "")
        ],
        {"method": "GET", "url": "/v1/messages?channel_id=x&bogus=1", "headers": auth},
        {"method": "GET", "url": "/v1/messages?limit=x", "headers": auth},
        {"method": "GET", "url": "/v1/messages?limit=1&limit=2", "headers": auth},
    ]


def _refused_by_provider(auth: dict[str, str], channel_id: str) -> list[RequestSpec]:
    foreign = "/v1/workspaces/" + "0" * 24 + "/messages"
    return [
        {"method": "POST", "url": foreign, "json": {"body": "hi"}, "headers": auth},
        {"method": "POST", "url": foreign, "json": {"body": "hi", "channel_id": channel_id}},
        {
            "method": "POST",
            "url": foreign,
            "json": {"body": "hi\u0000"},
            "headers": auth,
        },
        {"method": "PUT", "url": foreign, "json": {"body": "hi"}, "headers": auth},
        {"method": "POST", "url": foreign + "/", "json": {"body": "hi"}, "headers": auth},
    ]


async def test_lean_answers_equal_fastapis(provider: SelfHostProvider) -> None:
    lean_app = create_app(provider, ServerSettings())
    plain_app = _without_dispatcher(create_app(provider, ServerSettings()))
    served = _count(lean_app, "message.create")
    listed = _count(lean_app, "message.list")
    async with asgi_client(lean_app) as lean, asgi_client(plain_app) as plain:
        auth, workspace_id, channel_id = await _setup(lean)
        messages = f"/v1/workspaces/{workspace_id}/messages"

        for index in range(3):
            body = {"body": f"hi {index}", "channel_id": channel_id}
            key = {"Idempotency-Key": f"key-{index}-{secrets.token_hex(4)}"} if index else {}
            a = await lean.post(messages, json=body, headers={**auth, **key})
            b = await plain.post(messages, json=body, headers={**auth, **key})
            assert a.status_code == b.status_code == 201, (a.text, b.text)
            assert set(a.json()) == set(b.json())
            # The lean path stores and replays keyed answers like FastAPI's.
            if key:
                again = await lean.post(messages, json=body, headers={**auth, **key})
                assert again.status_code == 201
                assert again.headers["idempotent-replayed"] == "true"
                assert again.content == a.content
        page = await lean.get(f"/v1/messages?channel_id={channel_id}&limit=2", headers=auth)
        assert page.status_code == 200
        assert len(page.json()["items"]) == 2
        assert served.calls == 0
        assert listed.calls == 0

        invalid = _invalid(auth, messages, channel_id)
        for spec in invalid + _refused_by_provider(auth, channel_id):
            request_id = {"X-Request-ID": f"req-{secrets.token_hex(4)}"}
            spec = {**spec, "headers": {**spec.get("headers", {}), **request_id}}
            a, b = await lean.request(**spec), await plain.request(**spec)
            assert a.status_code >= 300, (spec, a.text)  # refusals, and a redirect
            assert _comparable(a) == _comparable(b), spec
        # Every invalid request to an operation route was answered by FastAPI's handler.
        assert served.calls + listed.calls == len(invalid)

"""``Idempotency-Key`` over HTTP: replay, refusal, one effect under concurrency, retryable
failures released, durable records shared by server processes, the in-process fallback."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from kiiaren_core.errors import BackendUnavailableError, IdempotencyConflictError
from kiiaren_core.protocols import (
    BackendProvider,
    IdempotencyStore,
    IdempotentReplay,
    OperableProvider,
)
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.domain import _unit
from kiiaren_selfhost.domain.messages import MessageStoreImpl
from kiiaren_selfhost.idempotency import SelfHostIdempotencyStore
from selfhost_server import InProcessIdempotencyStore, ServerSettings, create_app
from tests.server.conftest import Account, LiveServer, asgi_client, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def channel_id(client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]) -> str:
    channels = await client.get(
        f"/v1/workspaces/{workspace['id']}/channels", headers=account.headers
    )
    channel: str = channels.json()[0]["id"]
    return channel


async def count_messages(client: httpx.AsyncClient, account: Account, channel: str) -> int:
    page = await client.get(
        "/v1/messages", params={"channel_id": channel, "limit": 100}, headers=account.headers
    )
    return len(page.json()["items"])


def keyed(account: Account, key: str) -> dict[str, str]:
    return {**account.headers, "Idempotency-Key": key}


async def test_replay_has_no_second_effect(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any], channel_id: str
) -> None:
    url = f"/v1/workspaces/{workspace['id']}/messages"
    body = {"body": "only once", "channel_id": channel_id}
    key = secrets.token_urlsafe(16)
    first = await client.post(url, json=body, headers=keyed(account, key))
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    again = await client.post(url, json=body, headers=keyed(account, key))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await count_messages(client, account, channel_id) == 1
    # Without a key, a repeat is a new request.
    assert (await client.post(url, json=body, headers=account.headers)).status_code == 201
    assert await count_messages(client, account, channel_id) == 2


async def test_same_key_with_another_body_is_refused(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any], channel_id: str
) -> None:
    url = f"/v1/workspaces/{workspace['id']}/messages"
    key = secrets.token_urlsafe(16)
    first = await client.post(
        url, json={"body": "a", "channel_id": channel_id}, headers=keyed(account, key)
    )
    assert first.status_code == 201
    other = await client.post(
        url, json={"body": "b", "channel_id": channel_id}, headers=keyed(account, key)
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    elsewhere = await client.patch(
        f"/v1/messages/{first.json()['id']}", json={"body": "a"}, headers=keyed(account, key)
    )
    assert elsewhere.status_code == 409
    assert await count_messages(client, account, channel_id) == 1


async def test_keys_are_per_principal(
    live_server: LiveServer, client: httpx.AsyncClient, account: Account
) -> None:
    other = await live_server.sign_up(client, "Other")
    key = secrets.token_urlsafe(16)
    mine = await client.post("/v1/workspaces", json={"name": "mine"}, headers=keyed(account, key))
    theirs = await client.post("/v1/workspaces", json={"name": "mine"}, headers=keyed(other, key))
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]


async def test_concurrent_duplicates_have_one_effect(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any], channel_id: str
) -> None:
    url = f"/v1/workspaces/{workspace['id']}/messages"
    body = {"body": "ten times", "channel_id": channel_id}
    key = secrets.token_urlsafe(16)
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await client.post(url, json=body, headers=keyed(account, key)))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(send)
    statuses = sorted(response.status_code for response in answers)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    fresh = [r for r in answers if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(fresh) == 1
    for response in answers:
        if response.status_code == 409:
            assert response.json()["error"]["details"] == {"reason": "in_progress"}
    assert await count_messages(client, account, channel_id) == 1


async def test_failures_worth_retrying_release_the_key(
    client: httpx.AsyncClient,
    account: Account,
    workspace: dict[str, Any],
    channel_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"/v1/workspaces/{workspace['id']}/messages"
    body = {"body": "eventually", "channel_id": channel_id}
    key = secrets.token_urlsafe(16)
    real_create = MessageStoreImpl.create

    async def outage(self: object, *args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailableError(retry_after=1)

    monkeypatch.setattr(MessageStoreImpl, "create", outage)
    failed = await client.post(url, json=body, headers=keyed(account, key))
    assert failed.status_code == 503
    monkeypatch.setattr(MessageStoreImpl, "create", real_create)
    retried = await client.post(url, json=body, headers=keyed(account, key))
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await count_messages(client, account, channel_id) == 1


async def test_an_effect_rolled_back_keeps_no_key(
    client: httpx.AsyncClient,
    account: Account,
    workspace: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create whose transaction fails after its first statements (the key was recorded
    there, then rolled back with the effect) leaves the key free: the retry runs."""
    url = f"/v1/workspaces/{workspace['id']}/channels"
    body = {"name": "rolled-back"}
    key = secrets.token_urlsafe(16)
    real = _unit.append_events

    async def outage(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailableError(retry_after=1)

    monkeypatch.setattr(_unit, "append_events", outage)
    failed = await client.post(url, json=body, headers=keyed(account, key))
    assert failed.status_code == 503
    monkeypatch.setattr(_unit, "append_events", real)
    created = await client.post(url, json=body, headers=keyed(account, key))
    assert created.status_code == 201
    assert "idempotent-replayed" not in created.headers
    again = await client.post(url, json=body, headers=keyed(account, key))
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == created.json()


async def test_a_lost_answer_is_never_run_again(
    live_server: LiveServer,
    client: httpx.AsyncClient,
    account: Account,
    workspace: dict[str, Any],
    channel_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The effect committed but its answer was never stored (as when the process dies right
    after the commit): repeats are refused, first as in progress, then as answer_unavailable,
    and the message exists once."""
    store = live_server.provider.idempotency
    assert isinstance(store, SelfHostIdempotencyStore)

    async def lost(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(store, "complete", lost)
    monkeypatch.setattr(store, "_answer_wait", timedelta(seconds=2))
    url = f"/v1/workspaces/{workspace['id']}/messages"
    body = {"body": "answer lost", "channel_id": channel_id}
    key = secrets.token_urlsafe(16)
    assert (await client.post(url, json=body, headers=keyed(account, key))).status_code == 201
    waiting = await client.post(url, json=body, headers=keyed(account, key))
    assert waiting.status_code == 409
    assert waiting.json()["error"]["details"] == {"reason": "in_progress"}
    await anyio.sleep(2.1)
    lost_answer = await client.post(url, json=body, headers=keyed(account, key))
    assert lost_answer.status_code == 409
    error = lost_answer.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert error["details"] == {"reason": "answer_unavailable"}
    assert "look the result up" in error["message"]
    assert await count_messages(client, account, channel_id) == 1


async def test_refusals_without_effect_keep_nothing(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    """A refusal that wrote nothing keeps no record: the retry runs again (and, the input
    fixed, succeeds under the same key)."""
    key = secrets.token_urlsafe(16)
    url = f"/v1/workspaces/{workspace['id']}/channels"
    first = await client.post(url, json={"name": "!!"}, headers=keyed(account, key))
    assert first.status_code == 422
    again = await client.post(url, json={"name": "!!"}, headers=keyed(account, key))
    assert again.status_code == 422
    assert "idempotent-replayed" not in again.headers
    assert again.json()["error"] == first.json()["error"]
    fixed = await client.post(url, json={"name": "fixed"}, headers=keyed(account, key))
    assert fixed.status_code == 201


async def test_refused_requests_do_not_claim_the_key(
    client: httpx.AsyncClient, account: Account
) -> None:
    key = secrets.token_urlsafe(16)
    invalid = await client.post("/v1/workspaces", json={"nme": "x"}, headers=keyed(account, key))
    assert invalid.status_code == 422
    valid = await client.post("/v1/workspaces", json={"name": "fine"}, headers=keyed(account, key))
    assert valid.status_code == 201
    assert "idempotent-replayed" not in valid.headers
    bad_key = await client.post(
        "/v1/workspaces", json={"name": "fine"}, headers=keyed(account, "x" * 256)
    )
    assert bad_key.status_code == 422
    assert bad_key.json()["error"]["details"]["field"] == "Idempotency-Key"


async def test_credentials_are_never_stored(
    live_server: LiveServer, client: httpx.AsyncClient, account: Account
) -> None:
    key = secrets.token_urlsafe(16)
    body = {"email": account.email, "password": account.password}
    first = await client.post("/v1/auth/sign-in", json=body, headers={"Idempotency-Key": key})
    second = await client.post("/v1/auth/sign-in", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in second.headers
    assert first.json()["tokens"] != second.json()["tokens"]


async def test_reads_ignore_the_key(client: httpx.AsyncClient, account: Account) -> None:
    headers = keyed(account, secrets.token_urlsafe(16))
    await client.get("/v1/workspaces", headers=headers)
    assert (
        "idempotent-replayed" not in (await client.get("/v1/workspaces", headers=headers)).headers
    )


async def test_server_processes_share_the_keys(
    selfhost_url: str, tmp_path: Path, live_server: LiveServer, client: httpx.AsyncClient
) -> None:
    """A request retried against another server process on the same database replays."""
    account = await live_server.sign_up(client, "Roaming")
    key = secrets.token_urlsafe(16)
    async with serve(selfhost_url, tmp_path) as other, other.client() as other_client:
        first = await client.post(
            "/v1/workspaces", json={"name": "one"}, headers=keyed(account, key)
        )
        again = await other_client.post(
            "/v1/workspaces", json={"name": "one"}, headers=keyed(account, key)
        )
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


class _NotOperable:
    """A provider that offers no durable idempotency store (delegates everything else)."""

    def __init__(self, inner: BackendProvider) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in {"idempotency", "migrate", "check_ready"}:
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_in_process_store_without_an_operable_provider(provider: SelfHostProvider) -> None:
    hosted: Any = _NotOperable(provider)
    assert not isinstance(hosted, OperableProvider)
    app = create_app(hosted, ServerSettings())
    assert isinstance(app.state.kiiaren.idempotency, InProcessIdempotencyStore)
    async with asgi_client(app) as client:
        signed_up = await client.post(
            "/v1/auth/sign-up",
            json={
                "email": f"{secrets.token_hex(5)}@example.com",
                "password": "Pass-word-123",
                "name": "In",
            },
        )
        token = signed_up.json()["tokens"]["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
        first = await client.post("/v1/workspaces", json={"name": "local"}, headers=headers)
        again = await client.post("/v1/workspaces", json={"name": "local"}, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert (await client.get("/ready")).status_code == 200


async def test_in_process_store_semantics() -> None:
    now = [0.0]
    store = InProcessIdempotencyStore(in_flight_timeout_seconds=10, clock=lambda: now[0])
    assert isinstance(store, IdempotencyStore)
    assert await store.claim("p", "k", "f", ttl_seconds=100) is None
    with pytest.raises(IdempotencyConflictError, match="still in progress"):
        await store.claim("p", "k", "f", ttl_seconds=100)
    now[0] = 11.0  # the first request never finished: its claim lapses
    assert await store.claim("p", "k", "f", ttl_seconds=100) is None
    answer = IdempotentReplay(status_code=200, body="{}")
    await store.complete("p", "k", answer)
    await store.release("p", "k")  # an answer is never released
    assert await store.claim("p", "k", "f", ttl_seconds=100) == answer
    with pytest.raises(IdempotencyConflictError, match="different request"):
        await store.claim("p", "k", "g", ttl_seconds=100)
    now[0] = 200.0
    assert await store.claim("p", "k", "g", ttl_seconds=100) is None
    now[0] = 400.0
    await store.claim("p", "other", "f", ttl_seconds=100)  # prunes what expired
    assert len(store) == 1

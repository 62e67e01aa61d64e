"""The retry policy: what is retried, how often, how long it waits, and with which key."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from kiiaren_core.errors import BackendUnavailableError, NotFoundError, RateLimitedError
from kiiaren_hosted import HostedProvider, HostedSettings
from kiiaren_hosted.transport import IDEMPOTENCY_HEADER, RetryPolicy, Transport

pytestmark = pytest.mark.anyio

BASE = "http://kiiaren.test"
Handler = Callable[[httpx.Request], httpx.Response]


def error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": code, "details": {}}, "request_id": "r"}
    return httpx.Response(status, json=body, headers=headers)


class Recorder:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make_transport(sleeps: Sleeps) -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def make(handler: Handler, **settings: Any) -> Transport:
        transport = Transport(
            HostedSettings(base_url=BASE, **settings),
            transport=httpx.MockTransport(handler),
            rng=random.Random(7),
            sleep=sleeps,
        )
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()


def get() -> httpx.Request:
    return httpx.Request("GET", f"{BASE}/v1/workspaces")


def post(key: str | None = None) -> httpx.Request:
    headers = {IDEMPOTENCY_HEADER: key} if key else {}
    return httpx.Request("POST", f"{BASE}/v1/workspaces", json={"name": "x"}, headers=headers)


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_retryable_statuses_are_retried(make_transport: Any, status: int) -> None:
    recorder = Recorder(error(status, "x"), httpx.Response(200, json=[]))
    response = await make_transport(recorder).send(get())
    assert response.status_code == 200
    assert len(recorder.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 500, 501])
async def test_other_statuses_are_not_retried(make_transport: Any, status: int) -> None:
    recorder = Recorder(error(status, "x"), httpx.Response(200, json=[]))
    response = await make_transport(recorder).send(get())
    assert response.status_code == status
    assert len(recorder.requests) == 1


async def test_a_post_without_a_key_is_not_repeated(make_transport: Any) -> None:
    recorder = Recorder(error(503, "backend_unavailable"), httpx.Response(201, json={}))
    response = await make_transport(recorder).send(post())
    assert response.status_code == 503
    assert len(recorder.requests) == 1
    keyed = Recorder(error(503, "backend_unavailable"), httpx.Response(201, json={}))
    assert (await make_transport(keyed).send(post("k-1"))).status_code == 201
    assert [r.headers[IDEMPOTENCY_HEADER] for r in keyed.requests] == ["k-1", "k-1"]


async def test_connect_errors_are_retried_even_when_unsafe(make_transport: Any) -> None:
    recorder = Recorder(httpx.ConnectError("refused"), httpx.Response(201, json={}))
    assert (await make_transport(recorder).send(post())).status_code == 201
    assert len(recorder.requests) == 2


async def test_errors_after_sending_are_retried_only_when_safe(make_transport: Any) -> None:
    unsafe = Recorder(httpx.ReadError("reset"), httpx.Response(201, json={}))
    with pytest.raises(BackendUnavailableError) as caught:
        await make_transport(unsafe).send(post())
    assert caught.value.details == {"attempts": 1, "reason": "ReadError"}
    assert len(unsafe.requests) == 1
    safe = Recorder(httpx.RemoteProtocolError("reset"), httpx.Response(201, json={}))
    assert (await make_transport(safe).send(post("k"))).status_code == 201


async def test_at_most_max_attempts(make_transport: Any, sleeps: Sleeps) -> None:
    recorder = Recorder(error(503, "backend_unavailable"))
    response = await make_transport(recorder).send(get())
    assert response.status_code == 503
    assert len(recorder.requests) == 3
    assert len(sleeps) == 2
    failing = Recorder(httpx.ConnectError("refused"))
    with pytest.raises(BackendUnavailableError) as caught:
        await make_transport(failing, max_attempts=2).send(get())
    assert caught.value.details["attempts"] == 2
    assert len(failing.requests) == 2


async def test_backoff_is_full_jitter_within_the_exponential_ceiling(
    make_transport: Any, sleeps: Sleeps
) -> None:
    recorder = Recorder(error(503, "backend_unavailable"))
    await make_transport(recorder, max_attempts=5, backoff_base_seconds=0.5).send(get())
    ceilings = [0.5, 1.0, 2.0, 4.0]
    assert len(sleeps) == 4
    assert all(0 <= wait <= ceiling for wait, ceiling in zip(sleeps, ceilings, strict=True))
    policy = RetryPolicy(backoff_base_seconds=1.0, backoff_cap_seconds=3.0)
    rng = random.Random(1)
    draws = [policy.backoff(10, rng) for _ in range(2000)]
    assert max(draws) <= 3.0
    assert min(draws) < 0.1, "spread over the whole [0, cap] range"
    assert max(draws) > 2.9, "spread over the whole [0, cap] range"


async def test_retry_after_is_honoured(make_transport: Any, sleeps: Sleeps) -> None:
    recorder = Recorder(
        error(429, "rate_limited", **{"Retry-After": "2"}),
        error(503, "backend_unavailable", **{"Retry-After": "1.5"}),
        httpx.Response(200, json=[]),
    )
    assert (await make_transport(recorder).send(get())).status_code == 200
    assert sleeps == [2.0, 1.5]


async def test_a_long_retry_after_is_raised_at_once(make_transport: Any, sleeps: Sleeps) -> None:
    recorder = Recorder(error(429, "rate_limited", **{"Retry-After": "30"}))
    response = await make_transport(recorder).send(get())
    assert response.status_code == 429
    assert sleeps == []
    beyond_deadline = Recorder(error(503, "backend_unavailable", **{"Retry-After": "5"}))
    transport = make_transport(beyond_deadline, deadline_seconds=3.0)
    assert (await transport.send(get())).status_code == 503
    assert sleeps == []


async def test_a_repeat_in_progress_is_retried(make_transport: Any) -> None:
    in_progress = {
        "error": {
            "code": "idempotency_conflict",
            "message": "still running",
            "details": {"reason": "in_progress"},
        },
        "request_id": "r",
    }
    recorder = Recorder(
        error(503, "backend_unavailable"),
        httpx.Response(409, json=in_progress),
        httpx.Response(201, json={}),
    )
    assert (await make_transport(recorder).send(post("k"))).status_code == 201
    first = Recorder(httpx.Response(409, json=in_progress))
    assert (await make_transport(first).send(post("k"))).status_code == 409
    assert len(first.requests) == 1, "a first attempt's conflict is the caller's"


async def test_the_deadline_bounds_the_whole_call() -> None:
    """A server that accepts and never answers: the call ends at the deadline, not later."""
    hung: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = Transport(HostedSettings(base_url=f"http://127.0.0.1:{port}", deadline_seconds=0.6))
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            await transport.send(httpx.Request("GET", f"http://127.0.0.1:{port}/v1/workspaces"))
    finally:
        elapsed = time.monotonic() - started
        await transport.aclose()
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()
    assert 0.5 <= elapsed < 1.5
    assert caught.value.details["reason"] in ("ReadTimeout", "deadline")


async def test_provider_calls_reuse_one_key_across_attempts_and_new_ones_per_call() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/workspaces/w1/messages":
            seen.append(request.headers[IDEMPOTENCY_HEADER])
            if len(seen) % 2:
                raise httpx.ReadError("connection reset after the body was sent")
            return httpx.Response(201, json=_message())
        return httpx.Response(404, json={})

    provider = HostedProvider(
        base_url=BASE, transport=httpx.MockTransport(handler), backoff_base_seconds=0
    )
    view = provider.with_session("access-token")
    try:
        await view.persistence.message.create("w1", body="a", channel_id="c1")
        await view.persistence.message.create("w1", body="b", channel_id="c1")
    finally:
        await provider.aclose()
    assert len(seen) == 4
    assert seen[0] == seen[1] != seen[2] == seen[3]


async def test_reads_are_not_keyed_and_404_reads_are_none() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert (IDEMPOTENCY_HEADER in request.headers) is (request.method != "GET")
        body = {"error": {"code": "not_found", "message": "No.", "details": {}}, "request_id": "r"}
        return httpx.Response(404, json=body)

    provider = HostedProvider(base_url=BASE, transport=httpx.MockTransport(handler))
    view = provider.with_session("access-token")
    try:
        assert await view.persistence.channel.get_by_id("c1") is None
        with pytest.raises(NotFoundError):
            await view.persistence.channel.remove("c1")
    finally:
        await provider.aclose()


async def test_a_rate_limit_reaches_the_caller_with_its_retry_after() -> None:
    provider = HostedProvider(
        base_url=BASE,
        transport=httpx.MockTransport(
            lambda request: error(429, "rate_limited", **{"Retry-After": "40"})
        ),
    )
    try:
        with pytest.raises(RateLimitedError) as caught:
            await provider.auth.sign_in_with_password("a@example.com", "pw")
    finally:
        await provider.aclose()
    assert caught.value.retry_after == 40.0


def _message() -> dict[str, Any]:
    return {
        "id": "m1",
        "workspace_id": "w1",
        "member_id": "mem1",
        "body": "a",
        "channel_id": "c1",
        "created_at": "2026-01-01T00:00:00Z",
    }

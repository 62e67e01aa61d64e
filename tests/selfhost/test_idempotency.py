"""``SelfHostIdempotencyStore``: durable Idempotency-Key records on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets

import anyio
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import IdempotencyConflictError
from kiiaren_core.protocols import IdempotencyStore, IdempotentReplay, OperableProvider
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.idempotency import SelfHostIdempotencyStore

pytestmark = pytest.mark.anyio

TTL = 3600.0
ANSWER = IdempotentReplay(status_code=201, body='{"id":"1"}')


def fingerprint(body: str = "{}") -> str:
    return f"POST /v1/things {secrets.token_hex(8)}{body}"


def key() -> str:
    return secrets.token_urlsafe(12)


@pytest.fixture
def store(selfhost_provider: SelfHostProvider) -> SelfHostIdempotencyStore:
    return selfhost_provider.idempotency


async def test_the_provider_is_operable(selfhost_provider: SelfHostProvider) -> None:
    assert isinstance(selfhost_provider, OperableProvider)
    assert isinstance(selfhost_provider.idempotency, IdempotencyStore)


async def test_claim_complete_replay(store: SelfHostIdempotencyStore) -> None:
    k, fp = key(), fingerprint()
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None
    await store.complete("user:a", k, ANSWER)
    replay = await store.claim("user:a", k, fp, ttl_seconds=TTL)
    assert replay == IdempotentReplay(status_code=201, body='{"id":"1"}')
    assert replay is not None
    assert replay.content_type == "application/json"


async def test_other_request_and_in_flight_are_refused(store: SelfHostIdempotencyStore) -> None:
    k, fp = key(), fingerprint()
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None
    with pytest.raises(IdempotencyConflictError) as running:
        await store.claim("user:a", k, fp, ttl_seconds=TTL)
    assert running.value.details == {"reason": "in_progress"}
    await store.complete("user:a", k, ANSWER)
    with pytest.raises(IdempotencyConflictError) as other:
        await store.claim("user:a", k, fingerprint('{"x":1}'), ttl_seconds=TTL)
    assert other.value.details == {"reason": "different_request"}


async def test_keys_belong_to_their_principal(store: SelfHostIdempotencyStore) -> None:
    k, fp = key(), fingerprint()
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None
    assert await store.claim("user:b", k, fp, ttl_seconds=TTL) is None
    assert await store.claim("ip:192.0.2.1", k, fingerprint(), ttl_seconds=TTL) is None


async def test_release_frees_a_claim_but_not_an_answer(store: SelfHostIdempotencyStore) -> None:
    k, fp = key(), fingerprint()
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None
    await store.release("user:a", k)
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None
    await store.complete("user:a", k, ANSWER)
    await store.release("user:a", k)
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) == ANSWER


async def test_expired_keys_are_claimed_again_and_pruned(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k, fp = key(), fingerprint()
    assert await store.claim("user:a", k, fp, ttl_seconds=0.2) is None
    await store.complete("user:a", k, ANSWER)
    await anyio.sleep(0.3)
    assert await store.claim("user:a", k, fingerprint("other"), ttl_seconds=0.2) is None
    await anyio.sleep(0.3)
    assert await store.prune() >= 1
    async with selfhost_provider._runtime.db.read() as conn:
        left = (
            await conn.execute(sa.select(sa.func.count()).where(t.idempotency_keys.c.key == k))
        ).scalar_one()
    assert left == 0


async def test_an_abandoned_claim_lapses(selfhost_provider: SelfHostProvider) -> None:
    store = SelfHostIdempotencyStore(selfhost_provider._runtime.db, in_flight_timeout_seconds=0.2)
    k, fp = key(), fingerprint()
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None
    with pytest.raises(IdempotencyConflictError):
        await store.claim("user:a", k, fp, ttl_seconds=TTL)
    await anyio.sleep(0.3)
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None


async def test_concurrent_claims_let_exactly_one_run(store: SelfHostIdempotencyStore) -> None:
    k, fp = key(), fingerprint()
    outcomes: list[str] = []

    async def claim() -> None:
        try:
            result = await store.claim("user:a", k, fp, ttl_seconds=TTL)
        except IdempotencyConflictError:
            outcomes.append("conflict")
        else:
            outcomes.append("run" if result is None else "replay")

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(claim)
    assert outcomes.count("run") == 1
    assert outcomes.count("conflict") == 19


async def test_two_providers_share_the_records(
    selfhost_url: str, tmp_path: object, selfhost_provider: SelfHostProvider
) -> None:
    """What one server process stored, another replays (one database, no sticky sessions)."""
    other = SelfHostProvider(database_url=selfhost_url, storage_path=str(tmp_path))
    try:
        k, fp = key(), fingerprint()
        assert await selfhost_provider.idempotency.claim("user:a", k, fp, ttl_seconds=TTL) is None
        with pytest.raises(IdempotencyConflictError):
            await other.idempotency.claim("user:a", k, fp, ttl_seconds=TTL)
        await selfhost_provider.idempotency.complete("user:a", k, ANSWER)
        assert await other.idempotency.claim("user:a", k, fp, ttl_seconds=TTL) == ANSWER
    finally:
        await other.aclose()


async def test_method_and_path_are_kept_for_operators(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k = key()
    await store.claim("user:a", k, "DELETE /v1/docs/1 abc", ttl_seconds=TTL)
    async with selfhost_provider._runtime.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(t.idempotency_keys.c.method, t.idempotency_keys.c.path).where(
                    t.idempotency_keys.c.key == k
                )
            )
        ).one()
    assert (row.method, row.path) == ("DELETE", "/v1/docs/1")

"""``SelfHostIdempotencyStore``: durable Idempotency-Key records on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets

import anyio
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import IdempotencyConflictError, IdempotencyKeyTaken
from kiiaren_core.protocols import (
    EffectBoundIdempotencyStore,
    IdempotencyStore,
    IdempotentReplay,
    OperableProvider,
)
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.db import pending_claim
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.idempotency import SelfHostIdempotencyStore
from kiiaren_selfhost.ratelimit import Limit, RateLimiter

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


# --- keys recorded with the effect (bound) ----------------------------------------------------


async def record_count(provider: SelfHostProvider, k: str) -> int:
    async with provider._runtime.db.read() as conn:
        return int(
            (
                await conn.execute(sa.select(sa.func.count()).where(t.idempotency_keys.c.key == k))
            ).scalar_one()
        )


async def an_effect(provider: SelfHostProvider) -> None:
    """A write transaction standing for an operation's effect."""
    async with provider._runtime.db.write() as conn:
        await conn.execute(sa.select(1))


async def test_the_store_binds_keys_to_effects(store: SelfHostIdempotencyStore) -> None:
    assert isinstance(store, EffectBoundIdempotencyStore)


async def test_a_bound_key_is_recorded_with_the_effect_and_replayed(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k, fp = key(), fingerprint()
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        assert not binding.recorded
        await an_effect(selfhost_provider)
        assert binding.recorded
        await an_effect(selfhost_provider)  # later writes of the operation leave the key be
    await store.complete("user:a", k, ANSWER)
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) == ANSWER
    assert await record_count(selfhost_provider, k) == 1


async def test_a_rolled_back_effect_leaves_no_record(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k, fp = key(), fingerprint()
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        with pytest.raises(RuntimeError):
            async with selfhost_provider._runtime.db.write():
                raise RuntimeError("the effect fails")
        assert not binding.recorded
    assert await record_count(selfhost_provider, k) == 0
    # Nothing happened, so the key is free: the same request runs.
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) is None


async def test_a_write_after_a_rolled_back_one_carries_the_key(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    """An operation that retries its write internally stays keyed."""
    k, fp = key(), fingerprint()
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        with pytest.raises(RuntimeError):
            async with selfhost_provider._runtime.db.write():
                raise RuntimeError("first attempt fails")
        await an_effect(selfhost_provider)
        assert binding.recorded
    assert await record_count(selfhost_provider, k) == 1


async def test_reads_do_not_record_the_key(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k, fp = key(), fingerprint()
    async with (
        store.bound("user:a", k, fp, ttl_seconds=TTL) as binding,
        selfhost_provider._runtime.db.read() as conn,
    ):
        await conn.execute(sa.select(1))
    assert not binding.recorded
    assert await record_count(selfhost_provider, k) == 0


async def test_a_taken_key_rolls_the_effect_back(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k, fp = key(), fingerprint()
    async with store.bound("user:a", k, fp, ttl_seconds=TTL):
        await an_effect(selfhost_provider)
    ran = False
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        with pytest.raises(IdempotencyKeyTaken):
            async with selfhost_provider._runtime.db.write():
                ran = True
    assert not ran
    assert not binding.recorded
    # A claimed-style key is taken the same way.
    other = key()
    assert await store.claim("user:a", other, fp, ttl_seconds=TTL) is None
    async with store.bound("user:a", other, fp, ttl_seconds=TTL):
        with pytest.raises(IdempotencyKeyTaken):
            await an_effect(selfhost_provider)


async def test_an_expired_record_is_replaced_by_a_bound_key(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k = key()
    async with store.bound("user:a", k, fingerprint(), ttl_seconds=0.1):
        await an_effect(selfhost_provider)
    await anyio.sleep(0.2)
    fp = fingerprint("new")
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        await an_effect(selfhost_provider)
    assert binding.recorded
    await store.complete("user:a", k, ANSWER)
    assert await store.claim("user:a", k, fp, ttl_seconds=TTL) == ANSWER


async def test_concurrent_bound_duplicates_have_one_effect(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    k, fp = key(), fingerprint()
    outcomes: list[str] = []

    async def attempt() -> None:
        async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
            try:
                await an_effect(selfhost_provider)
            except IdempotencyKeyTaken:
                outcomes.append("taken")
                return
        outcomes.append("recorded" if binding.recorded else "lost")

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(attempt)
    assert sorted(outcomes) == ["recorded"] + ["taken"] * 9
    assert await record_count(selfhost_provider, k) == 1


async def test_a_bound_key_without_answer_is_never_run_again(
    selfhost_provider: SelfHostProvider,
) -> None:
    """The effect committed but its answer was never stored: in progress at first, then
    answer_unavailable; never claimable, never released, never replaced by a bound key."""
    store = SelfHostIdempotencyStore(
        selfhost_provider._runtime.db, in_flight_timeout_seconds=0.1, answer_wait_seconds=0.3
    )
    k, fp = key(), fingerprint()
    async with store.bound("user:a", k, fp, ttl_seconds=TTL):
        await an_effect(selfhost_provider)
    with pytest.raises(IdempotencyConflictError) as running:
        await store.claim("user:a", k, fp, ttl_seconds=TTL)
    assert running.value.details == {"reason": "in_progress"}
    await store.release("user:a", k)
    await anyio.sleep(0.4)  # past both the answer wait and the in-flight lease
    with pytest.raises(IdempotencyConflictError) as lost:
        await store.claim("user:a", k, fp, ttl_seconds=TTL)
    assert lost.value.details == {"reason": "answer_unavailable"}
    assert "look the result up" in lost.value.message
    async with store.bound("user:a", k, fp, ttl_seconds=TTL):
        with pytest.raises(IdempotencyKeyTaken):
            await an_effect(selfhost_provider)
    assert await record_count(selfhost_provider, k) == 1


async def test_suspended_writes_leave_the_key_for_the_effect(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    """Bookkeeping written before the effect (a rate-limit counter) does not carry the key."""
    k, fp = key(), fingerprint()
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        with pending_claim.suspended():
            await an_effect(selfhost_provider)
        assert not binding.recorded
        assert await record_count(selfhost_provider, k) == 0
        await an_effect(selfhost_provider)
        assert binding.recorded


async def test_a_rate_limit_count_leaves_the_key_for_the_effect(
    store: SelfHostIdempotencyStore, selfhost_provider: SelfHostProvider
) -> None:
    """The limiter's counter commits before the operation's effect and must not carry the key
    (else a failed effect would leave the key recorded with nothing done)."""
    k, fp = key(), fingerprint()
    limiter = RateLimiter(selfhost_provider._runtime.db)
    async with store.bound("user:a", k, fp, ttl_seconds=TTL) as binding:
        await limiter.hit("bench", Limit(count=100, seconds=60), [("ip", "192.0.2.1")])
        assert not binding.recorded
        assert await record_count(selfhost_provider, k) == 0
        await an_effect(selfhost_provider)
        assert binding.recorded

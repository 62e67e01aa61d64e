"""Self-host authentication beyond the conformance suite: timing, rehash, stored parameters."""

from __future__ import annotations

import statistics
import time

import pytest
import sqlalchemy as sa

from kiiaren_core.errors import NotAuthenticatedError
from kiiaren_core.testing.base import unique_email
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.db import tables as t
from tests.selfhost.conftest import TEST_OPTIONS

pytestmark = pytest.mark.anyio

PASSWORD = "Timing-test-password-1"


async def _stored_hash(provider: SelfHostProvider, email: str) -> str:
    async with provider._runtime.db.read() as conn:
        value = (
            await conn.execute(sa.select(t.users.c.password_hash).where(t.users.c.email == email))
        ).scalar_one()
    return str(value)


async def test_unknown_email_and_wrong_password_take_the_same_time(selfhost_url: str) -> None:
    """Interleaved attempts, compared by median: within a generous tolerance, never absolute."""
    options = {**TEST_OPTIONS, "rate_limit_sign_in": "10000/60"}
    async with SelfHostProvider(database_url=selfhost_url, **options) as provider:
        owner = provider.with_session(None)
        email = unique_email("timing")
        await owner.auth.sign_up_with_password(email, PASSWORD, name="Timing")
        view = provider.with_session(None)
        wrong: list[float] = []
        unknown: list[float] = []
        for _ in range(12):
            for sample, address in ((wrong, email), (unknown, unique_email("nobody"))):
                started = time.perf_counter()
                with pytest.raises(NotAuthenticatedError):
                    await view.auth.sign_in_with_password(address, PASSWORD + "-wrong")
                sample.append(time.perf_counter() - started)
        ratio = statistics.median(unknown) / statistics.median(wrong)
        assert 0.6 < ratio < 1.6, f"unknown/wrong median ratio {ratio:.2f}"


async def test_hash_parameters_are_stored_and_upgraded_on_sign_in(selfhost_url: str) -> None:
    email = unique_email("rehash")
    async with SelfHostProvider(database_url=selfhost_url, **TEST_OPTIONS) as provider:
        await provider.with_session(None).auth.sign_up_with_password(email, PASSWORD, name="R")
        stored = await _stored_hash(provider, email)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), "the OWASP floor, at least"
    stronger = {**TEST_OPTIONS, "argon2_time_cost": 3}
    async with SelfHostProvider(database_url=selfhost_url, **stronger) as provider:
        await provider.with_session(None).auth.sign_in_with_password(email, PASSWORD)
        upgraded = await _stored_hash(provider, email)
        assert upgraded.startswith("$argon2id$v=19$m=19456,t=3,p=1$")
        await provider.with_session(None).auth.sign_in_with_password(email, PASSWORD)
        assert await _stored_hash(provider, email) == upgraded, "no rehash once current"

"""Argon2id hashing, bounded concurrency, the dummy hash and the password policy."""

from __future__ import annotations

import unicodedata

import anyio
import anyio.lowlevel
import argon2
import pytest

from kiiaren_core.errors import ConfigurationError, InvalidInputError
from kiiaren_selfhost.auth import passwords
from kiiaren_selfhost.auth.passwords import (
    MAX_PASSWORD_BYTES,
    PasswordHasher,
    check_password_policy,
    is_common_password,
)
from kiiaren_selfhost.settings import SelfHostSettings

GOOD = "tangerine sofa lamp"


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher()


# --- hashing -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hash_uses_argon2id_at_the_owasp_floor(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(GOOD)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    params = argon2.extract_parameters(stored)
    assert params.type is argon2.Type.ID
    assert (params.memory_cost, params.time_cost, params.parallelism) == (19_456, 2, 1)
    assert params.salt_len >= 16
    assert params.hash_len >= 32


@pytest.mark.anyio
async def test_configured_parameters_are_in_the_hash() -> None:
    settings = SelfHostSettings(
        argon2_time_cost=3, argon2_memory_cost_kib=24_576, argon2_parallelism=2
    )
    stored = await PasswordHasher.from_settings(settings).hash(GOOD)
    params = argon2.extract_parameters(stored)
    assert (params.type, params.memory_cost, params.time_cost, params.parallelism) == (
        argon2.Type.ID,
        24_576,
        3,
        2,
    )


@pytest.mark.parametrize(
    ("kwargs", "variable"),
    [
        ({"time_cost": 1}, "argon2_time_cost"),
        ({"memory_cost_kib": 19_455}, "argon2_memory_cost_kib"),
        ({"parallelism": 0}, "argon2_parallelism"),
        ({"max_concurrent_hashes": 0}, "max_concurrent_hashes"),
    ],
)
def test_parameters_below_the_floor_are_refused(kwargs: dict[str, int], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PasswordHasher(**kwargs)
    assert caught.value.details == {"variable": variable}


@pytest.mark.anyio
async def test_salts_differ(hasher: PasswordHasher) -> None:
    first, second = await hasher.hash(GOOD), await hasher.hash(GOOD)
    assert first != second
    assert await hasher.verify(first, GOOD)
    assert await hasher.verify(second, GOOD)


@pytest.mark.anyio
async def test_verify(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(GOOD)
    assert await hasher.verify(stored, GOOD) is True
    assert await hasher.verify(stored, GOOD.upper()) is False
    assert await hasher.verify(stored, "") is False


@pytest.mark.anyio
async def test_passwords_are_verified_exactly_as_given(hasher: PasswordHasher) -> None:
    # No trimming: surrounding spaces are part of the password.
    spaced = "  padded password  "
    stored = await hasher.hash(spaced)
    assert await hasher.verify(stored, spaced)
    assert not await hasher.verify(stored, spaced.strip())
    # No Unicode normalisation: NFC and NFD spellings are different passwords.
    nfc = unicodedata.normalize("NFC", "Åsa-Göransson-café")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    stored = await hasher.hash(nfc)
    assert await hasher.verify(stored, nfc)
    assert not await hasher.verify(stored, nfd)


@pytest.mark.anyio
async def test_malformed_stored_hash_fails_closed(
    hasher: PasswordHasher, caplog: pytest.LogCaptureFixture
) -> None:
    assert await hasher.verify("not-a-hash", GOOD) is False
    assert await hasher.verify("", GOOD) is False
    assert "malformed" in caplog.text
    assert "not-a-hash" not in caplog.text


@pytest.mark.anyio
async def test_oversized_password_is_never_hashed(hasher: PasswordHasher) -> None:
    stored = await hasher.hash(GOOD)
    too_long = "a" * (MAX_PASSWORD_BYTES + 1)
    with pytest.raises(InvalidInputError) as caught:
        await hasher.hash(too_long)
    assert caught.value.details == {"field": "password", "reason": "too_long"}
    assert await hasher.verify(stored, too_long) is False
    assert await hasher.verify_dummy(too_long) is False
    exactly = "a" * MAX_PASSWORD_BYTES
    assert await hasher.verify(await hasher.hash(exactly), exactly)


@pytest.mark.anyio
async def test_unencodable_password(hasher: PasswordHasher) -> None:
    lone_surrogate = "abcd\ud800efgh"
    with pytest.raises(InvalidInputError):
        await hasher.hash(lone_surrogate)
    assert await hasher.verify(await hasher.hash(GOOD), lone_surrogate) is False


# --- rehash --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_needs_rehash(hasher: PasswordHasher) -> None:
    current = await hasher.hash(GOOD)
    assert hasher.needs_rehash(current) is False
    weaker = argon2.PasswordHasher(time_cost=1, memory_cost=8_192, parallelism=1).hash(GOOD)
    assert hasher.needs_rehash(weaker) is True
    other_variant = argon2.PasswordHasher(
        time_cost=2, memory_cost=19_456, parallelism=1, type=argon2.Type.I
    ).hash(GOOD)
    assert hasher.needs_rehash(other_variant) is True
    assert hasher.needs_rehash("garbage") is True


@pytest.mark.anyio
async def test_weaker_hash_upgrades_on_next_login(hasher: PasswordHasher) -> None:
    """The sign-in flow: verify the old hash, see it is weak, store a new one."""
    stored = argon2.PasswordHasher(time_cost=1, memory_cost=8_192, parallelism=1).hash(GOOD)
    assert await hasher.verify(stored, GOOD)
    assert hasher.needs_rehash(stored)
    stored = await hasher.hash(GOOD)
    assert not hasher.needs_rehash(stored)
    assert argon2.extract_parameters(stored).memory_cost == 19_456


# --- unknown users -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_dummy_verify_is_false(hasher: PasswordHasher) -> None:
    assert await hasher.verify_dummy(GOOD) is False
    assert await hasher.verify_dummy("") is False


def test_dummy_hash_has_the_real_parameters(hasher: PasswordHasher) -> None:
    """Same parameters -> the same work as a real verification (timing is not asserted)."""
    dummy = argon2.extract_parameters(hasher.dummy_hash)
    assert (dummy.type, dummy.memory_cost, dummy.time_cost, dummy.parallelism) == (
        argon2.Type.ID,
        19_456,
        2,
        1,
    )
    assert (dummy.salt_len, dummy.hash_len) == (16, 32)
    assert hasher.needs_rehash(hasher.dummy_hash) is False


def test_dummy_hash_differs_per_hasher() -> None:
    assert PasswordHasher().dummy_hash != PasswordHasher().dummy_hash


@pytest.mark.anyio
async def test_dummy_verify_holds_a_limiter_token() -> None:
    """The dummy path does the same hashing work, through the same limiter."""
    hasher = PasswordHasher(max_concurrent_hashes=1)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(hasher.limiter.statistics().borrowed_tokens)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        await hasher.verify_dummy(GOOD)
        tasks.cancel_scope.cancel()
    assert max(seen) == 1


# --- bounded concurrency -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_hashes_are_bounded() -> None:
    hasher = PasswordHasher(max_concurrent_hashes=2)
    limiter = hasher.limiter
    assert limiter.total_tokens == 2
    borrowed: list[int] = []
    waiting: list[int] = []
    finished = anyio.Event()

    async def sample() -> None:
        # Observe the limiter while the burst runs (every event-loop turn).
        while not finished.is_set():
            statistics = limiter.statistics()
            borrowed.append(statistics.borrowed_tokens)
            waiting.append(statistics.tasks_waiting)
            await anyio.sleep(0.001)

    results: list[str] = []

    async def hash_one(index: int) -> None:
        results.append(await hasher.hash(f"{GOOD} {index}"))

    async with anyio.create_task_group() as outer:
        outer.start_soon(sample)
        async with anyio.create_task_group() as burst:
            for index in range(10):
                burst.start_soon(hash_one, index)
        finished.set()

    assert len(results) == 10
    assert max(borrowed) == 2  # never more than the bound, and the bound was used
    assert max(waiting) >= 1  # the rest of the burst queued instead of running
    assert limiter.statistics().borrowed_tokens == 0


# --- policy --------------------------------------------------------------------------------------


def policy_reason(password: str, **context: str) -> str | None:
    try:
        check_password_policy(password, **context)
    except InvalidInputError as error:
        details = error.details
    else:
        return None
    assert details["field"] == "password"
    return str(details["reason"])


def test_policy_length() -> None:
    assert policy_reason("vK3#pq9") == "too_short"  # 7 characters
    assert policy_reason("vK3#pq9z") is None  # 8 characters
    assert policy_reason("vK3#pq9z" * 8) is None  # 64 characters
    assert policy_reason("a" * 200 + "z") is None  # long passphrases welcome


def test_policy_byte_limit() -> None:
    assert policy_reason("x" * 1024) is None
    assert policy_reason("x" * 1025) == "too_long"
    # Characters are not bytes: 342 euro signs are 1026 UTF-8 bytes.
    assert policy_reason("€" * 342) == "too_long"
    assert policy_reason("€" * 341) is None
    # The byte check runs first, so even a huge common-looking input is cheap to refuse.
    assert policy_reason("password" * 10_000) == "too_long"


def test_policy_messages_are_clear() -> None:
    with pytest.raises(InvalidInputError, match="at least 8 characters"):
        check_password_policy("short")
    with pytest.raises(InvalidInputError, match="at most 1024 bytes"):
        check_password_policy("x" * 2000)
    with pytest.raises(InvalidInputError, match="too common"):
        check_password_policy("password123")
    with pytest.raises(InvalidInputError, match="email address"):
        check_password_policy("ada@example.com", email="ada@example.com")


@pytest.mark.parametrize(
    "password",
    [
        "password",
        "12345678",
        "password123",
        "PASSWORD123",
        "Qwerty123",
        "iloveyou",
        "sunshine1",
        "1q2w3e4r",
        "letmein!",
        "football2024",
        "P@ssw0rd",
        "correcthorsebatterystaple",
    ],
)
def test_common_passwords_are_refused(password: str) -> None:
    assert policy_reason(password) == "common"


def test_no_composition_rules() -> None:
    assert policy_reason("alllowercaseletters") is None
    assert policy_reason("83917465029") is None
    assert policy_reason("!!--##--!!") is None


def test_unicode_is_accepted_exactly() -> None:
    assert policy_reason("пароль-надёжный") is None
    assert policy_reason("🔑🔒🗝️🚪🏠🌙⭐🌊") is None  # 8+ characters, 4-byte code points
    assert policy_reason("日本語のパスワード") is None
    assert policy_reason("abcd\ud800efgh") == "invalid_characters"


def test_password_equal_to_email_or_name() -> None:
    assert policy_reason("ada@example.com", email="ada@example.com") == "matches_account"
    assert policy_reason("ADA@Example.com", email="ada@example.com") == "matches_account"
    assert policy_reason("Ada Lovelace", name="ada lovelace") == "matches_account"
    assert policy_reason("ada@example.com2", email="ada@example.com") is None


def test_non_string_password() -> None:
    assert policy_reason(12345678) == "invalid_type"  # type: ignore[arg-type]


def test_common_password_list_is_bundled() -> None:
    entries = passwords._common_passwords()
    assert len(entries) >= 3000
    assert all(entry and entry == entry.casefold() for entry in entries)
    assert is_common_password("Password1")
    assert is_common_password("QWERTYUIOP")
    assert not is_common_password(GOOD)
    long_entries = [e for e in entries if len(e) >= 8]
    assert len(long_entries) >= 2000  # the ones the length rule does not already refuse

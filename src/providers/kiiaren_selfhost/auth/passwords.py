"""Password hashing (argon2id) and the password policy.

Hashing is CPU- and memory-hard on purpose (19 MiB per hash at the OWASP floor), so it runs in
worker threads, never on the event loop, and at most ``max_concurrent_hashes`` run at once: a
burst of sign-ins queues instead of allocating ``burst x memory_cost`` at the same moment.

The policy follows NIST SP 800-63B / OWASP ASVS 5.0: a minimum length, a generous maximum, no
composition rules, a deny-list of common passwords, and no transformation of what the user
typed (no trimming, no Unicode normalisation: the exact string is hashed and verified).
"""

from __future__ import annotations

import base64
import functools
import logging
import secrets
from importlib import resources
from typing import Final

import anyio
import anyio.to_thread
import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from kiiaren_core.errors import ConfigurationError, InvalidInputError
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = [
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_LENGTH",
    "OWASP_MIN_MEMORY_COST_KIB",
    "OWASP_MIN_PARALLELISM",
    "OWASP_MIN_TIME_COST",
    "PasswordHasher",
    "check_password_policy",
    "is_common_password",
]

_log = logging.getLogger("kiiaren.auth")

MIN_PASSWORD_LENGTH: Final = 8
"""Fewest characters (Unicode code points) a password may have."""
MAX_PASSWORD_BYTES: Final = 1024
"""Most UTF-8 bytes a password may have; longer input is refused before any hashing."""

OWASP_MIN_MEMORY_COST_KIB: Final = 19_456
OWASP_MIN_TIME_COST: Final = 2
OWASP_MIN_PARALLELISM: Final = 1

_HASH_LEN: Final = 32
_SALT_LEN: Final = 16


def _b64(raw: bytes) -> str:
    # The PHC string format uses standard base64 without padding.
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _utf8_length(password: str) -> int | None:
    """UTF-8 size of ``password``, or ``None`` if it holds lone surrogates (not encodable)."""
    try:
        return len(password.encode("utf-8"))
    except UnicodeEncodeError:
        return None


class PasswordHasher:
    """Argon2id hashing with bounded concurrency and a constant-cost path for unknown users.

    Every method that computes a hash runs in a worker thread and holds one token of a
    :class:`anyio.CapacityLimiter` for the duration, so at most ``max_concurrent_hashes``
    hashes (each ``memory_cost_kib`` of memory) exist at any moment.

    Args:
        time_cost: Argon2 iterations (``t``), at least 2.
        memory_cost_kib: Argon2 memory in KiB (``m``), at least 19456.
        parallelism: Argon2 lanes (``p``), at least 1.
        max_concurrent_hashes: How many hashes may run at the same time.

    Raises:
        ConfigurationError: a parameter below the OWASP floor, or ``max_concurrent_hashes < 1``.
    """

    def __init__(
        self,
        *,
        time_cost: int = OWASP_MIN_TIME_COST,
        memory_cost_kib: int = OWASP_MIN_MEMORY_COST_KIB,
        parallelism: int = OWASP_MIN_PARALLELISM,
        max_concurrent_hashes: int = 4,
    ) -> None:
        floors = (
            ("argon2_time_cost", time_cost, OWASP_MIN_TIME_COST),
            ("argon2_memory_cost_kib", memory_cost_kib, OWASP_MIN_MEMORY_COST_KIB),
            ("argon2_parallelism", parallelism, OWASP_MIN_PARALLELISM),
            ("max_concurrent_hashes", max_concurrent_hashes, 1),
        )
        for variable, value, floor in floors:
            if value < floor:
                raise ConfigurationError(
                    f"{variable} must be at least {floor} (got {value}).",
                    details={"variable": variable},
                )
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            hash_len=_HASH_LEN,
            salt_len=_SALT_LEN,
            type=argon2.Type.ID,
        )
        self._limiter = anyio.CapacityLimiter(max_concurrent_hashes)
        # A well-formed argon2id hash with the current parameters whose digest is random bytes:
        # verifying against it costs exactly one real hash computation and can never match.
        # Building it needs no hashing, so constructing a PasswordHasher stays cheap.
        self._dummy_hash = (
            f"$argon2id$v={argon2.low_level.ARGON2_VERSION}"
            f"$m={memory_cost_kib},t={time_cost},p={parallelism}"
            f"${_b64(secrets.token_bytes(_SALT_LEN))}${_b64(secrets.token_bytes(_HASH_LEN))}"
        )

    @classmethod
    def from_settings(cls, settings: SelfHostSettings) -> PasswordHasher:
        """A hasher configured by the ``argon2_*`` and ``max_concurrent_hashes`` settings."""
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_cost_kib=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
            max_concurrent_hashes=settings.max_concurrent_hashes,
        )

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The limiter bounding concurrent hashes (read its ``statistics()`` to observe load)."""
        return self._limiter

    @property
    def dummy_hash(self) -> str:
        """The hash :meth:`verify_dummy` checks against (same parameters, never matches)."""
        return self._dummy_hash

    async def hash(self, password: str) -> str:
        """Hash ``password`` exactly as given and return the PHC string (``$argon2id$...``).

        The policy is not applied here (call :func:`check_password_policy` first); only the
        byte limit is, so an oversized input never reaches argon2.

        Raises:
            InvalidInputError: more than :data:`MAX_PASSWORD_BYTES` bytes, or not encodable
                as UTF-8 (lone surrogates). ``details["field"] == "password"``.
        """
        _check_size(password)
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True if ``password`` (exactly as given) matches ``password_hash``.

        Returns False, without hashing, for a password that could never have been stored
        (oversized or not UTF-8 encodable), and False for a malformed stored hash (logged).
        Never raises for a wrong password.
        """
        size = _utf8_length(password)
        if size is None or size > MAX_PASSWORD_BYTES:
            return False
        return await anyio.to_thread.run_sync(
            self._verify_sync, password_hash, password, limiter=self._limiter
        )

    async def verify_dummy(self, password: str) -> bool:
        """Spend the same time as :meth:`verify` with a wrong password; always False.

        Call it when the account does not exist (or has no password), so that an unknown
        email and a wrong password cannot be told apart by timing.
        """
        await self.verify(self._dummy_hash, password)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True if ``password_hash`` was made with other parameters (or another variant).

        Cheap (parses the string, computes nothing), so it runs inline. After a successful
        :meth:`verify`, a True answer means: hash the password again and store the new hash.
        A malformed hash also answers True.
        """
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return True

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except InvalidHashError:
            # A corrupt stored hash is an operator problem, not the user's: log without the
            # hash itself and treat the sign-in as failed.
            _log.warning("stored password hash is malformed; sign-in refused")
            return False
        except VerificationError:
            # VerifyMismatchError (wrong password) and any other verification failure.
            return False


def _check_size(password: str) -> None:
    size = _utf8_length(password)
    if size is None:
        raise InvalidInputError(
            "Password contains characters that cannot be encoded.",
            details={"field": "password", "reason": "invalid_characters"},
        )
    if size > MAX_PASSWORD_BYTES:
        raise InvalidInputError(
            f"Password must be at most {MAX_PASSWORD_BYTES} bytes.",
            details={"field": "password", "reason": "too_long"},
        )


@functools.cache
def _common_passwords() -> frozenset[str]:
    # Loaded once, lazily: ~12k entries that only sign-up and password changes need.
    text = (
        resources.files("kiiaren_selfhost.auth").joinpath("common_passwords.txt").read_text("utf-8")
    )
    return frozenset(
        line.casefold() for line in text.splitlines() if line and not line.startswith("#")
    )


def is_common_password(password: str) -> bool:
    """True if ``password`` is in the bundled list of common passwords (case-insensitive)."""
    return password.casefold() in _common_passwords()


def check_password_policy(
    password: str, *, email: str | None = None, name: str | None = None
) -> None:
    """Refuse a new password that breaks the policy; return None when it is acceptable.

    Rules, checked in this order: at most :data:`MAX_PASSWORD_BYTES` UTF-8 bytes (before
    anything else, so oversized input costs nothing), encodable as UTF-8, at least
    :data:`MIN_PASSWORD_LENGTH` characters, not a common password (case-insensitive), not the
    account's email or name (case-insensitive). There are no composition rules and the
    password is never trimmed or normalised.

    Raises:
        InvalidInputError: with ``details == {"field": "password", "reason": ...}`` where the
            reason is ``too_long``, ``invalid_characters``, ``too_short``, ``common`` or
            ``matches_account``.
    """
    if not isinstance(password, str):
        raise InvalidInputError(
            "Password must be a string.", details={"field": "password", "reason": "invalid_type"}
        )
    _check_size(password)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"Password must be at least {MIN_PASSWORD_LENGTH} characters.",
            details={"field": "password", "reason": "too_short"},
        )
    if is_common_password(password):
        raise InvalidInputError(
            "This password is too common and easy to guess. Choose another one.",
            details={"field": "password", "reason": "common"},
        )
    folded = password.casefold()
    if email and folded == email.strip().casefold():
        raise InvalidInputError(
            "Password must not be the same as your email address.",
            details={"field": "password", "reason": "matches_account"},
        )
    if name and folded == name.strip().casefold():
        raise InvalidInputError(
            "Password must not be the same as your name.",
            details={"field": "password", "reason": "matches_account"},
        )

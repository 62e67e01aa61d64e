"""Access tokens (short-lived HS256 JWTs) and opaque high-entropy tokens.

Access tokens are verified without I/O; the caller must still check that the session named by
``sid`` is alive on every request, which is what makes sign-out and revocation immediate.
Refresh, email-verification and password-reset tokens are opaque random strings stored only
as their SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt

from kiiaren_core.errors import ConfigurationError, NotAuthenticatedError
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = [
    "ACCESS_TOKEN_ALGORITHMS",
    "MIN_SECRET_BYTES",
    "OPAQUE_TOKEN_BYTES",
    "AccessClaims",
    "TokenService",
    "hash_token",
    "new_opaque_token",
]

ACCESS_TOKEN_ALGORITHMS: Final = ("HS256",)
"""The only algorithms an access token may be signed with (a fixed allow-list)."""
MIN_SECRET_BYTES: Final = 32
"""Shortest accepted signing key (RFC 7518 section 3.2: at least the hash output size)."""
OPAQUE_TOKEN_BYTES: Final = 32
"""Random bytes in an opaque token: 256 bits."""

_REQUIRED_CLAIMS: Final = ["exp", "iat", "nbf", "sub", "sid", "aud", "iss", "typ", "jti"]
_ACCESS_TYPE: Final = "access"
# An HS256 token carrying our claims is ~350 bytes; anything far larger is refused unparsed.
_MAX_TOKEN_LENGTH: Final = 4096
_INVALID_MESSAGE: Final = "Invalid or expired access token. Please sign in."
# Verified tokens remembered per service (a view presents the same token on every call);
# past this many the memory is simply cleared, which costs one full verification each.
_VERIFIED_CACHE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token asserts (times are timezone-aware UTC)."""

    user_id: str
    session_id: str
    issued_at: datetime
    expires_at: datetime


class TokenService:
    """Issues and verifies access tokens.

    Args:
        secret: HS256 key, at least :data:`MIN_SECRET_BYTES` bytes.
        issuer: Value of the ``iss`` claim, required on verification.
        audience: Value of the ``aud`` claim, required (as a single string) on verification.
        access_ttl: Lifetime of an access token (a ``timedelta`` or seconds).
        leeway: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds.

    Raises:
        ConfigurationError: the secret is too short, the TTL is not positive, or the issuer or
            audience is empty.
    """

    def __init__(
        self,
        secret: bytes,
        issuer: str,
        audience: str,
        access_ttl: timedelta | float,
        *,
        leeway: float = 5.0,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"The JWT secret must be at least {MIN_SECRET_BYTES} bytes.",
                details={"variable": "jwt_secret"},
            )
        ttl = access_ttl if isinstance(access_ttl, timedelta) else timedelta(seconds=access_ttl)
        if ttl <= timedelta(0):
            raise ConfigurationError(
                "The access token lifetime must be positive.",
                details={"variable": "access_token_ttl_seconds"},
            )
        if not issuer or not audience:
            raise ConfigurationError(
                "The JWT issuer and audience must not be empty.",
                details={"variable": "jwt_issuer" if not issuer else "jwt_audience"},
            )
        self._secret = bytes(secret)
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._leeway = leeway
        # token -> (claims, exp claim): a token that verified once verifies again, with the
        # same claims, until it expires; only the expiry depends on the clock (``nbf`` and
        # ``iat`` were checked against an earlier time and stay satisfied). Never holds a
        # token that failed.
        self._verified: dict[str, tuple[AccessClaims, float]] = {}

    @classmethod
    def from_settings(cls, settings: SelfHostSettings, secret: bytes) -> TokenService:
        """A service using the ``jwt_*`` and ``access_token_ttl_seconds`` settings.

        ``secret`` is passed explicitly because, when ``jwt_secret`` is unset, the key lives
        in the database (shared by every process) and only the caller can load it.
        """
        return cls(
            secret,
            settings.jwt_issuer,
            settings.jwt_audience,
            timedelta(seconds=settings.access_token_ttl_seconds),
        )

    @property
    def access_ttl(self) -> timedelta:
        """Lifetime of the access tokens this service issues."""
        return self._ttl

    def issue_access_token(
        self, user_id: str, session_id: str, now: datetime | None = None
    ) -> tuple[str, datetime]:
        """Sign an access token for ``user_id`` in session ``session_id``.

        Args:
            user_id: The ``sub`` claim.
            session_id: The ``sid`` claim; verification alone does not check it is alive.
            now: Issue time (timezone-aware); defaults to the current time.

        Returns:
            ``(token, expires_at)``; ``expires_at`` is the ``exp`` claim as UTC datetime.
        """
        if not user_id or not session_id:
            raise ValueError("user_id and session_id must be non-empty")
        issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        expires = issued + self._ttl
        claims: dict[str, Any] = {
            "sub": user_id,
            "sid": session_id,
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int(expires.timestamp()),
            "aud": self._audience,
            "iss": self._issuer,
            "typ": _ACCESS_TYPE,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(claims, self._secret, algorithm=ACCESS_TOKEN_ALGORITHMS[0])
        return token, datetime.fromtimestamp(claims["exp"], UTC)

    def verify_access_token(self, token: str) -> AccessClaims:
        """Check an access token's signature and claims; return what it asserts.

        Refused: any algorithm but HS256 (``none`` included), a wrong signature, a missing
        ``exp``/``iat``/``nbf``/``sub``/``sid``/``aud``/``iss``/``typ``/``jti``, another
        audience or issuer, ``typ`` other than ``"access"``, an expired or not-yet-valid
        token (beyond the leeway), and anything that is not a JWS at all.

        A token that verified before is answered from memory (signature and claims checks
        are deterministic for one key), with its expiry checked again against the clock
        exactly as on the first verification.

        Raises:
            NotAuthenticatedError: for every defect, with one message that does not say which.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            raise NotAuthenticatedError(_INVALID_MESSAGE)
        known = self._verified.get(token)
        if known is not None:
            claims, expires = known
            if expires > time.time() - self._leeway:  # PyJWT: expired when exp <= now - leeway
                return claims
            del self._verified[token]
            raise NotAuthenticatedError(_INVALID_MESSAGE)
        claims, expires = self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (claims, expires)
        return claims

    def _verify(self, token: str) -> tuple[AccessClaims, float]:
        """The full verification (see :meth:`verify_access_token`); claims and ``exp``."""
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=list(ACCESS_TOKEN_ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    # ``aud`` must be our audience itself, not a list that happens to hold it.
                    "strict_aud": True,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            # ``from None``: the reason (expired, bad signature, ...) must not travel with the
            # error to a client; it is the same answer for every defect.
            raise NotAuthenticatedError(_INVALID_MESSAGE) from None
        user_id, session_id = payload.get("sub"), payload.get("sid")
        issued_at, expires_at = payload.get("iat"), payload.get("exp")
        if (
            payload.get("typ") != _ACCESS_TYPE
            or not isinstance(user_id, str)
            or not user_id
            or not isinstance(session_id, str)
            or not session_id
            or not isinstance(issued_at, int | float)
            or not isinstance(expires_at, int | float)
        ):
            raise NotAuthenticatedError(_INVALID_MESSAGE)
        claims = AccessClaims(
            user_id=user_id,
            session_id=session_id,
            issued_at=datetime.fromtimestamp(issued_at, UTC),
            expires_at=datetime.fromtimestamp(expires_at, UTC),
        )
        return claims, float(expires_at)


def new_opaque_token() -> str:
    """A fresh URL-safe random token with :data:`OPAQUE_TOKEN_BYTES` (256 bits) of entropy."""
    return secrets.token_urlsafe(OPAQUE_TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which an opaque token is stored and looked up.

    A fast hash is right here, unlike for passwords: the token is 256 random bits, so there is
    nothing to guess and no dictionary to precompute; the digest only keeps a database leak from
    handing out usable tokens. Being deterministic, it also serves as the lookup key.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()

"""Access tokens (HS256 JWT) and opaque tokens, with a forged-token corpus."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from kiiaren_core.errors import ConfigurationError, NotAuthenticatedError
from kiiaren_selfhost.auth.tokens import (
    AccessClaims,
    TokenService,
    hash_token,
    new_opaque_token,
)
from kiiaren_selfhost.settings import SelfHostSettings

SECRET = secrets.token_bytes(64)  # long enough for the HS512 forgery too
ISSUER = "kiiaren-selfhost"
AUDIENCE = "kiiaren"
TTL = timedelta(minutes=15)


@pytest.fixture
def service() -> TokenService:
    return TokenService(SECRET, ISSUER, AUDIENCE, TTL)


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def valid_claims(**changes: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {
        "sub": "user-1",
        "sid": "session-1",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "typ": "access",
        "jti": "jti-1",
    }
    for name, value in changes.items():
        if value is ...:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


def sign(
    claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256", **headers: Any
) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."


# --- issuing and verifying ---------------------------------------------------------------------


def test_issue_and_verify_round_trip(service: TokenService) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    token, expires_at = service.issue_access_token("user-1", "session-1")
    claims = service.verify_access_token(token)
    assert claims == AccessClaims(
        user_id="user-1",
        session_id="session-1",
        issued_at=claims.issued_at,
        expires_at=expires_at,
    )
    assert before <= claims.issued_at <= datetime.now(UTC)
    assert expires_at == claims.issued_at + TTL
    assert expires_at.tzinfo is not None


def test_token_carries_every_claim(service: TokenService) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    token, _ = service.issue_access_token("user-1", "session-1", now=now)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert payload == {
        "sub": "user-1",
        "sid": "session-1",
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + TTL).timestamp()),
        "aud": AUDIENCE,
        "iss": ISSUER,
        "typ": "access",
        "jti": payload["jti"],
    }
    assert len(payload["jti"]) >= 16


def test_every_token_has_its_own_jti(service: TokenService) -> None:
    tokens = {service.issue_access_token("u", "s")[0] for _ in range(50)}
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 50


def test_expiry_follows_issue_time(service: TokenService) -> None:
    now = datetime.now(UTC)
    recent, _ = service.issue_access_token("u", "s", now=now - timedelta(minutes=10))
    assert service.verify_access_token(recent).user_id == "u"
    stale, _ = service.issue_access_token("u", "s", now=now - timedelta(minutes=16))
    with pytest.raises(NotAuthenticatedError):
        service.verify_access_token(stale)


def test_small_leeway_only(service: TokenService) -> None:
    now = int(datetime.now(UTC).timestamp())
    within = sign(valid_claims(iat=now - 900, nbf=now - 900, exp=now - 2))
    assert service.verify_access_token(within).session_id == "session-1"
    beyond = sign(valid_claims(iat=now - 900, nbf=now - 900, exp=now - 30))
    with pytest.raises(NotAuthenticatedError):
        service.verify_access_token(beyond)


def test_from_settings() -> None:
    settings = SelfHostSettings(
        jwt_issuer="iss-x", jwt_audience="aud-x", access_token_ttl_seconds=120
    )
    service = TokenService.from_settings(settings, SECRET)
    assert service.access_ttl == timedelta(seconds=120)
    token, _ = service.issue_access_token("u", "s")
    payload = jwt.decode(token, options={"verify_signature": False})
    assert (payload["iss"], payload["aud"], payload["exp"] - payload["iat"]) == (
        "iss-x",
        "aud-x",
        120,
    )
    with pytest.raises(NotAuthenticatedError):
        TokenService(SECRET, ISSUER, AUDIENCE, TTL).verify_access_token(token)


def test_ttl_as_seconds() -> None:
    assert TokenService(SECRET, ISSUER, AUDIENCE, 60).access_ttl == timedelta(seconds=60)


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        ((b"x" * 31, ISSUER, AUDIENCE, TTL), "jwt_secret"),
        ((SECRET, ISSUER, AUDIENCE, timedelta(0)), "access_token_ttl_seconds"),
        ((SECRET, ISSUER, AUDIENCE, -5), "access_token_ttl_seconds"),
        ((SECRET, "", AUDIENCE, TTL), "jwt_issuer"),
        ((SECRET, ISSUER, "", TTL), "jwt_audience"),
    ],
)
def test_bad_configuration(args: tuple[Any, ...], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenService(*args)
    assert caught.value.details == {"variable": variable}


def test_empty_identifiers_are_not_issued(service: TokenService) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        service.issue_access_token("", "s")
    with pytest.raises(ValueError, match="non-empty"):
        service.issue_access_token("u", "")


def test_settings_secret_can_drive_the_service() -> None:
    settings = SelfHostSettings(jwt_secret=SecretStr("k" * 40))
    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.get_secret_value().encode()
    token, _ = TokenService.from_settings(settings, secret).issue_access_token("u", "s")
    assert TokenService.from_settings(settings, secret).verify_access_token(token).user_id == "u"


# --- forged-token corpus -----------------------------------------------------------------------

_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _tamper_payload(service: TokenService) -> str:
    token, _ = service.issue_access_token("user-1", "session-1")
    header, _, signature = token.split(".")
    forged = valid_claims(sub="admin")
    return f"{header}.{b64(forged)}.{signature}"


def _tamper_signature(service: TokenService) -> str:
    token, _ = service.issue_access_token("user-1", "session-1")
    head, _, signature = token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{head}.{b64(bytes(raw))}"


def _truncate(service: TokenService, keep: Callable[[str], str]) -> str:
    token, _ = service.issue_access_token("user-1", "session-1")
    return keep(token)


def _without(claim: str) -> Callable[[TokenService], str]:
    return lambda service: sign(valid_claims(**{claim: ...}))


FORGERIES: dict[str, Callable[[TokenService], Any]] = {
    # algorithm games
    "alg none": lambda s: unsigned(valid_claims()),
    "alg None": lambda s: unsigned(valid_claims(), alg="None"),
    "alg NONE": lambda s: unsigned(valid_claims(), alg="NONE"),
    "alg none with signature": lambda s: unsigned(valid_claims()) + b64(b"sig"),
    "HS256 wrong key": lambda s: sign(valid_claims(), key=secrets.token_bytes(32)),
    "HS256 empty-ish key": lambda s: sign(valid_claims(), key=b"\x00" * 32),
    "HS512 right key": lambda s: sign(valid_claims(), algorithm="HS512"),
    "HS384 right key": lambda s: sign(valid_claims(), algorithm="HS384"),
    "RS256 attacker key": lambda s: sign(valid_claims(), key=_RSA_KEY, algorithm="RS256"),
    "RS256 header, HMAC body": lambda s: (
        f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(valid_claims())}."
        + sign(valid_claims()).rsplit(".", 1)[1]
    ),
    "jku header to attacker keys": lambda s: sign(
        valid_claims(),
        key=_RSA_KEY,
        algorithm="RS256",
        jku="https://evil.example/jwks",
    ),
    # audience / issuer
    "wrong aud": lambda s: sign(valid_claims(aud="someone-else")),
    "aud list holding ours": lambda s: sign(valid_claims(aud=[AUDIENCE, "other"])),
    "wrong iss": lambda s: sign(valid_claims(iss="https://evil.example")),
    # missing claims
    **{
        f"missing {claim}": _without(claim)
        for claim in ("sub", "sid", "exp", "iat", "nbf", "aud", "iss", "typ", "jti")
    },
    # claim types and values
    "typ refresh": lambda s: sign(valid_claims(typ="refresh")),
    "typ Access (case)": lambda s: sign(valid_claims(typ="Access")),
    "sub not a string": lambda s: sign(valid_claims(sub=42)),
    "sub empty": lambda s: sign(valid_claims(sub="")),
    "sid not a string": lambda s: sign(valid_claims(sid=["session-1"])),
    "sid empty": lambda s: sign(valid_claims(sid="")),
    "exp not a number": lambda s: sign(valid_claims(exp="tomorrow")),
    # time
    "expired": lambda s: s.issue_access_token("u", "s", now=datetime.now(UTC) - timedelta(hours=1))[
        0
    ],
    "not yet valid (nbf)": lambda s: sign(
        valid_claims(nbf=int(datetime.now(UTC).timestamp()) + 600)
    ),
    "issued in the future (iat)": lambda s: s.issue_access_token(
        "u", "s", now=datetime.now(UTC) + timedelta(minutes=10)
    )[0],
    # tampering and truncation
    "tampered payload": _tamper_payload,
    "tampered signature": _tamper_signature,
    "signature removed": lambda s: _truncate(s, lambda t: t.rsplit(".", 1)[0] + "."),
    "last segment dropped": lambda s: _truncate(s, lambda t: t.rsplit(".", 1)[0]),
    "truncated by 5": lambda s: _truncate(s, lambda t: t[:-5]),
    "truncated to half": lambda s: _truncate(s, lambda t: t[: len(t) // 2]),
    "extra segment": lambda s: _truncate(s, lambda t: t + ".AAAA"),
    "bearer prefix kept": lambda s: "Bearer " + s.issue_access_token("u", "s")[0],
    "surrounding whitespace": lambda s: " " + s.issue_access_token("u", "s")[0] + "\n",
    # not an access token at all
    "refresh token (opaque)": lambda s: new_opaque_token(),
    "hashed refresh token": lambda s: hash_token(new_opaque_token()),
    "empty string": lambda s: "",
    "garbage": lambda s: "not a token",
    "three dots": lambda s: "...",
    "a.b.c": lambda s: "a.b.c",
    "json payload": lambda s: json.dumps(valid_claims()),
    "unicode": lambda s: "\u0442\u043e\u043a\u0435\u043d.🔑.✓",
    "huge": lambda s: sign(valid_claims(pad="x" * 10_000)),
    "None": lambda s: None,
    "bytes": lambda s: s.issue_access_token("u", "s")[0].encode(),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_tokens_are_rejected(service: TokenService, name: str) -> None:
    token = FORGERIES[name](service)
    with pytest.raises(NotAuthenticatedError) as caught:
        service.verify_access_token(token)
    # One answer for every defect: same message, no details, no chained cause to leak.
    assert caught.value.message == "Invalid or expired access token. Please sign in."
    assert caught.value.details == {}
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_corpus_is_rejected_100_percent(service: TokenService) -> None:
    """The whole corpus in one go: 0 accepted (and the control token is accepted)."""
    accepted = []
    for name, make in FORGERIES.items():
        try:
            service.verify_access_token(make(service))
        except NotAuthenticatedError:
            continue
        accepted.append(name)
    assert accepted == []
    assert len(FORGERIES) >= 50
    control = sign(valid_claims())
    assert service.verify_access_token(control).user_id == "user-1"


# --- opaque tokens -----------------------------------------------------------------------------


def test_opaque_tokens_are_256_bit_url_safe_and_unique() -> None:
    tokens = {new_opaque_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_hash_token_is_sha256_hex() -> None:
    token = new_opaque_token()
    digest = hash_token(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hash_token(token)
    assert digest != hash_token(new_opaque_token())
    assert digest != token
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

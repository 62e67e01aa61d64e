"""Verified access tokens are remembered: the answer stays exact (expiry, other keys)."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

import pytest

from kiiaren_core.errors import NotAuthenticatedError
from kiiaren_selfhost.auth import tokens as tokens_module
from kiiaren_selfhost.auth.tokens import TokenService

SECRET = secrets.token_bytes(32)


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    service = TokenService(SECRET, "iss", "aud", timedelta(seconds=60), leeway=5)
    token, _ = service.issue_access_token("u", "s")
    first = service.verify_access_token(token)
    assert service.verify_access_token(token) is first  # answered from memory
    now = time.time()
    monkeypatch.setattr(tokens_module.time, "time", lambda: now + 64)  # inside the leeway
    assert service.verify_access_token(token) == first
    monkeypatch.setattr(tokens_module.time, "time", lambda: now + 66)
    with pytest.raises(NotAuthenticatedError):
        service.verify_access_token(token)
    assert token not in service._verified  # forgotten: the next call verifies in full


def test_memory_is_per_key_and_never_holds_a_refused_token() -> None:
    service = TokenService(SECRET, "iss", "aud", timedelta(minutes=5))
    other = TokenService(secrets.token_bytes(32), "iss", "aud", timedelta(minutes=5))
    token, _ = service.issue_access_token("u", "s")
    service.verify_access_token(token)
    with pytest.raises(NotAuthenticatedError):
        other.verify_access_token(token)
    with pytest.raises(NotAuthenticatedError):
        other.verify_access_token(token)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for _ in range(2):
        with pytest.raises(NotAuthenticatedError):
            service.verify_access_token(tampered)


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_module, "_VERIFIED_CACHE_SIZE", 3)
    service = TokenService(SECRET, "iss", "aud", timedelta(minutes=5))
    issued = [service.issue_access_token("u", f"s{i}")[0] for i in range(10)]
    for token in issued:
        assert service.verify_access_token(token).session_id
        assert len(service._verified) <= 3

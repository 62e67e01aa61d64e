"""Session handling of the hosted client: refresh before expiry and on 401 (single flight),
revocation noticed by the server, the operation's own 401s, token stores and auth events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from kiiaren_core.errors import BackendUnavailableError, NotAuthenticatedError
from kiiaren_core.models import AuthState, SessionTokens
from kiiaren_hosted import HostedProvider, MemoryTokenStore, TokenStore
from tests.hosted.fake_server import PASSWORD, FakeAuthServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> FakeAuthServer:
    return FakeAuthServer()


@pytest.fixture
async def provider(server: FakeAuthServer) -> AsyncIterator[HostedProvider]:
    async with HostedProvider(
        base_url="http://kiiaren.test", transport=server.transport, backoff_base_seconds=0
    ) as provider:
        yield provider


async def signed_in(provider: HostedProvider) -> list[str]:
    """Sign in and return the list the auth events are recorded into."""
    events: list[str] = []
    provider.auth.on_auth_state_change(lambda state: events.append(state.event))
    await provider.auth.sign_in_with_password("ada@example.com", PASSWORD)
    events.clear()
    return events


def expire_locally(provider: HostedProvider) -> None:
    """Make the client believe its access token expired a minute ago."""
    tokens = provider.auth.tokens
    assert tokens is not None
    provider._state.tokens = tokens.model_copy(
        update={"expires_at": datetime.now(UTC) - timedelta(minutes=1)}
    )


async def test_twenty_calls_with_an_expired_token_share_one_refresh(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    events = await signed_in(provider)
    expire_locally(provider)
    server.expire_access_tokens()
    results = await asyncio.gather(
        *(provider.persistence.workspace.get_by_user_id() for _ in range(20))
    )
    assert results == [[]] * 20
    assert server.refresh_calls == 1
    assert events == ["token_refreshed"]


@pytest.mark.parametrize("challenge", [True, False], ids=["challenge", "probe"])
async def test_twenty_calls_refused_with_401_share_one_refresh(
    provider: HostedProvider, server: FakeAuthServer, challenge: bool
) -> None:
    server.challenge = challenge
    events = await signed_in(provider)
    server.expire_access_tokens()
    results = await asyncio.gather(
        *(provider.persistence.workspace.get_by_user_id() for _ in range(20))
    )
    assert results == [[]] * 20
    assert server.refresh_calls == 1
    assert events == ["token_refreshed"]


async def test_a_token_near_expiry_is_refreshed_before_the_call(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    await signed_in(provider)
    tokens = provider.auth.tokens
    assert tokens is not None
    provider._state.tokens = tokens.model_copy(
        update={"expires_at": datetime.now(UTC) + timedelta(seconds=10)}  # inside the margin
    )
    before = len(server.requests)
    await provider.persistence.workspace.get_by_user_id()
    paths = [r.url.path for r in server.requests[before:]]
    assert paths == ["/v1/auth/refresh", "/v1/workspaces"]


async def test_a_401_after_a_refused_refresh_is_a_revocation(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    events = await signed_in(provider)
    session = await provider.auth.get_session()
    assert session is not None
    server.revoked.add(session.session_id)
    results = await asyncio.gather(
        *(provider.persistence.workspace.get_by_user_id() for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(result, NotAuthenticatedError) for result in results)
    assert events == ["session_revoked"]
    assert provider.auth.tokens is None
    assert server.refresh_calls == 1
    before = len(server.requests)
    with pytest.raises(NotAuthenticatedError):
        await provider.auth.list_sessions()
    assert len(server.requests) == before, "signed out: refused without a request"


@pytest.mark.parametrize("challenge", [True, False], ids=["challenge", "probe"])
async def test_an_operations_own_401_leaves_the_session_alone(
    provider: HostedProvider, server: FakeAuthServer, challenge: bool
) -> None:
    server.challenge = challenge
    events = await signed_in(provider)
    with pytest.raises(NotAuthenticatedError) as caught:
        await provider.auth.change_password("wrong", "A-new-password-1")
    assert caught.value.message == "The current password is not correct."
    assert provider.auth.tokens is not None
    assert server.refresh_calls == 0
    assert events == []
    await provider.auth.change_password(PASSWORD, "A-new-password-1")


async def test_get_session_notices_a_revocation_once(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    events = await signed_in(provider)
    session = await provider.auth.get_session()
    assert session is not None
    server.revoked.add(session.session_id)
    assert await provider.auth.get_session() is None
    assert await provider.auth.get_session() is None
    assert await provider.auth.get_current_user() is None
    assert events == ["session_revoked"]


async def test_sign_out_forgets_a_session_the_server_already_ended(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    events = await signed_in(provider)
    server.expire_access_tokens()
    server.refresh.clear()
    await provider.auth.sign_out()
    await provider.auth.sign_out()
    assert provider.auth.tokens is None
    assert events == ["signed_out"]


async def test_sign_out_keeps_the_session_when_the_server_cannot_be_reached(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    events = await signed_in(provider)
    server.unavailable = True
    with pytest.raises(BackendUnavailableError):
        await provider.auth.sign_out()
    kept = provider.auth.tokens
    assert kept is not None, "kept, so the sign-out can be retried"
    server.unavailable = False
    await provider.auth.sign_out()
    assert provider.auth.tokens is None
    assert events == ["signed_out"]


async def test_revoke_all_signs_this_object_out(
    provider: HostedProvider, server: FakeAuthServer
) -> None:
    events = await signed_in(provider)
    assert await provider.auth.revoke_all_sessions() == 1
    assert provider.auth.tokens is None
    assert events == ["session_revoked"]


class RecordingStore:
    def __init__(self, tokens: SessionTokens | None) -> None:
        self.tokens = tokens
        self.saved: list[SessionTokens | None] = []

    async def load(self) -> SessionTokens | None:
        return self.tokens

    async def save(self, tokens: SessionTokens | None) -> None:
        self.saved.append(tokens)


async def test_the_token_store_is_loaded_once_and_saved_on_every_change(
    server: FakeAuthServer,
) -> None:
    grant = server.grant()
    stored = SessionTokens.model_validate(grant["tokens"])
    store = RecordingStore(stored)
    assert isinstance(store, TokenStore)
    seen: list[AuthState] = []
    async with HostedProvider(
        base_url="http://kiiaren.test", transport=server.transport, token_store=store
    ) as provider:
        assert provider.auth.tokens == stored
        provider.auth.on_auth_state_change(seen.append)
        assert await provider.persistence.workspace.get_by_user_id() == []
        await provider.auth.refresh_session()
        await provider.auth.sign_out()
    assert len(store.saved) == 2
    assert store.saved[0] is not None
    assert store.saved[0].refresh_token != stored.refresh_token
    assert store.saved[1] is None
    assert [s.event for s in seen] == ["token_refreshed", "signed_out"]


async def test_views_keep_their_tokens_in_memory(provider: HostedProvider) -> None:
    tokens = SessionTokens(access_token="secret-access", refresh_token="secret-refresh")
    view = provider.with_session(tokens)
    assert view.auth.tokens == tokens
    assert isinstance(view._state.store, MemoryTokenStore)
    for text in (repr(view._state), repr(tokens), repr(view._state.store), repr(view)):
        assert "secret" not in text
    await view.aclose()


async def test_async_listeners_and_failing_listeners(provider: HostedProvider) -> None:
    seen: list[str] = []

    async def record(state: AuthState) -> None:
        seen.append(state.event)

    def explode(state: AuthState) -> None:
        raise RuntimeError("listener bug")

    provider.auth.on_auth_state_change(explode)
    unsubscribe = provider.auth.on_auth_state_change(record)
    await provider.auth.sign_in_with_password("ada@example.com", PASSWORD)
    unsubscribe()
    unsubscribe()
    await provider.auth.sign_out()
    assert seen == ["signed_in"]

"""OAuth over the wire: the server's authorization URL, a real (loopback) identity provider,
and the callback's code and state sent back through ``complete_oauth``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from kiiaren_core.errors import InvalidInputError, NotAuthenticatedError
from kiiaren_hosted import HostedProvider
from tests.hosted.live import DistinctClients, LiveServer, serving
from tests.selfhost.oauth_idp import IdPUser, LoopbackIdP

pytestmark = pytest.mark.anyio


@pytest.fixture
def idp() -> Iterator[LoopbackIdP]:
    user = IdPUser(
        subject=f"google-{secrets.token_hex(6)}",
        email=f"oauth-{secrets.token_hex(6)}@example.com",
        github_id=secrets.randbelow(10**9),
    )
    user.github_emails = [{"email": user.email, "primary": True, "verified": True}]
    with LoopbackIdP(user) as server:
        yield server


@pytest.fixture
def oauth_server(live_server: LiveServer, idp: LoopbackIdP, tmp_path: Path) -> Iterator[LiveServer]:
    """The bundled server with GitHub and Google sign-in pointed at the loopback IdP."""
    with serving(
        live_server.database_url,
        tmp_path / "files",
        oauth_github_client_id=idp.client_id,
        oauth_github_client_secret=idp.client_secret,
        oauth_github_authorize_url=idp.github_endpoints["authorize_url"],
        oauth_github_token_url=idp.github_endpoints["token_url"],
        oauth_github_api_url=idp.github_endpoints["api_url"],
        oauth_google_client_id=idp.client_id,
        oauth_google_client_secret=idp.client_secret,
        oauth_google_issuer=idp.google_issuer,
        oauth_google_authorize_url=idp.google_endpoints["authorize_url"],
        oauth_google_token_url=idp.google_endpoints["token_url"],
        oauth_google_jwks_url=idp.google_endpoints["jwks_url"],
    ) as server:
        yield server


async def approve(url: str) -> tuple[str, str]:
    """What the user's browser does: visit the IdP, come back with ``code`` and ``state``."""
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(url)
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    return query["code"][0], query["state"][0]


@pytest.mark.parametrize("flavour", ["github", "google"])
async def test_sign_in_with_oauth_over_the_wire(
    oauth_server: LiveServer, idp: LoopbackIdP, flavour: str
) -> None:
    async with HostedProvider(base_url=oauth_server.url, transport=DistinctClients()) as provider:
        assert flavour in provider.capabilities.oauth_providers
        events: list[str] = []
        provider.auth.on_auth_state_change(lambda state: events.append(state.event))
        start = await provider.auth.sign_in_with_oauth(flavour, redirect_to="/after")
        assert start.provider == flavour
        assert start.url.startswith(idp.base_url)
        code, state = await approve(start.url)
        assert state == start.state
        session = await provider.auth.complete_oauth(flavour, code=code, state=state)
        assert provider.auth.tokens is not None
        user = await provider.auth.get_current_user()
        assert user is not None
        assert (user.id, user.email, user.provider) == (session.user_id, idp.user.email, "oauth")
        assert user.oauth_provider == flavour
        assert events == ["signed_in"]
        other = provider.with_session(None)
        with pytest.raises(NotAuthenticatedError):
            await other.auth.complete_oauth(flavour, code=code, state=state)
        assert other.auth.tokens is None
        await other.aclose()


async def test_an_unconfigured_oauth_provider_is_refused(hosted_provider: HostedProvider) -> None:
    with pytest.raises(InvalidInputError):
        await hosted_provider.auth.sign_in_with_oauth("github")

"""OAuth sign-in end to end against a real identity provider on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from kiiaren_core.errors import BackendUnavailableError, InvalidInputError, NotAuthenticatedError
from kiiaren_selfhost.auth.oauth import (
    GitHubOAuthClient,
    GoogleOAuthClient,
    OAuthClient,
    OAuthProfile,
    create_oauth_client,
    new_nonce,
    new_pkce_pair,
    new_state,
)
from kiiaren_selfhost.settings import SelfHostSettings
from tests.selfhost.oauth_idp import REMOVE, IdPUser, LoopbackIdP

pytestmark = pytest.mark.anyio

REDIRECT_URI = "http://127.0.0.1:8000/v1/auth/oauth/callback"


@pytest.fixture
async def google(idp: LoopbackIdP) -> AsyncIterator[GoogleOAuthClient]:
    async with GoogleOAuthClient(
        client_id=idp.client_id, client_secret=idp.client_secret, timeout=5, **idp.google_endpoints
    ) as client:
        yield client


@pytest.fixture
async def github(idp: LoopbackIdP) -> AsyncIterator[GitHubOAuthClient]:
    async with GitHubOAuthClient(
        client_id=idp.client_id, client_secret=idp.client_secret, timeout=5, **idp.github_endpoints
    ) as client:
        yield client


async def authorize(client: OAuthClient, *, nonce: str) -> tuple[str, str]:
    """Play the browser: open the authorization URL, follow nothing, return (code, verifier)."""
    state = new_state()
    verifier, challenge = new_pkce_pair()
    url = client.authorization_url(
        state=state, code_challenge=challenge, nonce=nonce, redirect_uri=REDIRECT_URI
    )
    async with httpx.AsyncClient() as browser:
        response = await browser.get(url)
    assert response.status_code == 302, response.text
    location = httpx.URL(response.headers["location"])
    assert str(location).startswith(REDIRECT_URI)
    assert location.params["state"] == state
    return location.params["code"], verifier


async def sign_in(client: OAuthClient, **overrides: str) -> OAuthProfile:
    nonce = new_nonce()
    code, verifier = await authorize(client, nonce=nonce)
    arguments = {
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "nonce": nonce,
        **overrides,
    }
    return await client.exchange_code(**arguments)


def assert_generic(error: NotAuthenticatedError, provider: str) -> None:
    """Every refusal carries the same safe message and no reason."""
    label = {"google": "Google", "github": "GitHub"}[provider]
    assert error.message == (f"The sign-in with {label} could not be completed. Please try again.")
    assert error.details == {"provider": provider}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- helpers -----------------------------------------------------------------------------------


async def test_pkce_pair_is_s256_and_fresh() -> None:
    pairs = {new_pkce_pair() for _ in range(200)}
    assert len(pairs) == 200
    for verifier, challenge in pairs:
        # RFC 7636: 43..128 characters of [A-Za-z0-9-._~]; ours are 43 (256 bits).
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", verifier)
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        assert challenge == expected.decode().rstrip("=")


async def test_state_and_nonce_are_random_and_url_safe() -> None:
    values = [new_state() for _ in range(100)] + [new_nonce() for _ in range(100)]
    assert len(set(values)) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", v) for v in values)


async def test_google_authorization_url(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    url = httpx.URL(
        google.authorization_url(
            state="s1", code_challenge="c" * 43, nonce="n1", redirect_uri=REDIRECT_URI
        )
    )
    assert str(url.copy_with(query=None)) == idp.google_endpoints["authorize_url"]
    assert dict(url.params) == {
        "client_id": idp.client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid email profile",
        "state": "s1",
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
        "nonce": "n1",
    }


async def test_github_authorization_url(github: GitHubOAuthClient) -> None:
    url = httpx.URL(
        github.authorization_url(
            state="s1", code_challenge="c" * 43, nonce="n1", redirect_uri=REDIRECT_URI
        )
    )
    assert url.params["scope"] == "read:user user:email"
    assert url.params["code_challenge_method"] == "S256"
    assert "nonce" not in url.params


async def test_authorization_url_keeps_existing_query() -> None:
    client = GitHubOAuthClient(
        client_id="id",
        client_secret="secret",
        authorize_url="https://idp.example/authorize?tenant=acme",
        token_url="https://idp.example/token",
        api_url="https://idp.example/api",
    )
    async with client:
        url = httpx.URL(
            client.authorization_url(
                state="s", code_challenge="c", nonce="n", redirect_uri=REDIRECT_URI
            )
        )
    assert url.params["tenant"] == "acme"
    assert url.params["state"] == "s"


# --- Google ------------------------------------------------------------------------------------


async def test_google_happy_path(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    profile = await sign_in(google)
    assert profile == OAuthProfile(
        provider="google",
        subject=idp.user.subject,
        email="ada@example.com",
        email_verified=True,
        name="Ada Lovelace",
        image="https://images.example.com/ada.png",
    )


async def test_google_caches_the_jwks(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    await sign_in(google)
    await sign_in(google)
    assert idp.count("/google/jwks") == 1
    assert idp.count("/google/token") == 2


async def test_google_unverified_email_is_reported(idp_key: rsa.RSAPrivateKey) -> None:
    with LoopbackIdP(IdPUser(email_verified=False), key=idp_key) as idp:
        async with GoogleOAuthClient(
            client_id=idp.client_id, client_secret=idp.client_secret, **idp.google_endpoints
        ) as google:
            profile = await sign_in(google)
    assert profile.email == "ada@example.com"
    assert profile.email_verified is False


@pytest.mark.parametrize(
    ("value", "verified"), [("true", True), ("false", False), (REMOVE, False), (1, False)]
)
async def test_google_email_verified_claim_forms(
    google: GoogleOAuthClient, idp: LoopbackIdP, value: object, verified: bool
) -> None:
    idp.id_token_overrides["email_verified"] = value
    assert (await sign_in(google)).email_verified is verified


async def test_google_without_email_claim(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    idp.id_token_overrides.update(email=REMOVE, name=REMOVE, picture=REMOVE)
    profile = await sign_in(google)
    assert (profile.email, profile.email_verified, profile.name, profile.image) == (
        None,
        False,
        None,
        None,
    )


async def test_google_wrong_verifier(google: GoogleOAuthClient) -> None:
    other_verifier, _ = new_pkce_pair()
    with pytest.raises(NotAuthenticatedError) as caught:
        await sign_in(google, code_verifier=other_verifier)
    assert_generic(caught.value, "google")


async def test_google_wrong_nonce(google: GoogleOAuthClient) -> None:
    with pytest.raises(NotAuthenticatedError) as caught:
        await sign_in(google, nonce=new_nonce())
    assert_generic(caught.value, "google")


async def test_google_missing_nonce(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    idp.id_token_overrides["nonce"] = REMOVE
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)


async def test_google_id_token_signed_by_another_key(
    google: GoogleOAuthClient, idp: LoopbackIdP, attacker_key: rsa.RSAPrivateKey
) -> None:
    # Same kid as the published key, different private key: the signature must fail.
    idp.id_token_key = attacker_key
    with pytest.raises(NotAuthenticatedError) as caught:
        await sign_in(google)
    assert_generic(caught.value, "google")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked_google(idp: LoopbackIdP) -> AsyncIterator[tuple[GoogleOAuthClient, FakeClock]]:
    clock = FakeClock()
    async with GoogleOAuthClient(
        client_id=idp.client_id,
        client_secret=idp.client_secret,
        clock=clock,
        **idp.google_endpoints,
    ) as client:
        yield client, clock


async def test_google_unknown_kid_refetches_jwks_at_most_every_30s(
    clocked_google: tuple[GoogleOAuthClient, FakeClock],
    idp: LoopbackIdP,
    attacker_key: rsa.RSAPrivateKey,
) -> None:
    google, clock = clocked_google
    await sign_in(google)  # warm the cache
    assert idp.count("/google/jwks") == 1
    idp.id_token_key = attacker_key
    idp.id_token_kid = "attacker-key"
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)
    assert idp.count("/google/jwks") == 1  # fetched a moment ago: no refetch storm
    clock.now += 31
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)
    assert idp.count("/google/jwks") == 2  # one refetch, in case the key had rotated
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)
    assert idp.count("/google/jwks") == 2


async def test_google_follows_key_rotation(
    clocked_google: tuple[GoogleOAuthClient, FakeClock],
    idp: LoopbackIdP,
    attacker_key: rsa.RSAPrivateKey,
) -> None:
    google, clock = clocked_google
    await sign_in(google)
    idp.key, idp.kid = attacker_key, "rotated-key"  # the IdP now publishes only the new key
    clock.now += 31
    assert (await sign_in(google)).subject == idp.user.subject
    assert idp.count("/google/jwks") == 2


async def test_google_jwks_cache_expires(
    clocked_google: tuple[GoogleOAuthClient, FakeClock], idp: LoopbackIdP
) -> None:
    google, clock = clocked_google
    await sign_in(google)
    clock.now += 3599
    await sign_in(google)
    assert idp.count("/google/jwks") == 1
    clock.now += 2
    await sign_in(google)
    assert idp.count("/google/jwks") == 2


async def test_google_jwks_outage_uses_cached_keys(
    clocked_google: tuple[GoogleOAuthClient, FakeClock], idp: LoopbackIdP
) -> None:
    google, clock = clocked_google
    await sign_in(google)
    idp.failures["/google/jwks"] = 503
    clock.now += 3601  # the cache expired, and the JWKS endpoint is down
    assert (await sign_in(google)).subject == idp.user.subject
    assert (await sign_in(google)).subject == idp.user.subject
    assert idp.count("/google/jwks") == 2  # retried once, not on every sign-in
    clock.now += 31
    del idp.failures["/google/jwks"]
    await sign_in(google)
    assert idp.count("/google/jwks") == 3


async def test_google_wrong_audience(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    idp.id_token_overrides["aud"] = "another-client"
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)


async def test_google_several_audiences_need_azp(
    google: GoogleOAuthClient, idp: LoopbackIdP
) -> None:
    idp.id_token_overrides.update(aud=[idp.client_id, "another-client"], azp="another-client")
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)
    idp.id_token_overrides["azp"] = idp.client_id
    assert (await sign_in(google)).subject == idp.user.subject


async def test_google_wrong_issuer(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    idp.id_token_overrides["iss"] = "https://evil.example"
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)


async def test_google_expired_id_token(google: GoogleOAuthClient, idp: LoopbackIdP) -> None:
    now = int(time.time())
    idp.id_token_overrides.update(iat=now - 7200, exp=now - 3600)
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "aud", "iss"])
async def test_google_id_token_missing_claim(
    google: GoogleOAuthClient, idp: LoopbackIdP, claim: str
) -> None:
    idp.id_token_overrides[claim] = REMOVE
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)


async def test_google_id_token_with_hs256_is_refused(
    google: GoogleOAuthClient, idp: LoopbackIdP, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Algorithm confusion: an HS256 token keyed with the (known) client secret.
    def forged(grant: object) -> str:
        claims = {"iss": idp.google_issuer, "aud": idp.client_id, "sub": "x", "exp": 2**31}
        return jwt.encode(claims, idp.client_secret + "-" * 40, algorithm="HS256")

    monkeypatch.setattr(idp, "make_id_token", forged)
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google)


async def test_code_is_single_use(google: GoogleOAuthClient) -> None:
    nonce = new_nonce()
    code, verifier = await authorize(google, nonce=nonce)
    arguments = {
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "nonce": nonce,
    }
    await google.exchange_code(**arguments)
    with pytest.raises(NotAuthenticatedError):
        await google.exchange_code(**arguments)


async def test_wrong_redirect_uri(google: GoogleOAuthClient) -> None:
    with pytest.raises(NotAuthenticatedError):
        await sign_in(google, redirect_uri="http://127.0.0.1:9/elsewhere")


async def test_wrong_client_secret(idp: LoopbackIdP) -> None:
    async with GoogleOAuthClient(
        client_id=idp.client_id, client_secret="not-the-secret", **idp.google_endpoints
    ) as google:
        with pytest.raises(NotAuthenticatedError):
            await sign_in(google)


async def test_empty_code_is_refused_without_a_request(
    google: GoogleOAuthClient, idp: LoopbackIdP
) -> None:
    with pytest.raises(NotAuthenticatedError):
        await google.exchange_code(code="", code_verifier="v", redirect_uri=REDIRECT_URI, nonce="n")
    assert idp.count("/google/token") == 0


@pytest.mark.parametrize("path", ["/google/token", "/google/jwks"])
async def test_google_server_errors_are_unavailable(
    google: GoogleOAuthClient, idp: LoopbackIdP, path: str
) -> None:
    idp.failures[path] = 503
    with pytest.raises(BackendUnavailableError) as caught:
        await sign_in(google)
    assert caught.value.details == {"provider": "google"}


async def test_unreachable_provider_is_unavailable() -> None:
    port = closed_port()
    async with GoogleOAuthClient(
        client_id="id",
        client_secret="secret",
        issuer="http://127.0.0.1",
        authorize_url=f"http://127.0.0.1:{port}/authorize",
        token_url=f"http://127.0.0.1:{port}/token",
        jwks_url=f"http://127.0.0.1:{port}/jwks",
        timeout=2,
    ) as google:
        with pytest.raises(BackendUnavailableError):
            await google.exchange_code(
                code="c", code_verifier="v", redirect_uri=REDIRECT_URI, nonce="n"
            )


# --- GitHub ------------------------------------------------------------------------------------


async def test_github_happy_path(github: GitHubOAuthClient, idp: LoopbackIdP) -> None:
    profile = await sign_in(github)
    assert profile == OAuthProfile(
        provider="github",
        subject="583231",
        email="ada@example.com",  # the primary address, not the first listed
        email_verified=True,
        name="Ada Lovelace",
        image="https://images.example.com/ada.png",
    )
    assert idp.count("/github/api/user") == 1
    assert idp.count("/github/api/user/emails") == 1


async def test_github_unverified_primary_is_reported(idp_key: rsa.RSAPrivateKey) -> None:
    user = IdPUser(
        github_emails=[
            {"email": "ada@verified.example", "primary": False, "verified": True},
            {"email": "ada@example.com", "primary": True, "verified": False},
        ]
    )
    with LoopbackIdP(user, key=idp_key) as idp:
        async with GitHubOAuthClient(
            client_id=idp.client_id, client_secret=idp.client_secret, **idp.github_endpoints
        ) as github:
            profile = await sign_in(github)
    assert (profile.email, profile.email_verified) == ("ada@example.com", False)


async def test_github_without_emails(idp_key: rsa.RSAPrivateKey) -> None:
    with LoopbackIdP(IdPUser(github_emails=[]), key=idp_key) as idp:
        async with GitHubOAuthClient(
            client_id=idp.client_id, client_secret=idp.client_secret, **idp.github_endpoints
        ) as github:
            profile = await sign_in(github)
    assert (profile.email, profile.email_verified) == (None, False)


async def test_github_wrong_verifier(github: GitHubOAuthClient, idp: LoopbackIdP) -> None:
    other_verifier, _ = new_pkce_pair()
    with pytest.raises(NotAuthenticatedError) as caught:
        await sign_in(github, code_verifier=other_verifier)
    assert_generic(caught.value, "github")
    assert idp.count("/github/api/user") == 0


async def test_github_wrong_client_secret(idp: LoopbackIdP) -> None:
    async with GitHubOAuthClient(
        client_id=idp.client_id, client_secret="not-the-secret", **idp.github_endpoints
    ) as github:
        with pytest.raises(NotAuthenticatedError):
            await sign_in(github)


async def test_github_code_from_google_flow_is_refused(
    google: GoogleOAuthClient, github: GitHubOAuthClient
) -> None:
    nonce = new_nonce()
    code, verifier = await authorize(google, nonce=nonce)
    with pytest.raises(NotAuthenticatedError):
        await github.exchange_code(
            code=code, code_verifier=verifier, redirect_uri=REDIRECT_URI, nonce=nonce
        )


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/github/api/user", 401, NotAuthenticatedError),
        ("/github/api/user/emails", 403, NotAuthenticatedError),
        ("/github/api/user", 502, BackendUnavailableError),
        ("/github/token", 500, BackendUnavailableError),
    ],
)
async def test_github_api_failures(
    github: GitHubOAuthClient,
    idp: LoopbackIdP,
    path: str,
    status: int,
    error: type[Exception],
) -> None:
    idp.failures[path] = status
    with pytest.raises(error):
        await sign_in(github)


# --- configuration -----------------------------------------------------------------------------


async def test_create_oauth_client_from_settings(idp: LoopbackIdP) -> None:
    settings = SelfHostSettings(
        oauth_google_client_id=idp.client_id,
        oauth_google_client_secret=SecretStr(idp.client_secret),
        oauth_google_issuer=idp.google_issuer,
        oauth_google_authorize_url=idp.google_endpoints["authorize_url"],
        oauth_google_token_url=idp.google_endpoints["token_url"],
        oauth_google_jwks_url=idp.google_endpoints["jwks_url"],
        oauth_github_client_id=idp.client_id,
        oauth_github_client_secret=SecretStr(idp.client_secret),
        oauth_github_authorize_url=idp.github_endpoints["authorize_url"],
        oauth_github_token_url=idp.github_endpoints["token_url"],
        oauth_github_api_url=idp.github_endpoints["api_url"],
    )
    async with create_oauth_client("google", settings) as google:
        assert isinstance(google, GoogleOAuthClient)
        assert (await sign_in(google)).provider == "google"
    async with create_oauth_client("github", settings) as github:
        assert isinstance(github, GitHubOAuthClient)
        assert (await sign_in(github)).provider == "github"


async def test_shared_http_client_is_not_closed(idp: LoopbackIdP) -> None:
    async with httpx.AsyncClient() as http:
        client = GitHubOAuthClient(
            client_id=idp.client_id,
            client_secret=idp.client_secret,
            http_client=http,
            **idp.github_endpoints,
        )
        await client.aclose()
        assert not http.is_closed
        assert (await sign_in(client)).provider == "github"


@pytest.mark.parametrize("provider", ["google", "github", "gitlab", ""])
async def test_unconfigured_provider_is_invalid_input(provider: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        create_oauth_client(provider, SelfHostSettings())
    assert caught.value.details == {"field": "provider"}


async def test_secret_is_not_in_repr(idp: LoopbackIdP, google: GoogleOAuthClient) -> None:
    assert idp.client_secret not in repr(google)


def test_idp_leaves_no_thread_or_socket(idp_key: rsa.RSAPrivateKey) -> None:
    before = set(threading.enumerate())
    idp = LoopbackIdP(key=idp_key)
    idp.start()
    port = int(idp.base_url.rsplit(":", 1)[1])
    with httpx.Client() as http:
        assert http.get(f"{idp.base_url}/google/jwks").status_code == 200
    idp.stop()
    assert set(threading.enumerate()) == before
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0

"""OAuth 2.0 authorization-code + PKCE sign-in with Google (OpenID Connect) and GitHub.

This module talks to identity providers only; it stores nothing. The caller keeps the ``state``,
the PKCE verifier and the nonce between :meth:`OAuthClient.authorization_url` and
:meth:`OAuthClient.exchange_code` (single use, short-lived), and decides what to do with the
:class:`OAuthProfile` it gets back.

Every endpoint comes from the settings, so tests point the clients at a loopback identity
provider. Failures follow one rule: the identity provider cannot be reached or answers 5xx
-> :class:`BackendUnavailableError` (safe to retry); anything else (a refused code, a bad
ID token, a nonce mismatch, a malformed answer) -> :class:`NotAuthenticatedError` with a
generic message. The precise reason is logged on ``kiiaren.auth.oauth`` for operators.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, Self

import anyio
import httpx
import jwt

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
    NotAuthenticatedError,
)
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = [
    "GitHubOAuthClient",
    "GoogleOAuthClient",
    "OAuthClient",
    "OAuthProfile",
    "OAuthProviderName",
    "create_oauth_client",
    "new_nonce",
    "new_pkce_pair",
    "new_state",
]

_log = logging.getLogger("kiiaren.auth.oauth")

OAuthProviderName = Literal["google", "github"]

_FAILED_MESSAGE: Final = "The sign-in with {provider} could not be completed. Please try again."
_UNAVAILABLE_MESSAGE: Final = "{provider} sign-in is temporarily unavailable. Try again shortly."
_USER_AGENT: Final = "kiiaren-selfhost"
# Google documents both forms of its issuer; accept the bare one when the URL form is configured.
_GOOGLE_ISSUER: Final = "https://accounts.google.com"
_GOOGLE_ISSUER_ALIASES: Final = ("https://accounts.google.com", "accounts.google.com")
_ID_TOKEN_LEEWAY_SECONDS: Final = 60.0
_JWKS_DEFAULT_TTL_SECONDS: Final = 3600.0
_JWKS_MAX_TTL_SECONDS: Final = 86_400.0
# An unknown ``kid`` triggers a refetch (key rotation), but not more often than this, so a
# stream of tokens with made-up kids cannot turn us into a JWKS request amplifier.
_JWKS_MIN_REFRESH_SECONDS: Final = 30.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


# --- PKCE, state, nonce -------------------------------------------------------------------------


def new_pkce_pair() -> tuple[str, str]:
    """A fresh PKCE ``(code_verifier, code_challenge)`` pair, method S256 (RFC 7636).

    The verifier is 43 URL-safe characters (256 bits); the challenge is
    ``BASE64URL(SHA256(verifier))`` without padding.
    """
    verifier = secrets.token_urlsafe(32)
    return verifier, _s256(verifier)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def new_state() -> str:
    """A fresh ``state`` value (256 bits, URL-safe) binding the callback to this attempt."""
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    """A fresh OpenID Connect ``nonce`` (256 bits, URL-safe) binding the ID token to it."""
    return secrets.token_urlsafe(32)


# --- profile --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuthProfile:
    """Who the identity provider says signed in.

    Attributes:
        provider: ``"google"`` or ``"github"``.
        subject: The provider's stable, never-reassigned user id (Google ``sub``, GitHub
            numeric id as a string). Link accounts by ``(provider, subject)``, never by email.
        email: The user's email, or None if the provider gave none.
        email_verified: True only when the provider vouches that the user controls ``email``.
        name: Display name, if any.
        image: Avatar URL, if any.
    """

    provider: OAuthProviderName
    subject: str
    email: str | None
    email_verified: bool
    name: str | None
    image: str | None


class _RejectedError(Exception):
    """Internal: the sign-in is refused; ``reason`` is for the log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _UnavailableError(Exception):
    """Internal: the identity provider could not be reached or failed on its side."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- base client ----------------------------------------------------------------------------------


class OAuthClient(ABC):
    """One identity provider's authorization-code + PKCE flow.

    A client owns an :class:`httpx.AsyncClient` unless one is passed in; close it with
    :meth:`aclose` or ``async with``. Instances are safe to share between tasks.

    Args:
        client_id: The OAuth application's client id.
        client_secret: The OAuth application's client secret.
        authorize_url: Where the user's browser is sent.
        token_url: Where the code is exchanged.
        timeout: Seconds allowed for each request to the provider.
        http_client: A client to use (and not close); default: a private one.
    """

    provider: OAuthProviderName
    scopes: tuple[str, ...]

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        authorize_url: str,
        token_url: str,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not client_id or not client_secret:
            raise ConfigurationError(
                f"OAuth for {self.provider} needs a client id and a client secret.",
                details={"variable": f"oauth_{self.provider}_client_id"},
            )
        self.client_id = client_id
        self._client_secret = client_secret
        self.authorize_url = authorize_url
        self.token_url = token_url
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": _USER_AGENT},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it. Idempotent."""
        if self._owns_http:
            await self._http.aclose()

    def authorization_url(
        self, *, state: str, code_challenge: str, nonce: str, redirect_uri: str
    ) -> str:
        """The provider URL to send the user's browser to.

        Args:
            state: From :func:`new_state`; the callback must bring it back unchanged.
            code_challenge: The S256 challenge from :func:`new_pkce_pair`.
            nonce: From :func:`new_nonce` (put in the ID token by OpenID providers).
            redirect_uri: The callback URL registered with the provider; pass the same value
                to :meth:`exchange_code`.
        """
        params = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(self.scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            **self._extra_authorize_params(nonce),
        }
        return str(httpx.URL(self.authorize_url).copy_merge_params(params))

    async def exchange_code(
        self, *, code: str, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OAuthProfile:
        """Exchange the callback's ``code`` for the signed-in user's profile.

        Args:
            code: The ``code`` query parameter of the callback.
            code_verifier: The PKCE verifier whose challenge went into the authorization URL.
            redirect_uri: The same redirect URI as in the authorization URL.
            nonce: The nonce that went into the authorization URL; an OpenID ID token must
                carry exactly this value.

        Raises:
            NotAuthenticatedError: the provider refused the code, the ID token or profile is
                invalid, or the nonce does not match.
            BackendUnavailableError: the provider could not be reached, timed out or failed.
        """
        if not code or not code_verifier:
            self._fail("missing code or code verifier")
        try:
            return await self._exchange(code, code_verifier, redirect_uri, nonce)
        except _RejectedError as exc:
            self._fail(exc.reason)
        except _UnavailableError as exc:
            _log.warning("%s sign-in unavailable: %s", self.provider, exc.reason)
            raise BackendUnavailableError(
                _UNAVAILABLE_MESSAGE.format(provider=self._label),
                details={"provider": self.provider},
            ) from None

    # --- for subclasses -------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return {"google": "Google", "github": "GitHub"}[self.provider]

    def _extra_authorize_params(self, nonce: str) -> Mapping[str, str]:
        return {}

    @abstractmethod
    async def _exchange(
        self, code: str, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OAuthProfile: ...

    def _fail(self, reason: str) -> NoReturn:
        _log.info("%s sign-in refused: %s", self.provider, reason)
        raise NotAuthenticatedError(
            _FAILED_MESSAGE.format(provider=self._label), details={"provider": self.provider}
        ) from None

    async def _request(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """Send one request; transport errors and 5xx become :class:`_UnavailableError`."""
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.RequestError as exc:
            # Transport failures, and a body that cannot be decoded (bad content-encoding).
            raise _UnavailableError(f"{what}: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _UnavailableError(f"{what}: HTTP {response.status_code}")
        return response

    @staticmethod
    def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise _RejectedError(f"{what}: response is not JSON") from None
        if not isinstance(body, dict):
            raise _RejectedError(f"{what}: response is not a JSON object")
        return body

    async def _token_request(
        self, code: str, code_verifier: str, redirect_uri: str
    ) -> dict[str, Any]:
        response = await self._request(
            "POST",
            self.token_url,
            what="token endpoint",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "code_verifier": code_verifier,
            },
            headers={"Accept": "application/json"},
        )
        body = self._json_object(response, "token endpoint")
        if response.status_code != 200 or "error" in body:
            # GitHub reports a refused code with 200 and an ``error`` member.
            error = body.get("error")
            raise _RejectedError(
                f"token endpoint refused the code: HTTP {response.status_code}"
                f" {error if isinstance(error, str) else ''}".rstrip()
            )
        return body


# --- Google ---------------------------------------------------------------------------------------


class GoogleOAuthClient(OAuthClient):
    """Google sign-in (OpenID Connect): the profile comes from the verified ID token.

    The ID token must be RS256-signed by a key of the provider's JWKS, issued by ``issuer``,
    for audience ``client_id`` (and authorized party ``client_id`` when several audiences are
    listed), unexpired (60 s leeway), and carry the nonce of the authorization request.

    Args:
        issuer: Expected ``iss`` claim.
        jwks_url: The provider's JSON Web Key Set (fetched with this client, cached for its
            ``Cache-Control: max-age`` or an hour; an unknown ``kid`` refetches it, at most
            once every 30 seconds; while the endpoint is down, the last keys stay in use).
        clock: Monotonic clock in seconds for the JWKS cache (tests move it forward).
        **kwargs: See :class:`OAuthClient`.
    """

    provider: OAuthProviderName = "google"
    scopes = ("openid", "email", "profile")

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        issuer: str,
        authorize_url: str,
        token_url: str,
        jwks_url: str,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            client_id=client_id,
            client_secret=client_secret,
            authorize_url=authorize_url,
            token_url=token_url,
            timeout=timeout,
            http_client=http_client,
        )
        self.issuer = issuer
        self.jwks_url = jwks_url
        self._issuers = _GOOGLE_ISSUER_ALIASES if issuer == _GOOGLE_ISSUER else (issuer,)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_expire_at = 0.0
        self._keys_fetched_at: float | None = None
        self._keys_lock = anyio.Lock()
        self._clock = clock

    def _extra_authorize_params(self, nonce: str) -> Mapping[str, str]:
        return {"nonce": nonce}

    async def _exchange(
        self, code: str, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OAuthProfile:
        body = await self._token_request(code, code_verifier, redirect_uri)
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise _RejectedError("token response has no id_token")
        claims = await self._verify_id_token(id_token, nonce=nonce)
        email = claims.get("email")
        name = claims.get("name")
        picture = claims.get("picture")
        return OAuthProfile(
            provider="google",
            subject=claims["sub"],
            email=email if isinstance(email, str) and email else None,
            email_verified=bool(email) and _truthy(claims.get("email_verified")),
            name=name if isinstance(name, str) and name else None,
            image=picture if isinstance(picture, str) and picture else None,
        )

    async def _verify_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """Verify an ID token's signature and claims; return the claims.

        Raises ``_RejectedError`` on any defect and ``_UnavailableError`` when the JWKS cannot be
        fetched; :meth:`exchange_code` turns them into the public errors.
        """
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise _RejectedError("id_token is not a JWS") from None
        if header.get("alg") != "RS256":
            raise _RejectedError(f"id_token algorithm {header.get('alg')!r} is not RS256")
        key = await self._signing_key(header.get("kid"))
        try:
            claims = jwt.decode(
                id_token,
                key,
                algorithms=["RS256"],
                audience=self.client_id,
                issuer=self._issuers,
                leeway=_ID_TOKEN_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise _RejectedError(f"id_token rejected: {type(exc).__name__}") from None
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.client_id:
            raise _RejectedError("id_token has several audiences and azp is not this client")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise _RejectedError("id_token nonce does not match")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _RejectedError("id_token has no subject")
        return claims

    async def _signing_key(self, kid: object) -> jwt.PyJWK:
        if kid is not None and not isinstance(kid, str):
            raise _RejectedError("id_token kid is not a string")
        async with self._keys_lock:
            now = self._clock()
            if now >= self._keys_expire_at:
                await self._refresh_keys(now)
            key = self._find_key(kid)
            if key is None and (
                self._keys_fetched_at is None
                or now - self._keys_fetched_at >= _JWKS_MIN_REFRESH_SECONDS
            ):
                # Possibly a rotated key we have not seen yet.
                await self._fetch_keys(now)
                key = self._find_key(kid)
        if key is None:
            raise _RejectedError(f"id_token signed by an unknown key (kid {kid!r})")
        return key

    async def _refresh_keys(self, now: float) -> None:
        try:
            await self._fetch_keys(now)
        except _UnavailableError as exc:
            if not self._keys:
                raise
            # Keys rotate with weeks of overlap: a JWKS outage should not stop sign-ins, so
            # keep the expired keys and try again after the minimum refresh interval.
            _log.warning("%s JWKS refresh failed, using cached keys: %s", self.provider, exc)
            self._keys_expire_at = now + _JWKS_MIN_REFRESH_SECONDS

    def _find_key(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # A provider with a single key may omit ``kid``; with several it is ambiguous.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _fetch_keys(self, now: float) -> None:
        response = await self._request("GET", self.jwks_url, what="JWKS endpoint")
        if response.status_code != 200:
            raise _UnavailableError(f"JWKS endpoint: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise _UnavailableError("JWKS endpoint: response is not JSON") from None
        raw_keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(raw_keys, list):
            raise _UnavailableError("JWKS endpoint: no key list")
        keys: dict[str, jwt.PyJWK] = {}
        for index, raw in enumerate(raw_keys):
            if not isinstance(raw, dict) or raw.get("kty") != "RSA":
                continue
            if raw.get("use", "sig") != "sig" or raw.get("alg", "RS256") != "RS256":
                continue
            try:
                key = jwt.PyJWK(raw, algorithm="RS256")
            except jwt.PyJWTError:
                continue
            kid = raw.get("kid")
            keys[kid if isinstance(kid, str) else f"#{index}"] = key
        if not keys:
            raise _UnavailableError("JWKS endpoint: no usable RS256 key")
        self._keys = keys
        self._keys_fetched_at = now
        self._keys_expire_at = now + _cache_ttl(response.headers.get("cache-control"))


def _cache_ttl(cache_control: str | None) -> float:
    match = _MAX_AGE.search(cache_control or "")
    if match is None:
        return _JWKS_DEFAULT_TTL_SECONDS
    return min(max(float(match.group(1)), _JWKS_MIN_REFRESH_SECONDS), _JWKS_MAX_TTL_SECONDS)


def _truthy(value: object) -> bool:
    # Google has sent ``email_verified`` both as a JSON boolean and as the string "true".
    return value is True or (isinstance(value, str) and value.lower() == "true")


# --- GitHub ---------------------------------------------------------------------------------------


class GitHubOAuthClient(OAuthClient):
    """GitHub sign-in: the profile comes from the REST API with the user's access token.

    The email is the account's primary email from ``GET /user/emails``; it is reported as
    verified only if GitHub marks that address verified. GitHub has no ID token, so ``nonce``
    is accepted and ignored (``state`` and PKCE protect the flow).

    Args:
        api_url: GitHub REST API base (``https://api.github.com`` or an Enterprise URL).
        **kwargs: See :class:`OAuthClient`.
    """

    provider: OAuthProviderName = "github"
    scopes = ("read:user", "user:email")

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        authorize_url: str,
        token_url: str,
        api_url: str,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id,
            client_secret=client_secret,
            authorize_url=authorize_url,
            token_url=token_url,
            timeout=timeout,
            http_client=http_client,
        )
        self.api_url = api_url.rstrip("/")

    async def _exchange(
        self, code: str, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OAuthProfile:
        body = await self._token_request(code, code_verifier, redirect_uri)
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise _RejectedError("token response has no access_token")
        headers = {
            "Authorization": f"Bearer {access_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        user = await self._api_get("/user", headers)
        if not isinstance(user, dict):
            raise _RejectedError("/user: not a JSON object")
        user_id = user.get("id")
        # ``bool`` is an ``int``: refuse it explicitly so ``true`` is never an id.
        if isinstance(user_id, bool) or not isinstance(user_id, int | str) or not str(user_id):
            raise _RejectedError("/user has no id")
        email, verified = await self._primary_email(headers, user)
        name = user.get("name") or user.get("login")
        avatar = user.get("avatar_url")
        return OAuthProfile(
            provider="github",
            subject=str(user_id),
            email=email,
            email_verified=verified,
            name=name if isinstance(name, str) and name else None,
            image=avatar if isinstance(avatar, str) and avatar else None,
        )

    async def _api_get(self, path: str, headers: Mapping[str, str]) -> Any:
        response = await self._request(
            "GET", f"{self.api_url}{path}", what=f"GitHub {path}", headers=headers
        )
        if response.status_code != 200:
            raise _RejectedError(f"GitHub {path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise _RejectedError(f"GitHub {path}: response is not JSON") from None

    async def _primary_email(
        self, headers: Mapping[str, str], user: Mapping[str, Any]
    ) -> tuple[str | None, bool]:
        emails = await self._api_get("/user/emails", headers)
        if not isinstance(emails, list):
            raise _RejectedError("/user/emails: not a JSON list")
        entries = [e for e in emails if isinstance(e, dict) and isinstance(e.get("email"), str)]
        primary = next((e for e in entries if e.get("primary") is True), None)
        if primary is not None:
            return primary["email"], primary.get("verified") is True
        # No primary listed (unusual): fall back to the public profile email, unverified
        # unless the same address is listed as verified.
        public = user.get("email")
        if isinstance(public, str) and public:
            verified = any(e["email"] == public and e.get("verified") is True for e in entries)
            return public, verified
        return None, False


# --- factory --------------------------------------------------------------------------------------


def create_oauth_client(
    provider: str,
    settings: SelfHostSettings,
    *,
    http_client: httpx.AsyncClient | None = None,
) -> OAuthClient:
    """The client for ``provider`` configured by the ``oauth_<provider>_*`` settings.

    Raises:
        InvalidInputError: ``provider`` is not ``"google"`` or ``"github"``, or has no client
            id and secret configured (``details["field"] == "provider"``).
    """
    if provider == "google":
        client_id = settings.oauth_google_client_id
        secret = settings.oauth_google_client_secret
        if client_id and secret is not None:
            return GoogleOAuthClient(
                client_id=client_id,
                client_secret=secret.get_secret_value(),
                issuer=settings.oauth_google_issuer,
                authorize_url=settings.oauth_google_authorize_url,
                token_url=settings.oauth_google_token_url,
                jwks_url=settings.oauth_google_jwks_url,
                timeout=settings.oauth_timeout_seconds,
                http_client=http_client,
            )
    elif provider == "github":
        client_id = settings.oauth_github_client_id
        secret = settings.oauth_github_client_secret
        if client_id and secret is not None:
            return GitHubOAuthClient(
                client_id=client_id,
                client_secret=secret.get_secret_value(),
                authorize_url=settings.oauth_github_authorize_url,
                token_url=settings.oauth_github_token_url,
                api_url=settings.oauth_github_api_url,
                timeout=settings.oauth_timeout_seconds,
                http_client=http_client,
            )
    raise InvalidInputError(
        f"OAuth provider {provider!r} is not configured on this server.",
        details={"field": "provider"},
    )

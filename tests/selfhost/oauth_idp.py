"""A small but real OAuth 2.0 / OpenID Connect identity provider served on 127.0.0.1.

It speaks both flavours the self-host provider supports, on one ephemeral port:

- Google (OIDC): ``/google/authorize``, ``/google/token`` (returns an RS256 ``id_token``),
  ``/google/jwks``.
- GitHub: ``/github/authorize``, ``/github/token`` (errors as HTTP 200 + ``error``, as GitHub
  does), and the API ``/github/api/user`` and ``/github/api/user/emails``.

The token endpoint really checks the client credentials, the single-use code, the redirect URI
and the PKCE S256 verifier. Knobs on :class:`LoopbackIdP` let a test make it misbehave (sign with
another key, override ID-token claims, fail an endpoint with a status). ``stop()`` shuts the
server down and joins every thread it started, leaving no socket open.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

REMOVE = object()
"""Value for :attr:`LoopbackIdP.id_token_overrides` that drops the claim."""


@dataclass
class IdPUser:
    """The one account the IdP signs in (every authorize request approves it)."""

    subject: str = "google-subject-1234567890"
    email: str = "ada@example.com"
    email_verified: bool = True
    name: str = "Ada Lovelace"
    picture: str = "https://images.example.com/ada.png"
    github_id: int = 583231
    github_login: str = "ada"
    github_emails: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"email": "ada@old.example.org", "primary": False, "verified": True},
            {"email": "ada@example.com", "primary": True, "verified": True},
        ]
    )


class GoogleEndpoints(TypedDict):
    issuer: str
    authorize_url: str
    token_url: str
    jwks_url: str


class GitHubEndpoints(TypedDict):
    authorize_url: str
    token_url: str
    api_url: str


Reply = tuple[int, Any, dict[str, str]]
"""(status, JSON body or None, extra headers)"""


@dataclass
class _Grant:
    flavour: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class LoopbackIdP:
    """The identity provider; use as a context manager or call :meth:`start` / :meth:`stop`."""

    client_id = "kiiaren-test-client"
    client_secret = "kiiaren-test-secret-0123456789"

    def __init__(self, user: IdPUser | None = None, *, key: rsa.RSAPrivateKey | None = None):
        self.user = user or IdPUser()
        self.key = key or new_rsa_key()
        self.kid = "loopback-key-1"
        # Knobs for negative tests.
        self.id_token_key: rsa.RSAPrivateKey | None = None
        """Sign ID tokens with this key instead of :attr:`key` (the JWKS still lists ``key``)."""
        self.id_token_kid: str | None = None
        """``kid`` header of ID tokens instead of :attr:`kid`."""
        self.id_token_overrides: dict[str, Any] = {}
        """Claims replaced in (or, with :data:`REMOVE`, dropped from) every ID token."""
        self.failures: dict[str, int] = {}
        """Path -> HTTP status answered instead of the real response."""
        self.requests: list[tuple[str, str]] = []
        """``(method, path)`` of every request served, in order."""
        self._grants: dict[str, _Grant] = {}
        self._github_tokens: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        idp = self

        class Handler(_Handler):
            provider = idp

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Join request threads on close (ThreadingHTTPServer defaults to daemon threads).
        server.daemon_threads = False
        server.block_on_close = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-idp"
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> LoopbackIdP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the IdP is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- endpoints ------------------------------------------------------------------------------

    @property
    def google_issuer(self) -> str:
        return f"{self.base_url}/google"

    @property
    def google_endpoints(self) -> GoogleEndpoints:
        """Keyword arguments for ``GoogleOAuthClient`` (besides the client credentials)."""
        return GoogleEndpoints(
            issuer=self.google_issuer,
            authorize_url=f"{self.base_url}/google/authorize",
            token_url=f"{self.base_url}/google/token",
            jwks_url=f"{self.base_url}/google/jwks",
        )

    @property
    def github_endpoints(self) -> GitHubEndpoints:
        """Keyword arguments for ``GitHubOAuthClient`` (besides the client credentials)."""
        return GitHubEndpoints(
            authorize_url=f"{self.base_url}/github/authorize",
            token_url=f"{self.base_url}/github/token",
            api_url=f"{self.base_url}/github/api",
        )

    def count(self, path: str) -> int:
        """How many requests were made to ``path``."""
        with self._lock:
            return sum(1 for _, p in self.requests if p == path)

    def jwks(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def make_id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.google_issuer,
            "aud": grant.client_id,
            "azp": grant.client_id,
            "sub": self.user.subject,
            "email": self.user.email,
            "email_verified": self.user.email_verified,
            "name": self.user.name,
            "picture": self.user.picture,
            "iat": now,
            "exp": now + 3600,
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        for name, value in self.id_token_overrides.items():
            if value is REMOVE:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(
            claims,
            self.id_token_key or self.key,
            algorithm="RS256",
            headers={"kid": self.id_token_kid or self.kid},
        )

    # --- request handling (called from server threads) ----------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply:
        url = urlsplit(target)
        path = url.path
        with self._lock:
            self.requests.append((method, path))
            failure = self.failures.get(path)
        if failure is not None:
            return failure, {"error": "server_error"}, {}
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()} if body else {}
        routes: dict[tuple[str, str], Callable[[], Reply]] = {
            ("GET", "/google/authorize"): lambda: self._authorize("google", query),
            ("GET", "/github/authorize"): lambda: self._authorize("github", query),
            ("POST", "/google/token"): lambda: self._token("google", form, headers),
            ("POST", "/github/token"): lambda: self._token("github", form, headers),
            ("GET", "/google/jwks"): lambda: (200, self.jwks(), {}),
            ("GET", "/github/api/user"): lambda: self._github_api(headers, "user"),
            ("GET", "/github/api/user/emails"): lambda: self._github_api(headers, "emails"),
        }
        route = routes.get((method, path))
        if route is None:
            return 404, {"error": "not_found"}, {}
        return route()

    def _authorize(self, flavour: str, query: dict[str, str]) -> Reply:
        redirect_uri = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or not redirect_uri:
            return 400, {"error": "invalid_request"}, {}
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return 400, {"error": "invalid_request"}, {}
        challenge = query.get("code_challenge", "")
        if len(challenge) != 43:
            return 400, {"error": "invalid_request"}, {}
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[code] = _Grant(
                flavour, self.client_id, redirect_uri, challenge, query.get("nonce")
            )
        params = {"code": code, "state": query.get("state", "")}
        location = f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(params)}"
        return 302, None, {"Location": location}

    def _client_ok(self, form: dict[str, str], headers: Any) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        return client_id == self.client_id and secret == self.client_secret

    def _token(self, flavour: str, form: dict[str, str], headers: Any) -> Reply:
        # GitHub answers errors with 200 and an ``error`` member; Google with 400/401.
        def error(status: int, code: str) -> Reply:
            return (200 if flavour == "github" else status), {"error": code}, {}

        if not self._client_ok(form, headers):
            return error(401, "invalid_client")
        if form.get("grant_type") != "authorization_code":
            return error(400, "unsupported_grant_type")
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)  # single use
        if grant is None or grant.flavour != flavour:
            return error(400, "bad_verification_code" if flavour == "github" else "invalid_grant")
        if form.get("redirect_uri") != grant.redirect_uri:
            return error(400, "redirect_uri_mismatch")
        verifier = form.get("code_verifier", "")
        if not secrets.compare_digest(_s256(verifier), grant.code_challenge):
            return error(400, "invalid_grant")
        access_token = secrets.token_urlsafe(24)
        if flavour == "github":
            with self._lock:
                self._github_tokens.add(access_token)
            return 200, {"access_token": access_token, "token_type": "bearer", "scope": ""}, {}
        return (
            200,
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 3599,
                "scope": "openid email profile",
                "id_token": self.make_id_token(grant),
            },
            {},
        )

    def _github_api(self, headers: Any, what: str) -> Reply:
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        with self._lock:
            known = token in self._github_tokens
        if not known:
            return 401, {"message": "Bad credentials"}, {}
        if what == "emails":
            return 200, self.user.github_emails, {}
        return (
            200,
            {
                "id": self.user.github_id,
                "login": self.user.github_login,
                "name": self.user.name,
                "avatar_url": self.user.picture,
                "email": None,
            },
            {},
        )


class _Handler(BaseHTTPRequestHandler):
    provider: LoopbackIdP

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, extra = self.provider.handle(method, self.path, self.headers, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`LoopbackIdP.requests` instead."""


@contextmanager
def running_idp(user: IdPUser | None = None) -> Iterator[LoopbackIdP]:
    """Start an IdP for the duration of the block."""
    idp = LoopbackIdP(user)
    idp.start()
    try:
        yield idp
    finally:
        idp.stop()

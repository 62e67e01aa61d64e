"""A small stateful stand-in for the auth endpoints, served through ``httpx.MockTransport``.

Enough of the wire protocol to exercise the client's session handling: sign-in, refresh
(rotating, counted, optionally slow), session and user reads, one protected listing, a
password change that answers its own 401, sign-out and revocation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from kiiaren_core.capabilities import Capabilities
from kiiaren_core.wire import CapabilitiesReport

PASSWORD = "correct horse battery"


def envelope(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": {}}, "request_id": "fake"}
    return httpx.Response(status, json=body, headers=headers)


class FakeAuthServer:
    """Sessions in memory; ``challenge`` says whether session 401s carry ``invalid_token``."""

    def __init__(self, *, challenge: bool = True, refresh_delay: float = 0.05) -> None:
        self.challenge = challenge
        self.refresh_delay = refresh_delay
        self.access: dict[str, str] = {}  # access token -> session id
        self.refresh: dict[str, str] = {}  # refresh token -> session id
        self.revoked: set[str] = set()
        self.refresh_calls = 0
        self.requests: list[httpx.Request] = []
        self.access_ttl = timedelta(minutes=15)
        self.unavailable = False

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def grant(self, session_id: str | None = None) -> dict[str, Any]:
        session_id = session_id or secrets.token_hex(4)
        access, refresh = secrets.token_hex(8), secrets.token_hex(8)
        self.access[access] = session_id
        self.refresh[refresh] = session_id
        expires = datetime.now(UTC) + self.access_ttl
        return {
            "session": {
                "user_id": "u1",
                "session_id": session_id,
                "expires_at": expires.isoformat(),
            },
            "tokens": {
                "access_token": access,
                "refresh_token": refresh,
                "expires_at": expires.isoformat(),
            },
        }

    def expire_access_tokens(self) -> None:
        """Every access token stops working (their sessions live on)."""
        self.access.clear()

    def _session(self, request: httpx.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        session_id = self.access.get(header.removeprefix("Bearer "))
        if session_id is None or session_id in self.revoked:
            return None
        return session_id

    def _refused(self) -> httpx.Response:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if self.challenge else {}
        return envelope(401, "not_authenticated", "Your session has ended.", **headers)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.unavailable:
            return envelope(503, "backend_unavailable", "Down.", **{"Retry-After": "0"})
        path, method = request.url.path, request.method
        if path == "/v1/capabilities":
            report = CapabilitiesReport(
                provider_id="fake",
                provider_name="Fake",
                is_managed=False,
                capabilities=Capabilities(areas=frozenset({"auth"})),
                available_features=(),
            )
            return httpx.Response(200, content=report.model_dump_json())
        if (method, path) == ("POST", "/v1/auth/sign-in"):
            body = json.loads(request.content)
            if body["password"] != PASSWORD:
                return envelope(401, "not_authenticated", "Invalid email or password.")
            return httpx.Response(200, json=self.grant())
        if (method, path) == ("POST", "/v1/auth/refresh"):
            self.refresh_calls += 1
            await asyncio.sleep(self.refresh_delay)
            token = json.loads(request.content)["refresh_token"]
            session_id = self.refresh.pop(token, None)
            if session_id is None or session_id in self.revoked:
                return envelope(401, "not_authenticated", "Your session has ended.")
            return httpx.Response(200, json=self.grant(session_id))
        session_id = self._session(request)
        if (method, path) == ("POST", "/v1/auth/sign-out"):
            if session_id is None:
                return self._refused()
            self.revoked.add(session_id)
            return httpx.Response(204)
        if session_id is None:
            return self._refused()
        if (method, path) == ("GET", "/v1/auth/session"):
            return httpx.Response(200, json={"user_id": "u1", "session_id": session_id})
        if (method, path) == ("GET", "/v1/workspaces"):
            return httpx.Response(200, json=[])
        if (method, path) == ("POST", "/v1/auth/password"):
            if json.loads(request.content)["current_password"] != PASSWORD:
                return envelope(401, "not_authenticated", "The current password is not correct.")
            return httpx.Response(204)
        if (method, path) == ("POST", "/v1/auth/sessions/revoke-all"):
            self.revoked.add(session_id)
            return httpx.Response(200, json={"count": 1})
        return envelope(404, "not_found", "Not found.")

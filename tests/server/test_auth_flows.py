"""Account flows over HTTP: sign-up, sign-in, refresh rotation, sign-out, sessions, email
verification, password reset and OAuth through the loopback identity provider."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from kiiaren_core.testing.base import unique_email
from tests.server.conftest import PASSWORD, Account, LiveServer

pytestmark = pytest.mark.anyio


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_sign_up_and_sign_in(live_server: LiveServer, client: httpx.AsyncClient) -> None:
    email = unique_email("flow")
    signed_up = await client.post(
        "/v1/auth/sign-up", json={"email": email, "password": PASSWORD, "name": "Flow"}
    )
    assert signed_up.status_code == 201
    grant = signed_up.json()
    assert grant["tokens"]["token_type"] == "bearer"
    me = await client.get("/v1/auth/user", headers=bearer(grant["tokens"]["access_token"]))
    assert me.json()["email"] == email
    signed_in = await client.post("/v1/auth/sign-in", json={"email": email, "password": PASSWORD})
    assert signed_in.status_code == 200
    assert signed_in.json()["session"]["user_id"] == grant["session"]["user_id"]
    assert signed_in.json()["session"]["session_id"] != grant["session"]["session_id"]


async def test_failed_sign_in_and_taken_email_look_alike(
    client: httpx.AsyncClient, account: Account
) -> None:
    """No account oracle: unknown email, wrong password and a taken email on sign-up."""
    answers = [
        await client.post(
            "/v1/auth/sign-in", json={"email": unique_email("nobody"), "password": PASSWORD}
        ),
        await client.post("/v1/auth/sign-in", json={"email": account.email, "password": "x" * 12}),
        await client.post(
            "/v1/auth/sign-up",
            json={"email": account.email, "password": "Other-password-9", "name": "Copy"},
        ),
    ]
    assert {response.status_code for response in answers} == {401}
    assert len({str(response.json()["error"]) for response in answers}) == 1


async def test_refresh_rotates_and_reuse_revokes(
    client: httpx.AsyncClient, account: Account
) -> None:
    first = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200
    rotated = first.json()["tokens"]
    assert rotated["refresh_token"] != account.refresh_token
    assert rotated["access_token"] != account.access_token
    assert (await client.get("/v1/auth/user", headers=bearer(rotated["access_token"]))).is_success
    # A lost answer: replaying the parent at once yields the same successor.
    again = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert again.json()["tokens"]["refresh_token"] == rotated["refresh_token"]
    second = await client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert second.status_code == 200
    await anyio.sleep(1.2)  # past the test grace window
    stolen = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert stolen.status_code == 401
    latest = second.json()["tokens"]
    assert (
        await client.get("/v1/auth/user", headers=bearer(latest["access_token"]))
    ).status_code == 401
    refused = await client.post("/v1/auth/refresh", json={"refresh_token": latest["refresh_token"]})
    assert refused.status_code == 401


async def test_sign_out_ends_the_token_at_once(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    headers = account.headers
    assert (await client.get(f"/v1/workspaces/{workspace['id']}", headers=headers)).is_success
    assert (await client.post("/v1/auth/sign-out", headers=headers)).status_code == 204
    for path in ("/v1/auth/user", "/v1/auth/session", f"/v1/workspaces/{workspace['id']}"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "not_authenticated"
    assert (await client.post("/v1/auth/sign-out", headers=headers)).status_code == 401
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 401


async def test_sessions_are_listed_and_revoked(
    live_server: LiveServer, client: httpx.AsyncClient, account: Account
) -> None:
    other = await client.post(
        "/v1/auth/sign-in",
        json={"email": account.email, "password": account.password},
        headers={"User-Agent": "second-device"},
    )
    other_token = other.json()["tokens"]["access_token"]
    sessions = (await client.get("/v1/auth/sessions", headers=account.headers)).json()
    assert len(sessions) == 2
    assert sum(session["current"] for session in sessions) == 1
    assert {session["ip_address"] for session in sessions} == {"127.0.0.1"}
    assert "second-device" in {session["user_agent"] for session in sessions}
    revoked = await client.post("/v1/auth/sessions/revoke-others", headers=account.headers)
    assert revoked.json() == {"count": 1}
    assert (await client.get("/v1/auth/user", headers=bearer(other_token))).status_code == 401
    assert (await client.get("/v1/auth/user", headers=account.headers)).is_success


async def test_email_verification_and_password_reset(
    live_server: LiveServer, client: httpx.AsyncClient, account: Account
) -> None:
    sent = await client.post("/v1/auth/verify-email/request", headers=account.headers)
    assert sent.status_code == 204
    token = live_server.outbox.token_for(account.email)
    verified = await client.post("/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 200
    assert verified.json()["email_verified"] is True
    assert (await client.post("/v1/auth/verify-email", json={"token": token})).status_code == 401

    mark = len(live_server.outbox.messages)
    asked = await client.post("/v1/auth/password-reset/request", json={"email": account.email})
    assert asked.status_code == 202
    assert asked.content == b""
    reset_token = await live_server.outbox.wait_for_token(account.email, since=mark)
    new_password = "Brand-new-password-7"
    reset = await client.post(
        "/v1/auth/password-reset", json={"token": reset_token, "new_password": new_password}
    )
    assert reset.status_code == 204
    assert (await client.get("/v1/auth/user", headers=account.headers)).status_code == 401
    old = await client.post("/v1/auth/sign-in", json={"email": account.email, "password": PASSWORD})
    assert old.status_code == 401
    new = await client.post(
        "/v1/auth/sign-in", json={"email": account.email, "password": new_password}
    )
    assert new.status_code == 200


async def test_change_password(client: httpx.AsyncClient, account: Account) -> None:
    wrong = await client.post(
        "/v1/auth/password",
        json={"current_password": "not-it-at-all", "new_password": "Another-password-5"},
        headers=account.headers,
    )
    assert wrong.status_code == 401
    changed = await client.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "Another-password-5"},
        headers=account.headers,
    )
    assert changed.status_code == 204
    assert (await client.get("/v1/auth/user", headers=account.headers)).is_success


@pytest.mark.parametrize("provider", ["github", "google"])
async def test_oauth_over_http(
    live_server: LiveServer, client: httpx.AsyncClient, provider: str
) -> None:
    idp = live_server.idp
    assert idp is not None
    email = unique_email("oauth")
    idp.user.email = email
    idp.user.subject = secrets.token_hex(8)
    idp.user.github_id = secrets.randbelow(10**9)
    idp.user.github_emails = [{"email": email, "primary": True, "verified": True}]
    started = await client.get(
        f"/v1/auth/oauth/{provider}/authorize", params={"redirect_to": "/home"}
    )
    assert started.status_code == 200
    start = started.json()
    async with httpx.AsyncClient() as browser:
        at_idp = await browser.get(start["url"])
    assert at_idp.status_code == 302
    location = urlsplit(at_idp.headers["location"])
    assert location.path == f"/v1/auth/oauth/{provider}/callback"
    query = {name: values[0] for name, values in parse_qs(location.query).items()}
    callback = await client.get(f"/v1/auth/oauth/{provider}/callback", params=query)
    assert callback.status_code == 200, callback.text
    tokens = callback.json()["tokens"]
    me = (await client.get("/v1/auth/user", headers=bearer(tokens["access_token"]))).json()
    assert me["email"] == email
    assert me["oauth_provider"] == provider
    replayed = await client.get(f"/v1/auth/oauth/{provider}/callback", params=query)
    assert replayed.status_code == 401
    unknown = await client.get("/v1/auth/oauth/gitlab/authorize")
    assert unknown.status_code == 422

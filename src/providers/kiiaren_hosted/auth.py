"""Sessions of the hosted provider: token keeping, refresh, revocation and ``provider.auth``.

Each provider object (root or view) holds one :class:`SessionState`. Every call goes through
its :class:`Caller`, which

* refreshes the access token ``refresh_margin_seconds`` before it expires (known from
  :attr:`SessionTokens.expires_at`), so most calls never see a 401;
* on a 401 to a call that carried a token, finds out whether the *session* failed (the
  ``WWW-Authenticate: Bearer error="invalid_token"`` challenge says so; otherwise one
  ``GET /v1/auth/session`` with the same token tells): if it did, refreshes once and repeats
  the call with the same ``Idempotency-Key``; if the refresh is refused too, the session was
  revoked: the tokens are dropped and ``session_revoked`` fires. A 401 that is the
  operation's own answer (a wrong current password) leaves the session alone;
* runs one refresh at a time per session (single flight): concurrent callers that find the
  token stale wait for that refresh and use its result.

Tokens live in memory unless the root provider is given a :class:`TokenStore`; they are
never logged (``SessionTokens`` hides them from ``repr``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast, runtime_checkable

import httpx

from kiiaren_core.errors import NotAuthenticatedError, NotFoundError, ProviderClosedError
from kiiaren_core.listeners import AuthStateListeners
from kiiaren_core.models import (
    OAuthStart,
    Session,
    SessionInfo,
    SessionTokens,
    UserIdentity,
)
from kiiaren_core.protocols import AuthStateCallback, Unsubscribe
from kiiaren_core.wire import OPERATIONS_BY_NAME, Operation, SessionGrant
from kiiaren_hosted.transport import Transport, build_request, parse_result

__all__ = ["Caller", "HostedAuth", "MemoryTokenStore", "SessionState", "TokenStore"]

logger = logging.getLogger("kiiaren.hosted.auth")

_SESSION_PROBE = OPERATIONS_BY_NAME["auth.session"]
_REFRESH = OPERATIONS_BY_NAME["auth.refresh"]


@runtime_checkable
class TokenStore(Protocol):
    """Where a provider keeps its session's tokens between runs (a keyring, a file, ...).

    ``save`` is awaited after every change (sign-in, refresh, sign-out, revocation; ``None``
    means signed out) before the change is announced; ``load`` once by ``initialize()``.
    Implementations must keep the tokens secret and must not log them.
    """

    async def load(self) -> SessionTokens | None: ...

    async def save(self, tokens: SessionTokens | None) -> None: ...


class MemoryTokenStore:
    """The default :class:`TokenStore`: the tokens live only as long as the process."""

    def __init__(self, tokens: SessionTokens | None = None) -> None:
        self._tokens = tokens

    async def load(self) -> SessionTokens | None:
        return self._tokens

    async def save(self, tokens: SessionTokens | None) -> None:
        self._tokens = tokens

    def __repr__(self) -> str:
        return f"MemoryTokenStore(signed_in={self._tokens is not None})"


@dataclass(slots=True, eq=False)
class SessionState:
    """The credentials and auth-state listeners of one provider object (never logged)."""

    store: TokenStore = field(default_factory=MemoryTokenStore)
    tokens: SessionTokens | None = None
    session: Session | None = None
    user_agent: str | None = None
    listeners: AuthStateListeners = field(default_factory=AuthStateListeners)
    refresh_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    def __repr__(self) -> str:  # tokens must never reach a log line
        return f"SessionState(signed_in={self.tokens is not None}, closed={self.closed})"

    def subscribe(self, callback: AuthStateCallback) -> Unsubscribe:
        """Add an auth-state listener (see :class:`AuthStateListeners`)."""
        return self.listeners.subscribe(callback)

    async def notify(self, event: str, session: Session | None) -> None:
        """Tell the listeners about ``event``."""
        await self.listeners.notify(event, session)

    async def bind(self, grant: SessionGrant, event: str) -> Session:
        """Keep a new session's tokens, save them, then announce ``event``."""
        self.tokens, self.session = grant.tokens, grant.session
        await self.store.save(grant.tokens)
        await self.notify(event, grant.session)
        return grant.session

    async def drop(self, event: str) -> None:
        """Forget the credentials (signed out or revoked) and announce it, once."""
        if self.tokens is None:
            return
        self.tokens, self.session = None, None
        await self.store.save(None)
        await self.notify(event, None)


_SENDABLE_TOKEN = re.compile(r"[!-~]+")
"""A bearer token must be visible ASCII to travel in a header at all."""


def _says_invalid_token(response: httpx.Response) -> bool:
    challenge = response.headers.get("WWW-Authenticate", "")
    return "invalid_token" in challenge


class Caller:
    """Makes wire calls as one session (see the module docstring for the 401 handling)."""

    def __init__(self, transport: Transport, state: SessionState) -> None:
        self.transport = transport
        self.state = state

    def check_open(self) -> None:
        """Raise ProviderClosedError once this provider object or its root is closed."""
        if self.state.closed:
            raise ProviderClosedError("This provider view has been closed.")
        if self.transport.closed:
            raise ProviderClosedError()

    def request(
        self, op: Operation, arguments: Mapping[str, Any], token: str | None, key: str | None
    ) -> httpx.Request:
        """The request of ``op`` as this session (``token`` and ``key`` as given)."""
        headers = {"User-Agent": self.state.user_agent} if self.state.user_agent else None
        return build_request(
            op,
            arguments,
            base_url=self.transport.settings.base_url,
            access_token=token,
            idempotency_key=key,
            headers=headers,
        )

    async def call(self, name: str, /, **arguments: Any) -> Any:
        """Call the wire operation ``name`` with the protocol method's ``arguments``.

        Returns what the protocol method returns (see :func:`parse_result`).

        Raises:
            NotAuthenticatedError: a ``session`` operation without a session (no request is
                sent), or the server refused the session.
            KiiarenError: the class the server raised; BackendUnavailableError when it
                could not be reached.
        """
        self.check_open()
        op = OPERATIONS_BY_NAME[name]
        deadline = self.transport.new_deadline()
        tokens = None
        if op.access != "public":
            tokens = await self.fresh_tokens(deadline)
            if tokens is None and op.access == "session":
                raise NotAuthenticatedError()
        if any(arguments.get(name) == "" for name in op.path_params):
            # An empty id names nothing, and its URL (``/v1/workspaces/``) would reach
            # another route or a redirect: answer what the server answers for an unknown path.
            if op.none_is_404:
                return None
            raise NotFoundError()
        token = tokens.access_token if tokens is not None else None
        # One key per logical call, reused by every attempt and by the repeat after a refresh.
        key = str(uuid.uuid4()) if op.mutating else None
        response = await self.transport.send(
            self.request(op, arguments, token, key), deadline=deadline
        )
        if response.status_code == 401 and tokens is not None:
            renewed = await self._recover(op, tokens, response, deadline)
            if renewed is not None:
                response = await self.transport.send(
                    self.request(op, arguments, renewed.access_token, key), deadline=deadline
                )
        return parse_result(op, response)

    async def fresh_tokens(self, deadline: float | None = None) -> SessionTokens | None:
        """The tokens to send, refreshed first when they expire within the margin.

        ``None`` when signed out, or when the refresh found the session revoked. An access
        token that cannot even be written in a header is answered as the server would
        answer it: the session is dropped (``session_revoked``).
        """
        tokens = self.state.tokens
        if tokens is not None and not _SENDABLE_TOKEN.fullmatch(tokens.access_token):
            await self.state.drop("session_revoked")
            return None
        if tokens is None or tokens.refresh_token is None or tokens.expires_at is None:
            return tokens
        margin = timedelta(seconds=self.transport.settings.refresh_margin_seconds)
        if datetime.now(UTC) < tokens.expires_at - margin:
            return tokens
        try:
            return await self.refresh(tokens, deadline)
        except NotAuthenticatedError:
            return None

    async def refresh(
        self, stale: SessionTokens | None, deadline: float | None = None
    ) -> SessionTokens:
        """Rotate the refresh token unless another caller already replaced ``stale``.

        Raises:
            NotAuthenticatedError: signed out, or the server refused the refresh token (the
                tokens are then dropped and ``session_revoked`` announced).
        """
        async with self.state.refresh_lock:
            current = self.state.tokens
            if current is None:
                raise NotAuthenticatedError()
            if current is not stale:
                return current
            return await self._refresh_locked(current, deadline)

    async def _refresh_locked(
        self, current: SessionTokens, deadline: float | None
    ) -> SessionTokens:
        if current.refresh_token is None:
            await self.state.drop("session_revoked")
            raise NotAuthenticatedError("Your session has ended. Please sign in again.")
        request = self.request(
            _REFRESH, {"refresh_token": current.refresh_token}, None, str(uuid.uuid4())
        )
        response = await self.transport.send(request, deadline=deadline)
        try:
            grant = cast(SessionGrant, parse_result(_REFRESH, response))
        except NotAuthenticatedError:
            await self.state.drop("session_revoked")
            raise
        await self.state.bind(grant, "token_refreshed")
        return grant.tokens

    async def _recover(
        self, op: Operation, sent: SessionTokens, response: httpx.Response, deadline: float
    ) -> SessionTokens | None:
        """After a 401 to a call sent with ``sent``: the tokens to repeat it with, or None
        to let the 401 stand (the operation's own answer, or a revoked session)."""
        async with self.state.refresh_lock:
            current = self.state.tokens
            if current is None:
                return None
            if current is not sent:
                return current  # refreshed by another caller meanwhile
            if not await self._session_failed(op, sent, response, deadline):
                return None
            try:
                return await self._refresh_locked(current, deadline)
            except NotAuthenticatedError:
                return None

    async def _session_failed(
        self, op: Operation, sent: SessionTokens, response: httpx.Response, deadline: float
    ) -> bool:
        if op is _SESSION_PROBE or _says_invalid_token(response):
            return True
        probe = await self.transport.send(
            self.request(_SESSION_PROBE, {}, sent.access_token, None), deadline=deadline
        )
        return probe.status_code == 401


class HostedAuth:
    """``provider.auth`` of one hosted provider object (see the module docstring)."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._state = caller.state

    @property
    def tokens(self) -> SessionTokens | None:
        """The bound session's bearer credentials, or ``None`` when signed out."""
        return self._state.tokens

    async def _grant(self, op_name: str, event: str, /, **arguments: Any) -> Session:
        grant = cast(SessionGrant, await self._caller.call(op_name, **arguments))
        return await self._state.bind(grant, event)

    async def sign_up_with_password(self, email: str, password: str, *, name: str) -> Session:
        """Create a password account and bind its session (announced as ``signed_up``)."""
        return await self._grant(
            "auth.sign_up", "signed_up", email=email, password=password, name=name
        )

    async def sign_in_with_password(self, email: str, password: str) -> Session:
        """Sign in and bind the session (``signed_in``)."""
        return await self._grant("auth.sign_in", "signed_in", email=email, password=password)

    async def sign_in_with_oauth(
        self, provider: str, *, redirect_to: str | None = None
    ) -> OAuthStart:
        """The server's authorization URL to send the user to, and the ``state`` to finish."""
        start: OAuthStart = await self._caller.call(
            "auth.oauth_start", provider=provider, redirect_to=redirect_to
        )
        return start

    async def complete_oauth(self, provider: str, *, code: str, state: str) -> Session:
        """Send the callback's ``code`` and ``state``; binds the session (``signed_in``)."""
        return await self._grant(
            "auth.oauth_callback", "signed_in", provider=provider, code=code, state=state
        )

    async def refresh_session(self) -> Session:
        """Rotate the refresh token now (single flight with any refresh already running)."""
        self._caller.check_open()
        await self._caller.refresh(self._state.tokens)
        session = self._state.session or await self.get_session()
        if session is None:
            raise NotAuthenticatedError("Your session has ended. Please sign in again.")
        return session

    async def sign_out(self) -> None:
        """Revoke the bound session on the server and forget it (``signed_out``). Idempotent.

        A session the server already ended is forgotten just the same; any other failure
        (the server unreachable) is raised and the session kept, so the call can be retried.
        """
        self._caller.check_open()
        tokens = await self._caller.fresh_tokens()
        if tokens is None:
            await self._state.drop("signed_out")
            return
        op = OPERATIONS_BY_NAME["auth.sign_out"]
        response = await self._caller.transport.send(
            self._caller.request(op, {}, tokens.access_token, str(uuid.uuid4()))
        )
        if response.status_code != 401:
            parse_result(op, response)
        await self._state.drop("signed_out")

    async def get_session(self) -> Session | None:
        """The bound session if the server still accepts it, else ``None``."""
        self._caller.check_open()
        if self._state.tokens is None:
            return None
        try:
            session: Session | None = await self._caller.call("auth.session")
        except NotAuthenticatedError:
            return None
        if session is not None and self._state.tokens is not None:
            self._state.session = session
        return session

    async def get_current_user(self) -> UserIdentity | None:
        """The signed-in user, or ``None`` when signed out or the session is invalid."""
        self._caller.check_open()
        if self._state.tokens is None:
            return None
        try:
            user: UserIdentity | None = await self._caller.call("auth.user")
        except NotAuthenticatedError:
            return None
        return user

    def on_auth_state_change(self, callback: AuthStateCallback) -> Unsubscribe:
        """Call ``callback`` on sign-up, sign-in, refresh, sign-out and revocation (also a
        revocation this client only notices when the server refuses the session)."""
        self._caller.check_open()
        return self._state.subscribe(callback)

    async def list_sessions(self) -> list[SessionInfo]:
        """The user's active sessions, newest first."""
        sessions: list[SessionInfo] = await self._caller.call("auth.sessions")
        return sessions

    async def revoke_session(self, session_id: str) -> None:
        """Revoke one of the user's sessions; revoking the bound one signs this object out."""
        await self._caller.call("auth.revoke_session", session_id=session_id)
        if self._state.session is not None and self._state.session.session_id == session_id:
            await self._state.drop("session_revoked")

    async def revoke_other_sessions(self) -> int:
        """Revoke every other session of the user; returns how many."""
        count: int = await self._caller.call("auth.revoke_other_sessions")
        return count

    async def revoke_all_sessions(self) -> int:
        """Revoke every session of the user, the bound one included (``session_revoked``)."""
        count: int = await self._caller.call("auth.revoke_all_sessions")
        await self._state.drop("session_revoked")
        return count

    async def change_password(self, current_password: str, new_password: str) -> None:
        """Change the password; the server revokes every other session of the user."""
        await self._caller.call(
            "auth.change_password", current_password=current_password, new_password=new_password
        )

    async def request_email_verification(self) -> None:
        """Have the server email a verification link."""
        await self._caller.call("auth.request_email_verification")

    async def verify_email(self, token: str) -> UserIdentity:
        """Mark the email verified with a token (public)."""
        user: UserIdentity = await self._caller.call("auth.verify_email", token=token)
        return user

    async def request_password_reset(self, email: str) -> None:
        """Ask for a reset link (the answer is the same whether the account exists)."""
        await self._caller.call("auth.request_password_reset", email=email)

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password with a reset token (public)."""
        await self._caller.call("auth.reset_password", token=token, new_password=new_password)

"""The session a provider view acts for, and how a call turns it into a verified principal.

A view holds its bearer credentials in a :class:`SessionState`. Every operation resolves them
in two steps: :func:`fresh_claims` checks the JWT (signature, claims) before any transaction,
then :func:`check_session` checks the session row (not revoked, not expired) *inside the
operation's own transaction*, so sign-out, password changes and revocations take effect on
the very next call of every process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import NotAuthenticatedError
from kiiaren_core.listeners import AuthStateListeners
from kiiaren_core.models import ClientContext, Session, SessionTokens
from kiiaren_core.protocols import AuthStateCallback, Unsubscribe
from kiiaren_selfhost.auth.tokens import AccessClaims, TokenService
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import Database
from kiiaren_selfhost.db import tables as t

__all__ = [
    "Principal",
    "SessionLiveness",
    "SessionState",
    "check_session",
    "fresh_claims",
]

logger = logging.getLogger("kiiaren.selfhost.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller: the user and the session the call runs in."""

    user_id: str
    session_id: str


@dataclass(slots=True)
class SessionState:
    """Credentials and auth-state listeners of one provider view (never logged)."""

    tokens: SessionTokens | None = None
    context: ClientContext = field(default_factory=ClientContext)
    listeners: AuthStateListeners = field(default_factory=AuthStateListeners)
    refresh_lock: anyio.Lock = field(default_factory=anyio.Lock)
    closed: bool = False

    def __repr__(self) -> str:  # tokens must never reach a log line
        signed_in = self.tokens is not None
        return f"SessionState(signed_in={signed_in}, closed={self.closed})"

    def subscribe(self, callback: AuthStateCallback) -> Unsubscribe:
        """Add an auth-state listener (see :class:`AuthStateListeners`)."""
        return self.listeners.subscribe(callback)

    async def notify(self, event: str, session: Session | None) -> None:
        """Tell the listeners about ``event``."""
        await self.listeners.notify(event, session)

    async def drop(self, event: str) -> None:
        """Forget the credentials (signed out or revoked) and tell the listeners once."""
        if self.tokens is None:
            return
        self.tokens = None
        await self.notify(event, None)


async def fresh_claims(
    state: SessionState,
    tokens: TokenService,
    *,
    refresh: Callable[[], Awaitable[object]] | None = None,
) -> AccessClaims:
    """Verify the view's access token (no I/O), refreshing it once if it has expired.

    Call this *before* opening a transaction: a refresh writes in its own transaction.
    """
    if state.tokens is None:
        raise NotAuthenticatedError()
    try:
        return tokens.verify_access_token(state.tokens.access_token)
    except NotAuthenticatedError:
        if refresh is None or state.tokens.refresh_token is None:
            raise
    await refresh()
    if state.tokens is None:
        raise NotAuthenticatedError()
    return tokens.verify_access_token(state.tokens.access_token)


async def check_session(
    conn: AsyncConnection, state: SessionState, claims: AccessClaims
) -> Principal:
    """Check on ``conn`` that the claims' session is live; else drop the view's credentials,
    fire ``session_revoked`` and raise NotAuthenticatedError."""
    row = (
        await conn.execute(
            sa.select(t.auth_sessions.c.user_id, t.auth_sessions.c.expires_at).where(
                t.auth_sessions.c.id == claims.session_id,
                t.auth_sessions.c.revoked_at.is_(None),
            )
        )
    ).one_or_none()
    if row is None or row.expires_at <= utcnow() or str(row.user_id) != claims.user_id:
        await state.drop("session_revoked")
        raise NotAuthenticatedError("Your session has ended. Please sign in again.")
    return Principal(user_id=claims.user_id, session_id=claims.session_id)


class SessionLiveness:
    """Whether sessions are still live, for long-lived consumers (event streams).

    Many streams of one session share one answer per ``ttl`` seconds, so a thousand open
    streams cost one query per session per second, not a thousand.
    """

    def __init__(self, db: Database, *, ttl: float = 1.0) -> None:
        self._db = db
        self._ttl = ttl
        self._answers: dict[str, tuple[float, bool]] = {}
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def is_live(self, session_id: str, user_id: str) -> bool:
        """True while the session is neither revoked nor expired (answers at most ``ttl`` old)."""
        now = asyncio.get_running_loop().time()
        cached = self._answers.get(session_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        pending = self._pending.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[session_id] = future
        try:
            async with self._db.read() as conn:
                row = (
                    await conn.execute(
                        sa.select(t.auth_sessions.c.expires_at).where(
                            t.auth_sessions.c.id == session_id,
                            t.auth_sessions.c.user_id == user_id,
                            t.auth_sessions.c.revoked_at.is_(None),
                        )
                    )
                ).one_or_none()
            live = row is not None and row.expires_at > utcnow()
            self._answers[session_id] = (asyncio.get_running_loop().time(), live)
            future.set_result(live)
            return live
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._pending[session_id]

"""The self-host ``auth`` sub-provider: accounts, sessions, refresh rotation, email flows, OAuth.

Security decisions (see QUALITY.md, "Authentication and sessions"):

* No account oracle: an unknown email, a wrong password and a sign-up with a registered
  email all raise the same ``NotAuthenticatedError("Invalid email or password.")`` after the
  same amount of hashing work (a dummy hash is verified for unknown users).
* Refresh tokens are opaque, stored as SHA-256 hashes and rotated on every use. A token's
  successor is derived from it with an HMAC under a server key, so a replay inside the grace
  window (concurrent tabs) or of the immediate parent (a lost response) yields the *same*
  successor without storing any token in clear; any other replay revokes the session.
* Every call re-checks the session row, so revocation takes effect at once everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import (
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    ProviderClosedError,
)
from kiiaren_core.models import (
    OAuthStart,
    Session,
    SessionInfo,
    SessionTokens,
    UserIdentity,
)
from kiiaren_core.protocols import AuthStateCallback, Unsubscribe
from kiiaren_core.validation import normalize_email
from kiiaren_selfhost.auth.mailer import password_reset_email, verification_email
from kiiaren_selfhost.auth.oauth import OAuthProfile, new_nonce, new_pkce_pair, new_state
from kiiaren_selfhost.auth.passwords import check_password_policy
from kiiaren_selfhost.auth.tokens import AccessClaims, hash_token, new_opaque_token
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.session import Principal, SessionState, check_session, fresh_claims

if TYPE_CHECKING:
    from kiiaren_selfhost.runtime import Runtime

__all__ = ["SelfHostAuth"]

INVALID_CREDENTIALS = "Invalid email or password."
MAX_NAME_LENGTH = 100


def _validate_name(name: str) -> str:
    cleaned = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"Name must be 1-{MAX_NAME_LENGTH} characters.", details={"field": "name"}
        )
    return cleaned


class SelfHostAuth:
    """``provider.auth`` of one self-host view."""

    def __init__(self, runtime: Runtime, state: SessionState) -> None:
        self._rt = runtime
        self._state = state

    # --- helpers --------------------------------------------------------------------------

    @property
    def tokens(self) -> SessionTokens | None:
        """The view's bearer credentials (``None`` when signed out)."""
        return self._state.tokens

    def _check_open(self) -> None:
        self._rt.check_open()
        if self._state.closed:
            raise ProviderClosedError("This provider view has been closed.")

    async def ready(self) -> None:
        self._check_open()
        await self._rt.ready()

    def _client_keys(self, account: str | None) -> list[tuple[str, str | None]]:
        return [("ip", self._state.context.ip_address), ("acct", account)]

    def _successor(self, refresh_token: str) -> str:
        """The deterministic successor of a refresh token (see the module docstring)."""
        digest = hmac.new(self._rt.refresh_key, refresh_token.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    async def claims(self) -> AccessClaims:
        """Verified access-token claims, refreshed once if expired (before any transaction)."""
        return await fresh_claims(self._state, self._rt.tokens, refresh=self.refresh_session)

    async def principal(
        self, conn: AsyncConnection, claims: AccessClaims | None = None
    ) -> Principal:
        """The verified caller on ``conn``; pass ``claims`` when a transaction is already open."""
        return await check_session(conn, self._state, claims or await self.claims())

    async def _open_session(
        self, conn: AsyncConnection, user_id: str, *, now: datetime
    ) -> tuple[str, str, datetime]:
        """Insert a session and its first refresh token; returns (session_id, token, expiry)."""
        session_id = str(uuid.uuid4())
        expires_at = now + timedelta(seconds=self._rt.settings.refresh_token_ttl_seconds)
        await conn.execute(
            t.auth_sessions.insert().values(
                id=session_id,
                user_id=user_id,
                created_at=now,
                last_used_at=now,
                expires_at=expires_at,
                user_agent=(self._state.context.user_agent or "")[:512] or None,
                ip_address=self._state.context.ip_address,
            )
        )
        refresh = new_opaque_token()
        await conn.execute(
            t.refresh_tokens.insert().values(
                id=str(uuid.uuid4()),
                session_id=session_id,
                token_hash=hash_token(refresh),
                created_at=now,
            )
        )
        return session_id, refresh, expires_at

    async def _bind(self, user_id: str, session_id: str, refresh: str, event: str) -> Session:
        """Issue an access token, bind the credentials to this view, tell the listeners."""
        access, access_expires = self._rt.tokens.issue_access_token(user_id, session_id)
        self._state.tokens = SessionTokens(
            access_token=access, refresh_token=refresh, expires_at=access_expires
        )
        session = Session(user_id=user_id, session_id=session_id, expires_at=access_expires)
        await self._state.notify(event, session)
        return session

    # --- password accounts ------------------------------------------------------------------

    async def sign_up_with_password(self, email: str, password: str, *, name: str) -> Session:
        """Create an account and sign in; a registered email answers like a failed sign-in."""
        await self.ready()
        address = normalize_email(email)
        display_name = _validate_name(name)
        check_password_policy(password, email=address, name=display_name)
        await self._rt.limiter.hit("sign_up", self._rt.limit("sign_up"), self._client_keys(address))
        async with self._rt.db.read() as conn:
            existing = (
                await conn.execute(
                    sa.select(t.users.c.id, t.users.c.password_hash).where(
                        t.users.c.email == address
                    )
                )
            ).one_or_none()
        if existing is not None:
            # Same work and same answer as a wrong password: no "email taken" oracle. If the
            # password is right, this is a sign-in (double-submitted sign-up forms work).
            if existing.password_hash and await self._rt.hasher.verify(
                existing.password_hash, password
            ):
                return await self._sign_in_user(str(existing.id), password, existing.password_hash)
            if not existing.password_hash:
                await self._rt.hasher.verify_dummy(password)
            raise NotAuthenticatedError(INVALID_CREDENTIALS)
        password_hash = await self._rt.hasher.hash(password)
        now = utcnow()
        user_id = str(uuid.uuid4())
        async with self._rt.db.write() as conn:
            await conn.execute(
                t.users.insert().values(
                    id=user_id,
                    email=address,
                    name=display_name,
                    password_hash=password_hash,
                    created_at=now,
                    updated_at=now,
                )
            )
            session_id, refresh, _ = await self._open_session(conn, user_id, now=now)
        return await self._bind(user_id, session_id, refresh, "signed_up")

    async def sign_in_with_password(self, email: str, password: str) -> Session:
        """Sign in; unknown email and wrong password are indistinguishable."""
        await self.ready()
        try:
            address = normalize_email(email)
        except InvalidInputError:
            address = None
        await self._rt.limiter.hit("sign_in", self._rt.limit("sign_in"), self._client_keys(address))
        if len(password.encode("utf-8", "surrogatepass")) > 1024:
            raise NotAuthenticatedError(INVALID_CREDENTIALS)
        row = None
        if address is not None:
            async with self._rt.db.read() as conn:
                row = (
                    await conn.execute(
                        sa.select(t.users.c.id, t.users.c.password_hash).where(
                            t.users.c.email == address
                        )
                    )
                ).one_or_none()
        if row is None or not row.password_hash:
            await self._rt.hasher.verify_dummy(password)
            raise NotAuthenticatedError(INVALID_CREDENTIALS)
        if not await self._rt.hasher.verify(row.password_hash, password):
            raise NotAuthenticatedError(INVALID_CREDENTIALS)
        return await self._sign_in_user(str(row.id), password, row.password_hash)

    async def _sign_in_user(self, user_id: str, password: str, password_hash: str) -> Session:
        now = utcnow()
        new_hash = (
            await self._rt.hasher.hash(password)
            if self._rt.hasher.needs_rehash(password_hash)
            else None
        )
        async with self._rt.db.write() as conn:
            if new_hash is not None:
                await conn.execute(
                    t.users.update()
                    .where(t.users.c.id == user_id)
                    .values(password_hash=new_hash, updated_at=now)
                )
            session_id, refresh, _ = await self._open_session(conn, user_id, now=now)
        return await self._bind(user_id, session_id, refresh, "signed_in")

    # --- refresh --------------------------------------------------------------------------

    async def refresh_session(self) -> Session:
        """Rotate the view's refresh token (single flight per view)."""
        self._check_open()
        tokens_before = self._state.tokens
        async with self._state.refresh_lock:
            current = self._state.tokens
            if current is None or current.refresh_token is None:
                raise NotAuthenticatedError()
            if current is not tokens_before and tokens_before is not None:
                # Another call refreshed while we waited: use its result.
                claims = self._rt.tokens.verify_access_token(current.access_token)
                return Session(
                    user_id=claims.user_id,
                    session_id=claims.session_id,
                    expires_at=current.expires_at,
                )
            return await self._refresh_with(current.refresh_token)

    async def _refresh_with(self, refresh_token: str) -> Session:
        await self._rt.ready()
        await self._rt.limiter.hit(
            "refresh", self._rt.limit("refresh"), self._client_keys(hash_token(refresh_token))
        )
        now = utcnow()
        grace = timedelta(seconds=self._rt.settings.refresh_reuse_grace_seconds)
        successor = self._successor(refresh_token)
        rt, sessions = t.refresh_tokens, t.auth_sessions
        async with self._rt.db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        rt.c.id,
                        rt.c.session_id,
                        rt.c.used_at,
                        rt.c.replaced_by_id,
                        sessions.c.user_id,
                        sessions.c.revoked_at,
                        sessions.c.expires_at,
                    )
                    .join(sessions, sessions.c.id == rt.c.session_id)
                    .where(rt.c.token_hash == hash_token(refresh_token))
                )
            ).one_or_none()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                reuse = None
            elif row.used_at is None:
                # Claim the token with a conditional update: of concurrent refreshes exactly
                # one succeeds; the others take the replay path with the same successor.
                claimed = await conn.execute(
                    rt.update().where(rt.c.id == row.id, rt.c.used_at.is_(None)).values(used_at=now)
                )
                if claimed.rowcount == 1:
                    await conn.execute(
                        rt.insert().values(
                            id=str(uuid.uuid4()),
                            session_id=row.session_id,
                            token_hash=hash_token(successor),
                            parent_id=row.id,
                            created_at=now,
                        )
                    )
                    await conn.execute(
                        sessions.update()
                        .where(sessions.c.id == row.session_id)
                        .values(last_used_at=now)
                    )
                    reuse = "rotated"
                else:
                    reuse = "raced"
            else:
                successor_used_at = (
                    await conn.execute(
                        sa.select(rt.c.used_at).where(rt.c.token_hash == hash_token(successor))
                    )
                ).scalar_one_or_none()
                within_grace = now - row.used_at <= grace
                reuse = "replayed" if within_grace or successor_used_at is None else "reused"
            if reuse == "reused":
                # A rotated token came back outside the grace window: assume theft.
                await conn.execute(
                    sessions.update()
                    .where(sessions.c.id == row.session_id, sessions.c.revoked_at.is_(None))  # type: ignore[union-attr]
                    .values(revoked_at=now, revoke_reason="refresh_token_reuse")
                )
        if reuse in (None, "reused") or row is None:
            await self._state.drop("session_revoked")
            raise NotAuthenticatedError("Your session has ended. Please sign in again.")
        return await self._bind(str(row.user_id), str(row.session_id), successor, "token_refreshed")

    # --- session queries ------------------------------------------------------------------

    async def sign_out(self) -> None:
        """Revoke the view's session (idempotent; signed-out views do nothing)."""
        self._check_open()
        if self._state.tokens is None:
            return
        await self._rt.ready()
        try:
            claims = self._rt.tokens.verify_access_token(self._state.tokens.access_token)
        except NotAuthenticatedError:
            claims = None
        if claims is not None:
            async with self._rt.db.write() as conn:
                await conn.execute(
                    t.auth_sessions.update()
                    .where(
                        t.auth_sessions.c.id == claims.session_id,
                        t.auth_sessions.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=utcnow(), revoke_reason="signed_out")
                )
        await self._state.drop("signed_out")

    async def get_session(self) -> Session | None:
        """The bound session if still valid, else None."""
        await self.ready()
        if self._state.tokens is None:
            return None
        try:
            claims = await self.claims()
            async with self._rt.db.read() as conn:
                principal = await self.principal(conn, claims)
        except NotAuthenticatedError:
            return None
        tokens = self._state.tokens
        return Session(
            user_id=principal.user_id,
            session_id=principal.session_id,
            expires_at=tokens.expires_at if tokens else None,
        )

    async def get_current_user(self) -> UserIdentity | None:
        """The signed-in user, or None."""
        await self.ready()
        if self._state.tokens is None:
            return None
        try:
            claims = await self.claims()
            async with self._rt.db.read() as conn:
                principal = await self.principal(conn, claims)
                return await self._identity(conn, principal.user_id)
        except NotAuthenticatedError:
            return None

    async def _identity(self, conn: AsyncConnection, user_id: str) -> UserIdentity:
        user = (await conn.execute(sa.select(t.users).where(t.users.c.id == user_id))).one()
        oauth = (
            await conn.execute(
                sa.select(t.oauth_accounts.c.provider)
                .where(t.oauth_accounts.c.user_id == user_id)
                .order_by(t.oauth_accounts.c.created_at)
                .limit(1)
            )
        ).scalar_one_or_none()
        password_account = user.password_hash is not None
        return UserIdentity(
            id=str(user.id),
            email=user.email,
            name=user.name,
            image=user.image,
            provider="password" if password_account or oauth is None else "oauth",
            oauth_provider=None if password_account else oauth,
            email_verified=user.email_verified_at is not None,
        )

    def on_auth_state_change(self, callback: AuthStateCallback) -> Unsubscribe:
        """Register a listener for sign-in, refresh, sign-out and revocation."""
        self._check_open()
        return self._state.subscribe(callback)

    async def list_sessions(self) -> list[SessionInfo]:
        """The user's live sessions, newest first."""
        await self.ready()
        s = t.auth_sessions
        claims = await self.claims()
        async with self._rt.db.read() as conn:
            me = await self.principal(conn, claims)
            rows = (
                await conn.execute(
                    sa.select(s)
                    .where(
                        s.c.user_id == me.user_id,
                        s.c.revoked_at.is_(None),
                        s.c.expires_at > utcnow(),
                    )
                    .order_by(s.c.created_at.desc(), s.c.id)
                )
            ).all()
        return [
            SessionInfo(
                id=str(row.id),
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                expires_at=row.expires_at,
                user_agent=row.user_agent,
                ip_address=row.ip_address,
                current=str(row.id) == me.session_id,
            )
            for row in rows
        ]

    async def _revoke(
        self, *, only: str | None = None, keep_current: bool = False, reason: str
    ) -> int:
        await self.ready()
        s = t.auth_sessions
        claims = await self.claims()
        async with self._rt.db.write() as conn:
            me = await self.principal(conn, claims)
            conditions = [s.c.user_id == me.user_id, s.c.revoked_at.is_(None)]
            if only is not None:
                conditions.append(s.c.id == only)
            if keep_current:
                conditions.append(s.c.id != me.session_id)
            result = await conn.execute(
                s.update().where(*conditions).values(revoked_at=utcnow(), revoke_reason=reason)
            )
            count = int(result.rowcount or 0)
        if only is not None and count == 0:
            raise NotFoundError("Session not found.")
        if (only == me.session_id) or (only is None and not keep_current):
            await self._state.drop("session_revoked")
        return count

    async def revoke_session(self, session_id: str) -> None:
        """Revoke one of the user's sessions; NotFoundError for anything else."""
        try:
            uuid.UUID(session_id)
        except (ValueError, TypeError, AttributeError):
            raise NotFoundError("Session not found.") from None
        await self._revoke(only=session_id, reason="revoked")

    async def revoke_other_sessions(self) -> int:
        """Revoke all the user's sessions but this one."""
        return await self._revoke(keep_current=True, reason="revoked")

    async def revoke_all_sessions(self) -> int:
        """Revoke all the user's sessions, this one included."""
        return await self._revoke(reason="revoked")

    async def change_password(self, current_password: str, new_password: str) -> None:
        """Change the password after checking the current one; other sessions are revoked."""
        await self.ready()
        claims = await self.claims()
        async with self._rt.db.read() as conn:
            me = await self.principal(conn, claims)
            user = (
                await conn.execute(
                    sa.select(t.users.c.email, t.users.c.name, t.users.c.password_hash).where(
                        t.users.c.id == me.user_id
                    )
                )
            ).one()
        if user.password_hash is None or not await self._rt.hasher.verify(
            user.password_hash, current_password
        ):
            raise NotAuthenticatedError("The current password is not correct.")
        check_password_policy(new_password, email=user.email, name=user.name)
        new_hash = await self._rt.hasher.hash(new_password)
        now = utcnow()
        s = t.auth_sessions
        async with self._rt.db.write() as conn:
            await conn.execute(
                t.users.update()
                .where(t.users.c.id == me.user_id)
                .values(password_hash=new_hash, updated_at=now)
            )
            await conn.execute(
                s.update()
                .where(s.c.user_id == me.user_id, s.c.id != me.session_id, s.c.revoked_at.is_(None))
                .values(revoked_at=now, revoke_reason="password_changed")
            )

    # --- email verification and password reset --------------------------------------------

    async def _issue_email_token(
        self, conn: AsyncConnection, user_id: str, email: str, purpose: str, ttl: int
    ) -> str:
        token = new_opaque_token()
        now = utcnow()
        await conn.execute(
            t.verification_tokens.insert().values(
                id=str(uuid.uuid4()),
                user_id=user_id,
                purpose=purpose,
                token_hash=hash_token(token),
                email=email,
                expires_at=now + timedelta(seconds=ttl),
                created_at=now,
            )
        )
        return token

    def _link(self, template: str, token: str) -> str:
        """Fill an emailed-link template (see the ``*_link`` settings)."""
        return template.format(public_url=self._rt.settings.public_url.rstrip("/"), token=token)

    async def request_email_verification(self) -> None:
        """Email the signed-in user a single-use verification link."""
        await self.ready()
        claims = await self.claims()
        async with self._rt.db.read() as conn:
            me = await self.principal(conn, claims)
        await self._rt.limiter.hit(
            "verification", self._rt.limit("verification"), self._client_keys(me.user_id)
        )
        async with self._rt.db.write() as conn:
            email = (
                await conn.execute(sa.select(t.users.c.email).where(t.users.c.id == me.user_id))
            ).scalar_one()
            token = await self._issue_email_token(
                conn,
                me.user_id,
                email,
                "email_verification",
                self._rt.settings.email_token_ttl_seconds,
            )
        await self._rt.mailer.send(
            verification_email(email, self._link(self._rt.settings.email_verification_link, token))
        )

    async def _consume(self, conn: AsyncConnection, token: str, purpose: str) -> tuple[str, str]:
        """Mark a verification token used; returns (user_id, email). Single use, expiring."""
        vt = t.verification_tokens
        row = (
            await conn.execute(
                sa.update(vt)
                .where(
                    vt.c.token_hash == hash_token(token),
                    vt.c.purpose == purpose,
                    vt.c.used_at.is_(None),
                    vt.c.expires_at > utcnow(),
                )
                .values(used_at=utcnow())
                .returning(vt.c.user_id, vt.c.email)
            )
        ).one_or_none()
        if row is None:
            raise NotAuthenticatedError("This link is invalid or has expired.")
        return str(row.user_id), str(row.email)

    async def verify_email(self, token: str) -> UserIdentity:
        """Mark the email verified from a token (public)."""
        await self.ready()
        if not isinstance(token, str) or not token or len(token) > 256:
            raise NotAuthenticatedError("This link is invalid or has expired.")
        async with self._rt.db.write() as conn:
            user_id, email = await self._consume(conn, token, "email_verification")
            await conn.execute(
                t.users.update()
                .where(t.users.c.id == user_id, t.users.c.email == email)
                .values(email_verified_at=utcnow(), updated_at=utcnow())
            )
            return await self._identity(conn, user_id)

    async def request_password_reset(self, email: str) -> None:
        """Email a reset link if the account exists; the answer is the same either way."""
        await self.ready()
        try:
            address = normalize_email(email)
        except InvalidInputError:
            return
        await self._rt.limiter.hit(
            "password_reset", self._rt.limit("password_reset"), self._client_keys(address)
        )
        # The lookup, token and email happen in the background so the answer's timing says
        # nothing about whether the account exists.
        self._rt.spawn(self._send_reset(address), name="password-reset-email")

    async def _send_reset(self, address: str) -> None:
        async with self._rt.db.write() as conn:
            user_id = (
                await conn.execute(sa.select(t.users.c.id).where(t.users.c.email == address))
            ).scalar_one_or_none()
            if user_id is None:
                return
            token = await self._issue_email_token(
                conn,
                str(user_id),
                address,
                "password_reset",
                self._rt.settings.password_reset_ttl_seconds,
            )
        await self._rt.mailer.send(
            password_reset_email(address, self._link(self._rt.settings.password_reset_link, token))
        )

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password from a reset token; every session of the user is revoked."""
        await self.ready()
        if not isinstance(token, str) or not token or len(token) > 256:
            raise NotAuthenticatedError("This link is invalid or has expired.")
        async with self._rt.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(t.users.c.email, t.users.c.name)
                    .join(t.verification_tokens, t.verification_tokens.c.user_id == t.users.c.id)
                    .where(t.verification_tokens.c.token_hash == hash_token(token))
                )
            ).one_or_none()
        check_password_policy(
            new_password, email=row.email if row else None, name=row.name if row else None
        )
        new_hash = await self._rt.hasher.hash(new_password)
        now = utcnow()
        async with self._rt.db.write() as conn:
            user_id, _email = await self._consume(conn, token, "password_reset")
            await conn.execute(
                t.users.update()
                .where(t.users.c.id == user_id)
                .values(
                    password_hash=new_hash,
                    updated_at=now,
                    # Following the emailed link proves the address.
                    email_verified_at=sa.func.coalesce(t.users.c.email_verified_at, now),
                )
            )
            await conn.execute(
                t.auth_sessions.update()
                .where(t.auth_sessions.c.user_id == user_id, t.auth_sessions.c.revoked_at.is_(None))
                .values(revoked_at=now, revoke_reason="password_reset")
            )

    # --- OAuth ----------------------------------------------------------------------------

    def _redirect_uri(self, provider: str) -> str:
        return f"{self._rt.settings.public_url.rstrip('/')}/v1/auth/oauth/{provider}/callback"

    async def sign_in_with_oauth(
        self, provider: str, *, redirect_to: str | None = None
    ) -> OAuthStart:
        """Start the authorization-code + PKCE flow; returns the URL to send the user to."""
        await self.ready()
        client = self._rt.oauth_client(provider)
        state, nonce = new_state(), new_nonce()
        verifier, challenge = new_pkce_pair()
        now = utcnow()
        async with self._rt.db.write() as conn:
            await conn.execute(t.oauth_states.delete().where(t.oauth_states.c.expires_at < now))
            await conn.execute(
                t.oauth_states.insert().values(
                    state_hash=hash_token(state),
                    provider=provider,
                    code_verifier=verifier,
                    nonce=nonce,
                    redirect_to=redirect_to,
                    expires_at=now + timedelta(seconds=self._rt.settings.oauth_state_ttl_seconds),
                    created_at=now,
                )
            )
        url = client.authorization_url(
            state=state,
            code_challenge=challenge,
            nonce=nonce,
            redirect_uri=self._redirect_uri(provider),
        )
        return OAuthStart(provider=provider, url=url, state=state)  # type: ignore[arg-type]

    async def complete_oauth(self, provider: str, *, code: str, state: str) -> Session:
        """Finish the flow: single-use state, code exchange, account lookup or linking."""
        await self.ready()
        client = self._rt.oauth_client(provider)
        async with self._rt.db.write() as conn:
            row = (
                await conn.execute(
                    t.oauth_states.delete()
                    .where(t.oauth_states.c.state_hash == hash_token(state))
                    .returning(
                        t.oauth_states.c.provider,
                        t.oauth_states.c.code_verifier,
                        t.oauth_states.c.nonce,
                        t.oauth_states.c.expires_at,
                    )
                )
            ).one_or_none()
        if row is None or row.provider != provider or row.expires_at <= utcnow():
            raise NotAuthenticatedError("This sign-in attempt is invalid or has expired.")
        profile = await client.exchange_code(
            code=code,
            code_verifier=row.code_verifier,
            redirect_uri=self._redirect_uri(provider),
            nonce=row.nonce,
        )
        return await self._sign_in_oauth_profile(profile)

    async def _sign_in_oauth_profile(self, profile: OAuthProfile) -> Session:
        now = utcnow()
        oa, users = t.oauth_accounts, t.users
        async with self._rt.db.write() as conn:
            user_id = (
                await conn.execute(
                    sa.select(oa.c.user_id).where(
                        oa.c.provider == profile.provider, oa.c.subject == profile.subject
                    )
                )
            ).scalar_one_or_none()
            event = "signed_in"
            if user_id is None:
                if not profile.email:
                    raise NotAuthenticatedError(
                        f"Your {profile.provider} account has no email address we can use."
                    )
                email = normalize_email(profile.email)
                existing = (
                    await conn.execute(sa.select(users.c.id).where(users.c.email == email))
                ).scalar_one_or_none()
                if existing is not None and not profile.email_verified:
                    raise NotAuthenticatedError(
                        "An account with this email already exists. Sign in with your password; "
                        f"{profile.provider} did not confirm that you own this address."
                    )
                if existing is None:
                    user_id = str(uuid.uuid4())
                    await conn.execute(
                        users.insert().values(
                            id=user_id,
                            email=email,
                            name=(profile.name or email.split("@")[0])[:MAX_NAME_LENGTH],
                            image=profile.image,
                            email_verified_at=now if profile.email_verified else None,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    event = "signed_up"
                else:
                    user_id = existing
                    await conn.execute(
                        users.update()
                        .where(users.c.id == existing)
                        .values(email_verified_at=sa.func.coalesce(users.c.email_verified_at, now))
                    )
                await conn.execute(
                    oa.insert().values(
                        id=str(uuid.uuid4()),
                        user_id=user_id,
                        provider=profile.provider,
                        subject=profile.subject,
                        email=profile.email,
                        created_at=now,
                    )
                )
            session_id, refresh, _ = await self._open_session(conn, str(user_id), now=now)
        return await self._bind(str(user_id), session_id, refresh, event)

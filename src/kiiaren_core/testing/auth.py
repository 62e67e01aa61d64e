"""Conformance area ``auth``: accounts, sessions, rotation, revocation, callbacks, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from kiiaren_core.errors import (
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    RateLimitedError,
)
from kiiaren_core.models import AuthState
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.testing.base import ConformanceBase, TestUser, unique_email

__all__ = ["AuthConformance"]

MakeUser = Callable[..., Awaitable[TestUser]]


class AuthConformance(ConformanceBase):
    """The ``auth`` sub-provider.

    Override :meth:`refresh_reuse_grace_seconds` with the grace window the provider under
    test is configured with (keep it short in tests: the reuse test waits it out).
    """

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("auth")]

    @pytest.fixture
    def refresh_reuse_grace_seconds(self) -> float:
        """The provider's refresh-token reuse grace window, in seconds."""
        return 1.0

    # --- sign-up and sign-in -----------------------------------------------------------------

    async def test_sign_up_signs_in(self, provider: BackendProvider, password: str) -> None:
        view = provider.with_session(None)
        email = unique_email("Ada")
        session = await view.auth.sign_up_with_password(email, password, name="  Ada  ")
        assert session.is_authenticated
        assert view.auth.tokens is not None
        current = await view.auth.get_session()
        assert current is not None
        assert (current.user_id, current.session_id) == (session.user_id, session.session_id)
        user = await view.auth.get_current_user()
        assert user is not None
        assert user.id == session.user_id
        assert user.email == email.lower()
        assert user.name == "Ada"
        assert user.provider == "password"
        assert user.email_verified is False
        await view.aclose()

    async def test_sign_in_with_password(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        view = provider.with_session(None)
        session = await view.auth.sign_in_with_password(user.email.upper(), user.password)
        assert session.user_id == user.user_id
        assert session.session_id != (await user.provider.auth.get_session()).session_id  # type: ignore[union-attr]
        await view.aclose()

    async def test_unknown_email_and_wrong_password_look_the_same(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        view = provider.with_session(None)
        with pytest.raises(NotAuthenticatedError) as wrong:
            await view.auth.sign_in_with_password(user.email, user.password + "x")
        with pytest.raises(NotAuthenticatedError) as unknown:
            await view.auth.sign_in_with_password(unique_email(), user.password)
        with pytest.raises(NotAuthenticatedError) as taken:
            await view.auth.sign_up_with_password(user.email, user.password + "x", name="Eve")
        assert wrong.value.message == unknown.value.message == taken.value.message
        assert wrong.value.details == unknown.value.details == taken.value.details
        assert view.auth.tokens is None
        await view.aclose()

    @pytest.mark.parametrize(
        "bad_password",
        ["short1!", "x" * 1025, "é" * 513, "password", "12345678", "qwerty123"],
        ids=["7-chars", "1025-bytes", "1026-utf8-bytes", "common-1", "common-2", "common-3"],
    )
    async def test_password_policy(self, provider: BackendProvider, bad_password: str) -> None:
        view = provider.with_session(None)
        with pytest.raises(InvalidInputError) as caught:
            await view.auth.sign_up_with_password(unique_email(), bad_password, name="Ada")
        assert caught.value.details.get("field") == "password"
        await view.aclose()

    async def test_long_and_unicode_passwords_are_accepted_exactly(
        self, provider: BackendProvider
    ) -> None:
        view = provider.with_session(None)
        email = unique_email()
        password = "Ünïcödé pässwörd " + "y" * 64
        await view.auth.sign_up_with_password(email, password, name="Uni")
        other = provider.with_session(None)
        await other.auth.sign_in_with_password(email, password)
        with pytest.raises(NotAuthenticatedError):
            await other.auth.sign_in_with_password(email, password.strip() + " ")
        await view.aclose()
        await other.aclose()

    @pytest.mark.parametrize("email", ["", "no-at-sign", "a@b", "two@@example.com"])
    async def test_invalid_email_is_refused(
        self, provider: BackendProvider, password: str, email: str
    ) -> None:
        view = provider.with_session(None)
        with pytest.raises(InvalidInputError):
            await view.auth.sign_up_with_password(email, password, name="Ada")
        await view.aclose()

    async def test_anonymous_view_has_no_session(self, provider: BackendProvider) -> None:
        view = provider.with_session(None)
        assert await view.auth.get_session() is None
        assert await view.auth.get_current_user() is None
        with pytest.raises(NotAuthenticatedError):
            await view.auth.list_sessions()
        await view.aclose()

    # --- sign-out and revocation -------------------------------------------------------------

    async def test_sign_out_revokes_everywhere_at_once(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        tokens = user.provider.auth.tokens
        assert tokens is not None
        elsewhere = provider.with_session(tokens.access_token)
        assert await elsewhere.auth.get_session() is not None
        await user.provider.auth.sign_out()
        await user.provider.auth.sign_out()
        assert user.provider.auth.tokens is None
        assert await user.provider.auth.get_session() is None
        assert await elsewhere.auth.get_session() is None
        with pytest.raises(NotAuthenticatedError):
            await elsewhere.auth.list_sessions()
        await elsewhere.aclose()

    async def test_list_and_revoke_sessions(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        second = provider.with_session(None)
        third = provider.with_session(None)
        await second.auth.sign_in_with_password(user.email, user.password)
        await third.auth.sign_in_with_password(user.email, user.password)
        sessions = await user.provider.auth.list_sessions()
        assert len(sessions) == 3
        assert [s.current for s in sessions].count(True) == 1
        second_id = (await second.auth.get_session()).session_id  # type: ignore[union-attr]
        await user.provider.auth.revoke_session(second_id)
        assert await second.auth.get_session() is None
        with pytest.raises(NotFoundError):
            await user.provider.auth.revoke_session(second_id)
        assert await user.provider.auth.revoke_other_sessions() == 1
        assert await third.auth.get_session() is None
        assert await user.provider.auth.get_session() is not None
        assert await user.provider.auth.revoke_all_sessions() == 1
        assert await user.provider.auth.get_session() is None
        await second.aclose()
        await third.aclose()

    async def test_cannot_revoke_another_users_session(self, make_user: MakeUser) -> None:
        alice, bob = await make_user("Alice"), await make_user("Bob")
        bob_session = await bob.provider.auth.get_session()
        assert bob_session is not None
        with pytest.raises(NotFoundError):
            await alice.provider.auth.revoke_session(bob_session.session_id)
        with pytest.raises(NotFoundError):
            await alice.provider.auth.revoke_session("not-a-session-id")
        assert await bob.provider.auth.get_session() is not None

    async def test_change_password(self, make_user: MakeUser, provider: BackendProvider) -> None:
        user = await make_user()
        other = provider.with_session(None)
        await other.auth.sign_in_with_password(user.email, user.password)
        with pytest.raises(NotAuthenticatedError):
            await user.provider.auth.change_password("wrong-" + user.password, user.password + "2")
        with pytest.raises(InvalidInputError):
            await user.provider.auth.change_password(user.password, "short")
        await user.provider.auth.change_password(user.password, user.password + "-new")
        assert await other.auth.get_session() is None, "other sessions are revoked"
        assert await user.provider.auth.get_session() is not None
        fresh = provider.with_session(None)
        with pytest.raises(NotAuthenticatedError):
            await fresh.auth.sign_in_with_password(user.email, user.password)
        await fresh.auth.sign_in_with_password(user.email, user.password + "-new")
        await other.aclose()
        await fresh.aclose()

    # --- refresh rotation --------------------------------------------------------------------

    async def test_refresh_rotates_the_refresh_token(self, make_user: MakeUser) -> None:
        user = await make_user()
        before = user.provider.auth.tokens
        assert before is not None
        assert before.refresh_token is not None
        session = await user.provider.auth.refresh_session()
        after = user.provider.auth.tokens
        assert after is not None
        assert after.refresh_token not in (None, before.refresh_token)
        assert session.user_id == user.user_id
        assert await user.provider.auth.get_session() is not None

    async def test_replaying_the_immediate_parent_returns_the_same_successor(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        parent = user.provider.auth.tokens
        assert parent is not None
        await user.provider.auth.refresh_session()
        successor = user.provider.auth.tokens
        lost_response = provider.with_session(parent)
        await lost_response.auth.refresh_session()
        assert lost_response.auth.tokens is not None
        assert successor is not None
        assert lost_response.auth.tokens.refresh_token == successor.refresh_token
        assert await user.provider.auth.get_session() is not None
        await lost_response.aclose()

    async def test_concurrent_refreshes_yield_one_successor(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        tokens = user.provider.auth.tokens
        views = [provider.with_session(tokens) for _ in range(20)]
        async with anyio.create_task_group() as tg:
            for view in views:
                tg.start_soon(view.auth.refresh_session)
        successors = {view.auth.tokens.refresh_token for view in views if view.auth.tokens}
        assert len(successors) == 1
        assert await user.provider.auth.get_session() is not None, "no revocation"
        for view in views:
            assert await view.auth.get_session() is not None
            await view.aclose()

    async def test_reuse_outside_the_grace_window_revokes_the_session(
        self,
        make_user: MakeUser,
        provider: BackendProvider,
        refresh_reuse_grace_seconds: float,
    ) -> None:
        user = await make_user()
        first = user.provider.auth.tokens
        await user.provider.auth.refresh_session()
        await user.provider.auth.refresh_session()  # `first` is now a grandparent
        await anyio.sleep(refresh_reuse_grace_seconds + 0.5)
        thief = provider.with_session(first)
        with pytest.raises(NotAuthenticatedError):
            await thief.auth.refresh_session()
        assert await user.provider.auth.get_session() is None, "the whole session is revoked"
        with pytest.raises(NotAuthenticatedError):
            await user.provider.auth.refresh_session()
        await thief.aclose()

    # --- auth state callbacks ----------------------------------------------------------------

    async def test_auth_state_callbacks(self, provider: BackendProvider, password: str) -> None:
        view = provider.with_session(None)
        seen: list[AuthState] = []
        unsubscribe = view.auth.on_auth_state_change(seen.append)
        email = unique_email()
        await view.auth.sign_up_with_password(email, password, name="Cb")
        await view.auth.sign_out()
        await view.auth.sign_in_with_password(email, password)
        await view.auth.refresh_session()
        await view.auth.revoke_all_sessions()
        events = [state.event for state in seen]
        assert events == [
            "signed_up",
            "signed_out",
            "signed_in",
            "token_refreshed",
            "session_revoked",
        ]
        assert seen[0].session is not None
        assert seen[1].session is None
        unsubscribe()
        unsubscribe()
        await view.auth.sign_in_with_password(email, password)
        assert len(seen) == 5
        await view.aclose()

    async def test_revocation_noticed_later_fires_a_callback(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        other = provider.with_session(None)
        await other.auth.sign_in_with_password(user.email, user.password)
        seen: list[str] = []
        other.auth.on_auth_state_change(lambda state: seen.append(state.event))
        await user.provider.auth.revoke_other_sessions()
        assert await other.auth.get_session() is None
        assert seen == ["session_revoked"]
        assert other.auth.tokens is None
        await other.aclose()

    # --- rate limits and tokens --------------------------------------------------------------

    async def test_sign_in_is_rate_limited_per_account(
        self, make_user: MakeUser, provider: BackendProvider
    ) -> None:
        user = await make_user()
        view = provider.with_session(None)
        limited: RateLimitedError | None = None
        for _ in range(200):
            try:
                await view.auth.sign_in_with_password(user.email, "wrong-" + user.password)
            except NotAuthenticatedError:
                continue
            except RateLimitedError as exc:
                limited = exc
                break
        assert limited is not None, "200 wrong passwords in a row were never rate-limited"
        assert limited.retry_after > 0
        assert limited.http_status == 429
        await view.aclose()

    async def test_bad_verification_tokens_are_refused(self, provider: BackendProvider) -> None:
        view = provider.with_session(None)
        for token in ["", "nope", "x" * 300]:
            with pytest.raises(NotAuthenticatedError):
                await view.auth.verify_email(token)
            with pytest.raises((NotAuthenticatedError, InvalidInputError)):
                await view.auth.reset_password(token, "A-good-new-password-1")
        await view.aclose()

    async def test_password_reset_request_answers_the_same_for_unknown_emails(
        self, provider: BackendProvider, make_user: MakeUser
    ) -> None:
        user = await make_user()
        view = provider.with_session(None)
        # Both complete quietly: the answer never says whether the account exists.
        await view.auth.request_password_reset(user.email)
        await view.auth.request_password_reset(unique_email())
        await view.aclose()

    async def test_forged_access_tokens_are_refused(self, provider: BackendProvider) -> None:
        for token in ["", "garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."]:
            view = provider.with_session(token)
            assert await view.auth.get_session() is None
            with pytest.raises(NotAuthenticatedError):
                await view.persistence.workspace.create("Forged")
            await view.aclose()

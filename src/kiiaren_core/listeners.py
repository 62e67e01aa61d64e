"""The registry behind ``auth.on_auth_state_change``, shared by every provider (no I/O)."""

from __future__ import annotations

import inspect
import logging

from kiiaren_core.models import AuthState, Session
from kiiaren_core.protocols import AuthStateCallback, Unsubscribe

__all__ = ["AuthStateListeners"]

logger = logging.getLogger("kiiaren.auth")


class AuthStateListeners:
    """Callbacks told about sign-in, refresh, sign-out and revocation of one session."""

    def __init__(self) -> None:
        self._callbacks: list[AuthStateCallback] = []

    def subscribe(self, callback: AuthStateCallback) -> Unsubscribe:
        """Add a listener; the returned function removes it (calling it twice is harmless)."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    async def notify(self, event: str, session: Session | None) -> None:
        """Tell every listener (sync or async); a failing one is logged, the others still run."""
        state = AuthState(event=event, session=session)  # type: ignore[arg-type]
        for callback in list(self._callbacks):
            try:
                result = callback(state)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("auth state listener failed")

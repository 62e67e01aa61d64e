"""``Idempotency-Key`` handling: the keyed execution of a mutating request.

Semantics (modelled on Stripe's idempotency keys):

* The key is scoped to a *principal*: the signed-in user (``user:<id>``, from a verified
  session) or, signed out, the client address (``ip:<address>``).
* The request's *fingerprint* is its method, path with query string, and the SHA-256 of the
  raw body. The first request with a key claims it; its answer is stored and replayed to
  every repeat with the same fingerprint, with ``Idempotent-Replayed: true`` and no second
  effect. A different fingerprint under the same key is refused (``409
  idempotency_conflict``), and so is a repeat while the first is still running.
* Answers worth retrying are not kept: 5xx, 429 and interrupted requests release the key, so
  a retry runs again. Requests refused before they ran (validation) never claim it.
* Keys expire after ``idempotency_ttl_seconds``.

Where keys live: a provider that is an :class:`~kiiaren_core.protocols.OperableProvider`
brings a durable store shared by every server process (the self-host provider keeps them in
its database). Otherwise :class:`InProcessIdempotencyStore` keeps them in memory, which is
correct for a single server process only.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import anyio
from starlette.datastructures import URL
from starlette.responses import Response
from starlette.types import Scope

from kiiaren_core.errors import IdempotencyConflictError, KiiarenError
from kiiaren_core.protocols import IdempotencyStore, IdempotentReplay

__all__ = [
    "IDEMPOTENCY_HEADER",
    "KEY_PATTERN",
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "InProcessIdempotencyStore",
    "fingerprint",
    "run_idempotently",
]

logger = logging.getLogger("kiiaren.server")

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_KEY_LENGTH: Final = 255
KEY_PATTERN: Final = r"^[!-~]+$"
"""A key is 1-255 visible ASCII characters (checked with the request's other headers)."""
_RELEASED_STATUSES: Final = frozenset({429})


def fingerprint(scope: Scope, body: bytes) -> str:
    """``"<METHOD> <path>[?query] <sha256 of the body>"`` of the request of ``scope``."""
    url = URL(scope=scope)
    target = f"{url.path}?{url.query}" if url.query else url.path
    return f"{scope['method']} {target} {hashlib.sha256(body).hexdigest()}"


def _replayed(replay: IdempotentReplay) -> Response:
    return Response(
        replay.body.encode() if replay.body else None,
        status_code=replay.status_code,
        media_type=replay.content_type if replay.body else None,
        headers={REPLAYED_HEADER: "true"},
    )


def _storable(response: Response) -> bool:
    return response.status_code < 500 and response.status_code not in _RELEASED_STATUSES


async def run_idempotently(
    store: IdempotencyStore,
    *,
    principal: str,
    key: str,
    request_fingerprint: str,
    ttl_seconds: float,
    run: Callable[[], Awaitable[Response]],
    on_error: Callable[[KiiarenError], Response],
) -> Response:
    """Run ``run`` at most once per ``(principal, key)`` (see the module docstring).

    ``run`` answers with a fully rendered response; a :class:`KiiarenError` it raises is
    answered (and stored, if not retryable) through ``on_error``. Any other exception, or
    cancellation, releases the key and propagates.

    Raises:
        IdempotencyConflictError: the key belongs to another request or is still running.
    """
    replay = await store.claim(principal, key, request_fingerprint, ttl_seconds=ttl_seconds)
    if replay is not None:
        return _replayed(replay)
    try:
        try:
            response = await run()
        except KiiarenError as error:
            response = on_error(error)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.release(principal, key)
        raise
    with anyio.CancelScope(shield=True):
        if not _storable(response):
            await store.release(principal, key)
            return response
        body = bytes(response.body).decode()
        answer = IdempotentReplay(
            status_code=response.status_code,
            body=body,
            content_type=response.media_type or "application/json",
        )
        try:
            await store.complete(principal, key, answer)
        except KiiarenError:
            # The effect happened and the client is owed its answer; the key stays claimed
            # (a repeat is refused as in flight) until the store's claim lease lapses.
            logger.warning("could not store the answer of an idempotent request", exc_info=True)
    return response


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    claimed_at: float
    expires_at: float
    replay: IdempotentReplay | None = None


class InProcessIdempotencyStore:
    """An :class:`~kiiaren_core.protocols.IdempotencyStore` in this process's memory.

    Correct for a single server process only: another process does not see its keys. Expired
    keys are pruned as new ones are claimed; a claim whose request never finished (the process
    was interrupted mid-request) lapses after ``in_flight_timeout_seconds``.
    """

    def __init__(
        self,
        *,
        in_flight_timeout_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lease = in_flight_timeout_seconds
        self._clock = clock
        self._next_prune = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + 60.0
        for slot in [slot for slot, entry in self._entries.items() if entry.expires_at <= now]:
            del self._entries[slot]

    async def claim(
        self, principal: str, key: str, fingerprint: str, *, ttl_seconds: float
    ) -> IdempotentReplay | None:
        """See :meth:`kiiaren_core.protocols.IdempotencyStore.claim`."""
        now = self._clock()
        self._prune(now)
        slot = (principal, key)
        entry = self._entries.get(slot)
        abandoned = (
            entry is not None and entry.replay is None and entry.claimed_at + self._lease <= now
        )
        if entry is None or entry.expires_at <= now or abandoned:
            self._entries[slot] = _Entry(fingerprint, now, now + ttl_seconds)
            return None
        if entry.fingerprint != fingerprint:
            raise IdempotencyConflictError(details={"reason": "different_request"})
        if entry.replay is None:
            raise IdempotencyConflictError(
                "A request with this Idempotency-Key is still in progress.",
                details={"reason": "in_progress"},
            )
        return entry.replay

    async def complete(self, principal: str, key: str, replay: IdempotentReplay) -> None:
        """See :meth:`kiiaren_core.protocols.IdempotencyStore.complete`."""
        entry = self._entries.get((principal, key))
        if entry is not None and entry.replay is None:
            entry.replay = replay

    async def release(self, principal: str, key: str) -> None:
        """See :meth:`kiiaren_core.protocols.IdempotencyStore.release`."""
        entry = self._entries.get((principal, key))
        if entry is not None and entry.replay is None:
            del self._entries[(principal, key)]

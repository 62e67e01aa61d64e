"""``Idempotency-Key`` handling: the keyed execution of a mutating request.

Semantics (modelled on Stripe's idempotency keys):

* The key is scoped to a *principal*: the signed-in user (``user:<id>``, from a verified
  session) or, signed out, the client address (``ip:<address>``).
* The request's *fingerprint* is its method, path with query string, and the SHA-256 of the
  raw body. The first request with a key takes it; its answer is stored and replayed to
  every repeat with the same fingerprint, with ``Idempotent-Replayed: true`` and no second
  effect. A different fingerprint under the same key is refused (``409
  idempotency_conflict``, ``different_request``), and so is a repeat while the first is
  still running (``in_progress``; a repeat first waits up to ~1.5 s for the answer).
* Keys expire after ``idempotency_ttl_seconds``.

Two ways to keep keys, chosen by the store:

* Effect-bound (:class:`~kiiaren_core.protocols.EffectBoundIdempotencyStore`, the self-host
  provider's): the key is recorded *in the operation's first write transaction*, so it
  commits if and only if the effect commits. A crash, an outage or a lost COMMIT
  acknowledgement can neither leave a key claimed without its effect (retrying works at
  once) nor an effect without its key (a retry never repeats it). An operation that wrote
  nothing, or whose write rolled back, keeps nothing: its answer (a refusal, a 5xx) is not
  stored and a retry runs again. Once the effect committed the key is never released: the
  answer is stored when storable, else the key stays without one, and once the store stops
  expecting it (15 s by default) a repeat is refused with ``answer_unavailable`` ("carried
  out, answer lost: look the result up") instead of being run again.
* Claimed (any other :class:`~kiiaren_core.protocols.IdempotencyStore`): claimed before the
  operation in a step of its own, then completed with the answer. Answers worth retrying are
  not kept: 5xx, 429 and interrupted requests release the key, so a retry runs again; a
  claim whose request never finished lapses after the store's in-flight lease.

Requests refused before they ran (validation) touch no key either way.

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

from kiiaren_core.errors import IdempotencyConflictError, IdempotencyKeyTaken, KiiarenError
from kiiaren_core.protocols import (
    EffectBoundIdempotencyStore,
    IdempotencyStore,
    IdempotentReplay,
)

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
_TAKEN_WAIT_SECONDS: Final = 1.5
"""How long a duplicate waits for the first request's answer before ``409 in_progress``."""
_TAKEN_FIRST_PAUSE: Final = 0.05
_TAKEN_MAX_PAUSE: Final = 0.4


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
    answered (and stored, if not retryable) through ``on_error``. With an
    :class:`~kiiaren_core.protocols.EffectBoundIdempotencyStore` the key is recorded with the
    operation's effect; otherwise it is claimed first, and any other exception, or
    cancellation, releases it and propagates.

    Raises:
        IdempotencyConflictError: the key belongs to another request, is still running, or
            its request was carried out but the answer was lost (``answer_unavailable``).
    """
    if isinstance(store, EffectBoundIdempotencyStore):
        return await _run_bound(
            store,
            principal=principal,
            key=key,
            request_fingerprint=request_fingerprint,
            ttl_seconds=ttl_seconds,
            run=run,
            on_error=on_error,
        )
    replay = await store.claim(principal, key, request_fingerprint, ttl_seconds=ttl_seconds)
    if replay is not None:
        return _replayed(replay)
    return await _run_claimed(store, principal, key, run, on_error)


async def _run_claimed(
    store: IdempotencyStore,
    principal: str,
    key: str,
    run: Callable[[], Awaitable[Response]],
    on_error: Callable[[KiiarenError], Response],
) -> Response:
    """Run ``run`` under a key claimed beforehand: store its answer, or release the key."""
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
        await _complete(store, principal, key, response)
    return response


async def _complete(store: IdempotencyStore, principal: str, key: str, response: Response) -> None:
    answer = IdempotentReplay(
        status_code=response.status_code,
        body=bytes(response.body).decode(),
        content_type=response.media_type or "application/json",
    )
    try:
        await store.complete(principal, key, answer)
    except KiiarenError:
        # The effect happened and the client is owed its answer; the key stays recorded
        # (a repeat is refused as in flight, then as answer_unavailable, never re-run).
        logger.warning("could not store the answer of an idempotent request", exc_info=True)


async def _run_bound(
    store: EffectBoundIdempotencyStore,
    *,
    principal: str,
    key: str,
    request_fingerprint: str,
    ttl_seconds: float,
    run: Callable[[], Awaitable[Response]],
    on_error: Callable[[KiiarenError], Response],
) -> Response:
    """Run ``run`` with the key recorded in its first write transaction.

    Recorded (the effect committed): the answer is stored when storable; otherwise the key
    stays recorded without one (releasing it would let a retry repeat the effect). Not
    recorded (nothing was written, or it rolled back): nothing is kept, and a retry runs
    again, which is safe because nothing happened. Taken (another request recorded the key
    first): answered from that record.
    """
    try:
        async with store.bound(
            principal, key, request_fingerprint, ttl_seconds=ttl_seconds
        ) as binding:
            try:
                response = await run()
            except KiiarenError as error:
                response = on_error(error)
    except IdempotencyKeyTaken:
        replayed = await _answer_taken(store, principal, key, request_fingerprint, ttl_seconds)
        if replayed is not None:
            return replayed
        # The record expired and was pruned meanwhile, and ``claim`` claimed the key for
        # this request (outside any transaction of the operation): run it that way.
        return await _run_claimed(store, principal, key, run, on_error)
    if binding.recorded and _storable(response):
        with anyio.CancelScope(shield=True):
            await _complete(store, principal, key, response)
    return response


async def _answer_taken(
    store: EffectBoundIdempotencyStore,
    principal: str,
    key: str,
    request_fingerprint: str,
    ttl_seconds: float,
) -> Response | None:
    """The answer for a request whose key another request recorded: its replay, once stored
    (``None``: the record vanished, and the key is now claimed for this request).

    A duplicate arriving while the first request is still between its commit and storing its
    answer waits a little (``_TAKEN_WAIT_SECONDS`` in all) for the replay before it is
    refused as in progress.
    """
    deadline = anyio.current_time() + _TAKEN_WAIT_SECONDS
    pause = _TAKEN_FIRST_PAUSE
    while True:
        try:
            replay = await store.claim(principal, key, request_fingerprint, ttl_seconds=ttl_seconds)
        except IdempotencyConflictError as conflict:
            in_progress = conflict.details.get("reason") == "in_progress"
            if not in_progress or anyio.current_time() + pause > deadline:
                raise
            await anyio.sleep(pause)
            pause = min(pause * 2, _TAKEN_MAX_PAUSE)
            continue
        return None if replay is None else _replayed(replay)


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

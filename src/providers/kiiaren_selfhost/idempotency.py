"""``Idempotency-Key`` records in the self-host database, shared by every server process.

The :class:`~kiiaren_core.protocols.EffectBoundIdempotencyStore` of the self-host provider
(``provider.idempotency``), over the ``idempotency_keys`` table: one row per
``(principal, key)`` holding the request's fingerprint, and once the request finished, its
status and body (``status_code`` NULL until then).

* Bound (what the bundled server uses): :meth:`SelfHostIdempotencyStore.bound` makes the
  operation's first write transaction record the key as its first statement
  (:mod:`kiiaren_selfhost.db.pending_claim`; ``effect_bound`` true), so the key commits if
  and only if the effect does. A key already recorded raises
  :class:`~kiiaren_core.errors.IdempotencyKeyTaken` there, rolling the operation back. Costs
  one statement inside a transaction the operation opens anyway, instead of two transactions
  of its own.
* A bound row without an answer means "the effect committed, its answer is not stored
  (yet)": it is never deleted as abandoned and never run again. :meth:`claim` answers it as
  in progress for ``answer_wait_seconds`` (the live request is storing its answer), and
  afterwards with ``409 idempotency_conflict``, ``details["reason"] == "answer_unavailable"``
  (the answer was lost with its process or connection: the client should look the result
  up). Only expiry (``expires_at``) removes it.
* Claimed (the plain :class:`~kiiaren_core.protocols.IdempotencyStore` path): one write
  transaction of its own. An expired record, or an abandoned claim of this kind (older than
  the in-flight lease), is deleted, then ``INSERT .. ON CONFLICT DO NOTHING .. RETURNING``
  decides who runs. A loser reads the winner's row (PostgreSQL makes it wait for the winner's
  commit; SQLite serialises writers), so of concurrent duplicates exactly one proceeds.
* The table keeps no content type: the bundled server only stores JSON answers (or empty
  ones), replayed as ``application/json``.
* Expired records are deleted by :meth:`SelfHostIdempotencyStore.prune`, which claiming runs
  at most once per ``prune_interval_seconds`` in each process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from kiiaren_core.errors import IdempotencyConflictError
from kiiaren_core.protocols import IdempotencyBinding, IdempotentReplay
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import Database, pending_claim
from kiiaren_selfhost.db import tables as t

__all__ = ["SelfHostIdempotencyStore"]

_ik = t.idempotency_keys
_PRUNE_BATCH: Final = 1_000
_CLAIM_ATTEMPTS: Final = 3
ANSWER_UNAVAILABLE_MESSAGE: Final = (
    "This request was already carried out, but its answer was lost; "
    "look the result up instead of retrying."
)


def _describe(fingerprint: str) -> tuple[str, str]:
    """The method and path of a fingerprint in the bundled server's form
    (``"<METHOD> <path> <body hash>"``), kept for operators; empty for other forms."""
    parts = fingerprint.split(" ")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", "")


class SelfHostIdempotencyStore:
    """Durable idempotency records (see the module docstring).

    Args:
        db: the provider's database.
        in_flight_timeout_seconds: a claim made outside the operation's transaction whose
            request has not finished after this long is taken to be abandoned (its process
            died mid-request) and may be claimed again.
        answer_wait_seconds: a bound record (its effect committed) still without an answer
            after this long is refused as ``answer_unavailable`` rather than ``in_progress``.
            Only the refusal's reason depends on it, never whether the request runs again
            (it never does): it covers the live request's commit-to-answer step (render,
            after-commit hooks, storing the answer) so that its duplicates are told to wait,
            while a client whose answer died with a process or connection learns it soon.
        prune_interval_seconds: how often claiming also deletes expired records.
    """

    def __init__(
        self,
        db: Database,
        *,
        in_flight_timeout_seconds: float = 300.0,
        answer_wait_seconds: float = 15.0,
        prune_interval_seconds: float = 60.0,
    ) -> None:
        self._db = db
        self._lease = timedelta(seconds=in_flight_timeout_seconds)
        self._answer_wait = timedelta(seconds=answer_wait_seconds)
        self._prune_interval = prune_interval_seconds
        self._next_prune = 0.0

    def _insert(self) -> postgresql.Insert | sqlite.Insert:
        return (postgresql.insert if self._db.dialect_name == "postgresql" else sqlite.insert)(_ik)

    def bound(
        self, principal: str, key: str, fingerprint: str, *, ttl_seconds: float
    ) -> AbstractAsyncContextManager[IdempotencyBinding]:
        """Record ``key`` in the first write transaction of the operation run in the block.

        See :meth:`kiiaren_core.protocols.EffectBoundIdempotencyStore.bound`. The binding's
        ``recorded`` is true once that transaction committed. Nesting is not supported: an
        inner binding replaces the outer one for its block.
        """
        method, path = _describe(fingerprint)
        claim = pending_claim.PendingClaim(
            principal, key, fingerprint, method, path, ttl_seconds, self._lease
        )
        return self._binding(claim)

    @asynccontextmanager
    async def _binding(
        self, claim: pending_claim.PendingClaim
    ) -> AsyncIterator[pending_claim.PendingClaim]:
        token = pending_claim.pending.set(claim)
        try:
            yield claim
        finally:
            pending_claim.pending.reset(token)

    async def claim(
        self, principal: str, key: str, fingerprint: str, *, ttl_seconds: float
    ) -> IdempotentReplay | None:
        """Claim ``key`` for a request, or return the answer to replay.

        Returns:
            None when the caller should run the request (then :meth:`complete` or
            :meth:`release`); the stored answer when the same request already ran.

        Raises:
            IdempotencyConflictError: the key holds another fingerprint
                (``details["reason"] == "different_request"``), its request is still
                running (``"in_progress"``), or it was carried out with its effect but its
                answer was lost (``"answer_unavailable"``, once ``answer_wait_seconds`` passed).
            BackendUnavailableError: the database cannot be reached.
        """
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self._prune_interval
            await self.prune()
        method, path = _describe(fingerprint)
        slot = (_ik.c.principal == principal, _ik.c.key == key)
        for _ in range(_CLAIM_ATTEMPTS):
            now = utcnow()
            async with self._db.write() as conn:
                await conn.execute(
                    _ik.delete().where(
                        *slot,
                        sa.or_(
                            _ik.c.expires_at <= now,
                            # Never a bound row: its effect committed.
                            sa.and_(
                                _ik.c.status_code.is_(None),
                                sa.not_(_ik.c.effect_bound),
                                _ik.c.created_at <= now - self._lease,
                            ),
                        ),
                    )
                )
                claimed = (
                    await conn.execute(
                        self._insert()
                        .values(
                            principal=principal,
                            key=key,
                            method=method,
                            path=path,
                            request_hash=fingerprint,
                            created_at=now,
                            expires_at=now + timedelta(seconds=ttl_seconds),
                        )
                        .on_conflict_do_nothing(index_elements=["principal", "key"])
                        .returning(_ik.c.key)
                    )
                ).first()
                if claimed is not None:
                    return None
                row = (
                    await conn.execute(
                        sa.select(
                            _ik.c.request_hash,
                            _ik.c.status_code,
                            _ik.c.response_body,
                            _ik.c.effect_bound,
                            _ik.c.created_at,
                        ).where(*slot)
                    )
                ).one_or_none()
            if row is None:
                continue  # released between our insert and our read: claim again
            if row.request_hash != fingerprint:
                raise IdempotencyConflictError(details={"reason": "different_request"})
            if row.status_code is None:
                if row.effect_bound and row.created_at <= now - self._answer_wait:
                    raise IdempotencyConflictError(
                        ANSWER_UNAVAILABLE_MESSAGE, details={"reason": "answer_unavailable"}
                    )
                break
            return IdempotentReplay(status_code=row.status_code, body=row.response_body or "")
        raise IdempotencyConflictError(
            "A request with this Idempotency-Key is still in progress.",
            details={"reason": "in_progress"},
        )

    async def complete(self, principal: str, key: str, replay: IdempotentReplay) -> None:
        """Store the answer of a claimed key (a key no longer claimed is left alone)."""
        async with self._db.write() as conn:
            await conn.execute(
                _ik.update()
                .where(_ik.c.principal == principal, _ik.c.key == key, _ik.c.status_code.is_(None))
                .values(status_code=replay.status_code, response_body=replay.body)
            )

    async def release(self, principal: str, key: str) -> None:
        """Forget a claim whose request failed in a retryable way (a stored answer stays, and
        so does a bound record: its effect committed)."""
        async with self._db.write() as conn:
            await conn.execute(
                _ik.delete().where(
                    _ik.c.principal == principal,
                    _ik.c.key == key,
                    _ik.c.status_code.is_(None),
                    sa.not_(_ik.c.effect_bound),
                )
            )

    async def prune(self) -> int:
        """Delete expired records, in batches; returns how many."""
        removed = 0
        while True:
            now = utcnow()
            expired = (
                sa.select(_ik.c.principal, _ik.c.key)
                .where(_ik.c.expires_at <= now)
                .limit(_PRUNE_BATCH)
            )
            async with self._db.write() as conn:
                result = await conn.execute(
                    _ik.delete()
                    .where(sa.tuple_(_ik.c.principal, _ik.c.key).in_(expired))
                    .returning(_ik.c.key)
                )
                count = len(result.all())
            removed += count
            if count < _PRUNE_BATCH:
                return removed

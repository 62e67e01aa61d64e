"""An ``Idempotency-Key`` claim waiting for the operation's first write transaction.

:meth:`kiiaren_selfhost.idempotency.SelfHostIdempotencyStore.bound` puts a
:class:`PendingClaim` in a context variable; :meth:`kiiaren_selfhost.db.Database.write`
takes it when it opens a write transaction in that context and records the key as the
transaction's first statement (:func:`record`). The key therefore commits if and only if the
operation's effect commits: no crash, outage or lost acknowledgement can separate them.

* Recorded: ``INSERT .. ON CONFLICT DO UPDATE .. WHERE <the old row is expired, or an
  abandoned claim made outside a transaction> RETURNING`` (one cached text statement). No
  row back means the key is held by a live record:
  :class:`~kiiaren_core.errors.IdempotencyKeyTaken` is raised, which rolls the operation
  back. On PostgreSQL a concurrent duplicate's insert waits on the
  primary key until the first transaction ends; SQLite serialises writers. Either way, of
  concurrent duplicates exactly one has an effect.
* The claim is held by one transaction at a time. If that transaction commits, the claim is
  ``recorded`` and later write transactions of the operation leave the key alone. If it
  rolls back, nothing of it remains and the claim waits for the operation's next write
  transaction (an operation that retries its write internally stays keyed).
* This module is part of the database layer on purpose: the engine may import it, and it
  imports nothing of the domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import IdempotencyKeyTaken
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t

__all__ = ["PendingClaim", "pending", "record", "suspended", "take"]

_ik = t.idempotency_keys


@dataclass(slots=True, eq=False)
class PendingClaim:
    """A key to record with the operation's first committed write (the binding itself).

    Shared by reference with tasks the operation starts (they copy the context, not the
    claim), so whichever transaction takes it first records it once.
    """

    principal: str
    key: str
    fingerprint: str
    method: str
    path: str
    ttl_seconds: float
    lease: timedelta
    """An unanswered claim made outside a transaction older than this is abandoned."""
    held: bool = False
    """A transaction is recording the claim right now (or recorded it)."""
    taken: bool = False
    """The key was found recorded by another request: the claim is spent."""
    recorded: bool = False
    """The transaction that recorded the key committed: the operation's effect happened."""


pending: Final[ContextVar[PendingClaim | None]] = ContextVar(
    "kiiaren_pending_idempotency_claim", default=None
)


def take() -> PendingClaim | None:
    """The claim a write transaction opening now must record, if any (then held by it)."""
    claim = pending.get()
    if claim is None or claim.held or claim.taken:
        return None
    claim.held = True
    return claim


@contextmanager
def suspended() -> Iterator[None]:
    """Write transactions in the block leave the pending claim alone.

    For bookkeeping that commits whatever the operation then does (a rate-limit counter):
    recording the key with it would mark the operation carried out before its effect.
    """
    token = pending.set(None)
    try:
        yield
    finally:
        pending.reset(token)


# Written as text: SQLAlchemy cannot cache an ``on_conflict_do_update`` construct with a
# ``where`` (its cache key is None), so built as an expression it was compiled again on
# every keyed request (~1 ms of CPU). The text is the same on both databases.
_RECORD: Final = sa.text(
    """
    INSERT INTO idempotency_keys AS ik (
        principal, "key", method, path, request_hash, status_code, response_body,
        effect_bound, created_at, expires_at
    ) VALUES (
        :principal, :key, :method, :path, :request_hash, NULL, NULL,
        TRUE, :created_at, :expires_at
    )
    ON CONFLICT (principal, "key") DO UPDATE SET
        method = excluded.method, path = excluded.path,
        request_hash = excluded.request_hash, status_code = NULL, response_body = NULL,
        effect_bound = TRUE, created_at = excluded.created_at,
        expires_at = excluded.expires_at
    WHERE ik.expires_at <= :created_at
       OR (ik.status_code IS NULL AND NOT ik.effect_bound
           AND ik.created_at <= :abandoned_before)
    RETURNING "key"
    """
).bindparams(
    sa.bindparam("created_at", type_=_ik.c.created_at.type),
    sa.bindparam("expires_at", type_=_ik.c.expires_at.type),
    sa.bindparam("abandoned_before", type_=_ik.c.created_at.type),
)
"""Record a key, replacing only a record that no longer counts: an expired one, or a claim
made outside a transaction whose request died before it finished (older than the lease)."""


async def record(conn: AsyncConnection, claim: PendingClaim) -> None:
    """Record ``claim`` on ``conn`` (the first statement of its write transaction).

    Raises:
        IdempotencyKeyTaken: a live record holds the key (the caller rolls back).
    """
    now = utcnow()
    recorded = await conn.execute(
        _RECORD,
        {
            "principal": claim.principal,
            "key": claim.key,
            "method": claim.method,
            "path": claim.path,
            "request_hash": claim.fingerprint,
            "created_at": now,
            "expires_at": now + timedelta(seconds=claim.ttl_seconds),
            "abandoned_before": now - claim.lease,
        },
    )
    if recorded.first() is None:
        claim.taken = True
        raise IdempotencyKeyTaken(claim.principal, claim.key)

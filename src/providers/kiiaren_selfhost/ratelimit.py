"""Fixed-window rate limits kept in the database, so every process sharing it agrees.

A limit ``"10/60"`` allows 10 attempts per 60-second window per key. Keys combine the action
with the client IP or the account (``sign_in:ip:203.0.113.7``, ``sign_in:acct:ada@x.org``), so a
single address cannot hammer many accounts and many addresses cannot hammer one account.
Each check is its own short transaction: an attempt counts even when the operation it guards
then fails (that is the point for sign-in).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import RateLimitedError
from kiiaren_selfhost.db import Database, pending_claim
from kiiaren_selfhost.db import tables as t

__all__ = ["Limit", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` attempts per ``seconds``-long window."""

    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Limit:
        """Parse ``"<count>/<seconds>"`` (validated by the settings already)."""
        count, _, seconds = text.partition("/")
        return cls(int(count), int(seconds))


class RateLimiter:
    """Counts attempts per key and window in the ``rate_limits`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def hit(self, action: str, limit: Limit, keys: Iterable[tuple[str, str | None]]) -> None:
        """Count one attempt of ``action`` for each ``(kind, value)`` key; raise when over.

        Keys whose value is ``None`` (an unknown client IP, say) are not counted.

        Raises:
            RateLimitedError: with ``retry_after`` = seconds until the window ends.
        """
        now = time.time()
        window = int(now // limit.seconds) * limit.seconds
        names = [f"{action}:{kind}:{value}" for kind, value in keys if value]
        if not names or limit.count <= 0:
            return
        # The counter commits whatever the operation then does: an Idempotency-Key pending
        # for the operation must be recorded with its effect, not with this bookkeeping.
        with pending_claim.suspended():
            async with self._db.write() as conn:
                counts = [await self._increment(conn, name, window) for name in names]
        if max(counts) > limit.count:
            retry_after = max(1, math.ceil(window + limit.seconds - now))
            raise RateLimitedError(
                retry_after,
                "Too many attempts. Try again later.",
                details={"action": action},
            )

    async def _increment(self, conn: AsyncConnection, key: str, window: int) -> int:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(t.rate_limits)
            .values(key=key, window_start=window, count=1)
            .on_conflict_do_update(
                index_elements=[t.rate_limits.c.key, t.rate_limits.c.window_start],
                set_={"count": t.rate_limits.c.count + 1},
            )
            .returning(t.rate_limits.c.count)
        )
        return int((await conn.execute(statement)).scalar_one())

    async def prune(self, older_than_seconds: int = 86_400) -> int:
        """Delete windows older than ``older_than_seconds``; returns how many rows went."""
        cutoff = int(time.time()) - older_than_seconds
        async with self._db.write() as conn:
            result = await conn.execute(
                sa.delete(t.rate_limits).where(t.rate_limits.c.window_start < cutoff)
            )
        return int(result.rowcount or 0)

"""Presence per user and workspace, shared by every process through the ``presence`` table.

A user is ``online`` while one of their event streams is open (streams heartbeat every
``HEARTBEAT_SECONDS``), ``away`` when their client says so, and ``offline`` after their last
stream closes or ``presence_offline_seconds`` without a heartbeat (a sweeper finds those). Each
transition emits one ephemeral ``presence.changed`` event; the sweep uses
``UPDATE .. RETURNING`` so that, with several processes, exactly one of them reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from kiiaren_core.events import EventEnvelope, new_event
from kiiaren_core.models import PresenceEntry, PresenceStatus
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import Database
from kiiaren_selfhost.db import tables as t

__all__ = ["HEARTBEAT_SECONDS", "PresenceTracker"]

logger = logging.getLogger("kiiaren.selfhost.presence")

HEARTBEAT_SECONDS: Final = 15.0


class PresenceTracker:
    """Records presence and publishes transitions through ``publish`` (ephemeral events)."""

    def __init__(
        self,
        db: Database,
        publish: Callable[[EventEnvelope], Awaitable[None]],
        *,
        offline_after_seconds: float,
    ) -> None:
        self._db = db
        self._publish = publish
        self._offline_after = timedelta(seconds=offline_after_seconds)
        self._sweeper: asyncio.Task[None] | None = None
        self._last_touch: dict[tuple[str, str], float] = {}

    async def set(self, workspace_id: str, user_id: str, status: PresenceStatus) -> None:
        """Record ``status`` (also a heartbeat) and announce it if it changed."""
        now = utcnow()
        p = t.presence
        insert = postgresql.insert if self._db.dialect_name == "postgresql" else sqlite.insert
        async with self._db.write() as conn:
            previous = (
                await conn.execute(
                    sa.select(p.c.status, p.c.last_seen_at).where(
                        p.c.workspace_id == workspace_id, p.c.user_id == user_id
                    )
                )
            ).one_or_none()
            await conn.execute(
                insert(p)
                .values(
                    workspace_id=workspace_id,
                    user_id=user_id,
                    status=status.value,
                    last_seen_at=now,
                )
                .on_conflict_do_update(
                    index_elements=[p.c.workspace_id, p.c.user_id],
                    set_={"status": status.value, "last_seen_at": now},
                )
            )
        was = self._effective(previous.status, previous.last_seen_at) if previous else None
        if was != status:
            await self._announce(workspace_id, user_id, status)
        self._ensure_sweeper()

    async def heartbeat(self, workspace_id: str, user_id: str) -> None:
        """:meth:`touch`, at most once per ``HEARTBEAT_SECONDS`` per user and workspace
        (however many streams the user has open in this process)."""
        now = asyncio.get_running_loop().time()
        key = (workspace_id, user_id)
        if now - self._last_touch.get(key, -HEARTBEAT_SECONDS) < HEARTBEAT_SECONDS:
            return
        self._last_touch[key] = now
        await self.touch(workspace_id, user_id)

    async def touch(self, workspace_id: str, user_id: str) -> None:
        """Heartbeat: keep the user's status, but bring an offline user back online."""
        p = t.presence
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    p.update()
                    .where(p.c.workspace_id == workspace_id, p.c.user_id == user_id)
                    .values(last_seen_at=utcnow())
                    .returning(p.c.status)
                )
            ).one_or_none()
        if row is None or row.status == PresenceStatus.OFFLINE.value:
            await self.set(workspace_id, user_id, PresenceStatus.ONLINE)

    def _effective(self, status: str, last_seen_at: object) -> PresenceStatus:
        if status != PresenceStatus.OFFLINE.value and last_seen_at < utcnow() - self._offline_after:  # type: ignore[operator]
            return PresenceStatus.OFFLINE
        return PresenceStatus(status)

    async def snapshot(self, workspace_id: str) -> list[PresenceEntry]:
        """Everyone seen in the workspace, with their effective status."""
        p = t.presence
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(p.c.user_id, p.c.status, p.c.last_seen_at)
                    .where(p.c.workspace_id == workspace_id)
                    .order_by(p.c.user_id)
                )
            ).all()
        return [
            PresenceEntry(
                user_id=str(row.user_id),
                status=self._effective(row.status, row.last_seen_at),
                last_seen_at=row.last_seen_at,
            )
            for row in rows
        ]

    async def _announce(self, workspace_id: str, user_id: str, status: PresenceStatus) -> None:
        await self._publish(
            new_event(
                "presence.changed",
                workspace_id=workspace_id,
                actor_id=user_id,
                payload={"user_id": user_id, "status": status.value},
            )
        )

    async def sweep(self) -> int:
        """Mark users without a recent heartbeat offline; returns how many changed."""
        p = t.presence
        cutoff = utcnow() - self._offline_after
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    p.update()
                    .where(p.c.status != PresenceStatus.OFFLINE.value, p.c.last_seen_at < cutoff)
                    .values(status=PresenceStatus.OFFLINE.value)
                    .returning(p.c.workspace_id, p.c.user_id)
                )
            ).all()
        for row in rows:
            await self._announce(str(row.workspace_id), str(row.user_id), PresenceStatus.OFFLINE)
        return len(rows)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="kiiaren-presence-sweep"
            )

    async def _sweep_forever(self) -> None:
        interval = max(1.0, self._offline_after.total_seconds() / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("presence sweep failed")

    async def aclose(self) -> None:
        """Stop the sweeper."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

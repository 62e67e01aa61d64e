"""Units of work: one transaction per operation, with its events and after-commit effects.

A store method runs as::

    async with self.mutation() as tx:           # write transaction, session checked inside
        ...                                      # tx.conn, tx.user_id
        tx.emit(workspace_id, "channel.created", {"channel_id": ..., "name": ...})
        tx.audit("channel.create", "channel", channel_id, workspace_id)
    # committed: events published, hooks called, files removed

Events are appended to the event log *in the same transaction* (transactional outbox) with a
per-workspace ``seq``: the ``event_streams`` counter row is bumped with one
``INSERT .. ON CONFLICT DO UPDATE .. RETURNING`` just before commit. The row lock it takes is
held until commit, so concurrent writers to one workspace commit in ``seq`` order and a
rolled-back transaction leaves neither rows nor a gap. The lock is taken last to keep it
short.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import NotAuthenticatedError
from kiiaren_core.events import EventEnvelope, new_event
from kiiaren_core.extensions import AuditEvent, SearchIndexEvent
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t

if TYPE_CHECKING:
    from kiiaren_selfhost.auth.service import SelfHostAuth
    from kiiaren_selfhost.runtime import Runtime

__all__ = ["Mutation", "Query", "Store", "append_events"]

logger = logging.getLogger("kiiaren.selfhost")


@dataclass(slots=True)
class Query:
    """A read-only unit: a connection and the caller (``None`` when signed out)."""

    conn: AsyncConnection
    user_id: str | None


@dataclass(slots=True)
class Mutation:
    """A write unit: the transaction's connection, the caller, and what happens on commit."""

    conn: AsyncConnection
    user_id: str
    events: list[EventEnvelope] = field(default_factory=list)
    audits: list[AuditEvent] = field(default_factory=list)
    indexes: list[SearchIndexEvent] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    logged: list[EventEnvelope] = field(default_factory=list)
    """The events as logged (with their seq), filled in when the transaction commits."""

    def emit(
        self, workspace_id: str, type_name: str, payload: Mapping[str, Any] | BaseModel
    ) -> None:
        """Queue a kernel event; it is logged with a seq when the transaction commits."""
        body = payload if isinstance(payload, BaseModel) else dict(payload)
        self.events.append(
            new_event(type_name, workspace_id=workspace_id, actor_id=self.user_id, payload=body)
        )

    def audit(
        self,
        action: str,
        resource_type: str,
        resource_id: str,
        workspace_id: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue an ``audit.log`` call for after commit."""
        self.audits.append(
            AuditEvent(
                action=action,
                actor_id=self.user_id,
                resource_type=resource_type,
                resource_id=resource_id,
                workspace_id=workspace_id,
                metadata=dict(metadata or {}),
                timestamp=utcnow(),
            )
        )

    def index(self, document_type: str, document_id: str, workspace_id: str, content: str) -> None:
        """Queue a ``search.index`` call for after commit (messages, docs, boards)."""
        self.indexes.append(
            SearchIndexEvent(
                document_type=document_type,  # type: ignore[arg-type]
                document_id=document_id,
                workspace_id=workspace_id,
                content=content,
            )
        )

    def remove_files(self, storage_ids: list[str]) -> None:
        """Delete these stored objects once the transaction has committed."""
        self.removed_files.extend(storage_ids)


_BUMP = (
    sa.update(t.event_streams)
    .where(t.event_streams.c.workspace_id == sa.bindparam("w"))
    .values(last_seq=t.event_streams.c.last_seq + sa.bindparam("n"))
    .returning(t.event_streams.c.last_seq)
)
"""Cacheable (unlike an upsert, which SQLAlchemy compiles afresh on every call)."""


async def _bump_stream(conn: AsyncConnection, workspace_id: str, count: int, now: object) -> int:
    """Reserve ``count`` seqs of a workspace's stream; returns the last one reserved.

    The row lock taken here is held until commit (see the module docstring). The stream row is
    created with the workspace's first events; a concurrent creation of the same stream cannot
    happen (a workspace is created by one transaction), but the upsert fallback keeps even that
    correct.
    """
    last_seq = (await conn.execute(_BUMP, {"w": workspace_id, "n": count})).scalar_one_or_none()
    if last_seq is not None:
        return int(last_seq)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    streams = t.event_streams
    created = await conn.execute(
        insert(streams)
        .values(workspace_id=workspace_id, last_seq=count, epoch=str(uuid.uuid4()), created_at=now)
        .on_conflict_do_update(
            index_elements=[streams.c.workspace_id],
            set_={"last_seq": streams.c.last_seq + count},
        )
        .returning(streams.c.last_seq)
    )
    return int(created.scalar_one())


async def append_events(conn: AsyncConnection, events: list[EventEnvelope]) -> list[EventEnvelope]:
    """Log ``events`` with consecutive per-workspace seqs; returns them with ``seq`` set."""
    if not events:
        return []
    by_workspace: dict[str, list[EventEnvelope]] = {}
    for event in events:
        by_workspace.setdefault(event.workspace_id, []).append(event)
    logged: list[EventEnvelope] = []
    now = utcnow()
    for workspace_id in sorted(by_workspace):  # a fixed lock order across workspaces
        batch = by_workspace[workspace_id]
        last_seq = await _bump_stream(conn, workspace_id, len(batch), now)
        first = int(last_seq) - len(batch) + 1
        stamped = [
            event.model_copy(update={"seq": first + offset}) for offset, event in enumerate(batch)
        ]
        await conn.execute(
            t.events.insert(),
            [
                {
                    "workspace_id": workspace_id,
                    "seq": event.seq,
                    "id": event.id,
                    "type": event.type,
                    "actor_id": event.actor_id,
                    "payload": event.model_dump(mode="json")["payload"],
                    "created_at": event.timestamp,
                }
                for event in stamped
            ],
        )
        logged.extend(stamped)
    return logged


class Store:
    """Base of the persistence stores of one provider view."""

    def __init__(self, runtime: Runtime, auth: SelfHostAuth) -> None:
        self._rt = runtime
        self._auth = auth

    @property
    def limits(self) -> Any:
        """The provider's enforced limits."""
        return self._rt.capabilities.limits

    @asynccontextmanager
    async def query(self, *, anonymous: bool = False) -> AsyncIterator[Query]:
        """A read unit. With ``anonymous=True`` a signed-out caller gets ``user_id=None``
        instead of NotAuthenticatedError."""
        await self._auth.ready()
        claims = None
        if self._auth.tokens is not None or not anonymous:
            claims = await self._auth.claims()
        async with self._rt.db.read() as conn:
            user_id = None
            if claims is not None:
                try:
                    user_id = (await self._auth.principal(conn, claims)).user_id
                except NotAuthenticatedError:
                    if not anonymous:
                        raise
            yield Query(conn, user_id)

    @asynccontextmanager
    async def mutation(self) -> AsyncIterator[Mutation]:
        """A write unit (see the module docstring). Anonymous callers are refused."""
        await self._auth.ready()
        claims = await self._auth.claims()
        async with self._rt.db.write() as conn:
            principal = await self._auth.principal(conn, claims)
            unit = Mutation(conn, principal.user_id)
            yield unit
            unit.logged = await append_events(conn, unit.events)
        await self._rt.after_commit(unit.logged, unit.audits, unit.indexes, unit.removed_files)

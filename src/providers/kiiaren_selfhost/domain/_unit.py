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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
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

__all__ = ["Mutation", "Query", "SessionCheck", "SessionQuery", "Store", "append_events"]

logger = logging.getLogger("kiiaren.selfhost")


@dataclass(slots=True)
class Query:
    """A read-only unit: a connection and the caller (``None`` when signed out)."""

    conn: AsyncConnection
    user_id: str | None


@dataclass(slots=True)
class SessionCheck:
    """The caller's session, for a unit whose own statement checks it (saving a query).

    Such a statement joins the session row with the condition of
    :func:`kiiaren_selfhost.session.check_session` (bound: ``session_id``, ``now``), so it
    yields no row once the session has ended. The unit then either saw a row from it
    (:meth:`seen`) or calls :meth:`confirm`, which checks the session on its own and raises
    NotAuthenticatedError when the session is why nothing came back. A unit that does
    neither fails with RuntimeError instead of skipping the check.
    """

    session_id: str
    now: datetime
    _confirm: Callable[[], Awaitable[object]]
    checked: bool = False

    def seen(self) -> None:
        """A row came back from a statement that joined the live session."""
        self.checked = True

    async def confirm(self) -> None:
        """Check the session with its own query (NotAuthenticatedError if it ended)."""
        await self._confirm()
        self.checked = True

    def require_checked(self) -> None:
        if not self.checked:
            raise RuntimeError("A unit of work ended without checking the caller's session.")


@dataclass(slots=True)
class SessionQuery:
    """A read-only unit of a signed-in caller whose statement checks the session itself
    (see :class:`SessionCheck`)."""

    conn: AsyncConnection
    user_id: str
    session: SessionCheck

    def bind(self) -> dict[str, Any]:
        """The bound values the session join of a statement needs."""
        session = self.session
        return {"user_id": self.user_id, "session_id": session.session_id, "now": session.now}


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
    session: SessionCheck | None = None
    """Set when the unit's own statements check the session (``mutation(session=...)``)."""
    logged_early: list[EventEnvelope] = field(default_factory=list)
    """Events a statement of the unit already logged with their seq (see :meth:`new_event`)."""

    def emit(
        self, workspace_id: str, type_name: str, payload: Mapping[str, Any] | BaseModel
    ) -> None:
        """Queue a kernel event; it is logged with a seq when the transaction commits."""
        self.events.append(self.new_event(workspace_id, type_name, payload))

    def new_event(
        self, workspace_id: str, type_name: str, payload: Mapping[str, Any] | BaseModel
    ) -> EventEnvelope:
        """An event of the caller, for a statement that logs it itself: pass it to
        :meth:`logged_with` once that statement ran (or to ``events`` if it logged nothing).
        """
        body = payload if isinstance(payload, BaseModel) else dict(payload)
        return new_event(type_name, workspace_id=workspace_id, actor_id=self.user_id, payload=body)

    def logged_with(self, event: EventEnvelope, seq: int | None) -> None:
        """``event`` was logged with ``seq`` by a statement of this unit; with None (its
        stream had no row yet) it is logged the usual way, at commit."""
        if seq is None:
            self.events.append(event)
        else:
            self.logged_early.append(event.model_copy(update={"seq": seq}))

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

_e = t.events
_APPEND_ONE_PG = (
    # Text, not Core: SQLAlchemy renders the UPDATE inside a CTE of an INSERT with the
    # insert defaults of the updated table.
    sa.text(
        "WITH bumped AS (UPDATE event_streams SET last_seq = last_seq + 1 "
        "WHERE workspace_id = :w RETURNING last_seq) "
        "INSERT INTO events (workspace_id, seq, id, type, actor_id, payload, created_at) "
        "SELECT :w, bumped.last_seq, :id, :type, :actor_id, :payload, :created_at "
        "FROM bumped RETURNING seq"
    )
    .bindparams(
        sa.bindparam("w", type_=_e.c.workspace_id.type),
        sa.bindparam("id", type_=_e.c.id.type),
        sa.bindparam("type", type_=_e.c.type.type),
        sa.bindparam("actor_id", type_=_e.c.actor_id.type),
        sa.bindparam("payload", type_=_e.c.payload.type),
        sa.bindparam("created_at", type_=_e.c.created_at.type),
    )
    .columns(_e.c.seq)
)
"""PostgreSQL: bump the stream and log one event in one statement (one round trip less);
no row when the stream has no row yet."""


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
    postgres = conn.dialect.name == "postgresql"
    for workspace_id in sorted(by_workspace):  # a fixed lock order across workspaces
        batch = by_workspace[workspace_id]
        if postgres and len(batch) == 1:
            (event,) = batch
            seq = (
                await conn.execute(
                    _APPEND_ONE_PG,
                    {
                        "w": workspace_id,
                        "id": event.id,
                        "type": event.type,
                        "actor_id": event.actor_id,
                        "payload": event.model_dump(mode="json")["payload"],
                        "created_at": event.timestamp,
                    },
                )
            ).scalar_one_or_none()
            if seq is not None:
                logged.append(event.model_copy(update={"seq": int(seq)}))
                continue
            # The workspace's first events: the stream row is created below.
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
    async def session_query(self, *, one_statement: bool = False) -> AsyncIterator[SessionQuery]:
        """A read unit of a signed-in caller whose statement checks the session itself
        (see :class:`SessionCheck`); NotAuthenticatedError when signed out.

        ``one_statement``: the read is a single statement (its own snapshot), so it runs on
        :meth:`Database.read_one` (on PostgreSQL without BEGIN and ROLLBACK); the session
        check that may follow it only tells why it found nothing.
        """
        await self._auth.ready()
        claims = await self._auth.claims()
        unit = self._rt.db.read_one() if one_statement else self._rt.db.read()
        async with unit as conn:
            check = SessionCheck(
                claims.session_id, utcnow(), lambda: self._auth.principal(conn, claims)
            )
            yield SessionQuery(conn, claims.user_id, check)
            check.require_checked()

    @asynccontextmanager
    async def mutation(self, *, session_in_statement: bool = False) -> AsyncIterator[Mutation]:
        """A write unit (see the module docstring). Anonymous callers are refused.

        With ``session_in_statement`` the session is not checked up front: the unit's first
        statement must check it (``tx.session``, see :class:`SessionCheck`).
        """
        await self._auth.ready()
        claims = await self._auth.claims()
        async with self._rt.db.write() as conn:
            if session_in_statement:
                unit = Mutation(conn, claims.user_id)
                unit.session = SessionCheck(
                    claims.session_id, utcnow(), lambda: self._auth.principal(conn, claims)
                )
            else:
                unit = Mutation(conn, (await self._auth.principal(conn, claims)).user_id)
            yield unit
            if unit.session is not None:
                unit.session.require_checked()
            unit.logged = unit.logged_early + await append_events(conn, unit.events)
        await self._rt.after_commit(unit.logged, unit.audits, unit.indexes, unit.removed_files)

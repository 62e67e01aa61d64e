"""Helpers of the content stores (docs, boards, invites, domains): rows by id, title search
and the stored images docs and boards attach."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import ConflictError, NotFoundError
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import as_id
from kiiaren_selfhost.domain._unit import Mutation

__all__ = [
    "IMAGE_NOT_FOUND",
    "attach_image",
    "discard_files",
    "row_by_id",
    "title_contains",
    "title_matches",
]

IMAGE_NOT_FOUND = "Image not found."


async def row_by_id(
    conn: AsyncConnection,
    table: sa.Table,
    raw_id: object,
    *where: sa.ColumnElement[bool],
    columns: Sequence[sa.ColumnElement[Any]] | None = None,
) -> Any:
    """The row of ``table`` whose id is ``raw_id`` and that matches ``where`` (only
    ``columns`` when given), or None; a malformed id never reaches the database."""
    key = as_id(raw_id)
    if key is None:
        return None
    query = sa.select(*(columns or table.c)).where(table.c.id == key, *where)
    return (await conn.execute(query)).one_or_none()


def title_contains(column: sa.ColumnElement[Any], query: str) -> sa.ColumnElement[bool]:
    """A SQL condition true for every title containing ``query`` case-insensitively (and a
    few more: confirm each row with :func:`title_matches`).

    SQLite's ``lower()`` folds ASCII letters only, so a non-ASCII character of the query
    becomes the one-character wildcard ``_`` and Python decides; LIKE wildcards typed by the
    user are escaped and match themselves.
    """
    pattern = "".join(
        ("\\" + ch if ch in "%_\\" else ch.lower()) if ch.isascii() else "_" for ch in query
    )
    return sa.func.lower(column).like(f"%{pattern}%", escape="\\")


def title_matches(title: str, query: str) -> bool:
    """The exact rule: ``query`` is a case-insensitive substring of ``title``."""
    return query.lower() in title.lower()


async def attach_image(
    tx: Mutation, workspace_id: str, storage_id: str, *, current: str | None
) -> str:
    """Check that ``storage_id`` is a live upload of ``workspace_id`` and mark it attached.

    ``current`` is the id the field holds now (setting it again is a no-op). An object
    attached elsewhere is refused: deleting either owner would delete the other's file.

    Raises:
        NotFoundError: ``Image not found.`` for a missing, foreign, deleted or malformed id.
        ConflictError: the object is already attached to something else.
    """
    key = as_id(storage_id)
    if key is not None and key == current:
        return key
    so = t.stored_objects
    row = await row_by_id(
        tx.conn,
        so,
        key,
        so.c.workspace_id == workspace_id,
        so.c.status != "deleting",
        columns=(so.c.id, so.c.attached_at),
    )
    if row is None:
        raise NotFoundError(IMAGE_NOT_FOUND)
    if row.attached_at is not None:
        raise ConflictError("This image is already in use.")
    await tx.conn.execute(so.update().where(so.c.id == row.id).values(attached_at=utcnow()))
    return str(row.id)


async def discard_files(tx: Mutation, storage_ids: list[str]) -> None:
    """Mark stored objects as being deleted and remove them from storage after commit."""
    if not storage_ids:
        return
    await tx.conn.execute(
        t.stored_objects.update()
        .where(t.stored_objects.c.id.in_(storage_ids))
        .values(status="deleting")
    )
    tx.remove_files(storage_ids)

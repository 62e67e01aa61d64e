"""Helpers of the content stores (docs, boards, invites, domains): rows by id, title search
and the stored images docs and boards attach."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import ConflictError, KiiarenError, NotFoundError
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import as_id
from kiiaren_selfhost.domain._unit import Mutation

if TYPE_CHECKING:
    from kiiaren_selfhost.runtime import Runtime

__all__ = [
    "IMAGE_NOT_FOUND",
    "attach_image",
    "discard_files",
    "row_by_id",
    "settle_upload",
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


async def settle_upload(runtime: Runtime, storage_id: str | None, *, field: str) -> None:
    """Check an upload against its ticket before it may be attached (outside transactions).

    A presigned S3 upload is only known to the database as a ticket until someone looks at the
    bytes; this makes it ``ready`` or rejects it, so nothing unverified is ever attached. Every
    failure reads as ``Image not found.``: a caller learns nothing about other people's files.
    """
    key = as_id(storage_id)
    if key is None:
        return  # attach_image refuses it with the usual answer
    try:
        await runtime.files.complete_upload(key)
    except KiiarenError:
        raise NotFoundError(IMAGE_NOT_FOUND, details={"field": field}) from None


async def attach_image(
    tx: Mutation, workspace_id: str, storage_id: str, *, current: str | None, field: str
) -> str:
    """Mark the caller's unattached upload in ``workspace_id`` as attached; returns its id.

    ``current`` is the id the ``field`` holds now (setting it again is a no-op). As for message
    images, only the uploader may attach an object, and only once: deleting the doc or board
    deletes the file, which must not pull it from under something else.

    Raises:
        NotFoundError: ``Image not found.`` for a missing, foreign, deleted, malformed or
            someone else's id.
        ConflictError: the object is already attached to something else.
    """
    key = as_id(storage_id)
    if key is None:
        raise NotFoundError(IMAGE_NOT_FOUND, details={"field": field})
    if key == current:
        return key
    so = t.stored_objects
    own_upload = sa.and_(
        so.c.id == key,
        so.c.workspace_id == workspace_id,
        so.c.uploaded_by == tx.user_id,
        so.c.status == "ready",  # settle_upload ran before the transaction
    )
    attached = await tx.conn.execute(
        so.update().where(own_upload, so.c.attached_at.is_(None)).values(attached_at=utcnow())
    )
    if attached.rowcount == 1:
        return key
    # Only the failure path pays for telling "already used" from "not yours / missing".
    if (await tx.conn.execute(sa.select(so.c.id).where(own_upload))).first() is not None:
        raise ConflictError("This image is already in use.", details={"field": field})
    raise NotFoundError(IMAGE_NOT_FOUND, details={"field": field})


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

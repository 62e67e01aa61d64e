"""Whiteboards (reference rows 35-40): Excalidraw scenes kept as opaque JSON text.

Any member may create, edit and delete any board of their workspace. Fixes over the
reference: ``None`` clears an optional field (C4), deleting a board (or replacing its
thumbnail) deletes the thumbnail from storage, and the scene is bounded by
:data:`MAX_EXCALIDRAW_BYTES`. The client autosaves every 750 ms, so :meth:`update` without a
thumbnail change is a single ``UPDATE .. RETURNING`` that checks membership in its ``WHERE``.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import sqlalchemy as sa

from kiiaren_core.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from kiiaren_core.models import UNSET, Board, Unset
from kiiaren_core.validation import MAX_TITLE_LENGTH, validate_title
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import as_id, find_membership, require_membership
from kiiaren_selfhost.domain._content import (
    attach_image,
    discard_files,
    row_by_id,
    settle_upload,
    title_contains,
    title_matches,
)
from kiiaren_selfhost.domain._unit import Mutation, Store

__all__ = ["MAX_EXCALIDRAW_BYTES", "BoardStoreImpl"]

MAX_EXCALIDRAW_BYTES: Final = 5 * 1024 * 1024
"""Largest ``excalidraw_data`` accepted (UTF-8 bytes); larger raises PayloadTooLargeError."""

BOARD_NOT_FOUND = "Board not found."

_b = t.boards


def _board(row: Any) -> Board:
    return Board(
        id=str(row.id),
        workspace_id=str(row.workspace_id),
        title=row.title,
        excalidraw_data=row.excalidraw_data,
        thumbnail_id=str(row.thumbnail_id) if row.thumbnail_id else None,
        # The creator's account may be gone (ON DELETE SET NULL).
        created_by=str(row.created_by) if row.created_by else "",
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _check_scene(data: str | None) -> None:
    if data is None:
        return
    if not isinstance(data, str):
        raise InvalidInputError(
            "Excalidraw data must be a string.", details={"field": "excalidraw_data"}
        )
    if len(data.encode("utf-8")) > MAX_EXCALIDRAW_BYTES:
        raise PayloadTooLargeError(
            f"Excalidraw data is larger than {MAX_EXCALIDRAW_BYTES} bytes.",
            details={"field": "excalidraw_data", "max_bytes": MAX_EXCALIDRAW_BYTES},
        )


class BoardStoreImpl(Store):
    """``persistence.board`` of the self-host provider."""

    async def _load(self, tx: Mutation, board_id: str) -> Any:
        """The board row if the caller is a member of its workspace, else NotFoundError."""
        row = await row_by_id(tx.conn, _b, board_id)
        if row is None:
            raise NotFoundError(BOARD_NOT_FOUND)
        await require_membership(
            tx.conn, str(row.workspace_id), tx.user_id, missing=BOARD_NOT_FOUND
        )
        return row

    async def create(self, workspace_id: str, *, title: str) -> Board:
        """Create an empty board as the caller (members).

        Raises:
            InvalidInputError: a title over 255 characters.
            NotFoundError: ``Workspace not found.`` for outsiders.
        """
        clean = validate_title(title)
        async with self.mutation() as tx:
            me = await require_membership(tx.conn, workspace_id, tx.user_id)
            now = utcnow()
            row = (
                await tx.conn.execute(
                    _b.insert()
                    .values(
                        id=str(uuid.uuid4()),
                        workspace_id=me.workspace_id,
                        title=clean,
                        created_by=tx.user_id,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*_b.c)
                )
            ).one()
            tx.emit(me.workspace_id, "board.created", {"board_id": str(row.id), "title": clean})
            tx.audit("board.create", "board", str(row.id), me.workspace_id)
            tx.index("board", str(row.id), me.workspace_id, clean)
        return _board(row)

    async def get(self, workspace_id: str) -> list[Board]:
        """The workspace's boards, newest first (``[]`` for outsiders)."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            rows = (
                await q.conn.execute(
                    sa.select(_b)
                    .where(_b.c.workspace_id == me.workspace_id)
                    .order_by(_b.c.created_at.desc(), _b.c.id.desc())
                )
            ).all()
        return [_board(row) for row in rows]

    async def get_by_id(self, board_id: str) -> Board | None:
        """One board if the caller is a member of its workspace."""
        async with self.query() as q:
            row = await row_by_id(q.conn, _b, board_id)
            if row is None:
                return None
            me = await find_membership(q.conn, str(row.workspace_id), q.user_id)
        return _board(row) if me is not None else None

    async def update(
        self,
        board_id: str,
        *,
        title: str | Unset = UNSET,
        excalidraw_data: str | Unset | None = UNSET,
        thumbnail_id: str | Unset | None = UNSET,
    ) -> Board:
        """Patch the given fields and ``updated_at`` (members); ``None`` clears a field.

        The title cannot be cleared. A new thumbnail must be an upload of the board's
        workspace; the one it replaces (or clears) is deleted from storage after commit.

        Raises:
            NotFoundError: ``Board not found.``; ``Image not found.`` for a bad thumbnail.
            InvalidInputError / PayloadTooLargeError: bad title or oversized scene.
            ConflictError: the thumbnail is already attached elsewhere.
        """
        values: dict[str, Any] = {}
        if not isinstance(title, Unset):
            if title is None:
                raise InvalidInputError("The title cannot be cleared.", details={"field": "title"})
            values["title"] = validate_title(title)
        if not isinstance(excalidraw_data, Unset):
            _check_scene(excalidraw_data)
            values["excalidraw_data"] = excalidraw_data
        key = as_id(board_id)
        if isinstance(thumbnail_id, str):
            await settle_upload(self._rt, thumbnail_id, field="thumbnail_id")
        async with self.mutation() as tx:
            if key is None:
                raise NotFoundError(BOARD_NOT_FOUND)
            if not isinstance(thumbnail_id, Unset):
                # Only a thumbnail change needs the row first (to validate and to discard the
                # old image); the autosave path below is one statement.
                old = await self._load(tx, key)
                current = str(old.thumbnail_id) if old.thumbnail_id else None
                values["thumbnail_id"] = (
                    None
                    if thumbnail_id is None
                    else await attach_image(
                        tx,
                        str(old.workspace_id),
                        thumbnail_id,
                        current=current,
                        field="thumbnail_id",
                    )
                )
                if current is not None and values["thumbnail_id"] != current:
                    await discard_files(tx, [current])
            fields = sorted(values)
            m = t.members
            is_member = sa.exists().where(
                m.c.workspace_id == _b.c.workspace_id, m.c.user_id == tx.user_id
            )
            row = (
                await tx.conn.execute(
                    _b.update()
                    .where(_b.c.id == key, is_member)
                    .values(**values, updated_at=utcnow())
                    .returning(*_b.c)
                )
            ).one_or_none()
            if row is None:
                raise NotFoundError(BOARD_NOT_FOUND)
            workspace_id = str(row.workspace_id)
            tx.emit(workspace_id, "board.updated", {"board_id": key, "title": row.title})
            tx.audit("board.update", "board", key, workspace_id, {"fields": fields})
            if "title" in values:
                tx.index("board", key, workspace_id, row.title)
        return _board(row)

    async def remove(self, board_id: str) -> None:
        """Delete the board (members); its thumbnail is deleted from storage after commit."""
        async with self.mutation() as tx:
            row = await self._load(tx, board_id)
            workspace_id = str(row.workspace_id)
            await tx.conn.execute(_b.delete().where(_b.c.id == row.id))
            if row.thumbnail_id:
                await discard_files(tx, [str(row.thumbnail_id)])
            tx.emit(workspace_id, "board.deleted", {"board_id": str(row.id), "title": row.title})
            tx.audit("board.delete", "board", str(row.id), workspace_id)

    async def search(self, workspace_id: str, query: str) -> list[Board]:
        """Boards whose title contains ``query`` case-insensitively, newest first (an empty
        query returns them all). ``[]`` for outsiders."""
        if not isinstance(query, str):
            raise InvalidInputError(
                "The search query must be a string.", details={"field": "query"}
            )
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None or len(query) > MAX_TITLE_LENGTH:  # no title is that long
                return []
            conditions = [_b.c.workspace_id == me.workspace_id]
            if query:
                conditions.append(title_contains(_b.c.title, query))
            rows = (
                await q.conn.execute(
                    sa.select(_b)
                    .where(*conditions)
                    .order_by(_b.c.created_at.desc(), _b.c.id.desc())
                )
            ).all()
        return [_board(row) for row in rows if title_matches(row.title, query)]

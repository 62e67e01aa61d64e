"""Docs (reference rows 26-34): a tree per workspace, archive as the soft delete.

Any member may create, edit, archive, restore and delete any doc of their workspace (the
reference's rule, kept). Fixes over the reference: an archived doc cannot receive children
(C5), ``None`` clears an optional field instead of writing an invalid null (C4), deleting a
doc deletes its descendants' and its own cover images, and the body is bounded by
:data:`MAX_DOC_CONTENT_BYTES`.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import sqlalchemy as sa

from kiiaren_core.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from kiiaren_core.models import UNSET, Doc, Unset
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

__all__ = ["MAX_DOC_CONTENT_BYTES", "MAX_DOC_ICON_LENGTH", "DocStoreImpl"]

MAX_DOC_CONTENT_BYTES: Final = 5 * 1024 * 1024
"""Largest ``content`` accepted (UTF-8 bytes); larger raises PayloadTooLargeError."""
MAX_DOC_ICON_LENGTH: Final = 64
"""Longest ``icon`` accepted (an emoji or a short token)."""

DOC_NOT_FOUND = "Document not found."
INVALID_PARENT = "Invalid parent document."

_d = t.docs


def _doc(row: Any) -> Doc:
    return Doc(
        id=str(row.id),
        workspace_id=str(row.workspace_id),
        title=row.title,
        content=row.content,
        parent_document_id=str(row.parent_document_id) if row.parent_document_id else None,
        cover_image_id=str(row.cover_image_id) if row.cover_image_id else None,
        icon=row.icon,
        is_archived=bool(row.is_archived),
        is_published=bool(row.is_published),
        # The creator's account may be gone (ON DELETE SET NULL).
        created_by=str(row.created_by) if row.created_by else "",
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _payload(row: Any) -> dict[str, str | None]:
    parent = row.parent_document_id
    return {"doc_id": str(row.id), "title": row.title, "parent_document_id": parent and str(parent)}


def _subtree(root_id: str) -> sa.CTE:
    """Ids of a doc and all its descendants (UNION, not UNION ALL: stops on any cycle)."""
    tree = sa.select(_d.c.id).where(_d.c.id == root_id).cte("subtree", recursive=True)
    return tree.union(sa.select(_d.c.id).where(_d.c.parent_document_id == tree.c.id))


def _check_content(content: str | None) -> None:
    if content is None:
        return
    if not isinstance(content, str):
        raise InvalidInputError("Content must be a string.", details={"field": "content"})
    if len(content.encode("utf-8")) > MAX_DOC_CONTENT_BYTES:
        raise PayloadTooLargeError(
            f"Document content is larger than {MAX_DOC_CONTENT_BYTES} bytes.",
            details={"field": "content", "max_bytes": MAX_DOC_CONTENT_BYTES},
        )


def _check_icon(icon: str | None) -> None:
    if icon is not None and (not isinstance(icon, str) or len(icon) > MAX_DOC_ICON_LENGTH):
        raise InvalidInputError(
            f"Icon must be a string of at most {MAX_DOC_ICON_LENGTH} characters.",
            details={"field": "icon"},
        )


class DocStoreImpl(Store):
    """``persistence.doc`` of the self-host provider."""

    async def _load(self, tx: Mutation, doc_id: str) -> Any:
        """The doc row if the caller is a member of its workspace, else NotFoundError."""
        row = await row_by_id(tx.conn, _d, doc_id)
        if row is None:
            raise NotFoundError(DOC_NOT_FOUND)
        await require_membership(tx.conn, str(row.workspace_id), tx.user_id, missing=DOC_NOT_FOUND)
        return row

    async def create(
        self, workspace_id: str, *, title: str, parent_document_id: str | None = None
    ) -> Doc:
        """Create a doc as the caller (members).

        Raises:
            InvalidInputError: a title over 255 characters; ``Invalid parent document.`` when
                the parent is missing, archived or in another workspace.
            NotFoundError: ``Workspace not found.`` for outsiders.
        """
        clean = validate_title(title)
        async with self.mutation() as tx:
            me = await require_membership(tx.conn, workspace_id, tx.user_id)
            parent = None
            if parent_document_id is not None:
                parent = await row_by_id(
                    tx.conn,
                    _d,
                    parent_document_id,
                    _d.c.workspace_id == me.workspace_id,
                    _d.c.is_archived.is_(False),
                    columns=(_d.c.id,),
                )
                if parent is None:
                    raise InvalidInputError(INVALID_PARENT, details={"field": "parent_document_id"})
            now = utcnow()
            row = (
                await tx.conn.execute(
                    _d.insert()
                    .values(
                        id=str(uuid.uuid4()),
                        workspace_id=me.workspace_id,
                        parent_document_id=parent and parent.id,
                        title=clean,
                        created_by=tx.user_id,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*_d.c)
                )
            ).one()
            tx.emit(me.workspace_id, "doc.created", _payload(row))
            tx.audit("doc.create", "doc", str(row.id), me.workspace_id)
            tx.index("doc", str(row.id), me.workspace_id, clean)
        return _doc(row)

    async def get(self, workspace_id: str, *, parent_document_id: str | None = None) -> list[Doc]:
        """Non-archived docs whose parent is ``parent_document_id`` (top level for None),
        newest first; ``[]`` for outsiders and unknown parents."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            parent = as_id(parent_document_id) if parent_document_id is not None else None
            if me is None or (parent_document_id is not None and parent is None):
                return []
            level = (
                _d.c.parent_document_id.is_(None)
                if parent is None
                else (_d.c.parent_document_id == parent)
            )
            rows = (
                await q.conn.execute(
                    sa.select(_d)
                    .where(_d.c.workspace_id == me.workspace_id, level, _d.c.is_archived.is_(False))
                    .order_by(_d.c.created_at.desc(), _d.c.id.desc())
                )
            ).all()
        return [_doc(row) for row in rows]

    async def list_archived(self, workspace_id: str) -> list[Doc]:
        """Archived docs at every level, newest first (``[]`` for outsiders)."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            rows = (
                await q.conn.execute(
                    sa.select(_d)
                    .where(_d.c.workspace_id == me.workspace_id, _d.c.is_archived.is_(True))
                    .order_by(_d.c.created_at.desc(), _d.c.id.desc())
                )
            ).all()
        return [_doc(row) for row in rows]

    async def get_by_id(self, doc_id: str) -> Doc | None:
        """One doc, archived or not, if the caller is a member of its workspace."""
        async with self.query() as q:
            row = await row_by_id(q.conn, _d, doc_id)
            if row is None:
                return None
            me = await find_membership(q.conn, str(row.workspace_id), q.user_id)
        return _doc(row) if me is not None else None

    async def update(
        self,
        doc_id: str,
        *,
        title: str | Unset = UNSET,
        content: str | Unset | None = UNSET,
        icon: str | Unset | None = UNSET,
        cover_image_id: str | Unset | None = UNSET,
        is_published: bool | Unset = UNSET,
    ) -> Doc:
        """Patch the given fields and ``updated_at`` (members); ``None`` clears a field.

        The title cannot be cleared. A new cover must be an upload of the doc's workspace;
        the cover it replaces (or clears) is deleted from storage after commit.

        Raises:
            NotFoundError: ``Document not found.``; ``Image not found.`` for a bad cover.
            InvalidInputError / PayloadTooLargeError: bad title, icon or oversized content.
            ConflictError: the cover is already attached elsewhere.
        """
        values: dict[str, Any] = {}
        if not isinstance(title, Unset):
            if title is None:
                raise InvalidInputError("The title cannot be cleared.", details={"field": "title"})
            values["title"] = validate_title(title)
        if not isinstance(content, Unset):
            _check_content(content)
            values["content"] = content
        if not isinstance(icon, Unset):
            _check_icon(icon)
            values["icon"] = icon
        if not isinstance(is_published, Unset):
            if not isinstance(is_published, bool):
                raise InvalidInputError(
                    "is_published must be a boolean.", details={"field": "is_published"}
                )
            values["is_published"] = is_published
        if isinstance(cover_image_id, str):
            await settle_upload(self._rt, cover_image_id, field="cover_image_id")
        async with self.mutation() as tx:
            row = await self._load(tx, doc_id)
            workspace_id = str(row.workspace_id)
            if not isinstance(cover_image_id, Unset):
                current = str(row.cover_image_id) if row.cover_image_id else None
                values["cover_image_id"] = (
                    None
                    if cover_image_id is None
                    else await attach_image(
                        tx, workspace_id, cover_image_id, current=current, field="cover_image_id"
                    )
                )
                if current is not None and values["cover_image_id"] != current:
                    await discard_files(tx, [current])
            fields = sorted(values)
            values["updated_at"] = utcnow()
            row = (
                await tx.conn.execute(
                    _d.update().where(_d.c.id == row.id).values(**values).returning(*_d.c)
                )
            ).one()
            tx.emit(workspace_id, "doc.updated", _payload(row))
            tx.audit("doc.update", "doc", str(row.id), workspace_id, {"fields": fields})
            tx.index("doc", str(row.id), workspace_id, f"{row.title}\n{row.content or ''}")
        return _doc(row)

    async def archive(self, doc_id: str) -> Doc:
        """Archive the doc and every descendant (members); one ``doc.archived`` per doc
        that changed. Archiving an archived doc is harmless."""
        async with self.mutation() as tx:
            row = await self._load(tx, doc_id)
            workspace_id = str(row.workspace_id)
            tree = _subtree(str(row.id))
            archived = (
                await tx.conn.execute(
                    _d.update()
                    .where(_d.c.id.in_(sa.select(tree.c.id)), _d.c.is_archived.is_(False))
                    .values(is_archived=True, updated_at=utcnow())
                    .returning(_d.c.id, _d.c.title, _d.c.parent_document_id)
                )
            ).all()
            for changed in archived:
                tx.emit(workspace_id, "doc.archived", _payload(changed))
            if archived:
                tx.audit("doc.archive", "doc", str(row.id), workspace_id, {"count": len(archived)})
            row = (await tx.conn.execute(sa.select(_d).where(_d.c.id == row.id))).one()
        return _doc(row)

    async def restore(self, doc_id: str) -> Doc:
        """Unarchive this doc only (members). Under an archived parent it moves to the top
        level; its descendants stay archived."""
        async with self.mutation() as tx:
            row = await self._load(tx, doc_id)
            workspace_id = str(row.workspace_id)
            parent = row.parent_document_id
            if parent is not None:
                parent_archived = (
                    await tx.conn.execute(sa.select(_d.c.is_archived).where(_d.c.id == parent))
                ).scalar_one()
                if parent_archived:
                    parent = None
            row = (
                await tx.conn.execute(
                    _d.update()
                    .where(_d.c.id == row.id)
                    .values(is_archived=False, parent_document_id=parent, updated_at=utcnow())
                    .returning(*_d.c)
                )
            ).one()
            tx.emit(workspace_id, "doc.restored", _payload(row))
            tx.audit("doc.restore", "doc", str(row.id), workspace_id)
        return _doc(row)

    async def remove(self, doc_id: str) -> None:
        """Delete the doc and its descendants (members), archived or not; their cover images
        are deleted from storage after commit. One ``doc.deleted`` per doc."""
        async with self.mutation() as tx:
            row = await self._load(tx, doc_id)
            workspace_id = str(row.workspace_id)
            tree = _subtree(str(row.id))
            doomed = (
                await tx.conn.execute(
                    sa.select(
                        _d.c.id, _d.c.title, _d.c.parent_document_id, _d.c.cover_image_id
                    ).where(_d.c.id.in_(sa.select(tree.c.id)))
                )
            ).all()
            await tx.conn.execute(_d.delete().where(_d.c.id.in_([d.id for d in doomed])))
            await discard_files(tx, [str(d.cover_image_id) for d in doomed if d.cover_image_id])
            # Descendants first, the doc itself last, as the reference deletes them.
            for gone in sorted(doomed, key=lambda d: d.id == row.id):
                tx.emit(workspace_id, "doc.deleted", _payload(gone))
            tx.audit("doc.delete", "doc", str(row.id), workspace_id, {"count": len(doomed)})

    async def search(self, workspace_id: str, query: str) -> list[Doc]:
        """Non-archived docs whose title contains ``query`` case-insensitively, newest first
        (an empty query returns them all; content is not searched). ``[]`` for outsiders."""
        if not isinstance(query, str):
            raise InvalidInputError(
                "The search query must be a string.", details={"field": "query"}
            )
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None or len(query) > MAX_TITLE_LENGTH:  # no title is that long
                return []
            conditions = [_d.c.workspace_id == me.workspace_id, _d.c.is_archived.is_(False)]
            if query:
                conditions.append(title_contains(_d.c.title, query))
            rows = (
                await q.conn.execute(
                    sa.select(_d)
                    .where(*conditions)
                    .order_by(_d.c.created_at.desc(), _d.c.id.desc())
                )
            ).all()
        return [_doc(row) for row in rows if title_matches(row.title, query)]

"""``provider.storage`` of the self-host provider: who may upload, read and delete files.

Every check happens here, against the database, before an object backend is called: a
signed-in member of the workspace gets a ticket; members of the owning workspace read; the
uploader or an admin deletes. Objects of workspaces the caller cannot see behave like missing
ones (None, or NotFoundError for mutations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import sqlalchemy as sa

from kiiaren_core.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kiiaren_core.models import StoredObject, UploadTicket
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import new_id
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import as_id, find_membership, require_membership
from kiiaren_selfhost.domain._unit import Store
from kiiaren_selfhost.storage._names import (
    normalize_content_type,
    object_key,
    sanitize_filename,
)
from kiiaren_selfhost.storage.objects import ObjectRecord
from kiiaren_selfhost.storage.served import ServedObjects

if TYPE_CHECKING:
    from kiiaren_selfhost.storage.objects import ObjectStorage

__all__ = ["FILE_NOT_FOUND", "SelfHostStorage"]

FILE_NOT_FOUND = "File not found."
WORKSPACE_NOT_FOUND = "Workspace not found."

_so = t.stored_objects


class SelfHostStorage(ServedObjects, Store):
    """The self-host :class:`~kiiaren_core.protocols.StorageProvider`, and the
    :class:`~kiiaren_core.protocols.ServedStorage` behind local-disk URLs (``served.py``)."""

    @property
    def _files(self) -> ObjectStorage:
        return self._rt.files

    async def generate_upload_url(
        self,
        workspace_id: str,
        *,
        content_type: str,
        size: int,
        filename: str | None = None,
    ) -> UploadTicket:
        """Issue a ticket to upload one object to ``workspace_id`` (members only).

        The object's key is ``ws/<workspace_id>/<storage_id>``; ``filename`` is only metadata
        (its base name, without control characters, at most 255 characters). The ticket
        expires after ``upload_url_ttl_seconds`` and allows exactly ``content_type`` and at
        most ``size`` bytes (exactly ``size`` on S3). The object becomes usable once the
        upload is complete (see ``ObjectStorage.complete_upload``).

        Raises:
            NotAuthenticatedError: signed out.
            NotFoundError: ``Workspace not found.`` (missing, malformed or not a member).
            InvalidInputError: ``content_type`` not allowed (``details["field"]``
                ``"content_type"``), or ``size`` below 1 (``"size"``).
            PayloadTooLargeError: ``size`` above ``max_upload_bytes``.
        """
        ticket, _ = await self._issue(workspace_id, content_type, size, filename)
        return ticket

    async def upload(
        self,
        workspace_id: str,
        data: bytes,
        *,
        content_type: str,
        filename: str | None = None,
    ) -> StoredObject:
        """Ticket, upload and completion in one call; returns the ready object's metadata.

        Raises what :meth:`generate_upload_url` raises (``size`` is ``len(data)``), and
        BackendUnavailableError when the object store fails (the ticket is then withdrawn).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError("The file must be bytes.", details={"field": "data"})
        payload = bytes(data)
        ticket, key = await self._issue(workspace_id, content_type, len(payload), filename)
        try:
            await self._files.backend.put(key, payload, ticket.content_type)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._files.delete_objects([ticket.storage_id])
            raise
        return await self._files.complete_upload(ticket.storage_id)

    async def _issue(
        self, workspace_id: str, content_type: str, size: int, filename: str | None
    ) -> tuple[UploadTicket, str]:
        ctype = self._allowed_type(content_type)
        max_bytes = self._checked_size(size)
        name = sanitize_filename(filename)
        # Signed-out callers are refused before any work (mutation() checks again).
        await self._auth.ready()
        await self._auth.claims()
        workspace_key = as_id(workspace_id)
        if workspace_key is None:
            raise NotFoundError(WORKSPACE_NOT_FOUND)
        storage_id = new_id()
        key = object_key(workspace_key, storage_id)
        expires_at = self._files.ticket_expiry()
        # The URL is made before the transaction: making it may need I/O (the first S3
        # client, the signing key) that must not run while SQLite's write lock is held.
        target = await self._files.backend.upload_target(
            key, content_type=ctype, max_bytes=max_bytes, expires_at=expires_at
        )
        async with self.mutation() as tx:
            me = await require_membership(tx.conn, workspace_key, tx.user_id)
            await tx.conn.execute(
                _so.insert().values(
                    id=storage_id,
                    workspace_id=me.workspace_id,
                    object_key=key,
                    content_type=ctype,
                    max_bytes=max_bytes,
                    filename=name,
                    uploaded_by=tx.user_id,
                    status="pending",
                    created_at=utcnow(),
                    ticket_expires_at=expires_at,
                )
            )
            tx.audit(
                "storage.upload_url",
                "file",
                storage_id,
                me.workspace_id,
                {"content_type": ctype, "max_bytes": max_bytes},
            )
        ticket = UploadTicket(
            storage_id=storage_id,
            url=target.url,
            method=target.method,
            headers=target.headers,
            expires_at=expires_at,
            max_bytes=max_bytes,
            content_type=ctype,
        )
        return ticket, key

    def _allowed_type(self, content_type: str) -> str:
        allowed: tuple[str, ...] = self.limits.allowed_upload_types
        ctype = normalize_content_type(content_type)
        if ctype is None or ctype not in {normalize_content_type(a) for a in allowed}:
            raise InvalidInputError(
                "This file type is not allowed. Allowed: " + ", ".join(allowed) + ".",
                details={"field": "content_type", "allowed": list(allowed)},
            )
        return ctype

    def _checked_size(self, size: int) -> int:
        limit: int = self.limits.max_upload_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInputError(
                "The file size must be a positive number of bytes.", details={"field": "size"}
            )
        if size > limit:
            raise PayloadTooLargeError(
                f"The file is larger than the {limit} bytes allowed.",
                details={"field": "size", "max_bytes": limit},
            )
        return size

    async def _visible(self, storage_id: str) -> ObjectRecord | None:
        """The object if the caller is a member of its workspace and it is not deleted."""
        async with self.query() as q:  # signed-out callers: NotAuthenticatedError
            key = as_id(storage_id)
            if key is None:
                return None
            row = (
                await q.conn.execute(
                    sa.select(*ObjectRecord.COLUMNS)
                    .join(
                        t.members,
                        sa.and_(
                            t.members.c.workspace_id == _so.c.workspace_id,
                            t.members.c.user_id == q.user_id,
                        ),
                    )
                    .where(_so.c.id == key, _so.c.status != "deleting")
                )
            ).one_or_none()
        return None if row is None else ObjectRecord.from_row(row)

    async def get_url(self, storage_id: str) -> str | None:
        """A download URL valid for ``upload_url_ttl_seconds`` (members of the owning
        workspace; None otherwise, also for malformed ids and objects not uploaded yet)."""
        record = await self._visible(storage_id)
        ready = await self._files.resolve(record) if record is not None else None
        return None if ready is None else await self._files.url_for(ready)

    async def get_metadata(self, storage_id: str) -> StoredObject | None:
        """The object's metadata (members of the owning workspace, else None).

        ``size_bytes`` is None while the upload has not arrived; an upload that fails its
        checks is deleted and reads as None.
        """
        record = await self._visible(storage_id)
        if record is None:
            return None
        if record.status == "ready":
            return record.to_model()
        ready = await self._files.resolve(record)
        if ready is not None:
            return ready.to_model()
        # Still waiting for its bytes (ticket valid), or rejected just now.
        current = await self._visible(storage_id)
        return None if current is None else current.to_model()

    async def remove(self, storage_id: str) -> None:
        """Delete the object: its bytes and row go once the transaction commits.

        Allowed to the uploader and to admins of the owning workspace. Whatever still names
        the object (a message's ``image_id``, a doc's cover) keeps the id, which then
        resolves to no URL.

        Raises:
            NotAuthenticatedError: signed out.
            NotFoundError: ``File not found.`` (missing, malformed, deleted, or in a
                workspace the caller is not a member of).
            PermissionDeniedError: a member removing someone else's file.
        """
        key = as_id(storage_id)
        async with self.mutation() as tx:
            row = None
            if key is not None:
                row = (
                    await tx.conn.execute(
                        sa.select(_so.c.workspace_id, _so.c.uploaded_by).where(
                            _so.c.id == key, _so.c.status != "deleting"
                        )
                    )
                ).one_or_none()
            me = None
            if row is not None:
                me = await find_membership(tx.conn, str(row.workspace_id), tx.user_id)
            if key is None or row is None or me is None:
                raise NotFoundError(FILE_NOT_FOUND)
            if str(row.uploaded_by) != tx.user_id and not me.is_admin:
                raise PermissionDeniedError(
                    "Only the uploader or a workspace admin can delete this file."
                )
            await tx.conn.execute(_so.update().where(_so.c.id == key).values(status="deleting"))
            tx.remove_files([key])
            tx.audit("storage.remove", "file", key, me.workspace_id)

"""The bundled server's side of local-disk storage: what its signed URLs do when called.

:class:`ServedObjects` gives :class:`~kiiaren_selfhost.storage.SelfHostStorage` the
:class:`~kiiaren_core.protocols.ServedStorage` methods. The server hands each ``PUT`` and
``GET`` of ``/v1/storage/objects/<storage_id>`` to them with the query string; the URL's
signature is the only credential (see :mod:`~kiiaren_selfhost.storage.signing`), checked
before any I/O, and then the ``stored_objects`` row must agree:

* an upload needs a ``pending`` ticket of the signed workspace; its bytes stream to disk
  (at most the signed limit, written once) and the upload is completed at once, so the
  object is ``ready`` when the ``PUT`` answers;
* a download needs a ``ready`` object: a file deleted after its URL was issued stops being
  served at once, even though the URL has not expired.

With the S3 backend the URLs point at the bucket, never here: both methods answer
NotFoundError.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, BinaryIO, Final

import anyio
import anyio.to_thread
import sqlalchemy as sa

from kiiaren_core.errors import ConflictError, NotFoundError
from kiiaren_core.models import StoredObject
from kiiaren_core.protocols import Download
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.storage.backends import LocalDiskBackend
from kiiaren_selfhost.storage.signing import (
    SignedGrant,
    verify_download_signature,
    verify_upload_signature,
)

if TYPE_CHECKING:
    from kiiaren_selfhost.runtime import Runtime

__all__ = ["ServedObjects"]

_NOT_FOUND: Final = "File not found."
_CHUNK_BYTES: Final = 64 * 1024
_so = t.stored_objects


class _FileChunks:
    """An open file as an async iterator of chunks; the file is closed at its end or by
    :meth:`aclose`, whether or not iteration ever started."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._file.closed:
            raise StopAsyncIteration
        chunk = await anyio.to_thread.run_sync(self._file.read, _CHUNK_BYTES)
        if not chunk:
            self._file.close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._file.close()


class ServedObjects:
    """Mixin of ``SelfHostStorage``: receive and serve the objects of signed local URLs."""

    if TYPE_CHECKING:
        _rt: Runtime

    def _local_backend(self) -> LocalDiskBackend:
        backend = self._rt.files.backend
        if not isinstance(backend, LocalDiskBackend):
            raise NotFoundError(_NOT_FOUND)
        return backend

    async def _status(self, grant: SignedGrant) -> str | None:
        """The status of the granted object's row, None when it has none."""
        async with self._rt.db.read() as conn:
            status = (
                await conn.execute(
                    sa.select(_so.c.status).where(
                        _so.c.id == grant.storage_id, _so.c.workspace_id == grant.workspace_id
                    )
                )
            ).scalar_one_or_none()
        return None if status is None else str(status)

    async def receive_upload(
        self,
        storage_id: str,
        params: Mapping[str, str],
        content_type: str,
        chunks: AsyncIterator[bytes],
    ) -> StoredObject:
        """Store the bytes ``PUT`` to a signed upload URL and complete the upload.

        Args:
            storage_id: the URL's last path segment.
            params: the URL's query parameters.
            content_type: the request's ``Content-Type``.
            chunks: the request body as it arrives.

        Returns:
            The object's metadata, ``ready``.

        Raises:
            NotFoundError: malformed ids, no pending ticket (deleted, expired and purged),
                or not the local-disk backend.
            NotAuthenticatedError: missing, altered or expired signature.
            InvalidInputError: a ``Content-Type`` other than the signed one, or an object
                the completion rejects (e.g. empty).
            PayloadTooLargeError: more bytes than the ticket allows (nothing is kept).
            ConflictError: the URL was already used.
        """
        backend = self._local_backend()
        await self._rt.ready()
        grant = verify_upload_signature(
            await self._rt.files.signing_key(),
            storage_id=storage_id,
            query=params,
            content_type=content_type,
        )
        assert grant.max_bytes is not None
        status = await self._status(grant)
        if status == "ready":
            raise ConflictError("This file has already been uploaded.")
        if status != "pending":
            raise NotFoundError(_NOT_FOUND)
        await backend.write_stream(grant.object_key, chunks, grant.max_bytes)
        try:
            return await self._rt.files.complete_upload(grant.storage_id)
        except NotFoundError:
            # The ticket went away while the bytes arrived: they belong to nothing.
            with anyio.CancelScope(shield=True):
                await backend.delete(grant.object_key)
            raise

    async def open_download(self, storage_id: str, params: Mapping[str, str]) -> Download:
        """Open the object of a signed download URL for streaming.

        The returned :class:`Download`'s ``chunks`` hold the file open until iterated to the
        end or closed with ``aclose()``.

        Raises:
            NotFoundError: malformed ids, an object that is not ``ready`` (deleted, never
                uploaded), missing bytes, or not the local-disk backend.
            NotAuthenticatedError: missing, altered or expired signature.
        """
        backend = self._local_backend()
        await self._rt.ready()
        grant = verify_download_signature(
            await self._rt.files.signing_key(), storage_id=storage_id, query=params
        )
        if await self._status(grant) != "ready":
            raise NotFoundError(_NOT_FOUND)
        file = await backend.open_for_read(grant.object_key)
        size = os.fstat(file.fileno()).st_size
        return Download(
            content_type=grant.content_type,
            size=size,
            filename=grant.filename,
            chunks=_FileChunks(file),
        )

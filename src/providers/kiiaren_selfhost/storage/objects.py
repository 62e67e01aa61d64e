"""``ObjectStorage``: the ``stored_objects`` table and a backend, kept consistent.

One per runtime (``runtime.files``). It has no notion of a caller: everything here runs after
the caller was authorised (by :class:`~kiiaren_selfhost.storage.SelfHostStorage` or by a store
whose committed transaction decided that files go), or on behalf of the server.

Lifecycle of an object row::

    pending --complete_upload--> ready
       |  \\--rejected (late, too big, wrong type, empty)--\\
       v                                                   v
    deleting (tombstone) <--remove / cascade / orphan cleanup
       |
       +--bytes deleted; row deleted once its upload URL has expired

A row stays as a ``deleting`` tombstone until its ticket expires because an upload URL that
was already handed out may still deliver bytes; :meth:`ObjectStorage.cleanup_orphans` deletes
those late bytes (again) and then the row.

What is enforced, per backend (``complete_upload`` runs the same checks for both):

* local disk: everything, at the door. The bundled server verifies the signed URL (key,
  workspace, content type, byte limit, expiry at arrival), streams at most ``max_bytes`` and
  writes a key once; ``complete_upload`` then checks that the bytes were fully written before
  the ticket expired.
* S3: the presigned ``PUT`` is signed over key, ``Content-Type``, ``Content-Length`` (the
  declared size) and ``If-None-Match: *``, and expires with the ticket. A store that checks
  signatures (AWS, MinIO, Ceph, R2) refuses anything else, but we do not rely on it: an
  object only becomes ``ready`` through ``complete_upload``, which HEADs it and refuses (and
  deletes) it unless its size is 1..``max_bytes``, its content type is the ticket's and its
  ``Last-Modified`` is not after the ticket's expiry. What we cannot do with a presigned PUT:
  stop a store that ignores signatures from *accepting* late, oversized or mistyped bytes
  (they are never served, and are deleted when seen); compare arrival times more precisely
  than the store's clock and its one-second ``Last-Modified`` resolution; or find bytes that
  such a store accepts for a key after its row was purged (no row, so never served, but they
  occupy space until removed by hand).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import (
    ConfigurationError,
    InvalidInputError,
    KiiarenError,
    NotFoundError,
    PayloadTooLargeError,
)
from kiiaren_core.models import StoredObject
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import Database
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import as_id
from kiiaren_selfhost.settings import SelfHostSettings
from kiiaren_selfhost.storage.backends import LocalDiskBackend, ObjectBackend, S3Backend
from kiiaren_selfhost.storage.signing import derive_signing_key

__all__ = [
    "SIGNING_KEY_SECRET_NAME",
    "ObjectRecord",
    "ObjectStorage",
    "SigningKeys",
    "create_object_storage",
]

logger = logging.getLogger("kiiaren.selfhost.storage")

SIGNING_KEY_SECRET_NAME: Final = "storage_signing_key"
"""The ``instance_secrets`` row holding the per-database key when none is configured."""
_SIGNING_KEY_VARIABLE: Final = "KIIAREN_SELFHOST_STORAGE_SIGNING_KEY"
_MIN_KEY_BYTES: Final = 32
_BATCH: Final = 500
"""Rows per statement (bounded IN lists and memory)."""
_PARALLEL_DELETES: Final = 16

_so = t.stored_objects


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One ``stored_objects`` row."""

    id: str
    workspace_id: str
    object_key: str
    content_type: str
    max_bytes: int
    size_bytes: int | None
    filename: str | None
    uploaded_by: str | None
    status: str
    created_at: datetime
    ticket_expires_at: datetime
    attached_at: datetime | None

    COLUMNS = (
        _so.c.id,
        _so.c.workspace_id,
        _so.c.object_key,
        _so.c.content_type,
        _so.c.max_bytes,
        _so.c.size_bytes,
        _so.c.filename,
        _so.c.uploaded_by,
        _so.c.status,
        _so.c.created_at,
        _so.c.ticket_expires_at,
        _so.c.attached_at,
    )
    """The columns to select to build a record with :meth:`from_row`."""

    @classmethod
    def from_row(cls, row: Any) -> ObjectRecord:
        return cls(
            id=str(row.id),
            workspace_id=str(row.workspace_id),
            object_key=row.object_key,
            content_type=row.content_type,
            max_bytes=int(row.max_bytes),
            size_bytes=None if row.size_bytes is None else int(row.size_bytes),
            filename=row.filename,
            uploaded_by=None if row.uploaded_by is None else str(row.uploaded_by),
            status=row.status,
            created_at=row.created_at,
            ticket_expires_at=row.ticket_expires_at,
            attached_at=row.attached_at,
        )

    def to_model(self) -> StoredObject:
        """The public metadata (``size_bytes`` is None until the upload is complete)."""
        return StoredObject(
            id=self.id,
            workspace_id=self.workspace_id,
            content_type=self.content_type,
            size_bytes=self.size_bytes if self.status == "ready" else None,
            filename=self.filename,
            uploaded_by=self.uploaded_by or "",
            created_at=self.created_at,
            attached=self.attached_at is not None,
        )


class SigningKeys:
    """The key that signs local-disk URLs, derived from the first source available:

    1. ``storage_signing_key`` from the settings;
    2. a secret the runtime hands over with :meth:`use` (e.g. its own instance secret);
    3. a random secret created once per database in ``instance_secrets`` (name
       :data:`SIGNING_KEY_SECRET_NAME`), so every process sharing the database agrees.

    The signing key itself is an HMAC derivation of the source, never the source.
    """

    def __init__(self, db: Database, configured: bytes | None = None) -> None:
        self._db = db
        self._configured = configured is not None
        self._key = derive_signing_key(configured) if configured is not None else None
        self._lock = anyio.Lock()

    def use(self, secret: bytes) -> None:
        """Derive the key from ``secret`` (ignored when a key is configured). Call it before
        the first URL is issued: URLs signed under a previous key stop verifying."""
        if not self._configured:
            self._key = derive_signing_key(secret)

    async def get(self) -> bytes:
        """The signing key (loaded once; the first call may write ``instance_secrets``).

        Call it outside any open write transaction: on SQLite it may need the write lock.
        """
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    self._key = derive_signing_key(await self._load())
        return self._key

    async def _load(self) -> bytes:
        secrets_table = t.instance_secrets
        lookup = sa.select(secrets_table.c.value).where(
            secrets_table.c.name == SIGNING_KEY_SECRET_NAME
        )
        async with self._db.read() as conn:
            value = (await conn.execute(lookup)).scalar_one_or_none()
        if value is None:
            insert = postgresql.insert if self._db.dialect_name == "postgresql" else sqlite.insert
            async with self._db.write() as conn:
                await conn.execute(
                    insert(secrets_table)
                    .values(
                        name=SIGNING_KEY_SECRET_NAME,
                        value=secrets.token_urlsafe(48),
                        created_at=utcnow(),
                    )
                    .on_conflict_do_nothing(index_elements=[secrets_table.c.name])
                )
                value = (await conn.execute(lookup)).scalar_one()
        return str(value).encode()


class ObjectStorage:
    """Stored objects of one runtime: their rows, their bytes and their URLs.

    Args:
        db: the runtime's database.
        backend: where the bytes live.
        keys: the URL signing key (local disk; also what the server verifies with).
        url_ttl: lifetime of upload tickets and download URLs.
    """

    def __init__(
        self, db: Database, backend: ObjectBackend, keys: SigningKeys, *, url_ttl: timedelta
    ) -> None:
        self._db = db
        self._backend = backend
        self._keys = keys
        self._url_ttl = url_ttl

    @property
    def backend(self) -> ObjectBackend:
        """The object backend (the server streams local uploads through it)."""
        return self._backend

    async def signing_key(self) -> bytes:
        """The key local-disk URLs are signed with (for ``verify_*_signature``)."""
        return await self._keys.get()

    def use_signing_key(self, secret: bytes) -> None:
        """Sign URLs with a key derived from ``secret`` unless one is configured (see
        :class:`SigningKeys`)."""
        self._keys.use(secret)

    def ticket_expiry(self) -> datetime:
        """When a ticket issued now expires (whole seconds, as URLs carry them)."""
        return (utcnow() + self._url_ttl).replace(microsecond=0)

    # --- completing uploads --------------------------------------------------------------

    async def complete_upload(self, storage_id: str) -> StoredObject:
        """Verify an upload against its ticket and make the object ``ready``. Idempotent.

        Called by the server after a local upload, by ``upload``, and lazily (through
        :meth:`resolve`) the first time an S3 object is read. The object must exist with a
        size of 1..``max_bytes``, the ticket's content type (when the store records one) and a
        write time not after the ticket's expiry. A rejected object is deleted and its row
        becomes a tombstone.

        Raises:
            NotFoundError: no such object, or it is being deleted (bytes that arrived for a
                deleted ticket are deleted again).
            InvalidInputError: nothing was uploaded yet (the ticket is still valid: nothing
                changes), or the object was rejected (``PayloadTooLargeError`` when too big).
        """
        key = as_id(storage_id)
        record = await self._record(key) if key is not None else None
        if record is None:
            raise NotFoundError("File not found.")
        if record.status == "deleting":
            await self._purge([record])
            raise NotFoundError("File not found.")
        if record.status == "ready":
            return record.to_model()
        settled = await self._settle(record)
        if isinstance(settled, KiiarenError):
            raise settled
        if settled.status != "ready":
            raise InvalidInputError(
                "Nothing has been uploaded for this ticket yet.", details={"field": "storage_id"}
            )
        return settled.to_model()

    async def resolve(self, record: ObjectRecord) -> ObjectRecord | None:
        """``record`` once its bytes are verified: ready records as they are, pending ones
        completed now (see :meth:`complete_upload`); None when there is nothing to serve."""
        if record.status == "ready":
            return record
        if record.status != "pending":
            return None
        settled = await self._settle(record)
        if isinstance(settled, KiiarenError) or settled.status != "ready":
            return None
        return settled

    async def _settle(self, record: ObjectRecord) -> ObjectRecord | KiiarenError:
        """Check a pending object's bytes: the ready (or still pending) record, or the error
        it was rejected with (its bytes deleted, its row a tombstone)."""
        info = await self._backend.head(record.object_key)
        if info is None:
            if utcnow() <= record.ticket_expires_at:
                return record
            await self._reject(record)
            return InvalidInputError(
                "The upload ticket expired before the file arrived.",
                details={"field": "storage_id"},
            )
        problem: KiiarenError | None = None
        if info.last_modified > record.ticket_expires_at:
            problem = InvalidInputError(
                "The file arrived after its upload ticket expired.",
                details={"field": "storage_id"},
            )
        elif info.size > record.max_bytes:
            problem = PayloadTooLargeError(
                f"The file is larger than the {record.max_bytes} bytes its ticket allows.",
                details={"field": "size", "max_bytes": record.max_bytes},
            )
        elif info.size == 0:
            problem = InvalidInputError("The file is empty.", details={"field": "size"})
        elif info.content_type is not None and info.content_type != record.content_type:
            problem = InvalidInputError(
                f"The file was uploaded as {info.content_type}, not {record.content_type}.",
                details={"field": "content_type"},
            )
        if problem is not None:
            await self._reject(record)
            return problem
        async with self._db.write() as conn:
            await conn.execute(
                _so.update()
                .where(_so.c.id == record.id, _so.c.status == "pending")
                .values(status="ready", size_bytes=info.size)
            )
            current = await self._select(conn, record.id)
        if current is None or current.status == "deleting":
            return NotFoundError("File not found.")
        return current

    async def _reject(self, record: ObjectRecord) -> None:
        async with self._db.write() as conn:
            claimed = (
                await conn.execute(
                    _so.update()
                    .where(_so.c.id == record.id, _so.c.status == "pending")
                    .values(status="deleting")
                    .returning(_so.c.id)
                )
            ).first()
        # Only the caller that turned the row into a tombstone deletes the bytes: a
        # concurrent completion may have accepted them meanwhile.
        if claimed is not None:
            await self._purge([record])

    # --- URLs ----------------------------------------------------------------------------

    async def url_for(self, record: ObjectRecord) -> str:
        """A download URL for a ready object, valid for the URL lifetime."""
        return await self._backend.download_url(
            record.object_key,
            content_type=record.content_type,
            expires_at=utcnow() + self._url_ttl,
            filename=record.filename,
        )

    async def urls_for(self, storage_ids: Sequence[str]) -> dict[str, str]:
        """Download URLs for objects the caller has already been authorised to read.

        One query for the whole list (a page of messages); objects that are missing, being
        deleted or not uploaded are left out. Pending objects are completed first (one HEAD
        each), which is how S3 uploads become ready when nobody called ``complete_upload``.
        Call it outside a transaction.
        """
        keys = _canonical(storage_ids)
        records: list[ObjectRecord] = []
        for batch in _batches(keys):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    sa.select(*ObjectRecord.COLUMNS).where(
                        _so.c.id.in_(batch), _so.c.status.in_(("pending", "ready"))
                    )
                )
                records.extend(ObjectRecord.from_row(row) for row in rows)
        urls: dict[str, str] = {}
        for record in records:
            ready = await self.resolve(record)
            if ready is not None:
                urls[ready.id] = await self.url_for(ready)
        return urls

    # --- deleting ------------------------------------------------------------------------

    async def delete_objects(self, storage_ids: Sequence[str]) -> None:
        """Delete the bytes and rows of objects a committed transaction removed.

        The caller's transaction decided (a message, doc, board, channel or workspace is
        gone, or ``remove`` was allowed); the rows' status is not re-checked, because a
        workspace delete does not mark its objects first. Failures are logged and never
        raised: the deciding write has committed. Objects whose bytes could not be deleted
        stay as tombstones for :meth:`cleanup_orphans`.
        """
        try:
            for batch in _batches(_canonical(storage_ids)):
                async with self._db.write() as conn:
                    rows = await conn.execute(
                        _so.update()
                        .where(_so.c.id.in_(batch))
                        .values(status="deleting")
                        .returning(*ObjectRecord.COLUMNS)
                    )
                    records = [ObjectRecord.from_row(row) for row in rows]
                await self._purge(records)
        except Exception:
            logger.exception("deleting %d stored object(s) failed", len(storage_ids))

    async def _purge(self, records: Sequence[ObjectRecord]) -> None:
        """Delete the bytes of tombstoned ``records``, then the rows whose ticket expired.

        A row whose bytes could not be deleted is kept (logged) for the next cleanup.
        """
        deleted: list[str] = []
        limiter = anyio.CapacityLimiter(_PARALLEL_DELETES)

        async def delete(record: ObjectRecord) -> None:
            async with limiter:
                try:
                    await self._backend.delete(record.object_key)
                except Exception:
                    logger.exception("deleting the bytes of stored object %s failed", record.id)
                else:
                    deleted.append(record.id)

        async with anyio.create_task_group() as group:
            for record in records:
                group.start_soon(delete, record)
        if not deleted:
            return
        now = utcnow()
        async with self._db.write() as conn:
            await conn.execute(
                _so.delete().where(
                    _so.c.id.in_(deleted),
                    _so.c.status == "deleting",
                    _so.c.ticket_expires_at < now,
                )
            )

    async def cleanup_orphans(self, older_than: timedelta) -> int:
        """Delete what nothing uses any more; returns how many objects were deleted.

        Deleted: objects created more than ``older_than`` ago that were never attached
        (pending or ready), objects of workspaces that no longer exist, and attached uploads
        that never completed and fail completion now. Tombstones are purged again (late
        bytes deleted, rows dropped once their ticket expired). Safe to run concurrently
        with everything else, in any number of processes.
        """
        now = utcnow()
        cutoff = now - older_than
        removed = 0
        # Attached but never completed (S3 objects nobody read yet): complete or reject now.
        async for record in self._scan(
            (_so.c.status == "pending", _so.c.attached_at.is_not(None), _so.c.created_at < cutoff)
        ):
            if isinstance(await self._settle(record), KiiarenError):
                removed += 1

        def unused(table: sa.FromClause) -> sa.ColumnElement[bool]:
            return sa.and_(
                table.c.status.in_(("pending", "ready")),
                sa.or_(
                    sa.and_(table.c.attached_at.is_(None), table.c.created_at < cutoff),
                    ~sa.exists().where(t.workspaces.c.id == table.c.workspace_id),
                ),
            )

        candidate = _so.alias("candidate")
        while True:
            async with self._db.write() as conn:
                claimed = (
                    await conn.execute(
                        _so.update()
                        # The conditions are repeated outside the subquery: PostgreSQL
                        # re-checks them on rows changed meanwhile (e.g. just attached).
                        .where(
                            _so.c.id.in_(
                                sa.select(candidate.c.id)
                                .where(unused(candidate))
                                .limit(_BATCH)
                                .with_for_update(skip_locked=True)
                                .scalar_subquery()
                            ),
                            unused(_so),
                        )
                        .values(status="deleting")
                        .returning(_so.c.id)
                    )
                ).all()
            removed += len(claimed)
            if len(claimed) < _BATCH:
                break
        batch: list[ObjectRecord] = []
        async for record in self._scan((_so.c.status == "deleting",)):
            batch.append(record)
            if len(batch) == _BATCH:
                await self._purge(batch)
                batch = []
        await self._purge(batch)
        return removed

    async def _scan(
        self, conditions: Iterable[sa.ColumnElement[bool]]
    ) -> AsyncIterator[ObjectRecord]:
        """The records matching ``conditions``, read in id order, one batch per read."""
        where = list(conditions)
        after: str | None = None
        while True:
            query = sa.select(*ObjectRecord.COLUMNS).where(*where).order_by(_so.c.id).limit(_BATCH)
            if after is not None:
                query = query.where(_so.c.id > after)
            async with self._db.read() as conn:
                records = [ObjectRecord.from_row(row) for row in await conn.execute(query)]
            for record in records:
                yield record
            if len(records) < _BATCH:
                return
            after = records[-1].id

    # --- reading rows --------------------------------------------------------------------

    async def _record(self, storage_id: str) -> ObjectRecord | None:
        async with self._db.read() as conn:
            return await self._select(conn, storage_id)

    @staticmethod
    async def _select(conn: AsyncConnection, storage_id: str) -> ObjectRecord | None:
        row = (
            await conn.execute(sa.select(*ObjectRecord.COLUMNS).where(_so.c.id == storage_id))
        ).one_or_none()
        return None if row is None else ObjectRecord.from_row(row)

    async def aclose(self) -> None:
        """Close the backend. Idempotent."""
        await self._backend.aclose()


def _canonical(storage_ids: Iterable[str]) -> list[str]:
    """Distinct canonical ids, malformed ones dropped (they cannot name a row)."""
    return list(dict.fromkeys(key for key in map(as_id, storage_ids) if key is not None))


def _batches(keys: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), _BATCH):
        yield keys[start : start + _BATCH]


def create_object_storage(settings: SelfHostSettings, db: Database) -> ObjectStorage:
    """The object storage the settings describe (no I/O: clients are created on first use).

    Raises:
        ConfigurationError: ``storage_signing_key`` is shorter than 32 bytes.
    """
    configured: bytes | None = None
    if settings.storage_signing_key is not None:
        configured = settings.storage_signing_key.get_secret_value().encode()
        if len(configured) < _MIN_KEY_BYTES:
            raise ConfigurationError(
                f"The storage signing key must be at least {_MIN_KEY_BYTES} bytes.",
                details={"variable": _SIGNING_KEY_VARIABLE},
            )
    keys = SigningKeys(db, configured)
    backend: ObjectBackend
    if settings.storage_backend == "s3":
        backend = S3Backend(
            settings.s3_endpoint_url,
            settings.s3_bucket,
            settings.s3_region,
            settings.s3_access_key_id,
            None
            if settings.s3_secret_access_key is None
            else settings.s3_secret_access_key.get_secret_value(),
        )
    else:
        backend = LocalDiskBackend(
            settings.storage_path, public_url=settings.public_url, signing_key=keys.get
        )
    return ObjectStorage(
        db, backend, keys, url_ttl=timedelta(seconds=settings.upload_url_ttl_seconds)
    )

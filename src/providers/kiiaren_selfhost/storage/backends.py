"""Where the bytes live: one small interface, a local-disk and an S3 implementation.

A backend knows nothing about workspaces, users or the database. It moves bytes under keys
that :func:`~kiiaren_selfhost.storage.object_key` made and hands out URLs for them; every
decision about who may do what is taken before a backend is called.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import tempfile
from collections.abc import AsyncIterable, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    BinaryIO,
    Final,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    runtime_checkable,
)

import anyio
import anyio.to_thread

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderClosedError,
)
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.storage._names import (
    content_disposition,
    normalize_content_type,
    parse_object_key,
)
from kiiaren_selfhost.storage.signing import sign_download_url, sign_upload_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "DEFAULT_PUBLIC_URL",
    "KeySource",
    "LocalDiskBackend",
    "ObjectBackend",
    "ObjectInfo",
    "S3Backend",
    "UploadTarget",
]

logger = logging.getLogger("kiiaren.selfhost.storage")

DEFAULT_PUBLIC_URL: Final = "http://127.0.0.1:8000"

KeySource = Callable[[], Awaitable[bytes]]
"""An async function returning the URL signing key (loaded once, then cached by its owner)."""

T = TypeVar("T")


class UploadTarget(NamedTuple):
    """Where and how to send an object's bytes: ``method`` to ``url`` with ``headers``."""

    url: str
    method: Literal["PUT", "POST"]
    headers: dict[str, str]


class ObjectInfo(NamedTuple):
    """What a backend knows about a stored object.

    ``content_type`` is None when the backend does not record it (local disk: the bundled
    server only accepts bytes whose ``Content-Type`` matches the signed URL, so there is
    nothing to compare afterwards). ``last_modified`` is when the bytes were written, by the
    store's clock.
    """

    size: int
    content_type: str | None
    last_modified: datetime


@runtime_checkable
class ObjectBackend(Protocol):
    """Bytes under server-generated keys. Every method is safe to call concurrently."""

    async def upload_target(
        self, key: str, *, content_type: str, max_bytes: int, expires_at: datetime
    ) -> UploadTarget:
        """A URL that accepts exactly one upload of ``key``, with this content type, of at
        most ``max_bytes`` bytes, until ``expires_at`` (to the degree the store enforces it;
        see each backend)."""
        ...

    async def download_url(
        self,
        key: str,
        *,
        content_type: str,
        expires_at: datetime,
        filename: str | None = None,
    ) -> str:
        """A URL that serves ``key`` until ``expires_at``, as ``content_type``, named
        ``filename`` in its ``Content-Disposition``."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The stored object's size, content type and write time; None when absent."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``. Idempotent: deleting a missing key succeeds."""
        ...

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (the in-process ``upload`` path)."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections. Idempotent."""
        ...


# --- local disk ------------------------------------------------------------------------------


class LocalDiskBackend:
    """Objects as files under ``root`` (``<root>/ws/<workspace_id>/<storage_id>``).

    Upload and download URLs point at the bundled server and are signed with the storage
    signing key (see :mod:`~kiiaren_selfhost.storage.signing`); the server verifies them and
    calls :meth:`write_stream` / :meth:`open_for_read`.

    The root must be on a file system with hard links (any POSIX one): publishing a written
    object links it into place, which fails rather than replaces when the key exists.

    Every key is checked twice before it touches the file system: it must be exactly a key
    made by ``object_key`` (two canonical UUIDs), and its resolved path (symbolic links
    followed) must lie inside the resolved root. Anything else raises InvalidInputError and
    writes nothing.

    Args:
        root: the storage directory (created on first write).
        public_url: the bundled server's external base URL.
        signing_key: the URL signing key, or an async function returning it. Default: a random
            key, so URLs are valid for this backend object only.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        public_url: str = DEFAULT_PUBLIC_URL,
        signing_key: bytes | KeySource | None = None,
    ) -> None:
        self._root = Path(root).resolve()
        self._public_url = public_url.rstrip("/")
        self._key: bytes | None = None
        self._key_source: KeySource | None = None
        if isinstance(signing_key, bytes):
            self._key = signing_key
        elif signing_key is None:
            self._key = secrets.token_bytes(32)
        else:
            self._key_source = signing_key

    @property
    def root(self) -> Path:
        """The resolved storage directory."""
        return self._root

    async def signing_key(self) -> bytes:
        """The key that signs (and verifies) this backend's URLs."""
        if self._key is None:
            assert self._key_source is not None
            self._key = await self._key_source()
        return self._key

    def path_for(self, key: str) -> Path:
        """The file of ``key``, guaranteed to be inside :attr:`root`.

        Raises:
            InvalidInputError: ``key`` is not a server-made key or escapes the root.
        """
        parse_object_key(key)
        path = (self._root / key).resolve()
        if not path.is_relative_to(self._root) or path == self._root:
            raise InvalidInputError("Refusing an object path outside the storage root.")
        return path

    async def upload_target(
        self, key: str, *, content_type: str, max_bytes: int, expires_at: datetime
    ) -> UploadTarget:
        """A signed ``PUT`` URL on the bundled server.

        The server enforces all of it: signature (key, workspace, content type, limit),
        expiry at arrival, the byte limit while streaming, and one upload per key.
        """
        workspace_id, storage_id = parse_object_key(key)
        url = sign_upload_url(
            await self.signing_key(),
            self._public_url,
            workspace_id=workspace_id,
            storage_id=storage_id,
            content_type=content_type,
            max_bytes=max_bytes,
            expires_at=expires_at,
        )
        return UploadTarget(url, "PUT", {"Content-Type": content_type})

    async def download_url(
        self,
        key: str,
        *,
        content_type: str,
        expires_at: datetime,
        filename: str | None = None,
    ) -> str:
        """A signed ``GET`` URL on the bundled server."""
        workspace_id, storage_id = parse_object_key(key)
        return sign_download_url(
            await self.signing_key(),
            self._public_url,
            workspace_id=workspace_id,
            storage_id=storage_id,
            content_type=content_type,
            filename=filename,
            expires_at=expires_at,
        )

    async def head(self, key: str) -> ObjectInfo | None:
        path = self.path_for(key)
        try:
            stat = await anyio.to_thread.run_sync(path.stat)
        except FileNotFoundError:
            return None
        return ObjectInfo(stat.st_size, None, datetime.fromtimestamp(stat.st_mtime, UTC))

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` atomically (``content_type`` is not recorded on disk)."""

        async def one_chunk() -> AsyncIterable[bytes]:
            yield data

        await self.write_stream(key, one_chunk(), len(data))

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int) -> int:
        """Write the object from ``chunks``; returns its size.

        The bytes go to a temporary file in the object's directory, which is fsynced and then
        hard-linked to its final name, so the object appears whole or not at all, and a key
        is written once: a second upload to an existing key raises ConflictError. On any
        failure or cancellation the temporary file is removed.

        Raises:
            InvalidInputError: a forged key (nothing is written).
            PayloadTooLargeError: more than ``max_bytes`` arrived (checked while streaming).
            ConflictError: the object already exists.
        """
        path = self.path_for(key)
        if await anyio.to_thread.run_sync(path.exists):
            raise ConflictError("This file has already been uploaded.")
        part = await anyio.to_thread.run_sync(_open_part, path)
        try:
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(
                        f"The file is larger than the {max_bytes} bytes allowed.",
                        details={"field": "size", "max_bytes": max_bytes},
                    )
                await anyio.to_thread.run_sync(part.write, chunk)
            await anyio.to_thread.run_sync(_publish, part, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(part.discard)
            raise
        return size

    async def open_for_read(self, key: str) -> BinaryIO:
        """Open the object for reading (the caller closes it).

        An open file keeps its bytes even if the object is deleted meanwhile, so a download
        that started completes.

        Raises:
            InvalidInputError: a forged key.
            NotFoundError: no such object.
        """
        path = self.path_for(key)
        try:
            return await anyio.to_thread.run_sync(path.open, "rb")
        except FileNotFoundError:
            raise NotFoundError("File not found.") from None

    async def aclose(self) -> None:
        """Nothing to release: files are opened and closed per operation."""


class _Part:
    """A temporary file next to its destination, written through a raw descriptor."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd: int | None = fd
        self.path = path

    def write(self, chunk: bytes) -> None:
        assert self.fd is not None
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _open_part(path: Path) -> _Part:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".part")
    return _Part(fd, Path(name))


def _publish(part: _Part, path: Path) -> None:
    """Make the written part visible as ``path`` (durably), without replacing anything."""
    assert part.fd is not None
    os.fsync(part.fd)
    part.close()
    try:
        os.link(part.path, path)  # unlike rename, fails if the object already exists
    except FileExistsError:
        raise ConflictError("This file has already been uploaded.") from None
    finally:
        part.path.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory; the data is synced
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --- S3 --------------------------------------------------------------------------------------


class S3Backend:
    """Objects in an S3 bucket (AWS or any S3-compatible store: MinIO, Ceph, R2, moto, ...).

    Uploads are presigned ``PUT`` URLs whose SigV4 signature covers the key, the
    ``Content-Type``, the ``Content-Length`` (the exact declared size) and
    ``If-None-Match: *`` (no overwriting), and which the store refuses after ``expires_at``.
    That is what a store that checks signatures enforces; the service re-checks size, type and
    arrival time when it completes the upload, because a store may not (see
    :class:`~kiiaren_selfhost.storage.ObjectStorage`). Downloads are presigned ``GET`` URLs.

    boto3 is synchronous: its calls run in worker threads; presigning is local computation.
    The client is created once, on first use.

    Args:
        endpoint_url: the store's URL; None for AWS. With an endpoint, path-style addressing
            is used (what self-hosted stores expect).
        bucket: the bucket (it must exist).
        region: the signing region.
        access_key_id, secret_access_key: credentials; None uses boto3's default chain
            (environment, shared files, instance role).
    """

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        region: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._bucket = bucket
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._client: S3Client | None = None
        self._client_lock = anyio.Lock()
        self._closed = False

    @property
    def bucket(self) -> str:
        return self._bucket

    async def _get_client(self) -> S3Client:
        if self._client is None:
            async with self._client_lock:
                if self._closed:
                    raise ProviderClosedError("The file store client has been closed.")
                if self._client is None:
                    self._client = await anyio.to_thread.run_sync(self._make_client)
        return self._client

    def _make_client(self) -> S3Client:
        import boto3.session
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            region_name=self._region,
            s3={"addressing_style": "path" if self._endpoint_url else "auto"},
            connect_timeout=5,
            read_timeout=30,
            retries={"mode": "standard", "max_attempts": 3},
        )
        # A private session: boto3's default session is not safe to share across threads.
        session = boto3.session.Session(
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            region_name=self._region,
        )
        return session.client("s3", endpoint_url=self._endpoint_url, config=config)

    async def _run(self, operation: str, call: Callable[[S3Client], T]) -> T:
        """Run ``call`` in a worker thread; store errors become BackendUnavailableError."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._get_client()
        try:
            return await anyio.to_thread.run_sync(call, client)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            logger.warning("S3 %s failed: %s", operation, code)
            raise BackendUnavailableError(
                "The file store refused the request. Try again shortly.", retry_after=1
            ) from None
        except BotoCoreError as exc:
            logger.warning("S3 %s failed: %s", operation, type(exc).__name__)
            raise BackendUnavailableError(
                "The file store is unavailable. Try again shortly.", retry_after=1
            ) from None

    @staticmethod
    def _seconds_until(expires_at: datetime) -> int:
        # Rounded down, so the presigned URL never outlives the ticket.
        return max(1, math.floor((expires_at - utcnow()).total_seconds()))

    async def upload_target(
        self, key: str, *, content_type: str, max_bytes: int, expires_at: datetime
    ) -> UploadTarget:
        """A presigned ``PUT``: send exactly ``max_bytes`` bytes with ``headers``."""
        parse_object_key(key)
        client = await self._get_client()
        url = client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ContentType": content_type,
                "ContentLength": max_bytes,
                "IfNoneMatch": "*",
            },
            ExpiresIn=self._seconds_until(expires_at),
        )
        return UploadTarget(url, "PUT", {"Content-Type": content_type, "If-None-Match": "*"})

    async def download_url(
        self,
        key: str,
        *,
        content_type: str,
        expires_at: datetime,
        filename: str | None = None,
    ) -> str:
        """A presigned ``GET`` that also sets the response's type and disposition."""
        parse_object_key(key)
        client = await self._get_client()
        return client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": content_disposition(filename, content_type),
            },
            ExpiresIn=self._seconds_until(expires_at),
        )

    async def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        parse_object_key(key)

        def call(client: S3Client) -> ObjectInfo | None:
            try:
                found = client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return ObjectInfo(
                found["ContentLength"],
                normalize_content_type(found.get("ContentType")),
                found["LastModified"].astimezone(UTC),
            )

        return await self._run("head_object", call)

    async def delete(self, key: str) -> None:
        parse_object_key(key)
        await self._run("delete_object", lambda c: c.delete_object(Bucket=self._bucket, Key=key))

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        parse_object_key(key)
        await self._run(
            "put_object",
            lambda c: c.put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType=content_type
            ),
        )

    async def aclose(self) -> None:
        """Close the client's connection pool. Idempotent."""
        async with self._client_lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            await anyio.to_thread.run_sync(client.close)

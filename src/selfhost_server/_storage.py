"""The object endpoints behind a provider's signed local-storage URLs.

Mounted only when ``provider.storage`` is a :class:`~kiiaren_core.protocols.ServedStorage`
(the self-host provider's local disk): its upload and download URLs point here. The URL's
signature is the credential, so these routes take no bearer token; the provider checks the
signature, expiry, size and type. Uploads stream to the provider as they arrive, bounded by
the provider's upload limit rather than the API's body limit; downloads stream from it.

A signed upload URL is single-use (a second ``PUT`` answers ``409``), which makes it safe to
retry without an ``Idempotency-Key``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import FastAPI, Path, Query
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from kiiaren_core.models import StoredObject
from kiiaren_core.protocols import Download, ServedStorage
from selfhost_server._errors import ErrorEnvelope

__all__ = ["OBJECTS_PREFIX", "OBJECT_PATH", "add_storage_routes"]

OBJECTS_PREFIX: Final = "/v1/storage/objects/"
OBJECT_PATH: Final = OBJECTS_PREFIX + "{storage_id}"

_SIGNED = "Part of the signed URL, exactly as issued."
SignedParam = Annotated[str | None, Query(max_length=1024, description=_SIGNED)]
StorageId = Annotated[str, Path(max_length=64, description="The object's id.")]


def content_disposition(filename: str | None, content_type: str) -> str:
    """``Content-Disposition`` for a served object (RFC 6266, the name per RFC 8187).

    Images are ``inline`` (pages show them); anything else is an ``attachment``, so a text
    or PDF file opened from its URL is saved rather than rendered on the API's origin.
    """
    disposition = "inline" if content_type.startswith("image/") else "attachment"
    if not filename:
        return disposition
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in filename)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _DownloadResponse(Response):
    """Streams a :class:`Download`, closing its chunk iterator however the response ends."""

    def __init__(self, download: Download) -> None:
        super().__init__(
            status_code=200,
            headers={
                "Content-Type": download.content_type,
                "Content-Length": str(download.size),
                "Content-Disposition": content_disposition(
                    download.filename, download.content_type
                ),
                "X-Content-Type-Options": "nosniff",
                # A user's file served from the API's origin must not run as a page there.
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "private, no-cache",
            },
        )
        self.chunks: AsyncIterator[bytes] = download.chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(self.chunks, "aclose", None)
            if close is not None:
                await close()


_UPLOAD_ERRORS: Final = {
    401: "The URL's signature is missing, altered or expired",
    404: "No such upload ticket",
    409: "This URL was already used",
    413: "More bytes than the ticket allows",
    422: "The Content-Type differs from the signed one",
    500: "Unexpected failure",
    503: "The storage is unavailable",
}
_DOWNLOAD_ERRORS: Final = {
    401: "The URL's signature is missing, altered or expired",
    404: "No such object (deleted, or never uploaded)",
    422: "A query parameter is longer than any signed URL's",
    500: "Unexpected failure",
    503: "The storage is unavailable",
}


def add_storage_routes(app: FastAPI, storage: ServedStorage, upload_types: tuple[str, ...]) -> None:
    """Mount ``PUT`` and ``GET`` of :data:`OBJECT_PATH` on ``app`` for ``storage``.

    Args:
        app: the application.
        storage: the provider's storage.
        upload_types: the content types uploads may have (documented in the OpenAPI).
    """
    binary: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}

    async def upload_object(
        request: Request,
        storage_id: StorageId,
        w: SignedParam = None,
        e: SignedParam = None,
        t: SignedParam = None,
        m: SignedParam = None,
        s: SignedParam = None,
    ) -> Response:
        stored = await storage.receive_upload(
            storage_id,
            dict(request.query_params),
            request.headers.get("content-type", ""),
            request.stream(),
        )
        return Response(stored.model_dump_json(), 200, media_type="application/json")

    async def download_object(
        request: Request,
        storage_id: StorageId,
        w: SignedParam = None,
        e: SignedParam = None,
        t: SignedParam = None,
        n: SignedParam = None,
        s: SignedParam = None,
    ) -> Response:
        return _DownloadResponse(
            await storage.open_download(storage_id, dict(request.query_params))
        )

    app.add_api_route(
        OBJECT_PATH,
        upload_object,
        methods=["PUT"],
        response_model=StoredObject,
        summary="Upload the bytes of a signed upload URL",
        operation_id="storage.object_upload",
        tags=["storage"],
        responses={
            status: {"model": ErrorEnvelope, "description": text}
            for status, text in _UPLOAD_ERRORS.items()
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": dict.fromkeys(upload_types, binary),
            }
        },
    )
    app.add_api_route(
        OBJECT_PATH,
        download_object,
        methods=["GET"],
        response_class=Response,
        summary="Download the object of a signed download URL",
        operation_id="storage.object_download",
        tags=["storage"],
        responses={
            200: {
                "description": "The object's bytes",
                "content": dict.fromkeys(upload_types, binary),
            },
            **{
                status: {"model": ErrorEnvelope, "description": text}
                for status, text in _DOWNLOAD_ERRORS.items()
            },
        },
    )

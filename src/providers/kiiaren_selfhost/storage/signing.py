"""Signed URLs of the local-disk backend, checked by the bundled server without any I/O.

An upload URL is ``{public_url}/v1/storage/objects/<storage_id>?w=&e=&t=&m=&s=`` (``PUT``), a
download URL ``...?w=&e=&t=&n=&s=`` (``GET``). ``s`` is an HMAC-SHA256, under the storage
signing key, over the method, the storage id, the object key, the expiry (epoch seconds), the
content type, the byte limit and the file name. Each URL is therefore bound to one method, one
object of one workspace, one content type and one size limit, and stops working at its expiry;
changing any of them breaks the signature.

The server answers a request with::

    grant = verify_upload_signature(key, storage_id=sid, query=request.query_params,
                                    content_type=request.headers.get("content-type"))
    await backend.write_stream(grant.object_key, request.stream(), grant.max_bytes)
    await files.complete_upload(grant.storage_id)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import urlencode

from kiiaren_core.errors import InvalidInputError, NotAuthenticatedError, NotFoundError
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.storage._names import content_disposition, normalize_content_type

__all__ = [
    "OBJECTS_PATH",
    "SignedGrant",
    "derive_signing_key",
    "sign_download_url",
    "sign_upload_url",
    "verify_download_signature",
    "verify_upload_signature",
]

OBJECTS_PATH: Final = "/v1/storage/objects/"
"""Path prefix of object URLs on the bundled server; the storage id follows."""

_DOMAIN: Final = b"kiiaren storage url signing v1"
_INVALID = "This file link is invalid or has expired."
_NOT_FOUND = "File not found."
_MAX_QUERY_VALUE = 1024


@dataclass(frozen=True, slots=True)
class SignedGrant:
    """What a verified URL allows: one method on one object, until ``expires_at``.

    Attributes:
        storage_id: the object's id (a canonical UUID).
        workspace_id: the owning workspace.
        object_key: where the bytes live (``ws/<workspace_id>/<storage_id>``).
        content_type: the only content type the upload may carry / the download is served as.
        max_bytes: the upload's byte limit (None for downloads).
        filename: the download's file name (None for uploads or unnamed objects).
        expires_at: when the URL stops working.
    """

    storage_id: str
    workspace_id: str
    object_key: str
    content_type: str
    max_bytes: int | None
    filename: str | None
    expires_at: datetime

    @property
    def content_disposition(self) -> str:
        """The ``Content-Disposition`` to serve a download with."""
        return content_disposition(self.filename, self.content_type)


def derive_signing_key(material: bytes) -> bytes:
    """The URL signing key derived from a secret, so the secret itself never signs URLs."""
    return hmac.new(material, _DOMAIN, hashlib.sha256).digest()


def _signature(key: bytes, *fields: str) -> str:
    # JSON makes the encoding of the field list unambiguous whatever the fields contain.
    message = json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _base(public_url: str, storage_id: str) -> str:
    return f"{public_url.rstrip('/')}{OBJECTS_PATH}{storage_id}"


def sign_upload_url(
    key: bytes,
    public_url: str,
    *,
    workspace_id: str,
    storage_id: str,
    content_type: str,
    max_bytes: int,
    expires_at: datetime,
) -> str:
    """A ``PUT`` URL for one object (see the module docstring)."""
    expiry = int(expires_at.timestamp())
    fields = _fields("PUT", workspace_id, storage_id, expiry, content_type, str(max_bytes), "")
    query = {"w": workspace_id, "e": expiry, "t": content_type, "m": max_bytes}
    return f"{_base(public_url, storage_id)}?{urlencode({**query, 's': _signature(key, *fields)})}"


def sign_download_url(
    key: bytes,
    public_url: str,
    *,
    workspace_id: str,
    storage_id: str,
    content_type: str,
    filename: str | None,
    expires_at: datetime,
) -> str:
    """A ``GET`` URL for one object (see the module docstring)."""
    expiry = int(expires_at.timestamp())
    name = filename or ""
    fields = _fields("GET", workspace_id, storage_id, expiry, content_type, "", name)
    query: dict[str, str | int] = {"w": workspace_id, "e": expiry, "t": content_type}
    if name:
        query["n"] = name
    return f"{_base(public_url, storage_id)}?{urlencode({**query, 's': _signature(key, *fields)})}"


def _fields(
    method: str,
    workspace_id: str,
    storage_id: str,
    expiry: int,
    content_type: str,
    max_bytes: str,
    filename: str,
) -> tuple[str, ...]:
    key = f"ws/{workspace_id}/{storage_id}"
    return (method, storage_id, key, str(expiry), content_type, max_bytes, filename)


def verify_upload_signature(
    key: bytes,
    *,
    storage_id: str,
    query: Mapping[str, str],
    content_type: str | None,
    now: datetime | None = None,
) -> SignedGrant:
    """Check a ``PUT`` to an upload URL; I/O-free.

    Args:
        key: the storage signing key (``ObjectStorage.signing_key()``).
        storage_id: the last path segment of the request.
        query: the request's query parameters.
        content_type: the request's ``Content-Type`` header.
        now: the current time (default: now).

    Returns:
        The grant; stream at most ``grant.max_bytes`` to ``grant.object_key``.

    Raises:
        NotFoundError: the path or the workspace is not a well-formed id.
        NotAuthenticatedError: missing, altered or expired signature.
        InvalidInputError: the ``Content-Type`` header differs from the signed one.
    """
    grant = _verify(key, "PUT", storage_id, query, now)
    if normalize_content_type(content_type) != grant.content_type:
        raise InvalidInputError(
            f"This upload URL accepts {grant.content_type} only.",
            details={"field": "content_type"},
        )
    return grant


def verify_download_signature(
    key: bytes,
    *,
    storage_id: str,
    query: Mapping[str, str],
    now: datetime | None = None,
) -> SignedGrant:
    """Check a ``GET`` of a download URL; I/O-free.

    Serve the bytes of ``grant.object_key`` with ``Content-Type: grant.content_type``,
    ``Content-Disposition: grant.content_disposition`` and ``X-Content-Type-Options: nosniff``.

    Raises:
        NotFoundError: the path or the workspace is not a well-formed id.
        NotAuthenticatedError: missing, altered or expired signature.
    """
    return _verify(key, "GET", storage_id, query, now)


def _verify(
    key: bytes,
    method: Literal["PUT", "GET"],
    storage_id: str,
    query: Mapping[str, str],
    now: datetime | None,
) -> SignedGrant:
    workspace_id = query.get("w", "")
    if not (_is_canonical_id(storage_id) and _is_canonical_id(workspace_id)):
        raise NotFoundError(_NOT_FOUND)
    values = {name: query.get(name, "") for name in ("e", "t", "m", "n", "s")}
    if any(len(value) > _MAX_QUERY_VALUE for value in values.values()):
        raise NotAuthenticatedError(_INVALID)
    expiry, ctype, limit = values["e"], values["t"], values["m"] if method == "PUT" else ""
    filename = values["n"] if method == "GET" else ""
    if not _is_number(expiry) or (method == "PUT" and not _is_number(limit)):
        raise NotAuthenticatedError(_INVALID)
    fields = _fields(method, workspace_id, storage_id, int(expiry), ctype, limit, filename)
    if not hmac.compare_digest(_signature(key, *fields), values["s"]):
        raise NotAuthenticatedError(_INVALID)
    expires_at = datetime.fromtimestamp(int(expiry), UTC)
    if (now or utcnow()) > expires_at:
        raise NotAuthenticatedError(_INVALID)
    return SignedGrant(
        storage_id=storage_id,
        workspace_id=workspace_id,
        object_key=fields[2],
        content_type=ctype,
        max_bytes=int(limit) if method == "PUT" else None,
        filename=filename or None,
        expires_at=expires_at,
    )


def _is_number(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _is_canonical_id(value: str) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False

"""Object keys, user file names and content types: the only values that reach a store.

Keys are generated here and nowhere else: ``ws/<workspace_id>/<storage_id>``, two canonical
UUIDs. Nothing a user sends becomes part of a key, so a hostile file name can only ever land
in the ``filename`` column, cleaned by :func:`sanitize_filename`.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Final
from urllib.parse import quote

from kiiaren_core.errors import InvalidInputError

__all__ = [
    "MAX_FILENAME_LENGTH",
    "content_disposition",
    "normalize_content_type",
    "object_key",
    "parse_object_key",
    "sanitize_filename",
]

MAX_FILENAME_LENGTH: Final = 255
"""Longest file name kept (in characters), the common file-system limit."""

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_KEY = re.compile(rf"ws/({_UUID})/({_UUID})")
_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
# Bidirectional formatting characters: they make "gnp.exe" display as "exe.png".
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_KEEP_SUFFIX: Final = 16
"""A truncated name keeps an extension up to this long."""


def object_key(workspace_id: str, storage_id: str) -> str:
    """The key of a stored object: ``ws/<workspace_id>/<storage_id>``.

    Raises:
        ValueError: either id is not a UUID (a programming error: ids come from the database).
    """
    return f"ws/{uuid.UUID(workspace_id)}/{uuid.UUID(storage_id)}"


def parse_object_key(key: str) -> tuple[str, str]:
    """``(workspace_id, storage_id)`` of a key made by :func:`object_key`.

    Raises:
        InvalidInputError: ``key`` is not exactly such a key (forged or corrupted); the
            message never repeats it.
    """
    match = _KEY.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise InvalidInputError("Refusing an object key that was not issued by this server.")
    return match.group(1), match.group(2)


def normalize_content_type(value: object) -> str | None:
    """``"Image/PNG; charset=x"`` -> ``"image/png"``; None when ``value`` is not a media type.

    Parameters are dropped (they cannot change what the allow-list allows) and the type is
    lowercased, as media types are case-insensitive.
    """
    if not isinstance(value, str):
        return None
    essence = value.split(";", 1)[0].strip().lower()
    return essence if _MEDIA_TYPE.fullmatch(essence) else None


def sanitize_filename(name: str | None) -> str | None:
    """The user's file name as stored and shown: its base name without control characters.

    Directory parts (``/`` and ``\\``) are dropped, control and bidirectional formatting
    characters removed, the result NFC-normalised, trimmed and cut to
    :data:`MAX_FILENAME_LENGTH` characters (keeping a short extension). Names that end up
    empty, ``.`` or ``..`` become None. The result is metadata only: it never names a file.
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidInputError("The file name must be a string.", details={"field": "filename"})
    base = re.split(r"[\\/]", name)[-1]
    cleaned = "".join(ch for ch in base if unicodedata.category(ch) != "Cc" and ch not in _BIDI)
    cleaned = unicodedata.normalize("NFC", cleaned).strip()
    if cleaned in ("", ".", ".."):
        return None
    if len(cleaned) > MAX_FILENAME_LENGTH:
        stem, dot, suffix = cleaned.rpartition(".")
        if dot and stem and len(suffix) <= _KEEP_SUFFIX:
            cleaned = f"{stem[: MAX_FILENAME_LENGTH - len(suffix) - 1]}.{suffix}"
        else:
            cleaned = cleaned[:MAX_FILENAME_LENGTH]
    return cleaned


def content_disposition(filename: str | None, content_type: str) -> str:
    """A ``Content-Disposition`` value for a download (RFC 6266 with an RFC 8187 name).

    Images are ``inline`` (they are shown in pages); everything else is an ``attachment``,
    so a text or PDF file opened from its URL is saved rather than rendered on our origin.
    """
    disposition = "inline" if content_type.startswith("image/") else "attachment"
    if not filename:
        return disposition
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in filename)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"

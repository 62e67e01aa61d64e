"""Pure validation and normalisation rules that belong to values, shared by every provider.

Each function either returns the normalised value or raises :class:`InvalidInputError` with the
reference's exact message and a ``field`` detail. Nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Final

from kiiaren_core.errors import InvalidInputError, PayloadTooLargeError

__all__ = [
    "CHANNEL_NAME_MAX",
    "CHANNEL_NAME_MIN",
    "DOMAIN_PATTERN",
    "JOIN_CODE_ALPHABET",
    "JOIN_CODE_LENGTH",
    "MAX_MESSAGE_BODY_BYTES",
    "MAX_REACTION_LENGTH",
    "MAX_TITLE_LENGTH",
    "WORKSPACE_NAME_MAX",
    "WORKSPACE_NAME_MIN",
    "email_domain",
    "is_join_code",
    "normalize_channel_name",
    "normalize_domain",
    "normalize_email",
    "validate_message_body",
    "validate_reaction",
    "validate_title",
    "validate_workspace_name",
]

WORKSPACE_NAME_MIN: Final = 3
WORKSPACE_NAME_MAX: Final = 20
CHANNEL_NAME_MIN: Final = 3
CHANNEL_NAME_MAX: Final = 20
JOIN_CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ023456789"
JOIN_CODE_LENGTH: Final = 6
MAX_MESSAGE_BODY_BYTES: Final = 64 * 1024
MAX_REACTION_LENGTH: Final = 32
MAX_TITLE_LENGTH: Final = 255
DOMAIN_PATTERN: Final = re.compile(
    r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,}$"
)
# Channel names: letters, digits and the separators a slug needs; '-' joins words.
_CHANNEL_CHARS: Final = re.compile(r"^[\w-]+$", re.UNICODE)
_JOIN_CODE: Final = re.compile(rf"^[{JOIN_CODE_ALPHABET}]{{{JOIN_CODE_LENGTH}}}$")
_WHITESPACE_RUN: Final = re.compile(r"\s+")
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Emoji sequences use two invisible format characters: ZERO WIDTH JOINER (for example a
# technologist, a rainbow flag) and the tag characters of subdivision flags. Other format and
# control characters (bidi overrides, NUL, ...) stay refused.
_EMOJI_FORMAT_CHARS: Final = frozenset({"\u200d", *map(chr, range(0xE0020, 0xE0080))})


def validate_workspace_name(raw: str) -> str:
    """Trim ``raw`` and require 3-20 characters (``Invalid workspace name.``)."""
    name = raw.strip() if isinstance(raw, str) else ""
    if not WORKSPACE_NAME_MIN <= len(name) <= WORKSPACE_NAME_MAX:
        raise InvalidInputError("Invalid workspace name.", details={"field": "name"})
    return name


def normalize_channel_name(raw: str) -> str:
    """Trim, collapse whitespace runs to ``-`` and lowercase; 3-20 characters of ``[\\w-]``.

    Fixes the reference's bug C3: the length is checked on the trimmed, normalised name, so
    ``"   "`` is refused instead of becoming ``"-"``.
    """
    name = _WHITESPACE_RUN.sub("-", raw.strip()).lower() if isinstance(raw, str) else ""
    if not CHANNEL_NAME_MIN <= len(name) <= CHANNEL_NAME_MAX or not _CHANNEL_CHARS.match(name):
        raise InvalidInputError("Invalid channel name.", details={"field": "name"})
    return name


def is_join_code(value: str) -> bool:
    """True if ``value`` (compared case-insensitively) is a well-formed join code."""
    return isinstance(value, str) and bool(_JOIN_CODE.match(value.upper()))


def normalize_domain(raw: str) -> str:
    """Trim, lowercase, strip one leading ``www.`` and a trailing dot, then validate.

    Fixes the reference's order (trim last) and enforces the DNS limits it skipped
    (63-character labels, 253 characters in all).
    """
    domain = raw.strip().lower() if isinstance(raw, str) else ""
    domain = domain.removesuffix(".").removeprefix("www.")
    labels = domain.split(".")
    if (
        not DOMAIN_PATTERN.match(domain)
        or len(domain) > 253
        or any(len(label) > 63 for label in labels)
    ):
        raise InvalidInputError(
            f'Invalid domain format: "{raw}". Please enter a valid domain like "acme.com".',
            details={"field": "domain"},
        )
    return domain


def normalize_email(raw: str) -> str:
    """Trim and lowercase an email address and check its basic shape (one ``@``, a dot after)."""
    email = raw.strip().lower() if isinstance(raw, str) else ""
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidInputError("Invalid email address.", details={"field": "email"})
    return email


def email_domain(email: str) -> str | None:
    """The part after ``@`` of a lowercased address with exactly one ``@``, else None."""
    parts = email.strip().lower().split("@")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[1]


def validate_message_body(body: str, *, max_bytes: int = MAX_MESSAGE_BODY_BYTES) -> str:
    """Require a non-blank body (kept opaque: Quill Delta JSON) of at most ``max_bytes``."""
    if not isinstance(body, str) or not body.strip():
        raise InvalidInputError("Message body cannot be empty.", details={"field": "body"})
    if len(body.encode("utf-8")) > max_bytes:
        raise PayloadTooLargeError(
            f"Message body is larger than {max_bytes} bytes.",
            details={"field": "body", "max_bytes": max_bytes},
        )
    return body


def validate_reaction(value: str) -> str:
    """A reaction is an emoji or short token: 1-32 characters, no whitespace or control chars."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_REACTION_LENGTH
        or not any(ch.isprintable() for ch in value)
        or any(
            ch.isspace() or (not ch.isprintable() and ch not in _EMOJI_FORMAT_CHARS) for ch in value
        )
    ):
        raise InvalidInputError("Invalid reaction.", details={"field": "value"})
    return value


def validate_title(raw: str, *, field: str = "title") -> str:
    """Trim a doc or board title; at most 255 characters (empty allowed, as in the reference)."""
    title = raw.strip() if isinstance(raw, str) else ""
    if len(title) > MAX_TITLE_LENGTH:
        raise InvalidInputError(
            f"Title is longer than {MAX_TITLE_LENGTH} characters.", details={"field": field}
        )
    return title

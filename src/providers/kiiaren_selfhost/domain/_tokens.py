"""Random tokens of the domain (reference section 7.1), with the reference's collision retry.

Join codes: 6 characters of the 32-letter alphabet, one random byte each masked to 5 bits
(unbiased: 256 is a multiple of 32). Verification tokens: base64url of 24 bytes (32 chars).
Invite codes: base64url of 16 bytes (22 chars). A generator that collides
``MAX_COLLISION_RETRIES`` times raises :class:`TokenCollisionError`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from typing import Final

from kiiaren_core.errors import TokenCollisionError
from kiiaren_core.validation import JOIN_CODE_ALPHABET, JOIN_CODE_LENGTH

__all__ = [
    "MAX_COLLISION_RETRIES",
    "new_invite_code",
    "new_join_code",
    "new_verification_token",
    "unique_token",
]

MAX_COLLISION_RETRIES: Final = 5


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_join_code() -> str:
    """Six characters of ``JOIN_CODE_ALPHABET`` (30 bits)."""
    return "".join(
        JOIN_CODE_ALPHABET[byte & 0x1F] for byte in secrets.token_bytes(JOIN_CODE_LENGTH)
    )


def new_verification_token() -> str:
    """32 URL-safe characters (192 bits)."""
    return _base64url(secrets.token_bytes(24))


def new_invite_code() -> str:
    """22 URL-safe characters (128 bits)."""
    return _base64url(secrets.token_bytes(16))


async def unique_token(
    generate: Callable[[], str], taken: Callable[[str], Awaitable[bool]], token_type: str
) -> str:
    """A token for which ``taken`` is False, trying at most ``MAX_COLLISION_RETRIES`` times."""
    for _ in range(MAX_COLLISION_RETRIES):
        token = generate()
        if not await taken(token):
            return token
    raise TokenCollisionError(token_type)

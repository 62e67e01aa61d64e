"""The one place the self-host provider's services read the time (aware UTC)."""

from __future__ import annotations

from kiiaren_selfhost.db.types import utcnow

__all__ = ["utcnow"]

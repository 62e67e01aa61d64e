"""Column types shared by every table: ids, UTC timestamps and JSON.

The same Python values go in and come out on PostgreSQL and SQLite:

* ids are canonical UUID strings (lowercase, dashed). PostgreSQL stores a native ``uuid``;
  SQLite stores 32 hex characters. Bound values are canonicalised first, so ``"ABC..."`` and
  ``"abc..."`` find the same row on both databases, and the string order of canonical ids is
  the order both databases use (see :func:`ordered_pair`).
* timestamps are timezone-aware :class:`datetime.datetime` objects in UTC. Naive datetimes are
  refused on bind because their meaning depends on the machine that made them.
* JSON columns are ``JSONB`` on PostgreSQL and ``JSON`` (text) on SQLite.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

__all__ = [
    "JSONType",
    "UTCDateTime",
    "UUIDString",
    "canonical_id",
    "hyphenate_id",
    "new_id",
    "ordered_pair",
    "utcnow",
]


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime (the only kind the tables accept)."""
    return datetime.now(UTC)


def new_id() -> str:
    """Return a new random id in canonical form (a UUID4 string)."""
    return str(uuid.uuid4())


def canonical_id(value: str | uuid.UUID) -> str:
    """Return ``value`` as a canonical lowercase, dashed UUID string.

    Raises:
        ValueError: ``value`` is not a UUID.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(uuid.UUID(value))


def ordered_pair(a: str, b: str) -> tuple[str, str]:
    """Return two ids canonicalised and sorted, as ``conversations`` stores its members.

    ``conversations`` has ``CHECK (member_one_id < member_two_id)``; canonical UUID strings
    sort exactly as PostgreSQL's ``uuid`` and SQLite's stored hex do, so the pair returned
    here always satisfies the check (for two different ids).
    """
    first, second = canonical_id(a), canonical_id(b)
    return (first, second) if first <= second else (second, first)


class UUIDString(sa.types.TypeDecorator[str]):
    """``sa.Uuid(as_uuid=False)`` that canonicalises what it binds.

    SQLAlchemy's emulated UUID on SQLite stores the hex digits with the case they were given,
    so an uppercase id would not match its lowercase twin there while it would on PostgreSQL.
    Canonicalising on bind makes both databases agree. Invalid strings raise ``ValueError``
    (wrapped by SQLAlchemy in ``StatementError``) on both, instead of an error on one and an
    empty result on the other.
    """

    impl = sa.Uuid(as_uuid=False)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, uuid.UUID):
            return str(value)
        if not isinstance(value, str):
            raise TypeError(f"expected a UUID string, got {type(value).__name__}")
        return str(uuid.UUID(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(value)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "postgresql":
            # The engine loads uuid as text (kiiaren_selfhost.db.engine): the canonical
            # string already. A uuid.UUID (a connection without that loader) is formatted.
            return _text_id
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        # SQLite holds the 32 lowercase hex digits this type bound: insert the hyphens
        # directly instead of parsing a uuid.UUID per value (pages read thousands of ids).
        return _hyphenate

    @property
    def python_type(self) -> type[str]:
        return str


def _text_id(value: str | uuid.UUID | None) -> str | None:
    if value is None or value.__class__ is str:
        return value
    return str(value)


def _hyphenate(value: str | None) -> str | None:
    if value is None or len(value) != 32:
        return value
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def hyphenate_id(value: str) -> str:
    """An id read from our own rows outside the column type (e.g. inside JSON built by the
    database) in canonical form: SQLite's 32 hex digits get their hyphens, canonical ids
    (PostgreSQL) pass unchanged."""
    if len(value) != 32:
        return value
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned as an aware UTC datetime.

    PostgreSQL uses ``timestamp with time zone`` (returned in the session's time zone, UTC
    on the engine's connections, else converted). SQLite has no time zone support: the value
    is converted to UTC and stored naive in SQLAlchemy's fixed-width ISO format, which sorts
    chronologically as text, and is marked as UTC again when read.

    Raises:
        ValueError: on bind, for a naive datetime.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError("naive datetime refused: pass an aware datetime (e.g. in UTC)")
        moment = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return moment.replace(tzinfo=None)
        return moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is UTC:  # PostgreSQL with the engine's session time zone
            return moment
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        return datetime


JSONType: sa.types.TypeEngine[Any] = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""JSON document column: ``JSONB`` on PostgreSQL, ``JSON`` text on SQLite."""

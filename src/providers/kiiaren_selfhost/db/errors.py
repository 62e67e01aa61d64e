"""The self-host provider's one translation boundary for database exceptions.

Services never see SQLAlchemy, psycopg or sqlite3 exceptions: :meth:`Database.read` and
:meth:`Database.write` (see :mod:`kiiaren_selfhost.db.engine`) apply
:func:`translate_db_errors`, which turns them into :mod:`kiiaren_core.errors`:

* unique, foreign-key, check or exclusion violation -> :class:`ConflictError`;
* connection refused or lost, server shutting down, too many connections, pool timeout,
  serialization failure or deadlock, "database is locked" past the busy timeout, disk I/O
  errors -> :class:`BackendUnavailableError` with ``retry_after=1`` (safe to retry; the
  driver's reason is logged on the ``kiiaren_selfhost.db`` logger);
* anything else (NOT NULL violation, SQL error, a read-only transaction written to, a bug)
  -> re-raised unchanged.

A :class:`ConflictError` carries ``details = {"violation": "unique" | "foreign_key" | "check",
"constraint": <name>}`` (the constraint name only when the database reports it; SQLite does
not name foreign keys). Names are the schema's (:mod:`kiiaren_selfhost.db.tables`) and are the
same on PostgreSQL and SQLite. Neither the message nor the details ever contain SQL text or
values; the original exception stays reachable as ``__cause__`` for logs.

NOT NULL violations are deliberately not conflicts: they mean a service forgot a column, a bug
that should surface as an internal error rather than a misleading 409.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    KiiarenError,
)
from kiiaren_selfhost.db.tables import metadata

__all__ = [
    "DatabaseErrorTranslator",
    "translate_db_error",
    "translate_db_errors",
]

_log = logging.getLogger("kiiaren_selfhost.db")

_P = ParamSpec("_P")
_R = TypeVar("_R")

Violation = Literal["unique", "foreign_key", "check"]

_RETRY_AFTER: Final = 1.0

# --- PostgreSQL (SQLSTATE codes, https://www.postgresql.org/docs/current/errcodes-appendix.html)

_PG_VIOLATIONS: Final[dict[str, Violation]] = {
    "23505": "unique",
    "23P01": "unique",  # exclusion constraint: "another row already holds this"
    "23503": "foreign_key",
    "23514": "check",
}
_PG_UNAVAILABLE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources (too many connections, disk full, out of memory)
        "57",  # operator intervention (shutdown, cannot connect now, statement cancelled)
        "58",  # system error (I/O)
    }
)
_PG_UNAVAILABLE_STATES: Final = frozenset(
    {
        "40001",  # serialization_failure: safe to retry
        "40P01",  # deadlock_detected: safe to retry
        "55P03",  # lock_not_available (lock_timeout)
    }
)

# --- SQLite (extended result code names, Python 3.11+ exposes them as sqlite_errorname) --------

_SQLITE_VIOLATIONS: Final[dict[str, Violation]] = {
    "SQLITE_CONSTRAINT_UNIQUE": "unique",
    "SQLITE_CONSTRAINT_PRIMARYKEY": "unique",
    "SQLITE_CONSTRAINT_FOREIGNKEY": "foreign_key",
    "SQLITE_CONSTRAINT_CHECK": "check",
}
_SQLITE_UNAVAILABLE_PREFIXES: Final = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_PROTOCOL",
)
_SQLITE_UNAVAILABLE_TEXT: Final = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
    "database or disk is full",
)
_SQLITE_UNIQUE_COLUMNS = re.compile(r"UNIQUE constraint failed: (?P<columns>[\w.]+(?:, [\w.]+)*)")
_SQLITE_UNIQUE_INDEX = re.compile(r"UNIQUE constraint failed: index '(?P<name>\w+)'")
_SQLITE_CHECK = re.compile(r"CHECK constraint failed: (?P<name>\w+)")


def _unique_names() -> dict[tuple[str, tuple[str, ...]], str]:
    """Map (table, columns) of every primary key, unique constraint and unique index to its name.

    SQLite reports a unique violation by listing the columns, not the constraint name; the
    schema never has two unique keys over the same columns of one table (a test checks), so
    the columns identify the constraint.
    """
    names: dict[tuple[str, tuple[str, ...]], str] = {}
    for table in metadata.tables.values():
        keys: list[tuple[tuple[str, ...], Any]] = []
        for constraint in table.constraints:
            if isinstance(constraint, sa.PrimaryKeyConstraint | sa.UniqueConstraint):
                keys.append((tuple(column.name for column in constraint.columns), constraint.name))
        for index in table.indexes:
            if index.unique:
                keys.append((tuple(column.name for column in index.columns), index.name))
        for columns, name in keys:
            if name is not None:
                names[(table.name, columns)] = str(name)
    return names


_UNIQUE_BY_COLUMNS: Final = _unique_names()
_CHECK_NAMES: Final = frozenset(
    str(constraint.name)
    for table in metadata.tables.values()
    for constraint in table.constraints
    if isinstance(constraint, sa.CheckConstraint) and constraint.name is not None
)

_CONFLICT_MESSAGES: Final[dict[Violation, str]] = {
    "unique": "A record with the same unique values already exists.",
    "foreign_key": "The change refers to a record that does not exist, or removes one that "
    "is still referenced.",
    "check": "The change breaks a data integrity rule.",
}


def _conflict(violation: Violation, constraint: str | None) -> ConflictError:
    details: dict[str, Any] = {"violation": violation}
    if constraint:
        details["constraint"] = constraint
    return ConflictError(_CONFLICT_MESSAGES[violation], details=details)


def _unavailable(cause: BaseException) -> BackendUnavailableError:
    # Operators need the driver's reason (host, lock, I/O); clients get a generic message.
    _log.warning("database unavailable: %s: %s", type(cause).__name__, cause)
    return BackendUnavailableError(retry_after=_RETRY_AFTER)


# PostgreSQL cannot store NUL in text (22021) nor characters outside the encoding (22P05):
# bad input, not a server fault. (SQLite stores both; the wire refuses them for parity.)
_PG_UNSTORABLE_TEXT = frozenset({"22021", "22P05"})


def _unstorable_text() -> InvalidInputError:
    return InvalidInputError(
        "Text must be valid Unicode without NUL characters.",
        details={"reason": "unstorable_text"},
    )


def _from_postgres(orig: BaseException, *, operational: bool) -> KiiarenError | None:
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        violation = _PG_VIOLATIONS.get(sqlstate)
        if violation is not None:
            diag = getattr(orig, "diag", None)
            name = getattr(diag, "constraint_name", None)
            return _conflict(violation, name if isinstance(name, str) else None)
        if sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE_STATES:
            return _unavailable(orig)
        if sqlstate in _PG_UNSTORABLE_TEXT:
            return _unstorable_text()
    if type(orig).__name__ == "DataError" and "NUL" in str(orig):
        # psycopg refuses NUL bytes itself, before the server sees them (no SQLSTATE).
        return _unstorable_text()
    # Without an SQLSTATE, psycopg's OperationalError / InterfaceError is a client-side
    # connection failure (refused, timed out, closed under us).
    if operational or type(orig).__name__ in ("OperationalError", "InterfaceError"):
        return _unavailable(orig)
    return None


def _sqlite_unique_name(message: str) -> str | None:
    if match := _SQLITE_UNIQUE_INDEX.search(message):
        return match.group("name")
    if match := _SQLITE_UNIQUE_COLUMNS.search(message):
        qualified = [part.split(".", 1) for part in match.group("columns").split(", ")]
        if all(len(part) == 2 for part in qualified):
            table = qualified[0][0]
            return _UNIQUE_BY_COLUMNS.get((table, tuple(column for _, column in qualified)))
    return None


def _from_sqlite(orig: sqlite3.Error) -> KiiarenError | None:
    message = str(orig)
    code_name = getattr(orig, "sqlite_errorname", "") or ""
    if isinstance(orig, sqlite3.IntegrityError):
        violation = _SQLITE_VIOLATIONS.get(code_name)
        if violation is None:  # fall back on the message (older SQLite builds)
            if message.startswith("UNIQUE constraint failed"):
                violation = "unique"
            elif message.startswith("FOREIGN KEY constraint failed"):
                violation = "foreign_key"
            elif message.startswith("CHECK constraint failed"):
                violation = "check"
            else:
                return None  # NOT NULL and friends: a bug, not a conflict
        if violation == "unique":
            return _conflict("unique", _sqlite_unique_name(message))
        if violation == "check":
            match = _SQLITE_CHECK.search(message)
            name = match.group("name") if match else None
            return _conflict("check", name if name in _CHECK_NAMES else None)
        return _conflict("foreign_key", None)
    if isinstance(orig, sqlite3.OperationalError):
        # OperationalError also covers "no such table" and syntax errors: only contention and
        # I/O are the backend being unavailable.
        lowered = message.lower()
        if code_name.startswith(_SQLITE_UNAVAILABLE_PREFIXES) or any(
            text in lowered for text in _SQLITE_UNAVAILABLE_TEXT
        ):
            return _unavailable(orig)
    return None


def _is_postgres_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".", 1)[0] == "psycopg"


def translate_db_error(exc: BaseException) -> KiiarenError | None:
    """Return the KIIAREN error that stands for a database exception, or ``None``.

    Accepts SQLAlchemy exceptions and raw driver (psycopg, sqlite3/aiosqlite) exceptions.
    ``None`` means "not a database failure we translate": re-raise the original.
    """
    if isinstance(exc, KiiarenError):
        return None
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection free within the timeout
        return _unavailable(exc)
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig
        if isinstance(orig, sqlite3.Error):
            translated = _from_sqlite(orig)
        elif orig is not None and _is_postgres_error(orig):
            translated = _from_postgres(
                orig,
                operational=isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError),
            )
        else:
            translated = None
        if translated is None and exc.connection_invalidated:
            return _unavailable(exc)
        return translated
    if isinstance(exc, sqlite3.Error):
        return _from_sqlite(exc)
    if _is_postgres_error(exc) and isinstance(exc, Exception):
        return _from_postgres(exc, operational=False)
    return None


class DatabaseErrorTranslator:
    """Context manager (sync and async) and decorator applying :func:`translate_db_error`.

    Use :func:`translate_db_errors` to get one. Exceptions that are not translated, including
    :class:`~kiiaren_core.errors.KiiarenError` and cancellation, pass through untouched.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        translated = translate_db_error(exc)
        if translated is not None:
            raise translated from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, _R]]
    ) -> Callable[_P, Coroutine[Any, Any, _R]]: ...

    @overload
    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]: ...

    def __call__(self, func: Callable[_P, Any]) -> Callable[_P, Any]:
        """Decorate a function (sync or ``async``) so its database errors are translated."""
        if inspect.iscoroutinefunction(func):
            coroutine_function: Callable[_P, Awaitable[Any]] = func

            @functools.wraps(func)
            async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with self:
                    return await coroutine_function(*args, **kwargs)

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            with self:
                return func(*args, **kwargs)

        return wrapper


_TRANSLATOR: Final = DatabaseErrorTranslator()


def translate_db_errors() -> DatabaseErrorTranslator:
    """Translate database exceptions raised in a block or function into KIIAREN errors.

    Usable as ``with translate_db_errors():``, ``async with translate_db_errors():`` or as a
    decorator on a sync or ``async`` function (``@translate_db_errors()``). See the module
    docstring for the mapping.
    """
    return _TRANSLATOR

"""SQLAlchemy's aiosqlite adapter with one thread hop per statement instead of four.

aiosqlite runs every ``sqlite3`` call on its own thread and the event loop waits for each
one. SQLAlchemy's adapter makes four such hops per statement (create a cursor, execute,
fetch all rows, close the cursor); on SQLite a hop (two thread switches through a queue and
the loop's self-pipe) costs more than the statement itself. :class:`OneHopDBAPI` runs the
four steps as one function on the connection's thread, so a statement costs one hop.
Behaviour is otherwise SQLAlchemy's (buffered rows, ``rowcount``/``lastrowid``, error
wrapping through the adapter's ``_handle_exception``).

Server-side cursors, the fallback (sync) mode and everything else stay SQLAlchemy's own.
This relies on two private attributes SQLAlchemy's adapter relies on too (aiosqlite's
``Connection._execute`` and ``_conn``); ``tests/selfhost/db`` exercises it on every run.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
)

__all__ = ["OneHopDBAPI", "one_hop_dbapi"]

_Outcome = tuple[Any, list[Any] | None, int | None, int]
"""(description, rows or None, lastrowid, rowcount) of one statement."""


def _execute(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    """On the connection's thread: execute, fetch everything, close the cursor."""
    cursor = conn.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        if cursor.description:
            return cursor.description, cursor.fetchall(), -1, -1
        return None, None, cursor.lastrowid, cursor.rowcount
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return None, None, cursor.lastrowid, cursor.rowcount
    finally:
        cursor.close()


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose ``execute``/``executemany`` make one hop each."""

    __slots__ = ()

    def _run(self, fn: Any, operation: Any, parameters: Any) -> None:
        connection = self._connection
        try:
            description, rows, lastrowid, rowcount = self.await_(
                connection._execute(fn, connection._conn, operation, parameters)
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self.description = description
        self.lastrowid = lastrowid
        self.rowcount = rowcount
        if rows is not None:
            self._rows = deque(rows)

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._run(_execute, operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._run(_executemany, operation, seq_of_parameters)


class _OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    def cursor(self, server_side: bool = False) -> AsyncAdapt_aiosqlite_cursor:
        if server_side:
            return AsyncAdapt_aiosqlite_ss_cursor(self)
        return _OneHopCursor(self)


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module for ``create_async_engine(..., module=...)``."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        if type(adapted) is AsyncAdapt_aiosqlite_connection:
            return _OneHopConnection(self, adapted._connection)
        return adapted  # the sync fallback mode keeps SQLAlchemy's cursor


def one_hop_dbapi() -> OneHopDBAPI:
    """A fresh module object (SQLAlchemy keeps per-engine state on it)."""
    return OneHopDBAPI(aiosqlite, sqlite3)

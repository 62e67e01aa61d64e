"""SQLAlchemy's aiosqlite adapter with one thread hop per statement instead of four.

aiosqlite runs every ``sqlite3`` call on its own thread and the event loop waits for each
one. SQLAlchemy's adapter makes four such hops per statement (create a cursor, execute,
fetch all rows, close the cursor); on SQLite a hop (two thread switches through a queue and
the loop's self-pipe) costs more than the statement itself. :class:`OneHopDBAPI` runs the
four steps as one function on the connection's thread, so a statement costs one hop.
Behaviour is otherwise SQLAlchemy's (buffered rows, ``rowcount``/``lastrowid``, error
wrapping through the adapter's ``_handle_exception``).

Statements that only set up a transaction (a deferred ``BEGIN``, and the ``PRAGMA
query_only`` switch the engine emits before a ``BEGIN``) are not sent on their own: they are
held and run in the same hop as the next statement, which is equivalent because nothing else
can use the connection in between and a deferred ``BEGIN`` takes no lock. A read that ends
before any statement ran never reaches SQLite (its ``ROLLBACK`` makes no hop either; a held
``PRAGMA`` still runs). So a one-statement read is two hops (statement, ``ROLLBACK``), like a
raw driver's execute and fetch, instead of three. ``BEGIN IMMEDIATE`` is sent at once (with
a held ``PRAGMA``): a writer holds SQLite's write lock from the start of its block, as
:meth:`Database.write` promises.

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

_Outcome = tuple[Any, list[Any] | None, int | None, int, bool]
"""(description, rows or None, lastrowid, rowcount, in a transaction after it)."""


def _is_setup(operation: str, parameters: Any) -> bool:
    """A statement that may wait for the next one (see the module docstring)."""
    return not parameters and (operation == "BEGIN" or operation.startswith("PRAGMA query_only"))


def _run_held(conn: sqlite3.Connection, held: list[str]) -> None:
    for statement in held:
        conn.execute(statement)


def _execute(
    conn: sqlite3.Connection, held: list[str], operation: str, parameters: Any
) -> _Outcome:
    """On the connection's thread: run the held set-up statements, then execute, fetch
    everything, close the cursor."""
    _run_held(conn, held)
    cursor = conn.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        if cursor.description:
            return cursor.description, cursor.fetchall(), -1, -1, conn.in_transaction
        return None, None, cursor.lastrowid, cursor.rowcount, conn.in_transaction
    finally:
        cursor.close()


def _executemany(
    conn: sqlite3.Connection, held: list[str], operation: str, parameters: Any
) -> _Outcome:
    _run_held(conn, held)
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return None, None, cursor.lastrowid, cursor.rowcount, conn.in_transaction
    finally:
        cursor.close()


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose ``execute``/``executemany`` make one hop each."""

    __slots__ = ()

    def _run(self, fn: Any, operation: Any, parameters: Any) -> None:
        connection = self._connection
        adapted: _OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        held, adapted.held = adapted.held, []
        try:
            description, rows, lastrowid, rowcount, in_transaction = self.await_(
                connection._execute(fn, connection._conn, held, operation, parameters)
            )
        except Exception as error:
            adapted.in_transaction = True  # unknown: let COMMIT/ROLLBACK reach SQLite
            self._adapt_connection._handle_exception(error)
        adapted.in_transaction = in_transaction
        self.description = description
        self.lastrowid = lastrowid
        self.rowcount = rowcount
        if rows is not None:
            self._rows = deque(rows)

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        if isinstance(operation, str) and _is_setup(operation, parameters):
            adapted: _OneHopConnection = self._adapt_connection  # type: ignore[assignment]
            adapted.held.append(operation)
            self.description = None
            self.lastrowid = self.rowcount = -1
            return
        self._run(_execute, operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._run(_executemany, operation, seq_of_parameters)


class _OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("held", "in_transaction")

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.held: list[str] = []
        """Set-up statements waiting for the next statement (see the module docstring)."""
        self.in_transaction = True
        """Whether SQLite had a transaction open after the last statement (True when unknown):
        ``COMMIT``/``ROLLBACK`` without one (the pool's reset on check-in, a transaction that
        only read nothing) make no hop."""

    def _end(self, how: str) -> None:
        held, self.held = self.held, []
        if "BEGIN" in held:
            # The transaction never started: nothing to end; only a held PRAGMA remains.
            pragmas = [statement for statement in held if statement.startswith("PRAGMA")]
            if pragmas:
                try:
                    self.await_(
                        self._connection._execute(_run_held, self._connection._conn, pragmas)
                    )
                except Exception as error:
                    self._handle_exception(error)
            return
        if held:  # a PRAGMA outside any transaction: run it before ending
            try:
                self.await_(self._connection._execute(_run_held, self._connection._conn, held))
            except Exception as error:
                self._handle_exception(error)
        if not self.in_transaction:
            return
        if how == "commit":
            super().commit()
        else:
            super().rollback()
        self.in_transaction = False

    def commit(self) -> None:
        self._end("commit")

    def rollback(self) -> None:
        self._end("rollback")

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

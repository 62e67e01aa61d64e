"""Async engines for PostgreSQL (psycopg 3) and SQLite (aiosqlite), and :class:`Database`.

Services use :class:`Database`::

    db = Database.from_url("sqlite+aiosqlite:///./kiiaren.db")
    async with db.write() as conn:      # one transaction: commit on success, rollback on error
        await conn.execute(tables.channels.insert().values(...))
    async with db.read() as conn:       # a read-only, consistent snapshot
        rows = (await conn.execute(sa.select(tables.channels))).all()
    await db.aclose()

Both translate database exceptions into :mod:`kiiaren_core.errors` (see
:mod:`kiiaren_selfhost.db.errors`).

SQLite needs care that PostgreSQL does not:

* Python's ``sqlite3`` (under aiosqlite) does not emit ``BEGIN`` before ``SELECT``, DDL or
  ``SAVEPOINT``, which breaks transactional reads, migrations and nested transactions. As
  SQLAlchemy documents, the driver's own transaction handling is switched off and the engine
  emits ``BEGIN`` itself (:func:`create_engine` installs the event listeners).
* Only one writer at a time. A deferred transaction that reads and then writes fails at once
  with "database is locked" when another connection wrote in between (the busy timeout does
  not apply to lock upgrades), so :meth:`Database.write` starts with ``BEGIN IMMEDIATE``: the
  write lock is taken up front and concurrent writers wait for it (up to the timeout).
  In-process writers additionally queue on a lock, so they wait in order instead of polling.
* ``:memory:`` databases live in one connection (``StaticPool``) that every caller shares;
  :class:`Database` serialises all access to it, reads included, so transactions never mix.
"""

from __future__ import annotations

import math
import select
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Self

import anyio
import sqlalchemy as sa
from psycopg.types.string import TextLoader
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from kiiaren_core.errors import BackendUnavailableError, ConfigurationError, ProviderClosedError
from kiiaren_selfhost.db import pending_claim
from kiiaren_selfhost.db._sqlite_driver import one_hop_dbapi
from kiiaren_selfhost.db.errors import translate_db_errors

__all__ = [
    "DATABASE_URL_VARIABLE",
    "Database",
    "create_engine",
    "is_memory_url",
    "normalize_url",
]

DATABASE_URL_VARIABLE: Final = "KIIAREN_SELFHOST_DATABASE_URL"
"""The environment variable that configures the database (named in configuration errors)."""

# Execution options read by the SQLite "begin" listener (private to this package).
_WRITE_OPTION: Final = "kiiaren_write"
"""True: start the transaction with ``BEGIN IMMEDIATE`` (take the write lock now)."""
_READ_ONLY_OPTION: Final = "kiiaren_read_only"
"""True: the transaction runs with ``PRAGMA query_only`` so a stray write fails loudly."""
_QUERY_ONLY_INFO: Final = "kiiaren_query_only"
"""Key in the DBAPI connection's info dict: the connection's current ``query_only`` state."""

_FIRST_ANSWER: Final = "kiiaren_first_answer"
"""Key in the DBAPI connection's info dict (PostgreSQL): the :class:`_FirstAnswer` of the
transaction on it, until its first statement answered."""

_SUPPORTED = "postgresql+psycopg://user:password@host:5432/dbname or sqlite+aiosqlite:///path.db"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pin the driver this package supports.

    ``postgres://``, ``postgresql://`` and ``postgresql+psycopg://`` become
    ``postgresql+psycopg://``; ``sqlite://`` and ``sqlite+aiosqlite://`` become
    ``sqlite+aiosqlite://``.

    Raises:
        ConfigurationError: the URL cannot be parsed or names another database or driver.
            The message never repeats the URL (it may hold a password).
    """
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError(
            f"The database URL cannot be parsed. Expected {_SUPPORTED}.",
            details={"variable": DATABASE_URL_VARIABLE},
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ConfigurationError(
        f"Unsupported database URL scheme {parsed.drivername!r}. Expected {_SUPPORTED}.",
        details={"variable": DATABASE_URL_VARIABLE},
    )


def is_memory_url(url: str | URL) -> bool:
    """True when ``url`` names an in-memory SQLite database."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or parsed.query.get("mode") == "memory"
    )


def create_engine(url: str | URL, *, pool_size: int = 10, timeout: float = 10.0) -> AsyncEngine:
    """Create an :class:`AsyncEngine` configured for KIIAREN.

    Args:
        url: PostgreSQL (``postgresql+psycopg://``) or SQLite (``sqlite+aiosqlite://``) URL;
            see :func:`normalize_url`.
        pool_size: Connections kept open (and the maximum: there is no overflow, so the
            number of connections a process holds is predictable).
        timeout: Seconds to wait for a connection from the pool, to connect to PostgreSQL, or
            for SQLite's write lock (``busy_timeout``).

    PostgreSQL: a pooled connection the server closed is replaced at checkout, not handed
    out (without a ping's round trip: see :func:`_drop_closed_connections`); ``uuid``
    columns load as text; connect timeout, ``application_name=kiiaren-selfhost`` and the
    session time zone UTC (each unless the URL sets it).

    SQLite: ``foreign_keys=ON``, ``busy_timeout``, WAL and ``synchronous=NORMAL`` for files,
    ``StaticPool`` for ``:memory:``, and SQLAlchemy's documented fix for the driver's broken
    ``BEGIN`` handling. Use :class:`Database` for the write serialisation on top.

    Raises:
        ConfigurationError: unsupported URL (see :func:`normalize_url`).
    """
    return _create_engine(url, pool_size=pool_size, timeout=timeout)


def _create_engine(
    url: str | URL, *, pool_size: int, timeout: float, foreign_keys: bool = True
) -> AsyncEngine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            # libpq counts whole seconds (and treats values below 2 as 2).
            connect_args["connect_timeout"] = max(2, math.ceil(timeout))
        if "application_name" not in parsed.query:
            connect_args["application_name"] = "kiiaren-selfhost"
        if "options" not in parsed.query:
            # Timestamps then arrive with datetime.UTC as tzinfo: UTCDateTime returns them
            # as they are instead of converting each from the server's zone.
            connect_args["options"] = "-c TimeZone=UTC"
        engine = create_async_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout,
            connect_args=connect_args,
        )
        # No pool_pre_ping: its round trip was paid by every transaction. A checkout looks
        # at the socket instead (no round trip); see _drop_closed_connections.
        _drop_closed_connections(engine)
        return engine

    memory = is_memory_url(parsed)
    # One thread hop per statement instead of SQLAlchemy's four (see _sqlite_driver).
    module = one_hop_dbapi()
    if memory:
        engine = create_async_engine(parsed, poolclass=StaticPool, module=module)
    else:
        engine = create_async_engine(
            parsed, pool_size=pool_size, max_overflow=0, pool_timeout=timeout, module=module
        )
    _install_sqlite_listeners(
        engine, busy_timeout_ms=int(timeout * 1000), wal=not memory, foreign_keys=foreign_keys
    )
    return engine


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """Replace, at checkout, a pooled PostgreSQL connection the server has spoken on.

    A server that restarts, or ends a backend (``pg_terminate_backend``, idle timeouts),
    sends a FATAL message and closes the socket of every idle connection. An idle pooled
    connection is otherwise silent (it never LISTENs and has no query running), so a
    readable socket at checkout means the connection is, or may well be, gone: the pool is
    told to connect afresh (:class:`~sqlalchemy.exc.DisconnectionError`, which also
    invalidates the connections pooled before it). The check is one ``poll`` with no wait
    and no round trip: what ``pool_pre_ping`` was for, without its cost on every transaction.
    (Reading first would not settle it: the FATAL message can arrive before the end of the
    stream, and a rare harmless parameter message only costs a reconnect.)

    A connection lost without a word (a partition, a frozen server) is not detected here; its
    first statement then fails or hits the transaction deadline, and the request answers
    503 (see :mod:`kiiaren_selfhost.db.errors`), as it would after a ping that hung.
    """

    # A transaction's first statement is what tells a live pooled connection from one to a
    # frozen server (the pre-ping used to): it must answer within ``timeout`` (see
    # Database._first_answer_deadline).
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _on_statement(conn: sa.Connection, *args: Any) -> None:
        hook = conn.info.get(_FIRST_ANSWER)
        if hook is not None:
            hook.started()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _on_answer(conn: sa.Connection, *args: Any) -> None:
        hook = conn.info.pop(_FIRST_ANSWER, None)
        if hook is not None:
            hook.answered()

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # uuid columns as text: the canonical string UUIDString returns, without building a
        # uuid.UUID per value only to format it again (a page reads hundreds of ids).
        dbapi_connection.driver_connection.adapters.register_loader("uuid", TextLoader)

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # A transaction that ran no statement leaves its hook behind: not for the next user.
        record.info.pop(_FIRST_ANSWER, None)

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        poller = select.poll()
        poller.register(dbapi_connection.driver_connection.pgconn.socket, select.POLLIN)
        if poller.poll(0):
            raise sa.exc.DisconnectionError("The server spoke on an idle pooled connection.")


def _install_sqlite_listeners(
    engine: AsyncEngine, *, busy_timeout_ms: int, wal: bool, foreign_keys: bool
) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Stop the driver from emitting (or skipping) BEGIN: the "begin" listener does it.
        # This also puts the connection in autocommit mode, where the PRAGMAs below must run.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms:d}")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            if wal:
                # WAL lets readers proceed while one writer writes; NORMAL sync is durable
                # in WAL mode except for the last transactions on power loss.
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        read_only = bool(options.get(_READ_ONLY_OPTION, False))
        # query_only is a connection flag that outlives the transaction: switch it only when
        # it differs, and remember the state with the DBAPI connection.
        if conn.info.get(_QUERY_ONLY_INFO, False) != read_only:
            conn.exec_driver_sql(f"PRAGMA query_only = {1 if read_only else 0}")
            conn.info[_QUERY_ONLY_INFO] = read_only
        if options.get(_WRITE_OPTION, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Database:
    """Owns one :class:`AsyncEngine` and hands out transactions; what the services use.

    Nesting :meth:`read` or :meth:`write` inside :meth:`write` opens a second, independent
    transaction (and on SQLite waits for the first one's lock, or, for ``:memory:``, fails
    with ``RuntimeError``): pass the connection down instead.

    Args:
        engine: An engine from :func:`create_engine` (the :class:`Database` disposes it).
        timeout: Seconds an in-process SQLite writer waits for its turn; on PostgreSQL,
            the deadline of a checkout; a transaction then has twice that (see :meth:`write`).
    """

    def __init__(self, engine: AsyncEngine, *, timeout: float = 10.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self._closed = False
        self._dialect_name: str = engine.dialect.name
        memory = self._dialect_name == "sqlite" and is_memory_url(engine.url)
        # SQLite has one writer at a time: in-process writers queue here (fair, no polling)
        # rather than in SQLite's busy handler. A :memory: database is one shared connection,
        # so readers must queue too.
        self._write_lock: anyio.Lock | None = (
            anyio.Lock() if self._dialect_name == "sqlite" else None
        )
        self._read_lock: anyio.Lock | None = self._write_lock if memory else None

    @classmethod
    def from_url(cls, url: str | URL, *, pool_size: int = 10, timeout: float = 10.0) -> Self:
        """Create the engine (see :func:`create_engine`) and wrap it.

        Raises:
            ConfigurationError: unsupported URL.
        """
        return cls(create_engine(url, pool_size=pool_size, timeout=timeout), timeout=timeout)

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for migrations and the event listener)."""
        return self._engine

    @property
    def dialect_name(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return self._dialect_name

    @property
    def is_sqlite(self) -> bool:
        """True for SQLite (single writer, single process for ``:memory:``)."""
        return self._dialect_name == "sqlite"

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A read-only transaction over a consistent snapshot; rolled back at the end.

        PostgreSQL: ``REPEATABLE READ READ ONLY``. SQLite: a deferred transaction with
        ``PRAGMA query_only``. A write inside fails on both (as an untranslated error: it is a
        bug).

        Raises:
            ProviderClosedError: after :meth:`aclose`.
            BackendUnavailableError: the database cannot be reached or is busy.
        """
        return self._transaction(write=False)

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A read-write transaction: committed when the block succeeds, rolled back if it raises.

        PostgreSQL: ``READ COMMITTED`` (lock rows with ``FOR UPDATE`` or use conditional
        updates where it matters). SQLite: ``BEGIN IMMEDIATE``, so the whole transaction is
        serialisable. Savepoints (``conn.begin_nested()``) work on both.

        On PostgreSQL a transaction (reads too) that has no connection ``timeout`` seconds
        after it was asked for, or has not ended ``2 * timeout`` seconds after it got one, is
        cancelled and raises :class:`BackendUnavailableError`; cancelled during ``COMMIT``,
        its outcome is unknown, as when the connection is lost.

        Raises:
            ProviderClosedError: after :meth:`aclose`.
            ConflictError: a constraint refused a change (at statement or commit time).
            BackendUnavailableError: the database cannot be reached, is busy, or did not
                answer within the deadline.
        """
        return self._transaction(write=True)

    def read_one(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for a read that is one statement (its own consistent snapshot).

        PostgreSQL: the statement runs in autocommit, so it costs one round trip instead of
        ``BEGIN``, the statement and ``ROLLBACK``. Statements run in it do not share a
        snapshot: use :meth:`read` when the caller combines the results of several
        (a follow-up statement that only tells *why* the first found nothing is fine).
        Writing in it is a bug: nothing rolls it back. SQLite: the same as :meth:`read`
        (its ``BEGIN`` costs no extra hop). Deadlines and errors as for :meth:`read`.

        Raises:
            ProviderClosedError: after :meth:`aclose`.
            BackendUnavailableError: the database cannot be reached or did not answer in time.
        """
        if self._dialect_name != "postgresql":
            return self._transaction(write=False)
        return self._autocommit_read()

    @asynccontextmanager
    async def _autocommit_read(self) -> AsyncIterator[AsyncConnection]:
        if self._closed:
            raise ProviderClosedError("This database has been closed.")
        # The deadlines of _transaction: ``timeout`` until the first answer, twice that after.
        deadline = anyio.CancelScope(deadline=anyio.current_time() + self._timeout)
        with deadline:
            async with translate_db_errors(), self._engine.connect() as conn:
                self._transaction_deadlines(conn, deadline)
                # Switching psycopg to autocommit sends nothing; the pool switches it back
                # when the connection returns, and its reset ROLLBACK is skipped by psycopg
                # when no transaction is open.
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        if deadline.cancelled_caught:
            raise BackendUnavailableError(
                "The database did not answer in time. Try again shortly.", retry_after=1
            )

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        if self._closed:
            raise ProviderClosedError("This database has been closed.")
        lock = self._write_lock if write else self._read_lock
        # PostgreSQL: deadlines on the checkout and the first answer (pool wait, connect,
        # first statement: ``timeout``; there is no pre-ping) and on the transaction after
        # it (twice that). A server that stopped answering (hung,
        # or a partition) keeps an open connection waiting forever: the kernel still
        # acknowledges, libpq has no read timeout, and statement_timeout is enforced by the
        # very server that hangs. Cancelled, psycopg closes the connection; the pool
        # replaces it.
        postgres = self._dialect_name == "postgresql"
        deadline = anyio.CancelScope(
            deadline=anyio.current_time() + self._timeout if postgres else math.inf
        )
        with deadline:
            async with self._queue(lock), translate_db_errors(), self._engine.connect() as conn:
                if postgres:
                    self._transaction_deadlines(conn, deadline)
                if self._dialect_name == "sqlite":
                    options: dict[str, Any] = (
                        {_WRITE_OPTION: True} if write else {_READ_ONLY_OPTION: True}
                    )
                elif write:
                    options = {}
                else:
                    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
                if options:
                    await conn.execution_options(**options)
                # A write may carry the operation's Idempotency-Key: recorded as its first
                # statement, it commits with the effect or not at all (see pending_claim).
                claim = pending_claim.take() if write else None
                try:
                    async with conn.begin() as transaction:
                        if claim is not None:
                            await pending_claim.record(conn, claim)
                        yield conn
                        if not write and transaction.is_active:
                            # Nothing to keep: ending a read with ROLLBACK is the cheaper end.
                            await transaction.rollback()
                except BaseException:
                    if claim is not None and not claim.taken:
                        claim.held = False  # rolled back: the next write records it
                    raise
                if claim is not None:
                    claim.recorded = True
        if deadline.cancelled_caught:
            raise BackendUnavailableError(
                "The database did not answer in time. Try again shortly.", retry_after=1
            )

    def _transaction_deadlines(self, conn: AsyncConnection, deadline: anyio.CancelScope) -> None:
        """Deadlines of a PostgreSQL transaction that has its connection: ``2 * timeout``,
        except that its first statement must answer within ``timeout`` of being sent.

        Without a pre-ping, the first statement is what finds a pooled connection to a
        frozen server: it answers 503 within ``timeout``, as the ping did.
        """
        deadline.deadline = anyio.current_time() + 2 * self._timeout
        conn.sync_connection.info[_FIRST_ANSWER] = _FirstAnswer(  # type: ignore[union-attr]
            deadline, self._timeout
        )

    @asynccontextmanager
    async def _exclusive_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection with no transaction begun, holding the in-process write queue.

        For maintenance that manages its own transaction (migrations). Errors are translated.
        """
        if self._closed:
            raise ProviderClosedError("This database has been closed.")
        async with (
            self._queue(self._write_lock),
            translate_db_errors(),
            self._engine.connect() as conn,
        ):
            yield conn

    @asynccontextmanager
    async def _queue(self, lock: anyio.Lock | None) -> AsyncIterator[None]:
        if lock is None:
            yield
            return
        try:
            with anyio.fail_after(self._timeout):
                await lock.acquire()
        except TimeoutError:
            raise BackendUnavailableError(
                "The database is busy. Try again shortly.", retry_after=1
            ) from None
        try:
            yield
        finally:
            lock.release()

    async def aclose(self) -> None:
        """Dispose of the engine and its connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _FirstAnswer:
    """Deadline hooks of one transaction's first statement (run by the engine's listeners)."""

    __slots__ = ("_deadline", "_lifted", "_timeout")

    def __init__(self, deadline: anyio.CancelScope, timeout: float) -> None:
        self._deadline = deadline
        self._timeout = timeout
        self._lifted = deadline.deadline

    def started(self) -> None:
        self._deadline.deadline = min(self._lifted, anyio.current_time() + self._timeout)

    def answered(self) -> None:
        self._deadline.deadline = self._lifted

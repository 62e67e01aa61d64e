"""The one translation boundary: database exceptions become kiiaren_core errors."""

from __future__ import annotations

import sqlite3
import threading

import anyio
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
)
from kiiaren_selfhost.db import (
    Database,
    check_schema,
    migrate,
    new_id,
    tables,
    translate_db_error,
    translate_db_errors,
)
from tests.selfhost.db import rows

pytestmark = pytest.mark.anyio

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/kiiaren"


async def test_unique_violation_names_the_constraint(db: Database) -> None:
    async with db.write() as conn:
        email = (await rows.user(conn)) + "@dup.test"
        await rows.user(conn, email=email)
    with pytest.raises(ConflictError) as caught:
        async with db.write() as conn:
            await rows.user(conn, email=email)
    assert caught.value.code == "conflict"
    assert caught.value.http_status == 409
    assert caught.value.details == {"violation": "unique", "constraint": "uq_users_email"}


async def test_translator_as_context_manager_and_decorator(db: Database) -> None:
    email = f"{new_id()}@dup.test"
    async with db.write() as conn:
        await rows.user(conn, email=email)

    async with db.engine.connect() as conn:  # a raw engine connection: no automatic translation

        @translate_db_errors()
        async def insert_duplicate() -> None:
            await rows.user(conn, email=email)

        with pytest.raises(ConflictError):
            await insert_duplicate()
        await conn.rollback()
        with pytest.raises(ConflictError):
            async with translate_db_errors():
                await rows.user(conn, email=email)
        await conn.rollback()
        with pytest.raises(ConflictError), translate_db_errors():
            await rows.user(conn, email=email)
        await conn.rollback()


def test_sync_decorator_and_untranslated_errors() -> None:
    @translate_db_errors()
    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(BackendUnavailableError):
        locked()

    @translate_db_errors()
    def fine(value: int) -> int:
        return value * 2

    assert fine(21) == 42
    assert fine.__name__ == "fine"

    for error in (
        ValueError("not a database error"),
        NotFoundError(),  # KIIAREN errors pass through untouched
        sqlite3.OperationalError("no such table: users"),  # a bug, not an outage
        sqlite3.OperationalError('near "SELEC": syntax error'),
    ):
        with pytest.raises(type(error)) as caught, translate_db_errors():
            raise error
        assert caught.value is error


def test_raw_driver_errors() -> None:
    unique = sqlite3.IntegrityError("UNIQUE constraint failed: members.workspace_id")
    conflict = translate_db_error(unique)
    assert isinstance(conflict, ConflictError)
    assert conflict.details == {"violation": "unique", "constraint": "uq_members_one_owner"}
    for message in ("database is locked", "disk I/O error", "unable to open database file"):
        assert isinstance(
            translate_db_error(sqlite3.OperationalError(message)), BackendUnavailableError
        )
    not_null = sqlite3.IntegrityError("NOT NULL constraint failed: users.email")
    assert translate_db_error(not_null) is None
    assert translate_db_error(RuntimeError("x")) is None


async def test_unreachable_postgres_is_unavailable() -> None:
    async with Database.from_url(UNREACHABLE, timeout=2.0) as db:
        for attempt in (db.read, db.write):
            with pytest.raises(BackendUnavailableError) as caught:
                async with attempt():
                    pass
            assert caught.value.retry_after == 1
            assert caught.value.http_status == 503
            assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
        with pytest.raises(BackendUnavailableError):
            await check_schema(db)
    with pytest.raises(BackendUnavailableError):
        await migrate(UNREACHABLE)


async def test_unopenable_sqlite_is_unavailable() -> None:
    before = set(threading.enumerate())
    async with Database.from_url("sqlite+aiosqlite:////nonexistent-dir/k.db") as db:
        with pytest.raises(BackendUnavailableError):
            async with db.read():
                pass
    # After a failed connect aiosqlite stops its worker thread without awaiting it; let it
    # finish while this test's event loop is still open (else it reports "loop is closed").
    with anyio.fail_after(5):
        while any(thread.is_alive() for thread in set(threading.enumerate()) - before):  # noqa: ASYNC110 - polling a thread, no event to wait on
            await anyio.sleep(0.01)


@pytest.mark.postgres
async def test_connection_killed_mid_transaction_is_unavailable(postgres_admin_url: str) -> None:
    from tests.selfhost.db.conftest import postgres_database

    with postgres_database(postgres_admin_url) as url:
        async with Database.from_url(url, pool_size=2) as db, Database.from_url(url) as killer:

            async def killed_mid_transaction() -> None:
                async with db.write() as conn:
                    pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
                    async with killer.write() as other:
                        await other.execute(
                            sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                        )
                    await conn.execute(sa.text("SELECT 1"))

            with pytest.raises(BackendUnavailableError):
                await killed_mid_transaction()
            # The pool replaced the dead connection: the next transaction works.
            async with db.read() as conn:
                assert await conn.scalar(sa.text("SELECT 1")) == 1


async def test_conflict_inside_a_savepoint_can_be_handled(db: Database) -> None:
    """Services can catch a conflict on a savepoint and carry on with the transaction."""
    email = f"{new_id()}@dup.test"
    async with db.write() as conn:
        await rows.user(conn, email=email)
    async with db.write() as conn:
        with pytest.raises(ConflictError):
            async with translate_db_errors(), conn.begin_nested():
                await rows.user(conn, email=email)
        user_id = await rows.user(conn)
    async with db.read() as conn:
        assert await rows.count(conn, tables.users, tables.users.c.id == user_id) == 1

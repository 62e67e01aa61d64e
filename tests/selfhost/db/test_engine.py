"""Engines and Database: SQLite settings and transactions, read/write semantics, lifecycle."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import BackendUnavailableError, ConfigurationError, ProviderClosedError
from kiiaren_selfhost.db import (
    Database,
    create_engine,
    is_memory_url,
    migrate,
    new_id,
    normalize_url,
    tables,
)
from tests.selfhost.db import rows

pytestmark = pytest.mark.anyio

rate_limits = tables.rate_limits


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> Database:
    return Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", timeout=10.0)


async def counter(db: Database, key: str) -> int:
    async with db.read() as conn:
        value = await conn.scalar(sa.select(rate_limits.c.count).where(rate_limits.c.key == key))
    return int(value or 0)


async def increment(db: Database, key: str, pause: float = 0.0) -> None:
    """Read-modify-write: only correct if write transactions are serialised."""
    async with db.write() as conn:
        value = await conn.scalar(sa.select(rate_limits.c.count).where(rate_limits.c.key == key))
        await anyio.sleep(pause)  # widen the race window
        await conn.execute(
            rate_limits.update().where(rate_limits.c.key == key).values(count=int(value or 0) + 1)
        )


async def new_counter(db: Database) -> str:
    key = new_id()
    async with db.write() as conn:
        await conn.execute(rate_limits.insert().values(key=key, window_start=0, count=0))
    return key


# --- SQLite specifics --------------------------------------------------------------------------


async def test_sqlite_file_pragmas(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", timeout=7.5)
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("foreign_keys", "journal_mode", "busy_timeout", "synchronous")
            }
    finally:
        await engine.dispose()
    assert pragmas == {
        "foreign_keys": 1,
        "journal_mode": "wal",
        "busy_timeout": 7500,
        "synchronous": 1,
    }


async def test_memory_database_is_shared_across_connections() -> None:
    async with Database.from_url("sqlite+aiosqlite:///:memory:") as db:
        await migrate(db)
        key = await new_counter(db)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(increment, db, key, 0.001)
                tg.start_soon(counter, db, key)  # readers interleave safely
        assert await counter(db, key) == 10


async def test_concurrent_writers_in_one_process(migrated_sqlite: Database) -> None:
    key = await new_counter(migrated_sqlite)
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(increment, migrated_sqlite, key, 0.01)
    assert await counter(migrated_sqlite, key) == 8


async def test_concurrent_writers_across_engines(migrated_sqlite_url: str) -> None:
    """Writers that share no in-process lock (like separate processes) serialise in SQLite:
    BEGIN IMMEDIATE makes them wait for the write lock instead of failing "database is
    locked" on the upgrade from read to write."""
    databases = [Database.from_url(migrated_sqlite_url, timeout=30.0) for _ in range(8)]
    try:
        key = await new_counter(databases[0])
        async with anyio.create_task_group() as tg:
            for database in databases:
                tg.start_soon(increment, database, key, 0.01)
        assert await counter(databases[0], key) == 8
    finally:
        for database in databases:
            await database.aclose()


async def test_sqlite_busy_beyond_the_timeout_is_unavailable(migrated_sqlite_url: str) -> None:
    holder = Database.from_url(migrated_sqlite_url)
    waiter = Database.from_url(migrated_sqlite_url, timeout=0.2)
    try:
        async with holder.write():
            with pytest.raises(BackendUnavailableError) as caught:
                async with waiter.write():
                    pass
        assert caught.value.retry_after == 1
        async with waiter.write():  # free again
            pass
    finally:
        await holder.aclose()
        await waiter.aclose()


async def test_in_process_queue_timeout_is_unavailable(tmp_path: Path) -> None:
    errors: list[BackendUnavailableError] = []

    async def contender(db: Database) -> None:
        try:
            async with db.write():
                pass
        except BackendUnavailableError as error:
            errors.append(error)

    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    async with Database.from_url(url, timeout=0.2) as db, db.write():
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(contender, db)
    assert len(errors) == 1
    assert "busy" in errors[0].message
    assert errors[0].retry_after == 1


async def test_readers_do_not_wait_for_a_writer(migrated_sqlite: Database) -> None:
    key = await new_counter(migrated_sqlite)
    async with migrated_sqlite.write() as conn:
        await conn.execute(rate_limits.update().where(rate_limits.c.key == key).values(count=5))
        with anyio.fail_after(2):
            # WAL: the reader sees the last committed state, without blocking.
            assert await counter(migrated_sqlite, key) == 0
    assert await counter(migrated_sqlite, key) == 5


# --- both backends -----------------------------------------------------------------------------


async def test_write_commits_and_rolls_back(db: Database) -> None:
    key = await new_counter(db)

    async def aborted() -> None:
        async with db.write() as conn:
            await conn.execute(rate_limits.update().where(rate_limits.c.key == key).values(count=9))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        await aborted()
    assert await counter(db, key) == 0
    await increment(db, key)
    assert await counter(db, key) == 1


async def test_savepoints(db: Database) -> None:
    outer, inner = new_id(), new_id()
    async with db.write() as conn:
        await conn.execute(rate_limits.insert().values(key=outer, window_start=0))

        async def rolled_back_savepoint() -> None:
            async with conn.begin_nested():
                await conn.execute(rate_limits.insert().values(key=inner, window_start=0))
                raise RuntimeError("roll back the savepoint only")

        with pytest.raises(RuntimeError):
            await rolled_back_savepoint()
        async with conn.begin_nested():
            await conn.execute(rate_limits.insert().values(key=inner, window_start=1))
    async with db.read() as conn:
        found = (
            await conn.execute(
                sa.select(rate_limits.c.key, rate_limits.c.window_start).where(
                    rate_limits.c.key.in_([outer, inner])
                )
            )
        ).all()
    assert sorted(found) == sorted([(outer, 0), (inner, 1)])


async def test_savepoint_rolls_back_with_the_transaction(db: Database) -> None:
    key = new_id()

    async def aborted_after_savepoint() -> None:
        async with db.write() as conn:
            async with conn.begin_nested():
                await conn.execute(rate_limits.insert().values(key=key, window_start=0))
            raise RuntimeError("the released savepoint must roll back too")

    with pytest.raises(RuntimeError):
        await aborted_after_savepoint()
    assert await counter(db, key) == 0
    async with db.read() as conn:
        assert await rows.count(conn, rate_limits, rate_limits.c.key == key) == 0


async def test_read_is_read_only(db: Database) -> None:
    with pytest.raises(sa.exc.DBAPIError):
        async with db.read() as conn:
            await conn.execute(rate_limits.insert().values(key=new_id(), window_start=0))
    # The connection went back to the pool writable.
    for _ in range(3):
        await new_counter(db)


async def test_read_sees_a_consistent_snapshot(db: Database) -> None:
    key = await new_counter(db)
    async with db.read() as conn:
        before = await conn.scalar(sa.select(rate_limits.c.count).where(rate_limits.c.key == key))
        await increment(db, key)
        after = await conn.scalar(sa.select(rate_limits.c.count).where(rate_limits.c.key == key))
    assert before == after == 0
    assert await counter(db, key) == 1


async def test_dialect_name_and_close(migrated_url: str) -> None:
    db = Database.from_url(migrated_url)
    assert db.dialect_name in ("sqlite", "postgresql")
    assert db.is_sqlite is (db.dialect_name == "sqlite")
    states = [db.closed]
    await db.aclose()
    await db.aclose()  # idempotent
    states.append(db.closed)
    assert states == [False, True]
    with pytest.raises(ProviderClosedError):
        async with db.read():
            pass
    with pytest.raises(ProviderClosedError):
        async with db.write():
            pass


async def test_pool_exhaustion_is_unavailable(migrated_url: str) -> None:
    async with Database.from_url(migrated_url, pool_size=1, timeout=0.3) as db, db.read():
        with pytest.raises(BackendUnavailableError):
            async with db.read():
                pass


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ("postgresql://u@h:5433/d", "postgresql+psycopg://u@h:5433/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:///./kiiaren.db", "sqlite+aiosqlite:///./kiiaren.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url", ["mysql://root:hunter2@h/d", "postgresql+asyncpg://u:hunter2@h/d", "not a url"]
)
def test_unsupported_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_engine(url)
    assert "hunter2" not in caught.value.message
    assert caught.value.details == {"variable": "KIIAREN_SELFHOST_DATABASE_URL"}


def test_is_memory_url() -> None:
    assert is_memory_url("sqlite+aiosqlite:///:memory:")
    assert is_memory_url("sqlite+aiosqlite://")
    assert not is_memory_url("sqlite+aiosqlite:///kiiaren.db")
    assert not is_memory_url("postgresql+psycopg://u@h/d")

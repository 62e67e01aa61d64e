"""The SQLite driver adapter: one thread hop per statement, transaction set-up held for the
first statement, and the DBAPI answers (rows, rowcount, errors) unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import BackendUnavailableError, ConflictError
from kiiaren_selfhost.db import Database

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> Any:
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path}/t.db", timeout=0.5)
    async with db.write() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    yield db
    await db.aclose()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions run on aiosqlite's thread, one entry per hop."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def spy(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", spy)
    return seen


async def test_a_one_statement_read_is_two_hops(sqlite_db: Database, hops: list[str]) -> None:
    async with sqlite_db.read() as conn:
        pass  # warm: the pooled connection's query_only switch is made once
    hops.clear()
    async with sqlite_db.read() as conn:
        assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
    assert len(hops) == 2, hops  # BEGIN + SELECT in one, ROLLBACK


async def test_a_write_is_one_hop_per_statement_plus_commit(
    sqlite_db: Database, hops: list[str]
) -> None:
    async with sqlite_db.write() as conn:
        result = await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('a')")
        assert result.rowcount == 1
        assert result.lastrowid
        many = await conn.execute(
            sa.text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}]
        )
        assert many.rowcount == 2
    assert len(hops) == 4, hops  # BEGIN IMMEDIATE is sent at once: the lock is held first
    async with sqlite_db.read() as conn:
        assert [r.v for r in await conn.exec_driver_sql("SELECT v FROM t ORDER BY v")] == [
            "a",
            "b",
            "c",
        ]


async def test_an_empty_read_makes_no_hop_and_reads_stay_read_only(
    sqlite_db: Database, hops: list[str]
) -> None:
    async with sqlite_db.write() as conn:
        await conn.exec_driver_sql("SELECT 1")
    hops.clear()
    async with sqlite_db.read():
        pass
    async with sqlite_db.read():
        pass
    # The only hop: the query_only switch of the pooled connection (a held PRAGMA still runs).
    assert len(hops) == 1, hops
    with pytest.raises(Exception, match=r"readonly|read-only|query_only|attempt to write"):
        async with sqlite_db.read() as conn:
            await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('x')")


async def test_errors_keep_their_translation(sqlite_db: Database) -> None:
    async with sqlite_db.write() as conn:
        await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('dup')")
    with pytest.raises(ConflictError):
        async with sqlite_db.write() as conn:
            await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('dup')")


async def test_begin_immediate_takes_the_write_lock_at_once(
    tmp_path: Path, sqlite_db: Database
) -> None:
    """Another process's writer holds the lock: ``write()`` waits for it (busy timeout)
    before its block runs, and fails as busy."""
    other = await aiosqlite.connect(str(sqlite_db.engine.url.database), isolation_level=None)
    try:
        await other.execute("BEGIN IMMEDIATE")
        entered = False
        with pytest.raises(BackendUnavailableError):
            async with sqlite_db.write():
                entered = True
        assert not entered
        await other.execute("ROLLBACK")
    finally:
        await other.close()
    async with sqlite_db.write() as conn:  # the connection is usable again
        await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('after')")

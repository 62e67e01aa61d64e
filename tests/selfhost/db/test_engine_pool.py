"""The PostgreSQL pool without pre-ping, and :meth:`Database.read_one`.

A pooled connection whose backend the server ended is replaced at checkout (no request sees
it); one that dies under a transaction answers 503 and the next transaction works. A
single-statement read runs without ``BEGIN``/``ROLLBACK`` and leaves its connection
transactional for the next user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from kiiaren_core.errors import BackendUnavailableError
from kiiaren_selfhost.db import Database, new_id, normalize_url, tables
from kiiaren_selfhost.db.types import UTCDateTime, UUIDString, utcnow

pytestmark = pytest.mark.anyio

# Each test runs on the one database it is about (a skipped PostgreSQL variant would fail CI).
ON_POSTGRES = pytest.mark.parametrize(
    "migrated_url",
    [pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
ON_SQLITE = pytest.mark.parametrize(
    "migrated_url", [pytest.param("sqlite", id="sqlite")], indirect=True
)

rate_limits = tables.rate_limits
BACKEND_PID = sa.text("SELECT pg_backend_pid()")
# True when the statement is its own transaction: a BEGIN sent before it would have fixed
# now() (the transaction's start) earlier than the statement's own timestamp.
OWN_TRANSACTION = sa.text("SELECT now() = statement_timestamp()")


@pytest.fixture
async def pg(migrated_url: str) -> AsyncIterator[Database]:
    database = Database.from_url(migrated_url, pool_size=2, timeout=10.0)
    try:
        yield database
    finally:
        await database.aclose()


async def terminate(db: Database, pids: set[int]) -> None:
    """End these backends from another connection, as a server restart ends every backend."""
    url = make_url(db.engine.url.render_as_string(hide_password=False))
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # pg_terminate_backend only signals: wait until the backends are gone.
        for _ in range(200):
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == 0:
                return
            await anyio.sleep(0.01)
        raise AssertionError("backends did not end")


async def pooled_pids(db: Database) -> set[int]:
    """Check out both pooled connections at once and return their backend pids."""
    async with db.read() as first, db.read() as second:
        return {int(await first.scalar(BACKEND_PID)), int(await second.scalar(BACKEND_PID))}


@ON_POSTGRES
async def test_ended_backends_are_replaced_at_checkout(pg: Database) -> None:
    before = await pooled_pids(pg)
    await terminate(pg, before)
    # Every kind of unit gets a live connection: none sees the dead ones.
    async with pg.read_one() as conn:
        one = int(await conn.scalar(BACKEND_PID))
    async with pg.write() as conn:
        await conn.execute(rate_limits.insert().values(key=new_id(), window_start=0, count=0))
    after = await pooled_pids(pg)
    assert one not in before
    assert after.isdisjoint(before)


@ON_POSTGRES
async def test_a_backend_ended_under_a_transaction_is_unavailable_then_recovers(
    pg: Database,
) -> None:
    pids: list[int] = []

    async def ended_under_it() -> None:
        async with pg.read() as conn:
            pids.append(int(await conn.scalar(BACKEND_PID)))
            await terminate(pg, set(pids))
            await conn.scalar(BACKEND_PID)

    with pytest.raises(BackendUnavailableError):
        await ended_under_it()
    async with pg.read() as conn:
        assert int(await conn.scalar(BACKEND_PID)) not in pids


@ON_POSTGRES
async def test_read_one_runs_without_a_transaction(pg: Database) -> None:
    async with pg.read_one() as conn:
        assert await conn.scalar(OWN_TRANSACTION) is True
    async with pg.read() as conn:
        assert await conn.scalar(OWN_TRANSACTION) is False


@ON_POSTGRES
async def test_a_connection_after_read_one_is_transactional_again(pg: Database) -> None:
    for _ in range(4):  # both pooled connections went through read_one
        async with pg.read_one() as conn:
            await conn.scalar(OWN_TRANSACTION)
    key = new_id()

    class UndoError(Exception):
        pass

    async def insert_then_fail() -> None:
        async with pg.write() as conn:
            assert await conn.scalar(OWN_TRANSACTION) is False
            await conn.execute(rate_limits.insert().values(key=key, window_start=0, count=0))
            raise UndoError

    with pytest.raises(UndoError):
        await insert_then_fail()
    async with pg.read() as conn:
        found = await conn.scalar(sa.select(rate_limits.c.key).where(rate_limits.c.key == key))
    assert found is None


@ON_SQLITE
async def test_read_one_on_sqlite_is_a_read(migrated_url: str) -> None:
    async with Database.from_url(migrated_url) as db:
        with pytest.raises(sa.exc.DBAPIError):  # query_only, as in read()
            async with db.read_one() as conn:
                await conn.execute(rate_limits.insert().values(key=new_id(), window_start=0))


@ON_POSTGRES
async def test_ids_load_as_canonical_text_and_timestamps_as_utc(pg: Database) -> None:
    key = new_id()
    async with pg.write() as conn:
        await conn.execute(
            tables.instance_secrets.insert().values(name=key, value="v", created_at=utcnow())
        )
    async with pg.read_one() as conn:
        row = (
            await conn.execute(
                sa.select(
                    sa.cast(sa.literal(key.upper()), UUIDString()).label("id"),
                    tables.instance_secrets.c.created_at,
                ).where(tables.instance_secrets.c.name == key)
            )
        ).one()
        raw = await conn.scalar(sa.text("SELECT gen_random_uuid()"))
    assert row.id == key  # canonical: lowercase, dashed, a str
    assert row.created_at.tzinfo is UTC
    assert isinstance(raw, str)  # psycopg's own loading of uuid is text on our connections


@ON_POSTGRES
async def test_ids_are_strings_on_a_connection_without_the_text_loader(migrated_url: str) -> None:
    engine = create_async_engine(normalize_url(migrated_url))
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(sa.select(sa.cast(sa.literal(new_id()), UUIDString())))
            moment = await conn.scalar(sa.select(sa.cast(sa.func.now(), UTCDateTime())))
    finally:
        await engine.dispose()
    assert isinstance(value, str)
    assert moment.tzinfo is UTC

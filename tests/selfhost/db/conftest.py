"""Fixtures for the database layer: every test runs on SQLite (a temp file) and PostgreSQL.

* ``empty_url``: a brand-new, empty database for one test (PostgreSQL: a database created on
  the test server through ``postgres_admin_url`` and dropped afterwards), for migration tests.
* ``migrated_url``: one database per backend per session, migrated to head; tests isolate
  themselves by creating their own rows (fresh ids), never by relying on an empty table.
* ``db``: a :class:`Database` on ``migrated_url``, closed after the test.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
import pytest

from kiiaren_selfhost.db import Database, migrate

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """Create an empty PostgreSQL database next to the admin one; drop it on exit."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    name = f"kiiaren_db_{secrets.token_hex(5)}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgres"``."""
    value: str = request.param
    return value


@pytest.fixture
def empty_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, empty database of the test's backend."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'empty.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    with postgres_database(admin_url) as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def migrated_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database migrated to head, shared by the session's tests of one backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'kiiaren.db'}"
        anyio.run(migrate, url)
        yield url
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    with postgres_database(admin_url) as url:
        anyio.run(migrate, url)
        yield url


@pytest.fixture
async def db(migrated_url: str) -> AsyncIterator[Database]:
    """A :class:`Database` on the migrated database of the test's backend."""
    database = Database.from_url(migrated_url, pool_size=4, timeout=10.0)
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
def backend_name(db: Database) -> str:
    """The dialect name of the test's database: ``"sqlite"`` or ``"postgresql"``."""
    return db.dialect_name


@pytest.fixture(scope="session")
def migrated_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file for the SQLite-only tests."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'sqlite-only.db'}"
    anyio.run(migrate, url)
    return url


@pytest.fixture
async def migrated_sqlite(migrated_sqlite_url: str) -> AsyncIterator[Database]:
    """A :class:`Database` on :func:`migrated_sqlite_url`."""
    database = Database.from_url(migrated_sqlite_url)
    try:
        yield database
    finally:
        await database.aclose()

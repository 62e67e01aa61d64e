"""Migrations are the only way the schema is made: up, down, up again, checks and the CLI."""

from __future__ import annotations

import importlib
import re

import anyio
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kiiaren_core.errors import ConfigurationError
from kiiaren_selfhost.db import (
    DATABASE_URL_VARIABLE,
    MIGRATE_COMMAND,
    Database,
    SchemaNotMigratedError,
    SchemaTooNewError,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    metadata,
    migrate,
)

pytestmark = pytest.mark.anyio

# The module, not the function of the same name re-exported by the package.
migrate_module = importlib.import_module("kiiaren_selfhost.db.migrate")

SCHEMA_TABLES = set(metadata.tables)


async def table_names(db: Database) -> set[str]:
    async with db.read() as conn:
        names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    return set(names) - {"alembic_version"}


async def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    async with Database.from_url(empty_url) as db:
        assert await table_names(db) == set()
        assert await current_revision(db) is None

        await migrate(empty_url)
        assert await table_names(db) == SCHEMA_TABLES
        assert await current_revision(db) == head_revision()

        await downgrade(empty_url, "base")
        assert await table_names(db) == set()
        assert await current_revision(db) is None

        await migrate(empty_url)
        assert await table_names(db) == SCHEMA_TABLES
        await check_schema(db)


async def test_migrate_is_idempotent_and_serialised(empty_url: str) -> None:
    # Two servers starting at once: both calls succeed and the schema is made once.
    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate, empty_url)
        tg.start_soon(migrate, empty_url)
    await migrate(empty_url)
    async with Database.from_url(empty_url) as db:
        assert await current_revision(db) == head_revision()
        assert await table_names(db) == SCHEMA_TABLES


async def test_migrate_through_database_and_engine(empty_url: str) -> None:
    async with Database.from_url(empty_url) as db:
        await migrate(db)
        await check_schema(db)
        await downgrade(db.engine, "base")
        assert await current_revision(db.engine) is None
        await migrate(db.engine)
        await check_schema(db.engine)


async def test_migrated_schema_matches_tables(db: Database) -> None:
    """The migration and tables.py describe the same schema (columns, types, keys, indexes)."""

    def compare(sync: sa.Connection) -> list[object]:
        context = MigrationContext.configure(
            sync, opts={"compare_type": True, "target_metadata": metadata}
        )
        return list(compare_metadata(context, metadata))

    async with db.read() as conn:
        differences = await conn.run_sync(compare)
    assert differences == []


async def test_migrated_constraint_names(db: Database) -> None:
    """The database holds the named constraints the error translation reports."""

    def inspect(sync: sa.Connection) -> dict[str, set[str]]:
        inspector = sa.inspect(sync)
        return {
            "members": {
                *(uq["name"] or "" for uq in inspector.get_unique_constraints("members")),
                *(ix["name"] or "" for ix in inspector.get_indexes("members")),
                *(ck["name"] or "" for ck in inspector.get_check_constraints("members")),
            },
            "messages_fk": {fk["name"] or "" for fk in inspector.get_foreign_keys("messages")},
        }

    async with db.read() as conn:
        found = await conn.run_sync(inspect)
    assert {
        "uq_members_workspace_id_user_id",
        "uq_members_one_owner",
        "ix_members_user_id",
        "ck_members_role",
    } <= found["members"]
    assert "fk_messages_parent_message_id_messages" in found["messages_fk"]


async def test_check_schema_on_empty_database_says_how_to_migrate(empty_url: str) -> None:
    async with Database.from_url(empty_url) as db:
        with pytest.raises(SchemaNotMigratedError) as caught:
            await check_schema(db)
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert error.code == "configuration_error"
    assert MIGRATE_COMMAND in error.message
    assert DATABASE_URL_VARIABLE in error.message
    assert "migrate(URL)" in error.message
    assert error.details["current_revision"] is None
    assert error.details["head"] == head_revision()


async def test_check_schema_behind(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend this code ships a newer revision than the database's (known) one.
    monkeypatch.setattr(migrate_module, "head_revision", lambda: "0004")
    with pytest.raises(SchemaNotMigratedError, match=r"at revision 0003, older than") as caught:
        await check_schema(db)
    assert MIGRATE_COMMAND in caught.value.message


async def test_check_schema_ahead(empty_url: str) -> None:
    await migrate(empty_url)
    async with Database.from_url(empty_url) as db:
        async with db.write() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaTooNewError, match="newer kiiaren") as caught:
            await check_schema(db)
        assert not isinstance(caught.value, SchemaNotMigratedError)
        assert caught.value.details["current_revision"] == "9999"


async def test_in_memory_sqlite_is_migrated_through_its_database() -> None:
    with pytest.raises(ConfigurationError, match="in-memory"):
        await migrate("sqlite+aiosqlite:///:memory:")
    async with Database.from_url("sqlite+aiosqlite:///:memory:") as db:
        await migrate(db)
        await check_schema(db)
        assert await table_names(db) == SCHEMA_TABLES


async def test_unknown_revision_is_a_configuration_error(empty_url: str) -> None:
    with pytest.raises(ConfigurationError, match="Migration failed"):
        await migrate(empty_url, "nope")
    async with Database.from_url(empty_url) as db:
        assert await table_names(db) == set()


async def test_failed_migration_leaves_no_trace(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade runs in one transaction: an error half-way leaves the database empty."""
    from alembic import op

    real_create_index = op.create_index
    calls = 0

    def failing_create_index(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("boom half-way")
        return real_create_index(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(op, "create_index", failing_create_index)
    with pytest.raises(RuntimeError, match="boom half-way"):
        await migrate(empty_url)
    monkeypatch.undo()
    async with Database.from_url(empty_url) as db:
        assert await table_names(db) == set()
        assert await current_revision(db) is None


def test_cli_upgrade_current_check_downgrade(
    empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main = migrate_module.main
    assert main(["--url", empty_url, "check"]) == 1
    assert MIGRATE_COMMAND in capsys.readouterr().err
    assert main(["--url", empty_url]) == 0  # upgrade is the default command
    assert capsys.readouterr().out.strip() == head_revision()
    assert main(["--url", empty_url, "current"]) == 0
    assert capsys.readouterr().out.strip() == head_revision()
    assert main(["--url", empty_url, "check"]) == 0
    capsys.readouterr()
    assert main(["--url", empty_url, "downgrade", "base"]) == 0
    assert "not migrated" in capsys.readouterr().out
    assert main(["--url", empty_url, "current"]) == 0
    assert "not migrated" in capsys.readouterr().out


def test_cli_reads_the_environment(
    empty_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DATABASE_URL_VARIABLE, empty_url)
    assert migrate_module.main(["upgrade"]) == 0
    capsys.readouterr()
    assert migrate_module.main(["current"]) == 0
    assert capsys.readouterr().out.strip() == head_revision()


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///unused.db", "postgresql+psycopg://user@localhost/unused"]
)
def test_cli_offline_sql(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--sql`` renders the DDL for the URL's dialect without connecting."""
    assert migrate_module.main(["--url", url, "upgrade", "head", "--sql"]) == 0
    sql = capsys.readouterr().out
    assert len(re.findall(r"CREATE TABLE", sql)) == len(SCHEMA_TABLES) + 1  # + alembic_version
    assert "CREATE UNIQUE INDEX uq_members_one_owner ON members (workspace_id) WHERE" in sql
    if url.startswith("postgresql"):
        assert "JSONB" in sql
        assert "UUID" in sql

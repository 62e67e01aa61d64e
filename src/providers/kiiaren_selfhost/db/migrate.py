"""Schema migrations: the only way the self-host schema is created or changed.

Alembic runs programmatically: the configuration is built in code and points at the
``migrations`` directory shipped inside this package, so no ``alembic.ini`` is needed.

* :func:`migrate` / :func:`downgrade` apply revisions in ONE transaction (PostgreSQL and
  SQLite both have transactional DDL), so a failed migration leaves the schema untouched.
  Concurrent callers serialise (PostgreSQL advisory lock, SQLite ``BEGIN IMMEDIATE``): two
  servers starting at once do not both migrate.
* On SQLite, foreign keys are switched off while migrating (batch operations copy and drop
  tables, and dropping a referenced table would cascade-delete rows) and ``PRAGMA
  foreign_key_check`` must come back clean before the transaction commits.
* :func:`check_schema` is what a provider calls on start when it does not migrate itself.

Note: the package re-exports the *function* :func:`migrate` as ``kiiaren_selfhost.db.migrate``,
which hides this module of the same name from attribute access. Import names from it with
``from kiiaren_selfhost.db.migrate import ...`` (or ``importlib.import_module``).

From a shell (``--url`` or ``KIIAREN_SELFHOST_DATABASE_URL`` or the default SQLite file)::

    python -m kiiaren_selfhost.db upgrade                # to head
    python -m kiiaren_selfhost.db upgrade head --sql     # print the SQL instead
    python -m kiiaren_selfhost.db downgrade base
    python -m kiiaren_selfhost.db current | check
    python -m kiiaren_selfhost.db revision -m "add x" --autogenerate  # contributors
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import anyio
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kiiaren_core.errors import ConfigurationError
from kiiaren_selfhost.db.engine import (
    _WRITE_OPTION,
    DATABASE_URL_VARIABLE,
    Database,
    _create_engine,
    is_memory_url,
)
from kiiaren_selfhost.db.errors import translate_db_errors
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = [
    "MIGRATE_COMMAND",
    "MIGRATIONS_DIR",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
    "alembic_config",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "main",
    "migrate",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().with_name("migrations")
"""The Alembic script directory shipped inside the package."""

MIGRATE_COMMAND: Final = "python -m kiiaren_selfhost.db upgrade"
"""The shell command that upgrades the database named by ``KIIAREN_SELFHOST_DATABASE_URL``."""

_ADVISORY_LOCK_KEY: Final = int.from_bytes(b"kiiaren", "big")
"""PostgreSQL advisory lock held by a migration (one migrating process per database)."""

_WAIT_SECONDS: Final = 30.0
"""How long a migration given a URL waits to connect and, on SQLite, for other writers."""

MigrationTarget = str | URL | AsyncEngine | Database
"""What the migration functions accept: a URL, or an engine or :class:`Database` (required for
``:memory:`` SQLite, which exists only inside its engine)."""


class SchemaNotMigratedError(ConfigurationError):
    """The database has no schema yet, or an older one than this code needs."""


class SchemaTooNewError(ConfigurationError):
    """The database was migrated by a newer version of kiiaren than the one running."""


def alembic_config(url: str | URL | None = None) -> Config:
    """Return the Alembic configuration (built in code; ``url`` only matters for ``--sql``)."""
    config = Config()
    # ConfigParser interpolates "%": escape it in paths and URLs.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if url is not None:
        rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this code ships (what :func:`migrate` upgrades to by default)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise ConfigurationError("The KIIAREN migration scripts are missing from the package.")
    return head


async def migrate(target: MigrationTarget, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest), atomically.

    Args:
        target: Database URL, engine or :class:`Database`. A URL gets a short-lived engine of
            its own; an in-memory SQLite URL is refused (it would migrate a database nobody
            else can see).
        revision: Alembic revision id, ``"head"`` or a relative step such as ``"+1"``.

    Raises:
        ConfigurationError: unsupported or in-memory URL, unknown revision.
        BackendUnavailableError: the database cannot be reached or stays locked.
    """
    await _run(target, lambda config: command.upgrade(config, revision))


async def downgrade(target: MigrationTarget, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` removes every table), atomically.

    Destroys the data held by what is removed. Arguments and errors as :func:`migrate`.
    """
    await _run(target, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine | Database) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated.

    Raises:
        ConfigurationError: the database has several heads (not produced by this package).
        BackendUnavailableError: the database cannot be reached.
    """
    async with _read_connection(engine) as conn:
        heads = await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_heads()
        )
    if len(heads) > 1:
        raise ConfigurationError(
            f"The database has several schema revisions at once ({', '.join(sorted(heads))}); "
            "it was not migrated by kiiaren.",
            details={"variable": DATABASE_URL_VARIABLE},
        )
    return heads[0] if heads else None


async def check_schema(engine: AsyncEngine | Database) -> None:
    """Check that the database schema is exactly the one this code needs.

    Raises:
        SchemaNotMigratedError: no schema, or an older one; the message says how to migrate.
        SchemaTooNewError: a newer kiiaren migrated the database; upgrade kiiaren instead.
        BackendUnavailableError: the database cannot be reached.
    """
    current = await current_revision(engine)
    head = head_revision()
    if current == head:
        return
    how = (
        f"Run: {MIGRATE_COMMAND} (it migrates the database named by {DATABASE_URL_VARIABLE}), "
        "or from Python: import asyncio; from kiiaren_selfhost.db import migrate; "
        "asyncio.run(migrate(URL)). Set KIIAREN_SELFHOST_AUTO_MIGRATE=true to migrate on start."
    )
    details = {"variable": DATABASE_URL_VARIABLE, "current_revision": current, "head": head}
    if current is None:
        raise SchemaNotMigratedError(
            f"The database has no KIIAREN schema yet (this version needs revision {head}). {how}",
            details=details,
        )
    try:
        known = ScriptDirectory.from_config(alembic_config()).get_revision(current) is not None
    except CommandError:
        known = False
    if known:
        raise SchemaNotMigratedError(
            f"The database schema is at revision {current}, older than the revision {head} "
            f"this version of kiiaren needs. {how}",
            details=details,
        )
    raise SchemaTooNewError(
        f"The database schema is at revision {current}, which this version of kiiaren does "
        f"not know (its newest is {head}): a newer kiiaren migrated this database. Upgrade "
        "the kiiaren package to that version; do not run this older version against it.",
        details=details,
    )


# --- internals --------------------------------------------------------------------------------


@asynccontextmanager
async def _read_connection(engine: AsyncEngine | Database) -> AsyncIterator[AsyncConnection]:
    if isinstance(engine, Database):
        async with engine.read() as conn:
            yield conn
        return
    async with translate_db_errors(), engine.connect() as conn:
        yield conn


@asynccontextmanager
async def _maintenance_connection(target: MigrationTarget) -> AsyncIterator[AsyncConnection]:
    if isinstance(target, Database):
        async with target._exclusive_connection() as conn:
            yield conn
        return
    if isinstance(target, AsyncEngine):
        async with translate_db_errors(), target.connect() as conn:
            yield conn
        return
    if is_memory_url(target):
        raise ConfigurationError(
            "An in-memory SQLite database exists only inside its engine: migrate it by passing "
            "the Database (or engine) instead of the URL.",
            details={"variable": DATABASE_URL_VARIABLE},
        )
    engine = _create_engine(target, pool_size=1, timeout=_WAIT_SECONDS, foreign_keys=False)
    try:
        async with translate_db_errors(), engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


async def _run(target: MigrationTarget, action: Callable[[Config], None]) -> None:
    async with _maintenance_connection(target) as conn:
        await conn.run_sync(_run_in_transaction, action)


def _run_in_transaction(connection: sa.Connection, action: Callable[[Config], None]) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_foreign_keys(connection, enabled=False)
    try:
        # SQLite: BEGIN IMMEDIATE (see engine.py) takes the write lock before Alembic reads
        # the current revision, so concurrent migrations run one after the other.
        connection.execution_options(**{_WRITE_OPTION: True})
        with connection.begin():
            if not sqlite:
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
            config = alembic_config()
            config.attributes["connection"] = connection
            try:
                action(config)
            except CommandError as exc:
                raise ConfigurationError(f"Migration failed: {exc}") from exc
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    tables = sorted({str(row[0]) for row in broken})
                    raise RuntimeError(
                        f"The migration left {len(broken)} rows with dangling foreign keys "
                        f"(tables: {', '.join(tables)}); it was rolled back."
                    )
    finally:
        if sqlite:
            _sqlite_foreign_keys(connection, enabled=True)


def _sqlite_foreign_keys(connection: sa.Connection, *, enabled: bool) -> None:
    # PRAGMA foreign_keys is a no-op inside a transaction, and executing through SQLAlchemy
    # would begin one: go to the DBAPI connection, which is in autocommit mode (engine.py).
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if enabled else 'OFF'}")
    finally:
        cursor.close()


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kiiaren_selfhost.db",
        description="Migrate the KIIAREN self-host database.",
    )
    parser.add_argument(
        "--url",
        help=f"database URL (default: {DATABASE_URL_VARIABLE}, else the default SQLite file)",
    )
    commands = parser.add_subparsers(dest="command")
    up = commands.add_parser("upgrade", help="upgrade to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    down = commands.add_parser("downgrade", help="downgrade to a revision ('base': drop all)")
    down.add_argument("revision")
    down.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    commands.add_parser("current", help="print the database's revision")
    commands.add_parser("check", help="exit 1 unless the database is at head")
    rev = commands.add_parser("revision", help="create a migration script (contributors)")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument(
        "--autogenerate", action="store_true", help="compare a database at head with tables.py"
    )
    return parser


def _resolve_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    return SelfHostSettings().database_url


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m kiiaren_selfhost.db --help``); returns exit code."""
    args = _parser().parse_args(argv)
    url = _resolve_url(args.url)
    name = args.command or "upgrade"
    try:
        if name in ("upgrade", "downgrade") and getattr(args, "sql", False):
            config = alembic_config(url)
            if name == "upgrade":
                command.upgrade(config, args.revision, sql=True)
            else:
                command.downgrade(config, args.revision, sql=True)
        elif name == "upgrade":
            anyio.run(migrate, url, getattr(args, "revision", "head"))
            anyio.run(_report, url, False)
        elif name == "downgrade":
            anyio.run(downgrade, url, args.revision)
            anyio.run(_report, url, False)
        elif name in ("current", "check"):
            anyio.run(_report, url, name == "check")
        else:
            anyio.run(_new_revision, url, args.message, args.autogenerate)
    except ConfigurationError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    return 0


async def _report(url: str, check: bool) -> None:
    async with Database.from_url(url, pool_size=1) as db:
        if check:
            await check_schema(db)
            sys.stdout.write(f"ok: the database is at head ({head_revision()})\n")
        else:
            revision = await current_revision(db)
            sys.stdout.write(f"{revision or 'none (not migrated)'}\n")


async def _new_revision(url: str, message: str, autogenerate: bool) -> None:
    next_id = f"{int(head_revision()) + 1:04d}"

    def create(config: Config) -> None:
        command.revision(config, message=message, autogenerate=autogenerate, rev_id=next_id)

    if not autogenerate:
        create(alembic_config())
        return
    async with Database.from_url(url, pool_size=1) as db:
        await check_schema(db)  # autogenerate compares against a database at head
        await _run(db, create)

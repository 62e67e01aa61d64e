"""Alembic environment for the self-host schema.

Run migrations through :mod:`kiiaren_selfhost.db.migrate` (``migrate()``, or
``python -m kiiaren_selfhost.db``), which builds the Alembic configuration in code and
hands this script an open connection in ``config.attributes["connection"]``, already inside
the transaction (and lock) that makes the whole upgrade atomic. Offline mode (``--sql``)
renders the SQL for the dialect of ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context

from kiiaren_selfhost.db.tables import metadata

config = context.config


def _run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "The KIIAREN migrations run through kiiaren_selfhost.db.migrate "
            "(python -m kiiaren_selfhost.db), not the bare alembic command."
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: autogenerate writes move-and-copy batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()

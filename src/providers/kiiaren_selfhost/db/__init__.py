"""The self-host provider's database layer: schema, engines, migrations, error translation.

* :mod:`~kiiaren_selfhost.db.tables`: SQLAlchemy Core tables (``from kiiaren_selfhost.db import
  tables``; ``tables.members``, ...).
* :class:`Database`: owns the engine; ``async with db.read()`` / ``async with db.write()``.
* :func:`migrate`, :func:`check_schema`: Alembic migrations, the only way the schema is made.
* :func:`translate_db_errors`: the one boundary turning database exceptions into
  :mod:`kiiaren_core.errors`.
"""

from kiiaren_selfhost.db import tables
from kiiaren_selfhost.db.engine import (
    DATABASE_URL_VARIABLE,
    Database,
    create_engine,
    is_memory_url,
    normalize_url,
)
from kiiaren_selfhost.db.errors import (
    DatabaseErrorTranslator,
    translate_db_error,
    translate_db_errors,
)
from kiiaren_selfhost.db.migrate import (
    MIGRATE_COMMAND,
    SchemaNotMigratedError,
    SchemaTooNewError,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    migrate,
)
from kiiaren_selfhost.db.tables import metadata
from kiiaren_selfhost.db.types import (
    JSONType,
    UTCDateTime,
    UUIDString,
    canonical_id,
    new_id,
    ordered_pair,
    utcnow,
)

__all__ = [
    "DATABASE_URL_VARIABLE",
    "MIGRATE_COMMAND",
    "Database",
    "DatabaseErrorTranslator",
    "JSONType",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
    "UTCDateTime",
    "UUIDString",
    "canonical_id",
    "check_schema",
    "create_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_memory_url",
    "metadata",
    "migrate",
    "new_id",
    "normalize_url",
    "ordered_pair",
    "tables",
    "translate_db_error",
    "translate_db_errors",
    "utcnow",
]

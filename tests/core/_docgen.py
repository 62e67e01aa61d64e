"""The generated tables of docs/configuration.md and docs/errors.md, and their regeneration.

``tests/core/test_docs.py`` checks that the tables in the docs are exactly what the code
says. After changing ``SelfHostSettings`` or the error tree, refresh them with::

    .venv/bin/python -m tests.core._docgen

which rewrites the generated columns and keeps the hand-written "meaning" / "when raised"
column of every existing row (new rows get ``TODO``, which the test refuses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.fields import FieldInfo

from kiiaren_core.errors import ERROR_CLASSES

if TYPE_CHECKING:
    from kiiaren_core.settings import ProviderSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONFIGURATION = DOCS / "configuration.md"
ERRORS = DOCS / "errors.md"
SELFHOST_BLOCK = "selfhost-settings"
ERRORS_BLOCK = "error-table"
TODO = "TODO"


def render_default(field: FieldInfo) -> str:
    """A field's default as written in an environment variable."""
    value: Any = field.default
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple | list):
        return f"`{json.dumps(list(value))}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def settings_rows(cls: type[ProviderSettings]) -> list[list[str]]:
    """``[field, environment variable, default]`` per field, in declaration order."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    return [
        [f"`{name}`", f"`{prefix}{name.upper()}`", render_default(field)]
        for name, field in cls.model_fields.items()
    ]


def error_rows() -> list[list[str]]:
    """``[class, code, HTTP status, parent]`` per class of ``ERROR_CLASSES``, in table order."""
    rows = []
    for code, cls in ERROR_CLASSES.items():
        parent = cls.__bases__[0].__name__
        rows.append([f"`{cls.__name__}`", f"`{code}`", str(cls.http_status), f"`{parent}`"])
    return rows


def _block_bounds(text: str, block: str) -> tuple[int, int]:
    begin = f"<!-- BEGIN generated: {block} -->"
    end = f"<!-- END generated: {block} -->"
    start = text.index(begin) + len(begin)
    return start, text.index(end, start)


def table_rows(text: str, block: str) -> list[list[str]]:
    """The body rows of the Markdown table inside a generated block, as stripped cells."""
    start, stop = _block_bounds(text, block)
    lines = [line.strip() for line in text[start:stop].splitlines() if line.strip()]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    # Drop the header and the |---| separator.
    return [row for row in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in row)]


def _rewrite(
    path: Path,
    block: str,
    header: Sequence[str],
    generated: list[list[str]],
    keyed_by: Callable[[list[str]], str],
) -> None:
    text = path.read_text()
    known = {keyed_by(row): row[-1] for row in table_rows(text, block)}
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in generated:
        lines.append("| " + " | ".join([*row, known.get(keyed_by(row), TODO)]) + " |")
    start, stop = _block_bounds(text, block)
    path.write_text(text[:start] + "\n".join(lines) + "\n" + text[stop:])


def regenerate() -> None:
    """Rewrite the generated tables from the code, keeping the prose column."""
    from kiiaren_selfhost.settings import SelfHostSettings

    _rewrite(
        CONFIGURATION,
        SELFHOST_BLOCK,
        ["Field", "Environment variable", "Default", "Meaning"],
        settings_rows(SelfHostSettings),
        lambda row: row[0],
    )
    _rewrite(
        ERRORS,
        ERRORS_BLOCK,
        ["Class", "Code", "HTTP", "Parent", "When it is raised"],
        error_rows(),
        lambda row: row[0],
    )


if __name__ == "__main__":
    regenerate()

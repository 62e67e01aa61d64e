"""The generated tables in docs/ say exactly what the code says."""

from __future__ import annotations

import re
import tomllib
from typing import TYPE_CHECKING

import pytest

from kiiaren_core import errors
from tests.core import _docgen

if TYPE_CHECKING:
    from kiiaren_selfhost.settings import SelfHostSettings

HINT = "run `.venv/bin/python -m tests.core._docgen` and describe any new row"


def _check(documented: list[list[str]], generated: list[list[str]], columns: int) -> None:
    for row in documented:
        assert len(row) == columns, f"malformed row (a '|' in the text?): {row}"
    assert [row[:-1] for row in documented] == generated, f"docs out of date: {HINT}"
    undescribed = [row[0] for row in documented if row[-1] in ("", _docgen.TODO)]
    assert not undescribed, f"rows without a description: {undescribed}"


def test_the_selfhost_settings_table_matches_the_code(selfhost: type[SelfHostSettings]) -> None:
    documented = _docgen.table_rows(_docgen.CONFIGURATION.read_text(), _docgen.SELFHOST_BLOCK)
    _check(documented, _docgen.settings_rows(selfhost), columns=4)
    assert len(documented) == len(selfhost.model_fields)


def test_the_error_table_matches_error_classes() -> None:
    documented = _docgen.table_rows(_docgen.ERRORS.read_text(), _docgen.ERRORS_BLOCK)
    _check(documented, _docgen.error_rows(), columns=5)
    assert len(documented) == len(errors.ERROR_CLASSES)


def test_the_drawn_tree_in_errors_md_is_the_module_docstring_tree() -> None:
    docstring = errors.__doc__ or ""
    tree = [line.strip() for line in docstring.splitlines() if "Error" in line and "  " in line]
    assert len(tree) == len(errors.ERROR_CLASSES)
    doc = _docgen.ERRORS.read_text()
    for line in tree:
        assert line in doc, f"errors.md does not draw: {line}"


@pytest.mark.parametrize(
    ("default", "rendered"),
    [(None, "*(unset)*"), (True, "`true`"), (False, "`false`"), ((), "`[]`"), ("", '`""`')],
)
def test_defaults_are_rendered_as_environment_values(default: object, rendered: str) -> None:
    from pydantic.fields import FieldInfo

    assert _docgen.render_default(FieldInfo(default=default)) == rendered
    assert _docgen.render_default(FieldInfo(default=("a", "b"))) == '`["a", "b"]`'
    assert _docgen.render_default(FieldInfo(default=10)) == "`10`"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("name", ["architecture.md", "configuration.md", "errors.md"])
def test_relative_links_between_the_docs_resolve(name: str) -> None:
    text = (_docgen.DOCS / name).read_text()
    links = re.findall(r"\]\(([\w\-]+\.md)(?:#([\w\-]+))?\)", text)
    assert links, f"{name} links to no other page"
    for target, anchor in links:
        path = _docgen.DOCS / target
        assert path.exists(), f"{name} links to missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
            assert anchor in {_anchor(h) for h in headings}, f"{name}: no #{anchor} in {target}"


def test_architecture_lists_the_import_linter_contracts() -> None:
    config = tomllib.loads((_docgen.DOCS.parent / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    text = (_docgen.DOCS / "architecture.md").read_text()
    for contract in contracts:
        assert contract["name"] in text
        for module in contract.get("forbidden_modules", []) + contract.get("modules", []):
            assert f"`{module}`" in text

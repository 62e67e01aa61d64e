"""docs/wire-protocol.md and docs/providers/hosted.md say what the code says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiiaren_core.errors import ERROR_CLASSES
from kiiaren_core.wire import OPERATIONS
from kiiaren_hosted import HostedSettings
from tests.hosted import _docgen

HINT = "run `.venv/bin/python -m tests.hosted._docgen`"


@pytest.mark.parametrize("block", sorted(_docgen.BLOCKS))
def test_generated_tables_are_current(block: str) -> None:
    page = _docgen.BLOCKS[block]
    assert _docgen.block_text(page.read_text(), block) == _docgen.render(block), HINT


def test_the_tables_cover_everything() -> None:
    wire = _docgen.WIRE_PAGE.read_text()
    for op in OPERATIONS:
        assert f"| `{op.name}` |" in wire
    for code in ERROR_CLASSES:
        assert f"| `{code}` |" in wire
    hosted = _docgen.HOSTED_PAGE.read_text()
    for name in HostedSettings.model_fields:
        assert f"`KIIAREN_HOSTED_{name.upper()}`" in hosted


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [_docgen.WIRE_PAGE, _docgen.HOSTED_PAGE], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    links = re.findall(r"\]\(([\w\-./]+\.md)?(?:#([\w\-]+))?\)", page.read_text())
    assert links
    for target, anchor in links:
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name} links to missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
            assert anchor in {_anchor(h) for h in headings}, f"no #{anchor} in {path.name}"

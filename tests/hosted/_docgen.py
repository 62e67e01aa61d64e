"""The generated tables of docs/wire-protocol.md (the endpoints, from the wire table; the error
codes, from the error tree) and of docs/providers/hosted.md (the settings).

``tests/hosted/test_docs.py`` checks that the pages say exactly what the code says. After
changing :data:`kiiaren_core.wire.OPERATIONS`, the error tree or ``HostedSettings``, refresh
them with::

    .venv/bin/python -m tests.hosted._docgen
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from kiiaren_core.errors import ERROR_CLASSES
from kiiaren_core.wire import OPERATIONS, Operation
from kiiaren_hosted.settings import HostedSettings
from kiiaren_hosted.transport import RETRYABLE_STATUSES

DOCS = Path(__file__).resolve().parents[2] / "docs"
WIRE_PAGE = DOCS / "wire-protocol.md"
HOSTED_PAGE = DOCS / "providers" / "hosted.md"
ENDPOINTS_BLOCK = "endpoints"
ERRORS_BLOCK = "error-codes"
SETTINGS_BLOCK = "hosted-settings"
BLOCKS = {ENDPOINTS_BLOCK: WIRE_PAGE, ERRORS_BLOCK: WIRE_PAGE, SETTINGS_BLOCK: HOSTED_PAGE}


def _type_name(value: Any) -> str:
    origin = typing.get_origin(value)
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(value))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return str(getattr(value, "__name__", value))


def _answer(op: Operation) -> str:
    if op.response is None:
        return f"{op.status}, no body"
    text = f"{op.status} `{_type_name(op.response)}`"
    if op.wrap:
        text += f" (the method returns `.{op.wrap}`)"
    if op.none_is_404:
        text += "; 404 `not_found` reads as None"
    return text


def _input(op: Operation) -> str:
    parts = []
    if op.query is not None:
        parts.append(f"query `{op.query.__name__}`")
    if op.body is not None:
        as_ = f" as `{op.body_as}`" if op.body_as else ""
        parts.append(f"body `{op.body.__name__}`{as_}")
    return ", ".join(parts) or "-"


def endpoint_rows() -> list[list[str]]:
    """``[name, method + path, access, input, answer]`` per operation, in table order."""
    return [
        [f"`{op.name}`", f"`{op.method} {op.url_path}`", op.access, _input(op), _answer(op)]
        for op in OPERATIONS
    ]


def error_rows() -> list[list[str]]:
    """``[code, class, status, repeated by the hosted client]`` per error class."""
    return [
        [
            f"`{code}`",
            f"`{cls.__name__}`",
            str(cls.http_status),
            "yes, when safe" if cls.http_status in RETRYABLE_STATUSES else "no",
        ]
        for code, cls in ERROR_CLASSES.items()
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def settings_rows() -> list[list[str]]:
    """``[field, environment variable, default, meaning]`` per ``HostedSettings`` field."""
    from tests.core._docgen import render_default

    meanings = _attribute_docs(HostedSettings.__doc__ or "")
    rows = []
    for name, field in HostedSettings.model_fields.items():
        meaning = meanings[name].replace("``", "`")
        rows.append(
            [
                f"`{name}`",
                f"`KIIAREN_HOSTED_{name.upper()}`",
                render_default(field),
                meaning[:1].upper() + meaning[1:],
            ]
        )
    return rows


def _attribute_docs(docstring: str) -> dict[str, str]:
    """``name -> text`` from a Google-style ``Attributes:`` section."""
    found: dict[str, str] = {}
    current = None
    for line in docstring.split("Attributes:", 1)[1].splitlines():
        stripped = line.strip()
        match = re.match(r"^(\w+): (.*)$", stripped)
        if match and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current = match.group(1)
            found[current] = match.group(2)
        elif current and stripped:
            found[current] += " " + stripped
    return found


ENDPOINT_HEADER = ["Operation", "Request", "Access", "Input", "Answer"]
ERROR_HEADER = ["Code", "Class", "HTTP", "Repeated by the hosted client"]
SETTINGS_HEADER = ["Field", "Environment variable", "Default", "Meaning"]


def render(block: str) -> str:
    if block == ENDPOINTS_BLOCK:
        return _table(ENDPOINT_HEADER, endpoint_rows())
    if block == SETTINGS_BLOCK:
        return _table(SETTINGS_HEADER, settings_rows())
    return _table(ERROR_HEADER, error_rows())


def _bounds(text: str, block: str) -> tuple[int, int]:
    begin = f"<!-- BEGIN generated: {block} -->"
    start = text.index(begin) + len(begin)
    return start, text.index(f"<!-- END generated: {block} -->", start)


def block_text(text: str, block: str) -> str:
    """What the page holds between the block's markers."""
    start, stop = _bounds(text, block)
    return text[start:stop].strip()


def regenerate() -> None:
    """Rewrite every generated block from the code."""
    for block, page in BLOCKS.items():
        text = page.read_text()
        start, stop = _bounds(text, block)
        page.write_text(text[:start] + "\n\n" + render(block) + "\n\n" + text[stop:])


if __name__ == "__main__":
    regenerate()

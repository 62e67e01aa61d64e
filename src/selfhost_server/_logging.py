"""Structured logs: every record carries the request id; text or JSON lines.

What is logged about a request is its method, path (never the query string: signed URLs and
OAuth callbacks carry secrets there), status, duration and client address. Headers and bodies
are never logged, so neither passwords nor tokens can reach a log line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

from selfhost_server._context import current_request_id

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "RequestIdFilter", "configure_logging"]

ACCESS_LOGGER: Final = "kiiaren.server.access"
_STANDARD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "request_id", "taskName"}


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to the request being served (``"-"`` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(getattr(record, "request_id", None), str):
            record.request_id = current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields
    passed with ``extra=`` and the formatted exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


_TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def configure_logging(
    log_format: Literal["text", "json"] = "text",
    level: str = "info",
) -> None:
    """Send every log record (uvicorn's included) to stderr in the chosen format.

    Replaces the root logger's handlers; meant for the ``kiiaren-server`` process, not for
    applications embedding :func:`~selfhost_server.create_app`.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Our access log replaces uvicorn's, which would print query strings.
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every migration check at INFO; its warnings and errors still show.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))

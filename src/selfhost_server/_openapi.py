"""The published OpenAPI document: FastAPI's, completed with what it cannot infer.

FastAPI documents the routes, their parameters, bodies, response models and the error
envelopes declared per route. This adds the bearer security scheme (each operation names it
according to its access), and the response headers every answer can carry: ``X-Request-ID``
always, ``Retry-After`` on ``429`` and ``503``, ``WWW-Authenticate`` on ``401``, and
``Idempotent-Replayed`` on the success of a request that accepts an ``Idempotency-Key``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from selfhost_server._context import REQUEST_ID_HEADER
from selfhost_server._idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER
from selfhost_server._routes import BEARER_SCHEME

__all__ = ["install_openapi"]

_REQUEST_ID = {
    "description": "The request's id (the client's, if it sent a sane one).",
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}
_CHALLENGE = {
    "description": "`Bearer`: authenticate with an access token.",
    "schema": {"type": "string"},
}
_REPLAYED = {
    "description": "`true` when this is the stored answer of an earlier request with the "
    "same Idempotency-Key.",
    "schema": {"type": "string", "enum": ["true"]},
}


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The access token of a session (sign-up, sign-in or refresh).",
    }
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            keyed = any(
                parameter.get("in") == "header" and parameter.get("name") == IDEMPOTENCY_HEADER
                for parameter in operation.get("parameters", ())
            )
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                headers[REQUEST_ID_HEADER] = _REQUEST_ID
                if status in ("429", "503"):
                    headers["Retry-After"] = _RETRY_AFTER
                if status == "401":
                    headers["WWW-Authenticate"] = _CHALLENGE
                if keyed and status.startswith("2"):
                    headers[REPLAYED_HEADER] = _REPLAYED
    return document


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) return the completed document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                    tags=app.openapi_tags,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

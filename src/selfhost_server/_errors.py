"""The one error envelope: ``{"error": {"code", "message", "details"}, "request_id"}``.

Every failure leaves the server in this shape with the status of its error class
(:data:`kiiaren_core.errors.ERROR_CLASSES`): provider errors, request validation, unknown
routes and methods, oversized bodies and unexpected exceptions alike. Unexpected exceptions
are logged with the request id and answered with a generic message; nothing from their text
(SQL, paths, secrets) reaches the client.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
    KiiarenError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
)
from selfhost_server._context import REQUEST_ID_HEADER, request_id_of

__all__ = [
    "METHOD_NOT_ALLOWED",
    "ErrorBody",
    "ErrorEnvelope",
    "envelope_response",
    "error_response",
    "install_error_handlers",
    "send_error",
]

logger = logging.getLogger("kiiaren.server")

METHOD_NOT_ALLOWED: Final = "method_not_allowed"
"""The code of a 405 answer. It has no error class: a wrong method is a client bug that the
hosted client never makes, so it rebuilds it as a plain ``KiiarenError``."""
_GENERIC_MESSAGE: Final = KiiarenError.default_message


class ErrorBody(BaseModel):
    """What went wrong: a stable ``code``, an English ``message`` and JSON ``details``."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Stable machine-readable code (see the error table).")
    message: str = Field(description="Human-readable English message.")
    details: dict[str, Any] = Field(description="Extra facts, e.g. the offending field.")


class ErrorEnvelope(BaseModel):
    """Every error answer of the KIIAREN API."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody
    request_id: str = Field(description="The X-Request-ID of the request, for support.")


def _retry_after(error: KiiarenError) -> str | None:
    """Whole seconds to wait, for 429 and every 503 (at least 1)."""
    if isinstance(error, RateLimitedError):
        return str(max(1, math.ceil(error.retry_after)))
    if error.http_status == 503:
        seconds = error.retry_after if isinstance(error, BackendUnavailableError) else None
        return str(max(1, math.ceil(seconds or 1)))
    return None


def _public_form(error: KiiarenError) -> dict[str, Any]:
    """The wire ``error`` object; internal errors keep their code but not their text."""
    if error.http_status == 500 and (
        type(error) is KiiarenError or isinstance(error, ConfigurationError)
    ):
        return {"code": error.code, "message": _GENERIC_MESSAGE, "details": {}}
    return error.to_wire()


def envelope_response(
    status: int,
    error: Mapping[str, Any],
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON envelope response (the request id header is added by the middleware)."""
    body = json.dumps({"error": dict(error), "request_id": request_id}, separators=(",", ":"))
    return Response(
        body.encode(), status_code=status, media_type="application/json", headers=headers
    )


def error_response(error: KiiarenError, request_id: str) -> Response:
    """The envelope for ``error``, with ``Retry-After`` for 429 and 503 answers and
    ``WWW-Authenticate: Bearer`` for 401 answers."""
    if error.http_status >= 500:
        logger.warning("request failed: %s (%s)", error.code, type(error).__name__)
    headers: dict[str, str] = {}
    retry = _retry_after(error)
    if retry is not None:
        headers["Retry-After"] = retry
    if error.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"  # RFC 6750: the scheme that would succeed
    return envelope_response(error.http_status, _public_form(error), request_id, headers)


async def send_error(scope: Scope, receive: Receive, send: Send, error: KiiarenError) -> None:
    """Answer a raw ASGI request with the envelope of ``error`` (used by middleware)."""
    response = error_response(error, request_id_of(scope))
    response.headers[REQUEST_ID_HEADER] = request_id_of(scope)
    await response(scope, receive, send)


def _validation_details(exc: RequestValidationError) -> dict[str, Any]:
    """Field locations and messages only: pydantic's ``input`` and ``ctx`` may hold the
    very values (passwords) the client sent."""
    errors = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "message": str(error.get("msg", "Invalid value.")),
        }
        for error in exc.errors()
    ]
    details: dict[str, Any] = {"errors": errors}
    if errors:
        location = errors[0]["loc"]
        details["field"] = location[-1] if len(location) > 1 else (location or ["body"])[0]
    return details


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the resource the request's path names.

    Starlette's own ``Allow`` lists the first route that matched the path only, but each
    method of a resource is a route of its own here. Of the templates matching the path,
    the most literal one names the resource (``/sessions/revoke-all`` rather than
    ``/sessions/{session_id}``).
    """
    matching: dict[str, set[str]] = {}
    for route in request.app.router.routes:
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] is not Match.NONE:
            path = getattr(route, "path", "")
            matching.setdefault(path, set()).update(getattr(route, "methods", None) or ())
    if not matching:
        return []
    resource = min(matching, key=lambda path: (path.count("{"), -len(path)))
    return sorted(matching[resource])


async def _kiiaren_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KiiarenError)
    return error_response(exc, request_id_of(request.scope))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    error = InvalidInputError("The request is not valid.", details=_validation_details(exc))
    return error_response(error, request_id_of(request.scope))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (unknown route, wrong method, ...) as envelopes."""
    assert isinstance(exc, StarletteHTTPException)
    request_id = request_id_of(request.scope)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        return envelope_response(
            405,
            {
                "code": METHOD_NOT_ALLOWED,
                "message": f"Method {request.method} is not allowed here.",
                "details": {"allowed": allowed},
            },
            request_id,
            {"Allow": ", ".join(allowed)},
        )
    error: KiiarenError
    if exc.status_code == 404:
        error = NotFoundError()
    elif exc.status_code == 413:
        error = PayloadTooLargeError()
    elif 400 <= exc.status_code < 500:
        error = InvalidInputError("The request could not be read.")
    else:
        error = KiiarenError()
    return error_response(error, request_id)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI and Starlette raise through the envelope."""
    app.add_exception_handler(KiiarenError, _kiiaren_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

"""The outermost layer of every request: request id, body limit, access log, last resort.

One pure ASGI middleware (no buffering, no extra task) that

* picks the request id (a sane incoming ``X-Request-ID`` or a fresh one), exposes it to the
  app (``scope["state"]["request_id"]``) and to logs (a context variable), and adds it to
  every response;
* bounds the request body *while it is read*: a declared ``Content-Length`` above the limit
  is refused before the app runs, and a body that grows past it is cut off with ``413``
  whatever the app was doing with it;
* answers any exception the app let through with a generic ``500`` envelope, after logging
  it with the request id;
* writes one access-log line per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiiaren_core.errors import KiiarenError, PayloadTooLargeError
from selfhost_server._context import REQUEST_ID_HEADER, new_request_id, request_id_var
from selfhost_server._errors import send_error
from selfhost_server._logging import ACCESS_LOGGER

__all__ = ["RequestContextMiddleware"]

logger = logging.getLogger("kiiaren.server")
access_logger = logging.getLogger(ACCESS_LOGGER)

_BODYLESS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class _BodyTooLargeError(Exception):
    """Raised into the app by ``receive`` once the body passes the limit."""


class RequestContextMiddleware:
    """See the module docstring.

    Args:
        app: the application.
        body_limit: largest body, in bytes, for a request to ``path``
            (``body_limit(path) -> int``).
        client_ip: the client's address for the access log (``client_ip(scope)``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limit: Callable[[str], int],
        client_ip: Callable[[Scope], str | None],
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.client_ip = client_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = new_request_id(headers.get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send, headers, request_id)
        finally:
            request_id_var.reset(token)

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, request_id: str
    ) -> None:
        started = time.perf_counter()
        limit = self.body_limit(scope["path"])
        status = 500
        response_started = False
        exceeded = False
        replaced = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLargeError
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, response_started, replaced
            if replaced:
                return  # the app's own answer to a body it could not finish reading
            if message["type"] == "http.response.start":
                if exceeded:
                    # The app turned the interrupted read into some answer of its own.
                    replaced = True
                    await send_error(scope, receive, send, self._too_large(limit))
                    status = 413
                    return
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            if self._declared_length(headers) > limit and scope["method"] not in _BODYLESS:
                status = 413
                await send_error(scope, receive, send, self._too_large(limit))
                return
            await self.app(scope, limited_receive, tagged_send)
        except _BodyTooLargeError:
            if not response_started and not replaced:
                status = 413
                await send_error(scope, receive, send, self._too_large(limit))
        except Exception:
            logger.exception(
                "unhandled error while serving %s %s",
                scope["method"],
                scope["path"],
                extra={"request_id": request_id},
            )
            if not response_started and not replaced:
                status = 500
                await send_error(scope, receive, send, KiiarenError())
        finally:
            # Checked first: below INFO the line's fields are not even computed.
            if access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "client_ip": self.client_ip(scope),
                    },
                )

    @staticmethod
    def _declared_length(headers: Headers) -> int:
        value = headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else 0

    @staticmethod
    def _too_large(limit: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than the {limit} bytes allowed.",
            details={"max_bytes": limit},
        )

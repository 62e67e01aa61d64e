"""Requests from the wire table, answers back into models and errors, and the retry policy.

Everything above :class:`Transport` is free of I/O: :func:`build_request` turns an
:class:`~kiiaren_core.wire.Operation` and the protocol method's arguments into an
``httpx.Request``; :func:`parse_result` and :func:`error_from_response` turn an
``httpx.Response`` into the operation's return value or the :mod:`kiiaren_core.errors` class
the server raised; :class:`RetryPolicy` decides what may be retried and how long to wait.
:class:`Transport` is the one place that sends, through an injectable ``httpx.AsyncClient``
(so ``httpx.MockTransport`` exercises all of it).

Retry safety (see ``docs/wire-protocol.md``): a request is *safe* to repeat when its method is
idempotent or it carries an ``Idempotency-Key`` (every mutating call made by this package
does, with one key reused across its attempts). Connection failures before the request was
sent are always retried; failures after it may have been sent, and the statuses
408/429/502/503/504, only when the request is safe. At most ``max_attempts`` attempts, full
jitter exponential backoff, ``Retry-After`` honoured, all within one overall deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from kiiaren_core.errors import (
    BackendUnavailableError,
    KiiarenError,
    ProviderClosedError,
    error_from_wire,
)
from kiiaren_core.models import Unset
from kiiaren_core.wire import Operation
from kiiaren_hosted.settings import HostedSettings

__all__ = [
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "Transport",
    "build_request",
    "error_from_response",
    "parse_result",
    "parse_retry_after",
    "read_envelope",
]

logger = logging.getLogger("kiiaren.hosted.transport")

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUSES: Final = frozenset({408, 429, 502, 503, 504})
_NEVER_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Failures that happen before a single byte of the request left: always safe to retry."""


# --- requests -------------------------------------------------------------------------------


def _segment(value: object) -> str:
    """One path segment: every reserved character escaped, dot-only segments too (clients
    and servers would otherwise normalise ``..`` away and address another resource)."""
    text = quote(str(value), safe="")
    if text and set(text) == {"."}:
        return "%2E" * len(text)
    return text


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_request(
    op: Operation,
    arguments: Mapping[str, Any],
    *,
    base_url: str,
    access_token: str | None = None,
    idempotency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Request:
    """The HTTP request of ``op`` called with ``arguments`` (the protocol method's, by name).

    Path parameters fill the path (escaped as one segment each); the body's fields (or, with
    ``body_as``, the whole model) form the JSON body, leaving out ``UNSET`` values (a PATCH
    then leaves those fields as they are) and keeping ``None`` (clear it); the query's fields
    form the query string, leaving out ``None`` (the server's default).

    Raises:
        TypeError: an argument that the operation does not take (a bug in the caller).
    """
    remaining = dict(arguments)
    path = op.url_path
    for name in op.path_params:
        path = path.replace("{" + name + "}", _segment(remaining.pop(name)))
    body: Any = None
    if op.body_as is not None:
        model = remaining.pop(op.body_as)
        body = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    elif op.body is not None:
        body = {}
        for name in op.body.model_fields:
            if name in remaining:
                value = remaining.pop(name)
                if not isinstance(value, Unset):
                    body[name] = to_jsonable_python(value)
    params: dict[str, str] = {}
    if op.query is not None:
        for name in op.query.model_fields:
            if name in remaining:
                value = remaining.pop(name)
                if value is not None:
                    params[name] = _query_value(value)
    if remaining:
        raise TypeError(f"{op.name} takes no argument(s) {sorted(remaining)}")
    all_headers = {"Accept": "application/json", **(headers or {})}
    if access_token is not None:
        all_headers["Authorization"] = f"Bearer {access_token}"
    if idempotency_key is not None:
        all_headers[IDEMPOTENCY_HEADER] = idempotency_key
    content = None
    if body is not None:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        all_headers["Content-Type"] = "application/json"
    return httpx.Request(
        op.method, f"{base_url}{path}", params=params or None, content=content, headers=all_headers
    )


# --- answers --------------------------------------------------------------------------------

_adapters: dict[str, TypeAdapter[Any]] = {}


def _adapter(op: Operation) -> TypeAdapter[Any]:
    adapter = _adapters.get(op.name)
    if adapter is None:
        adapter = _adapters[op.name] = TypeAdapter(op.response)
    return adapter


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The ``error`` object of a well-formed error envelope, else ``None``.

    Well-formed: a JSON object whose ``error`` is an object with string ``code`` and
    ``message`` and, if present, an object (or null) ``details``.
    """
    data = _json_object(response)
    error = data.get("error") if data is not None else None
    if not isinstance(error, dict):
        return None
    code, message, details = error.get("code"), error.get("message"), error.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    if details is not None and not isinstance(details, dict):
        return None
    return {"code": code, "message": message, "details": details or {}}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), ``None`` if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def error_from_response(response: httpx.Response) -> KiiarenError:
    """The error an unsuccessful answer stands for, never a raw httpx exception.

    A well-formed envelope is rebuilt into the class the server raised
    (:func:`~kiiaren_core.errors.error_from_wire`); its ``request_id`` is attached as an
    exception note (not to ``details``, which stay exactly the server's). ``Retry-After``
    fills ``retry_after`` when the body does not give it. Anything else (an HTML page from a
    proxy, an empty body) becomes :class:`BackendUnavailableError` for a 5xx, otherwise the
    class registered for the status (:class:`KiiarenError` when none is), with
    ``details["status"]``.
    """
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    envelope = read_envelope(response)
    if envelope is None:
        message = f"The server answered HTTP {status} without a KIIAREN error body."
        if status >= 500:
            return BackendUnavailableError(
                message, retry_after=retry_after, details={"status": status}
            )
        details: dict[str, Any] = {"status": status}
        if retry_after is not None:
            details["retry_after"] = retry_after
        return error_from_wire("", message, details, http_status=status)
    details = dict(envelope["details"])
    if retry_after is not None and status in (429, 503):
        details.setdefault("retry_after", retry_after)
    try:
        error = error_from_wire(envelope["code"], envelope["message"], details, http_status=status)
    except (TypeError, ValueError):
        # A details field of the wrong type (e.g. a non-numeric retry_after): keep the class
        # by status rather than failing on a peer's mistake.
        error = error_from_wire("", envelope["message"], {"status": status}, http_status=status)
    request_id = (_json_object(response) or {}).get("request_id") or response.headers.get(
        "X-Request-ID"
    )
    if isinstance(request_id, str) and request_id:
        error.add_note(f"request_id: {request_id}")
    return error


def parse_result(op: Operation, response: httpx.Response) -> Any:
    """The value ``op``'s provider method returns for ``response``.

    A success is validated against ``op.response`` (unwrapped with ``op.wrap``); an empty
    body or JSON ``null`` is ``None``. A ``404 not_found`` envelope is ``None`` for
    operations with ``none_is_404``. Any other status raises :func:`error_from_response`'s
    error; a success whose body does not match the operation's model raises
    :class:`KiiarenError` (the server and this client disagree on the protocol).
    """
    if response.is_success:
        if op.response is None or response.status_code == 204 or not response.content:
            return None
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise KiiarenError(
                f"{op.name}: the server answered HTTP {response.status_code} with a body "
                "that is not JSON.",
                details={"status": response.status_code},
            ) from None
        if data is None:
            return None
        try:
            value = _adapter(op).validate_python(data)
        except ValidationError as exc:
            raise KiiarenError(
                f"{op.name}: the server's answer does not match the protocol "
                f"({exc.error_count()} validation error(s)).",
                details={"status": response.status_code},
            ) from None
        return getattr(value, op.wrap) if op.wrap else value
    if op.none_is_404 and response.status_code == 404:
        envelope = read_envelope(response)
        if envelope is not None and envelope["code"] == "not_found":
            return None
    raise error_from_response(response)


# --- retry policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What may be retried, how often and how long to wait (pure; see the module docstring)."""

    max_attempts: int = 3
    deadline_seconds: float = 60.0
    backoff_base_seconds: float = 0.1
    backoff_cap_seconds: float = 5.0
    max_retry_after_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: HostedSettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            deadline_seconds=settings.deadline_seconds,
            backoff_base_seconds=settings.backoff_base_seconds,
            backoff_cap_seconds=settings.backoff_cap_seconds,
            max_retry_after_seconds=settings.max_retry_after_seconds,
        )

    @staticmethod
    def is_safe(request: httpx.Request) -> bool:
        """True when repeating ``request`` cannot apply it twice."""
        return request.method in IDEMPOTENT_METHODS or IDEMPOTENCY_HEADER in request.headers

    @staticmethod
    def retries_exception(exc: httpx.TransportError, *, safe: bool) -> bool:
        """Connection failures before sending always; anything after only for safe requests."""
        return isinstance(exc, _NEVER_SENT) or safe

    @staticmethod
    def retries_response(response: httpx.Response, *, safe: bool, attempt: int) -> bool:
        """408/429/502/503/504 for safe requests; and, on a repeat of a keyed request, the
        ``idempotency_conflict`` a server answers while the first attempt is still running
        (``details.reason == "in_progress"``; our repeat carries the same body, so without a
        reason it cannot be the other meaning of that code either)."""
        if not safe:
            return False
        if response.status_code in RETRYABLE_STATUSES:
            return True
        if (
            response.status_code == 409
            and attempt > 1
            and IDEMPOTENCY_HEADER in response.request.headers
        ):
            envelope = read_envelope(response)
            return (
                envelope is not None
                and envelope["code"] == "idempotency_conflict"
                and envelope["details"].get("reason", "in_progress") == "in_progress"
            )
        return False

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in ``[0, min(cap, base * 2**(attempt - 1))]``."""
        ceiling = min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return rng.uniform(0.0, ceiling)

    def delay(
        self, attempt: int, retry_after: float | None, remaining: float, rng: random.Random
    ) -> float | None:
        """How long to wait before attempt ``attempt + 1``, or ``None`` to stop retrying.

        ``Retry-After`` wins over the backoff; a ``Retry-After`` above
        ``max_retry_after_seconds``, or a wait that would end past the deadline
        (``remaining`` seconds away), stops the retries instead.
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None and retry_after > self.max_retry_after_seconds:
            return None
        wait = retry_after if retry_after is not None else self.backoff(attempt, rng)
        if wait >= remaining:
            return None
        return wait


# --- sending --------------------------------------------------------------------------------

Sleep = Callable[[float], Awaitable[None]]


class Transport:
    """Sends requests with the retry policy through one ``httpx.AsyncClient``.

    Args:
        settings: base URL, timeouts and retry settings.
        client: an application's own client (never closed here); otherwise one is created
            (with ``transport`` if given) and closed by :meth:`aclose`.
        transport: an httpx transport for the client created here (e.g. ``MockTransport``).
        rng: the jitter's random source (tests pass a seeded one).
        sleep: how to wait between attempts (tests record the waits).
    """

    def __init__(
        self,
        settings: HostedSettings,
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if client is not None and transport is not None:
            raise ValueError("Pass an httpx client or a transport, not both.")
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self._owns_client = client is None
        self._client = client
        self._transport = transport
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not a secret)
        self._sleep: Sleep = asyncio.sleep if sleep is None else sleep
        self._host = urlsplit(settings.base_url).netloc
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`."""
        return self._closed

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client (created on first use).

        Raises:
            ProviderClosedError: after :meth:`aclose`.
        """
        if self._closed:
            raise ProviderClosedError()
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self._timeout(self.settings.deadline_seconds),
                headers={"User-Agent": self.settings.user_agent},
                follow_redirects=False,
            )
        return self._client

    def _timeout(self, remaining: float) -> httpx.Timeout:
        s = self.settings
        return httpx.Timeout(
            connect=min(s.connect_timeout_seconds, remaining),
            read=min(s.read_timeout_seconds, remaining),
            write=min(s.write_timeout_seconds, remaining),
            pool=min(s.pool_timeout_seconds, remaining),
        )

    def new_deadline(self) -> float:
        """The monotonic time by which a call starting now must end."""
        return time.monotonic() + self.policy.deadline_seconds

    async def send(
        self, request: httpx.Request, *, deadline: float | None = None
    ) -> httpx.Response:
        """Send ``request``, retrying where safe; the final answer is returned whatever its
        status (read in full), with the number of attempts in
        ``response.extensions["kiiaren_attempts"]``.

        Raises:
            BackendUnavailableError: the server could not be reached (or the deadline passed)
                on every attempt; ``details["attempts"]`` says how many were made.
        """
        deadline = deadline if deadline is not None else self.new_deadline()
        # ``send`` does not apply the client's default headers (an application's client may
        # carry some, ours carries the User-Agent); the request's own win.
        for name, value in self.client.headers.items():
            request.headers.setdefault(name, value)
        safe = self.policy.is_safe(request)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailableError(
                    f"No answer from {self._host} within the deadline.",
                    details={"attempts": attempt - 1, "reason": "deadline"},
                )
            request.extensions["timeout"] = self._timeout(remaining).as_dict()
            try:
                response = await self.client.send(request)
            except httpx.TransportError as exc:
                wait = None
                if self.policy.retries_exception(exc, safe=safe):
                    wait = self.policy.delay(attempt, None, deadline - time.monotonic(), self._rng)
                if wait is None:
                    raise BackendUnavailableError(
                        f"Could not reach {self._host} ({type(exc).__name__}).",
                        details={"attempts": attempt, "reason": type(exc).__name__},
                    ) from exc
                logger.debug(
                    "retrying %s %s after %s (attempt %d, wait %.3fs)",
                    request.method,
                    request.url.path,
                    type(exc).__name__,
                    attempt,
                    wait,
                )
                await self._sleep(wait)
                continue
            if self.policy.retries_response(response, safe=safe, attempt=attempt):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                wait = self.policy.delay(
                    attempt, retry_after, deadline - time.monotonic(), self._rng
                )
                if wait is not None:
                    logger.debug(
                        "retrying %s %s after HTTP %d (attempt %d, wait %.3fs)",
                        request.method,
                        request.url.path,
                        response.status_code,
                        attempt,
                        wait,
                    )
                    await self._sleep(wait)
                    continue
            # How many attempts it took: a repeat may meet the first attempt's effect (a
            # single-use upload URL answers 409), and only the caller can tell.
            response.extensions["kiiaren_attempts"] = attempt
            return response

    async def aclose(self) -> None:
        """Close the client if this transport created it. Idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

"""The lean path of the operation routes: the request is matched, validated and answered
without FastAPI's per-request machinery, answering exactly as FastAPI would.

FastAPI builds the routes (and from them the OpenAPI document, the ``405`` answers and
every other route); per request it scans the route list in order, solves each endpoint's
parameters as dependencies and wraps the call in several layers. For the operation routes,
that costs more CPU than the rest of the server layer together. :class:`OperationDispatcher`
sits just inside the user middleware and, for an ``http`` request:

1. finds the route FastAPI would pick (the first full match in route order) among the few
   routes that can match at all: those of the request's method and path depth
   (:class:`_RouteIndex`);
2. if that is an operation route, validates the path parameters, the query model, the
   ``Idempotency-Key`` header and the JSON body as the route's FastAPI parameters would, and
   answers through the same :class:`~selfhost_server._routes.OperationHandler` as the
   FastAPI endpoint;
3. hands everything else to FastAPI unchanged: other routes, unknown paths, wrong methods,
   and *every request that does not validate*, whose body it replays. So the validation
   errors (and their envelope) are FastAPI's own, and the lean path only ever takes
   requests that FastAPI would have accepted with the same values.

Provider errors are answered with the error envelope here (as the app's exception handler
would); anything else propagates to the request-context middleware (a logged ``500``).
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import pydantic
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiiaren_core.errors import KiiarenError
from selfhost_server._context import request_id_of
from selfhost_server._errors import error_response
from selfhost_server._idempotency import IDEMPOTENCY_HEADER, KEY_PATTERN, MAX_KEY_LENGTH
from selfhost_server._routes import MAX_PATH_PARAMETER, OperationHandler
from selfhost_server._state import ServerState

__all__ = ["OperationDispatcher"]

_KEY: Final = re.compile(KEY_PATTERN)
_IDEMPOTENCY: Final = IDEMPOTENCY_HEADER.lower().encode("latin-1")
_CONTENT_TYPE: Final = b"content-type"
_ANY_DEPTH: Final = -1


def _literals(template: str) -> tuple[tuple[int, str], ...]:
    """The segments of a route template without a parameter, with their positions."""
    return tuple(
        (position, segment)
        for position, segment in enumerate(template.split("/"))
        if "{" not in segment
    )


_Candidate = tuple[tuple[tuple[int, str], ...] | None, BaseRoute]


class _RouteIndex:
    """The routes of an app by method and path depth, in route order.

    A ``{name}`` parameter never spans a ``/``, so a route whose template has only such
    parameters matches paths of its own depth only, whose segments equal the template's
    literal ones. Routes of any other kind (mounts, ``:path`` parameters, websocket routes)
    are candidates for every request.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._size = len(routes)
        # Candidates in route order per (method, depth), with their literal segments
        # (None: always try the route).
        wildcard: list[tuple[int, _Candidate]] = []
        slots: dict[tuple[str, int], list[tuple[int, _Candidate]]] = {}
        for position, route in enumerate(routes):
            if isinstance(route, Route) and route.methods and ":" not in route.path_format:
                depth = route.path_format.count("/")
                candidate = (_literals(route.path_format), route)
                for method in route.methods:
                    slots.setdefault((method, depth), []).append((position, candidate))
            else:
                wildcard.append((position, (None, route)))
        self._fixed = {
            slot: [candidate for _, candidate in sorted(members + wildcard, key=_first)]
            for slot, members in slots.items()
        }
        self._wildcard = [candidate for _, candidate in wildcard]

    def stale(self, routes: Sequence[BaseRoute]) -> bool:
        """Whether routes were added since the index was built."""
        return len(routes) != self._size

    def first_full_match(self, scope: Scope) -> tuple[BaseRoute, Scope] | None:
        """The route FastAPI's router would serve ``scope`` with, if it matches fully."""
        path = get_route_path(scope)
        segments = path.split("/")
        for literals, route in self._fixed.get(
            (scope["method"], len(segments) - 1), self._wildcard
        ):
            if literals is not None and any(segments[i] != text for i, text in literals):
                continue
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return route, child_scope
        return None


def _first(item: tuple[int, object]) -> int:
    return item[0]


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset)


def _plain_query_model(model: type[pydantic.BaseModel] | None) -> bool:
    """Whether FastAPI reads ``model`` from the query string as one value per field name
    (no aliases, no repeated values), which is what the lean path reproduces."""
    if model is None:
        return True
    return all(
        field.alias is None
        and field.validation_alias is None
        and not _is_sequence(field.annotation)
        for field in model.model_fields.values()
    )


class _RefusedError(Exception):
    """The request does not validate: FastAPI answers it."""


@dataclass(frozen=True, slots=True)
class _LeanOperation:
    """What the lean path needs of one operation route."""

    handler: OperationHandler
    query_fields: frozenset[str]

    def values(
        self, scope: Scope, path_params: Mapping[str, Any], body: bytes | None
    ) -> dict[str, Any]:
        """The route's parameters validated as FastAPI validates them.

        Raises:
            _RefusedError: any of them is not valid (or not in a shape reproduced here).
        """
        op = self.handler.op
        values: dict[str, Any] = {}
        for name in op.path_params:
            value = path_params.get(name)
            if not isinstance(value, str) or len(value) > MAX_PATH_PARAMETER:
                raise _RefusedError
            values[name] = value
        try:
            if op.query is not None:
                values["query"] = op.query.model_validate(self._query(scope))
            if op.body is not None:
                values["body"] = op.body.model_validate(self._json(scope, body))
        except _RefusedError:
            raise
        except Exception:
            # Invalid values, undecodable or too deeply nested JSON, ...: whatever FastAPI
            # made of it before (a 422, a 400), it still does.
            raise _RefusedError from None
        if op.mutating:
            values["idempotency_key"] = self._key(scope)
        return values

    def _query(self, scope: Scope) -> dict[str, str]:
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs) or not query.keys() <= self.query_fields:
            raise _RefusedError  # repeated or unknown names: FastAPI's rules for those apply
        return query

    @staticmethod
    def _json(scope: Scope, body: bytes | None) -> Any:
        if not body:
            raise _RefusedError
        content_type = next(
            (value for name, value in scope["headers"] if name == _CONTENT_TYPE), None
        )
        if content_type is None:
            raise _RefusedError
        media_type = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
        main, _, sub = media_type.partition("/")
        if main != "application" or not (sub == "json" or sub.endswith("+json")):
            raise _RefusedError
        return json.loads(body)

    @staticmethod
    def _key(scope: Scope) -> str | None:
        raw = next((value for name, value in scope["headers"] if name == _IDEMPOTENCY), None)
        if raw is None:
            return None
        key: str = raw.decode("latin-1")
        # fullmatch: re's "$" would also accept a trailing newline, pydantic's does not.
        if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
            raise _RefusedError
        return key


async def _read_body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The request body (None if the client went away first) and the messages it came in,
    for a replay."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class OperationDispatcher:
    """See the module docstring.

    Args:
        app: the rest of the application (FastAPI's exception layer and router).
        routes: the app's route list (read when the index is built or rebuilt).
        handlers: the operation routes with their handlers.
        state: the app's shared state.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Callable[[], Sequence[BaseRoute]],
        handlers: Sequence[tuple[BaseRoute, OperationHandler]],
        state: ServerState,
    ) -> None:
        self.app = app
        self._routes = routes
        self._state = state
        # By identity: routes are not hashable, and each is this app's own object.
        self._lean = {
            id(route): _LeanOperation(handler, frozenset(handler.op.query.model_fields))
            if handler.op.query is not None
            else _LeanOperation(handler, frozenset())
            for route, handler in handlers
            if _plain_query_model(handler.op.query)
        }
        self._index: _RouteIndex | None = None

    def _route_index(self) -> _RouteIndex:
        routes = self._routes()
        if self._index is None or self._index.stale(routes):
            self._index = _RouteIndex(routes)
        return self._index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = self._route_index().first_full_match(scope)
        lean = self._lean.get(id(found[0])) if found is not None else None
        if found is None or lean is None:
            await self.app(scope, receive, send)
            return
        route, child_scope = found
        body, messages = (
            await _read_body(receive) if lean.handler.op.body is not None else (b"", [])
        )
        try:
            values = lean.values(scope, child_scope["path_params"], body)
        except _RefusedError:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope.update(child_scope)
        scope["route"] = route

        async def read_body() -> bytes:
            return body or b""

        try:
            response = await lean.handler(self._state, scope, values, read_body)
        except KiiarenError as error:
            response = error_response(error, request_id_of(scope))
        await response(scope, receive, send)

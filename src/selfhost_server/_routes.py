"""The REST routes, generated from :data:`kiiaren_core.wire.OPERATIONS`.

One handler factory turns each :class:`~kiiaren_core.wire.Operation` into a FastAPI route:
path parameters, the query model's fields and the body's fields are passed to the provider
method by name (the whole body as one argument with ``body_as``; a ``PATCH`` body only with
the fields the client sent, so absent means "leave it" and ``null`` means "clear it"); the
result is answered with the operation's status and response model (``wrap``ped scalars,
``204`` for nothing, ``404`` for a ``None`` read with ``none_is_404``).

Only the operations whose binding cannot be spelled by name have small runners of their own:
the four that grant a session (sign-up, sign-in, refresh, OAuth callback), which sign in on a
fresh signed-out view and answer the session with that view's tokens, and ``events.emit``,
which builds the event from the body and the path's workspace.

Every request acts through ``provider.with_session(<bearer token>, context=<client>)``, a
view closed when the request ends.

Each operation's behaviour once its request is valid is one :class:`OperationHandler`: the
FastAPI endpoint calls it, and so does the lean path of :mod:`selfhost_server._dispatch`,
which serves valid operation requests without FastAPI's per-request machinery.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, cast

import pydantic
from fastapi import Body, FastAPI, Header, Path, Query
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Scope

from kiiaren_core.errors import (
    InvalidInputError,
    KiiarenError,
    NotAuthenticatedError,
    NotFoundError,
)
from kiiaren_core.events import AppEvent, EventEnvelope, TypingChangedEvent, new_event
from kiiaren_core.models import Session, SessionTokens
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.wire import (
    OPERATIONS,
    EmitBody,
    OAuthCallbackQuery,
    Operation,
    RefreshBody,
    SessionGrant,
    SignInBody,
    SignUpBody,
)
from selfhost_server._context import bearer_token, request_id_of
from selfhost_server._errors import ErrorEnvelope, error_response
from selfhost_server._idempotency import (
    IDEMPOTENCY_HEADER,
    KEY_PATTERN,
    MAX_KEY_LENGTH,
    fingerprint,
    run_idempotently,
)
from selfhost_server._state import ServerState, server_state

__all__ = [
    "BEARER_SCHEME",
    "MAX_PATH_PARAMETER",
    "OperationHandler",
    "add_operation_routes",
    "error_statuses",
    "operation_handler",
]

BEARER_SCHEME: Final = "bearer"
"""Name of the security scheme in the OpenAPI document."""

MAX_PATH_PARAMETER: Final = 512
"""Longest path parameter (an id) accepted, in characters."""

_TYPING: Final = TypingChangedEvent.model_fields["type"].default

_ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    401: "Not signed in, or the session has ended (`not_authenticated`)",
    403: "The caller's role does not allow this (`permission_denied`, `managed_only`)",
    404: "Not found, or not visible to the caller (`not_found`)",
    409: "Conflicts with the current state, or the Idempotency-Key's first use "
    "(`conflict`, `idempotency_conflict`)",
    413: "The body is larger than allowed (`payload_too_large`)",
    422: "Invalid input (`invalid_input` with `details.field`, and its subclasses)",
    429: "Too many attempts; retry after `Retry-After` seconds (`rate_limited`)",
    500: "Unexpected failure, logged with the request id (`internal_error`)",
    501: "Not supported by this provider (`unsupported`)",
    503: "The backend is unavailable; retry after `Retry-After` seconds "
    "(`backend_unavailable`, `provider_closed`, `token_collision`)",
}


def error_statuses(op: Operation) -> list[int]:
    """The error statuses ``op`` can answer (all of them documented in the OpenAPI)."""
    return [
        status
        for status in _ERROR_DESCRIPTIONS
        if not (status == 409 and not op.mutating) and not (status == 413 and op.body is None)
    ]


# --- arguments ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Arguments:
    """The validated parts of one request."""

    path: Mapping[str, str]
    query: pydantic.BaseModel | None
    body: pydantic.BaseModel | None

    def by_name(self, op: Operation) -> dict[str, Any]:
        """The keyword arguments of ``op``'s provider method (see the module docstring)."""
        arguments: dict[str, Any] = dict(self.path)
        if self.query is not None:
            arguments.update(_fields(self.query, only_sent=False))
        if self.body is not None:
            if op.body_as is not None:
                arguments[op.body_as] = self.body
            else:
                arguments.update(_fields(self.body, only_sent=op.method == "PATCH"))
        return arguments


_CLEANED_BY_PROVIDERS: Final = frozenset({"filename"})
"""Fields whose control characters the contract has providers remove (the conformance
suite's file-name rules): a NUL there is something to clean, not an error."""


def _check_text(value: Any, field: str) -> None:
    """Refuse text no backend can store: NUL characters and lone surrogates.

    PostgreSQL text cannot hold NUL, and lone surrogates (legal in JSON escapes) are not
    UTF-8: either would otherwise fail deep in a provider instead of as bad input.
    """
    if isinstance(value, str):
        nul = "\x00" in value and field not in _CLEANED_BY_PROVIDERS
        if nul or (not value.isascii() and not _encodable(value)):
            raise InvalidInputError(
                "Text must be valid Unicode without NUL characters.", details={"field": field}
            )
    elif isinstance(value, pydantic.BaseModel):
        for name in value.model_fields_set:
            _check_text(getattr(value, name), name)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, field)
            _check_text(item, field)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_text(item, field)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fields(model: pydantic.BaseModel, *, only_sent: bool) -> dict[str, Any]:
    # Attribute access, not model_dump(): nested models (an invite's scope) stay models.
    names = model.model_fields_set if only_sent else type(model).model_fields
    return {name: getattr(model, name) for name in names}


Runner = Callable[[ServerState, Scope, str | None, _Arguments], Awaitable[Any]]
"""Runs one operation for a request: ``(state, scope, bearer token, arguments) -> result``."""


def _resolve(view: BackendProvider, target: str) -> Callable[..., Awaitable[Any]]:
    found: Any = view
    for part in target.split("."):
        found = getattr(found, part)
    return cast(Callable[..., Awaitable[Any]], found)


async def _require_session(view: BackendProvider) -> None:
    if await view.auth.get_session() is None:
        raise NotAuthenticatedError()


def _generic(op: Operation) -> Runner:
    # Signing out is idempotent and the extension hooks know nothing of sessions: neither
    # rejects a dead token itself, so the server checks it before calling them.
    check_session = op.access == "session" and (
        op.name == "auth.sign_out" or op.target.startswith("extensions.")
    )

    async def run(state: ServerState, scope: Scope, token: str | None, args: _Arguments) -> Any:
        async with state.view(scope, token) as view:
            if check_session:
                await _require_session(view)
            return await _resolve(view, op.target)(**args.by_name(op))

    return run


# --- the runners that cannot bind by name ---------------------------------------------------


def _grant(session: Session, view: BackendProvider) -> SessionGrant:
    tokens = view.auth.tokens
    if tokens is None:
        raise NotAuthenticatedError()
    return SessionGrant(session=session, tokens=tokens)


async def _sign_up(state: ServerState, scope: Scope, _: str | None, args: _Arguments) -> Any:
    body = cast(SignUpBody, args.body)
    async with state.view(scope, None) as view:
        session = await view.auth.sign_up_with_password(body.email, body.password, name=body.name)
        return _grant(session, view)


async def _sign_in(state: ServerState, scope: Scope, _: str | None, args: _Arguments) -> Any:
    body = cast(SignInBody, args.body)
    async with state.view(scope, None) as view:
        return _grant(await view.auth.sign_in_with_password(body.email, body.password), view)


async def _refresh(state: ServerState, scope: Scope, _: str | None, args: _Arguments) -> Any:
    body = cast(RefreshBody, args.body)
    tokens = SessionTokens(access_token="", refresh_token=body.refresh_token)
    async with state.view(scope, tokens) as view:
        return _grant(await view.auth.refresh_session(), view)


async def _oauth_callback(state: ServerState, scope: Scope, _: str | None, args: _Arguments) -> Any:
    query = cast(OAuthCallbackQuery, args.query)
    async with state.view(scope, None) as view:
        session = await view.auth.complete_oauth(
            args.path["provider"], code=query.code, state=query.state
        )
        return _grant(session, view)


async def _emit(state: ServerState, scope: Scope, token: str | None, args: _Arguments) -> Any:
    body = cast(EmitBody, args.body)
    workspace_id = args.path["workspace_id"]
    async with state.view(scope, token) as view:
        event: EventEnvelope
        try:
            if body.type == _TYPING:
                # The typist is the caller, whatever the payload claims.
                session = await view.auth.get_session()
                if session is None:
                    raise NotAuthenticatedError()
                payload = {**body.payload, "user_id": session.user_id}
                event = new_event(
                    _TYPING, workspace_id=workspace_id, actor_id=session.user_id, payload=payload
                )
            else:
                event = AppEvent(type=body.type, workspace_id=workspace_id, payload=body.payload)
        except pydantic.ValidationError as exc:
            problems = "; ".join(str(error["msg"]) for error in exc.errors())
            raise InvalidInputError(
                f"The event payload is not valid: {problems}.", details={"field": "payload"}
            ) from None
        return await view.events.emit(event)


_RUNNERS: Final[dict[str, Runner]] = {
    "auth.sign_up": _sign_up,
    "auth.sign_in": _sign_in,
    "auth.refresh": _refresh,
    "auth.oauth_callback": _oauth_callback,
    "events.emit": _emit,
}


# --- rendering and execution ----------------------------------------------------------------


def _renderer(op: Operation) -> Callable[[Any], Response]:
    adapter = pydantic.TypeAdapter(op.response) if op.response is not None else None

    def render(result: Any) -> Response:
        if adapter is None:
            return Response(status_code=op.status)
        if result is None:
            if op.none_is_404:
                raise NotFoundError()
            # The only reads answering None without none_is_404 are those of the session
            # itself (auth.session, auth.user): None means the token is not a live session.
            raise NotAuthenticatedError()
        if op.wrap is not None:
            result = op.response(**{op.wrap: result})
        return Response(adapter.dump_json(result), op.status, media_type="application/json")

    return render


async def _principal(state: ServerState, scope: Scope, token: str | None) -> str:
    """Whose key space an Idempotency-Key belongs to: a verified user, else the address."""
    if token is not None:
        async with state.view(scope, token) as view:
            session = await view.auth.get_session()
        if session is not None:
            return f"user:{session.user_id}"
    return f"ip:{state.client_ip(scope) or 'unknown'}"


async def _execute(
    state: ServerState,
    scope: Scope,
    op: Operation,
    runner: Runner,
    render: Callable[[Any], Response],
    args: _Arguments,
    key: str | None,
    body: Callable[[], Awaitable[bytes]],
) -> Response:
    token = bearer_token(scope)
    if op.access == "session" and token is None:
        raise NotAuthenticatedError()

    async def run() -> Response:
        return render(await runner(state, scope, token, args))

    # Answers carrying fresh credentials are never stored; those operations are safe to
    # repeat by design (a repeated refresh inside the grace window returns the same tokens).
    if key is None or not op.mutating or op.response is SessionGrant:
        return await run()

    def on_error(error: KiiarenError) -> Response:
        return error_response(error, request_id_of(scope))

    return await run_idempotently(
        state.idempotency,
        principal=await _principal(state, scope, token),
        key=key,
        request_fingerprint=fingerprint(scope, await body()),
        ttl_seconds=state.settings.idempotency_ttl_seconds,
        run=run,
        on_error=on_error,
    )


@dataclass(frozen=True, slots=True)
class OperationHandler:
    """Serves one operation from its validated request values.

    ``values`` are what the route's parameters validated to: each path parameter by name,
    ``query`` and ``body`` (models, when the operation has them) and ``idempotency_key``.
    The FastAPI endpoint and the lean dispatcher (:mod:`selfhost_server._dispatch`) both
    answer through this, so they behave the same once a request is valid.
    """

    op: Operation
    runner: Runner
    render: Callable[[Any], Response]

    async def __call__(
        self,
        state: ServerState,
        scope: Scope,
        values: Mapping[str, Any],
        body: Callable[[], Awaitable[bytes]],
    ) -> Response:
        """The response to a request whose parameters validated to ``values``; ``body``
        reads its raw body (for the Idempotency-Key fingerprint).

        Raises:
            KiiarenError: answered through the error envelope by the caller.
        """
        for name, value in values.items():
            _check_text(value, name)
        op = self.op
        args = _Arguments(
            path={name: values[name] for name in op.path_params},
            query=values.get("query"),
            body=values.get("body"),
        )
        key = values.get("idempotency_key")
        return await _execute(state, scope, op, self.runner, self.render, args, key, body)


_RESERVED: Final = frozenset({"request", "query", "body", "idempotency_key"})


def operation_handler(op: Operation) -> OperationHandler:
    """The :class:`OperationHandler` of ``op``."""
    if op.response is SessionGrant and op.name not in _RUNNERS:
        raise RuntimeError(f"{op.name} grants a session but has no runner")
    return OperationHandler(op, _RUNNERS.get(op.name) or _generic(op), _renderer(op))


def _endpoint(handler: OperationHandler) -> Callable[..., Awaitable[Response]]:
    """The FastAPI endpoint of ``handler``, its parameters declared for validation and docs."""
    op = handler.op
    if _RESERVED & set(op.path_params):
        raise RuntimeError(f"{op.name} has a path parameter named like a reserved one")

    async def endpoint(request: Request, **values: Any) -> Response:
        return await handler(server_state(request), request.scope, values, request.body)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("request", keyword, annotation=Request)]
    path_parameter = Annotated[str, Path(max_length=MAX_PATH_PARAMETER)]
    parameters += [
        inspect.Parameter(name, keyword, annotation=path_parameter) for name in op.path_params
    ]
    if op.query is not None:
        parameters.append(
            inspect.Parameter("query", keyword, annotation=Annotated[op.query, Query()])
        )
    if op.body is not None:
        parameters.append(inspect.Parameter("body", keyword, annotation=Annotated[op.body, Body()]))
    if op.mutating:
        key_header = Header(
            alias=IDEMPOTENCY_HEADER,
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            pattern=KEY_PATTERN,
            description="Makes a retry of this request safe: the first answer is replayed "
            "for the same key and body (`Idempotent-Replayed: true`).",
        )
        parameters.append(
            inspect.Parameter(
                "idempotency_key",
                keyword,
                default=None,
                annotation=Annotated[str | None, key_header],
            )
        )
    endpoint.__signature__ = inspect.Signature(parameters, return_annotation=Response)  # type: ignore[attr-defined]
    endpoint.__name__ = op.name.replace(".", "_")
    return endpoint


def _security(op: Operation) -> list[dict[str, list[str]]]:
    if op.access == "session":
        return [{BEARER_SCHEME: []}]
    if op.access == "optional":
        return [{}, {BEARER_SCHEME: []}]
    return []


def add_operation_routes(app: FastAPI) -> list[tuple[BaseRoute, OperationHandler]]:
    """Add one route per operation of :data:`OPERATIONS` to ``app``; returns each route
    with its handler (for :class:`~selfhost_server._dispatch.OperationDispatcher`)."""
    handlers: list[tuple[BaseRoute, OperationHandler]] = []
    for op in OPERATIONS:
        handler = operation_handler(op)
        responses: dict[int | str, dict[str, Any]] = {
            status: {"model": ErrorEnvelope, "description": _ERROR_DESCRIPTIONS[status]}
            for status in error_statuses(op)
        }
        app.add_api_route(
            op.url_path,
            _endpoint(handler),
            methods=[op.method],
            status_code=op.status,
            response_model=op.response,
            response_class=Response if op.response is None else JSONResponse,
            responses=responses,
            summary=op.summary,
            response_description=op.summary,
            operation_id=op.name,
            name=op.name,
            tags=[op.name.split(".", 1)[0]],
            openapi_extra={"security": _security(op)},
        )
        handlers.append((app.router.routes[-1], handler))
    return handlers

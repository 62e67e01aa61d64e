"""``create_app``: the KIIAREN wire protocol (version 1) over any provider, as a FastAPI app.

::

    from kiiaren_core import create_provider
    from selfhost_server import create_app

    app = create_app(create_provider("selfhost"))   # uvicorn module:app

What the app serves:

* ``/v1/...``: one route per :data:`kiiaren_core.wire.OPERATIONS` entry (see
  :mod:`selfhost_server._routes`), plus ``GET /v1/capabilities``;
* ``/v1/storage/objects/{storage_id}`` when the provider's storage is served by the server
  (local disk);
* ``/v1/events``, the events WebSocket (:mod:`selfhost_server.ws`);
* ``GET /health`` (the process is up) and ``GET /ready`` (the provider's backend answers);
* ``/openapi.json`` and ``/docs``.

The app owns the provider: its lifespan initialises it at startup and closes it at shutdown
(after telling open event sockets that the server is going away).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from kiiaren_core import create_provider
from kiiaren_core.errors import BackendUnavailableError
from kiiaren_core.protocols import BackendProvider, OperableProvider, ServedStorage
from kiiaren_core.wire import API_PREFIX, CapabilitiesReport
from selfhost_server import ws
from selfhost_server._context import REQUEST_ID_HEADER
from selfhost_server._dispatch import OperationDispatcher
from selfhost_server._errors import ErrorEnvelope, install_error_handlers
from selfhost_server._idempotency import (
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    InProcessIdempotencyStore,
)
from selfhost_server._middleware import RequestContextMiddleware
from selfhost_server._openapi import install_openapi
from selfhost_server._routes import add_operation_routes
from selfhost_server._state import ServerState, server_state
from selfhost_server._storage import OBJECTS_PREFIX, add_storage_routes
from selfhost_server.settings import ServerSettings, load_server_settings

__all__ = ["API_VERSION", "create_app", "create_app_from_env"]

logger = logging.getLogger("kiiaren.server")

API_VERSION: Final = "1.0.0"
"""Version of the published API document (the wire protocol is ``/v1``)."""


class Health(BaseModel):
    """Answer of ``/health`` and ``/ready``."""

    model_config = ConfigDict(extra="forbid")

    status: str


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    provider: BackendProvider = app.state.kiiaren.provider
    registry = ws.connection_registry(app)  # checks the ws_* settings before serving
    try:
        await provider.initialize()
    except BackendUnavailableError as exc:
        # Serve anyway: requests answer 503 and /ready fails until the backend answers, so
        # a database outage at boot heals without a restart (no crash loop).
        logger.warning("provider %s: backend unavailable at startup: %s", provider.id, exc.message)
    else:
        logger.info("provider %s ready", provider.id)
    try:
        yield
    finally:
        # Event sockets still open (an ASGI server that does not close them itself) are
        # told the server is going away before their provider closes under them.
        await registry.close_all()
        await provider.aclose()
        logger.info("provider %s closed", provider.id)


async def _health() -> Health:
    return Health(status="ok")


async def _ready(request: Request) -> Health:
    provider = server_state(request).provider
    if isinstance(provider, OperableProvider):
        await provider.check_ready()
    return Health(status="ready")


async def _capabilities(request: Request) -> Response:
    provider = server_state(request).provider
    report = CapabilitiesReport(
        provider_id=provider.id,
        provider_name=provider.name,
        is_managed=provider.is_managed,
        capabilities=provider.capabilities,
        available_features=tuple(provider.features.list_available()),
    )
    return Response(report.model_dump_json(), media_type="application/json")


def create_app(provider: BackendProvider, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``provider`` over the KIIAREN wire protocol.

    Args:
        provider: the provider to host (built, not necessarily initialised). The app owns
            it: the lifespan initialises it and closes it.
        settings: server settings (default: from ``KIIAREN_SERVER_*``).

    Raises:
        ConfigurationError: an invalid ``KIIAREN_SERVER_*`` variable (when ``settings`` is
            not given).
    """
    settings = settings or load_server_settings()
    idempotency = (
        provider.idempotency
        if isinstance(provider, OperableProvider)
        else InProcessIdempotencyStore()
    )
    state = ServerState(provider, settings, idempotency, settings.trusted_networks)
    app = FastAPI(
        title="KIIAREN API",
        version=API_VERSION,
        summary="Workspaces, channels, messages, docs, boards, invites and files.",
        description=_DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.kiiaren = state
    install_error_handlers(app)
    app.add_api_route(
        f"{API_PREFIX}/capabilities",
        _capabilities,
        methods=["GET"],
        response_model=CapabilitiesReport,
        summary="Who the provider is and what it offers",
        operation_id="capabilities",
        tags=["meta"],
        responses={500: {"model": ErrorEnvelope, "description": "Unexpected failure"}},
    )
    handlers = add_operation_routes(app)
    storage = provider.storage
    served = False
    if isinstance(storage, ServedStorage):
        served = True
        add_storage_routes(app, storage, provider.capabilities.limits.allowed_upload_types)
    app.add_api_route(
        "/health",
        _health,
        methods=["GET"],
        summary="Liveness: the process is serving",
        operation_id="health",
        tags=["meta"],
        responses={500: {"model": ErrorEnvelope, "description": "Unexpected failure"}},
    )
    app.add_api_route(
        "/ready",
        _ready,
        methods=["GET"],
        summary="Readiness: the provider's database and storage answer",
        operation_id="ready",
        tags=["meta"],
        responses={
            500: {"model": ErrorEnvelope, "description": "Unexpected failure"},
            503: {"model": ErrorEnvelope, "description": "Not ready (`backend_unavailable`)"},
        },
    )
    app.include_router(ws.router)
    install_openapi(app)
    # Innermost user middleware: inside CORS and the request context, like the router.
    app.add_middleware(
        OperationDispatcher, routes=lambda: app.router.routes, handlers=handlers, state=state
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", IDEMPOTENCY_HEADER, REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, REPLAYED_HEADER, "Retry-After"],
            max_age=600,
        )

    def body_limit(path: str) -> int:
        if served and path.startswith(OBJECTS_PREFIX):
            # Read per request: a provider may learn its limits when it is initialised.
            return provider.capabilities.limits.max_upload_bytes
        return settings.body_limit_bytes

    # Added last, so it is the outermost layer: every answer, CORS's included, gets an id.
    app.add_middleware(RequestContextMiddleware, body_limit=body_limit, client_ip=state.client_ip)
    return app


def create_app_from_env() -> FastAPI:
    """``create_app`` for the provider and settings named by the environment
    (``KIIAREN_PROVIDER``, ``KIIAREN_<PROVIDER>_*``, ``KIIAREN_SERVER_*``).

    This is the factory each server process runs (``uvicorn --factory``).

    Raises:
        ConfigurationError: naming the invalid variable.
    """
    settings = load_server_settings()
    return create_app(create_provider(), settings)


_DESCRIPTION: Final = """
The KIIAREN wire protocol, version 1. Every route under `/v1` is generated from one
declarative operation table, the same one the hosted Python client is built from.

**Authentication**: `Authorization: Bearer <access token>` from sign-up, sign-in or refresh.

**Errors**: every error answers `{"error": {"code", "message", "details"}, "request_id"}`
with the status of its code; `429` and `503` carry `Retry-After`.

**Retries**: mutating requests accept an `Idempotency-Key` header: repeating a request with
the same key and body replays the first answer (`Idempotent-Replayed: true`) without doing
it twice; the same key with another body answers `409 idempotency_conflict`.

**Tracing**: every answer carries `X-Request-ID` (yours, if you sent a sane one).
"""

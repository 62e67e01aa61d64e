"""``kiiaren-server``: run and operate the bundled server.

::

    kiiaren-server serve [--host H] [--port P] [--workers N] [--log-level L]
    kiiaren-server migrate
    kiiaren-server create-user --email E --name N [--password-stdin]
    kiiaren-server check-config

The provider comes from the environment (``KIIAREN_PROVIDER``, default ``selfhost``, and its
``KIIAREN_<PROVIDER>_*`` variables); with nothing configured that is the embedded default,
SQLite ``./kiiaren.db`` and files in ``./kiiaren-data``. Server options are
``KIIAREN_SERVER_*`` (command-line options win).

Exit codes: 0 success; 1 the backend failed (unreachable database, refused operation); 2 a
configuration error, reported with the variable's name and no traceback.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio
import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from kiiaren_core import create_provider
from kiiaren_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    KiiarenError,
    NotAuthenticatedError,
    ProviderNotFoundError,
)
from kiiaren_core.models import AuthState
from kiiaren_core.protocols import BackendProvider, OperableProvider
from selfhost_server import ws
from selfhost_server._logging import configure_logging
from selfhost_server.app import create_app_from_env
from selfhost_server.settings import ServerSettings, load_server_settings

__all__ = ["main", "run", "serve_app"]

logger = logging.getLogger("kiiaren.server")

EXIT_FAILURE: Final = 1
EXIT_CONFIGURATION: Final = 2
_OPTION_VARIABLES: Final = {
    "host": "KIIAREN_SERVER_HOST",
    "port": "KIIAREN_SERVER_PORT",
    "workers": "KIIAREN_SERVER_WORKERS",
    "log_level": "KIIAREN_SERVER_LOG_LEVEL",
}


class _CommandError(Exception):
    """A command failed for a reason already explained in its message."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _settings(args: argparse.Namespace) -> ServerSettings:
    """Settings from the environment, command-line options winning. The options are also
    written to the environment, so server worker processes read the same values."""
    for option, variable in _OPTION_VARIABLES.items():
        value = getattr(args, option, None)
        if value is not None:
            os.environ[variable] = str(value)
    settings = load_server_settings()
    configure_logging(settings.log_format, settings.log_level)
    return settings


async def _with_provider(action: Callable[[BackendProvider], Awaitable[None]]) -> None:
    provider = create_provider()
    try:
        await action(provider)
    finally:
        await provider.aclose()


def _operable(provider: BackendProvider) -> OperableProvider:
    if not isinstance(provider, OperableProvider):
        raise _CommandError(
            f"The {provider.id!r} provider has no database for the server to operate.",
            EXIT_CONFIGURATION,
        )
    return provider


# --- commands -------------------------------------------------------------------------------


def serve_app() -> FastAPI:
    """The app factory every server process runs (``uvicorn --factory``): the settings and
    the logging of the environment, then :func:`~selfhost_server.create_app_from_env`."""
    settings = load_server_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app_from_env()


async def _preflight(provider: BackendProvider) -> None:
    try:
        await provider.initialize()
    except BackendUnavailableError as exc:
        # Not fatal: the server answers 503 (and /ready fails) until the backend is back.
        logger.warning("the backend is not reachable yet: %s", exc.message)


def _fastapi_app(app: object) -> FastAPI | None:
    """The FastAPI app inside whatever ASGI wrappers uvicorn put around it."""
    for _ in range(8):
        if isinstance(app, FastAPI):
            return app
        app = getattr(app, "app", None)
    return None


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, telling event sockets that it is going away (1001) before uvicorn
    closes every connection itself (with 1012)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = _fastapi_app(getattr(self.config, "loaded_app", None))
        if app is not None:
            await ws.connection_registry(app).close_all()
        await super().shutdown(sockets)


def _listening_socket(settings: ServerSettings) -> socket.socket:
    """The TCP socket the worker processes share.

    Made with ``IPPROTO_TCP`` (uvicorn's has protocol 0): asyncio sets ``TCP_NODELAY`` only
    on connections accepted from such sockets, and without it a response written in two
    parts waits for the client's delayed ACK (40 ms a request).
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise _CommandError(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror}."
        ) from None
    sock.set_inheritable(True)
    return sock


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> None:
    settings = _settings(args)
    # Configuration problems stop here, with their variable's name, before any process starts.
    anyio.run(_with_provider, _preflight)
    config = uvicorn.Config(
        "selfhost_server.cli:serve_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,  # our access log leaves out query strings (signed URLs)
        proxy_headers=False,  # X-Forwarded-For is honoured from trusted proxies only
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_seconds),
        **ws.uvicorn_options(settings),
    )
    base = f"http://{settings.host}:{settings.port}"
    _out(f"KIIAREN server on {base}")
    _out(f"API docs: {base}/docs  (OpenAPI document: {base}/openapi.json)")
    if settings.workers > 1:
        # Each worker process runs uvicorn's own server: its event sockets are closed by
        # uvicorn (1012, "service restart") rather than with 1001.
        Multiprocess(config, sockets=[_listening_socket(settings)]).run()
        return
    server = _GracefulServer(config)
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; the
    # default action would then report the process as killed. A stop asked for is a
    # success: exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    if not server.started:
        raise _CommandError("The server did not start (see the log above).")


def _migrate(args: argparse.Namespace) -> None:
    _settings(args)

    async def migrate(provider: BackendProvider) -> None:
        await _operable(provider).migrate()

    anyio.run(_with_provider, migrate)
    _out("The database schema is up to date.")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat the password: ") != password:
            raise _CommandError("The passwords do not match.")
    if not password:
        raise _CommandError("No password given.")
    return password


def _create_user(args: argparse.Namespace) -> None:
    _settings(args)
    password = _read_password(args.password_stdin)
    events: list[str] = []

    async def create(provider: BackendProvider) -> None:
        await provider.initialize()
        view = provider.with_session(None)
        try:
            view.auth.on_auth_state_change(lambda state: _record(events, state))
            try:
                session = await view.auth.sign_up_with_password(
                    args.email, password, name=args.name
                )
            except NotAuthenticatedError:
                # Sign-up answers like a failed sign-in when the email is taken (no oracle).
                raise _CommandError(f"A user with the email {args.email} already exists.") from None
            # The command needs no session of its own.
            await view.auth.sign_out()
        finally:
            await view.aclose()
        if "signed_up" not in events:
            raise _CommandError(f"A user with the email {args.email} already exists.")
        _out(f"Created user {session.user_id} <{args.email}>.")

    anyio.run(_with_provider, create)


def _record(events: list[str], state: AuthState) -> None:
    events.append(state.event)


def _check_config(args: argparse.Namespace) -> None:
    settings = _settings(args)

    async def check(provider: BackendProvider) -> None:
        await provider.initialize()
        if isinstance(provider, OperableProvider):
            await provider.check_ready()
        _out(f"Provider: {provider.name} ({provider.id}), ready.")

    anyio.run(_with_provider, check)
    _out(f"Server: http://{settings.host}:{settings.port}, {settings.workers} worker(s).")
    _out("Configuration OK.")


# --- entry points ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiiaren-server",
        description="Run and operate the bundled KIIAREN server. Configuration comes from "
        "KIIAREN_* environment variables (see docs/server.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the API")
    serve.add_argument("--host", help="interface to listen on (KIIAREN_SERVER_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (KIIAREN_SERVER_PORT)")
    serve.add_argument("--workers", type=int, help="server processes (KIIAREN_SERVER_WORKERS)")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (KIIAREN_SERVER_LOG_LEVEL)",
    )
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)

    create_user = commands.add_parser("create-user", help="create a password account")
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--name", required=True)
    create_user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of a prompt",
    )
    create_user.set_defaults(handler=_create_user)

    check = commands.add_parser(
        "check-config", help="load the configuration, start the provider and check readiness"
    )
    check.set_defaults(handler=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: the process's); returns the exit code."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except ConfigurationError as exc:
        # The provider's name comes from KIIAREN_PROVIDER: the commands take no other.
        default = "KIIAREN_PROVIDER" if isinstance(exc, ProviderNotFoundError) else None
        variable = exc.details.get("variable", default)
        named = "" if not variable or str(variable) in exc.message else f" ({variable})"
        sys.stderr.write(f"kiiaren-server: configuration error{named}: {exc.message}\n")
        return EXIT_CONFIGURATION
    except KiiarenError as exc:
        sys.stderr.write(f"kiiaren-server: {exc.message}\n")
        return EXIT_FAILURE
    except _CommandError as exc:
        sys.stderr.write(f"kiiaren-server: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        return 130
    return 0


def run() -> None:
    """The ``kiiaren-server`` console script."""
    sys.exit(main())

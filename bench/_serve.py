"""Run the bundled server as a real subprocess for benchmarks, and set up data over HTTP.

Benchmarks measure what a deployment runs: ``python -m selfhost_server serve`` in its own
process, configured only through ``KIIAREN_*`` environment variables, with the load
generator in another process. This module gives them:

* :func:`temporary_database`: a scratch database (a SQLite file, or a fresh PostgreSQL
  database on the server an admin URL names, dropped afterwards).
* :func:`kiiaren_server`: migrate, start, wait for ``GET /ready``, stop gracefully.
* :func:`bootstrap`: accounts signed up over HTTP, one workspace they all belong to and its
  ``general`` channel.

Benchmark configuration (see :data:`BENCH_ENV`): rate limits are raised far above any
benchmark's rate (every request comes from 127.0.0.1), access tokens live a day so no run
outlives them, and the log level is ``warning`` (no access-log line per request; say so
when reporting figures).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from sqlalchemy.engine import make_url

__all__ = [
    "BENCH_ENV",
    "PASSWORD",
    "Bootstrap",
    "DatabaseKind",
    "ServerProcess",
    "bootstrap",
    "create_database",
    "drop_database",
    "free_port",
    "kiiaren_server",
    "message_body",
    "temporary_database",
    "wait_until_ready",
]

PASSWORD = "Bench-password-123!"
GENEROUS_LIMIT = "1000000/60"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

DatabaseKind = Literal["sqlite", "postgres"]

BENCH_ENV: Mapping[str, str] = {
    "KIIAREN_PROVIDER": "selfhost",
    **{
        f"KIIAREN_SELFHOST_RATE_LIMIT_{name}": GENEROUS_LIMIT
        for name in (
            "SIGN_IN",
            "SIGN_UP",
            "REFRESH",
            "VERIFICATION",
            "PASSWORD_RESET",
            "JOIN",
            "DOMAIN_VERIFY",
        )
    },
    "KIIAREN_SELFHOST_ACCESS_TOKEN_TTL_SECONDS": "86400",
    "KIIAREN_SERVER_LOG_LEVEL": "warning",
}
"""Environment every benchmark server gets (``extra_env`` of :func:`kiiaren_server` wins)."""


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """A running server: its base URL (``http://127.0.0.1:P``), process id and handle."""

    url: str
    pid: int
    process: subprocess.Popen[bytes]


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What :func:`bootstrap` set up: one workspace, its ``general`` channel and one access
    token per account (``tokens[0]`` is the owner's), in sign-up order."""

    workspace_id: str
    channel_id: str
    tokens: list[str]
    user_ids: list[str]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def message_body(text: str) -> str:
    """A message body as the product stores it: a Quill delta as a JSON string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'{{"ops":[{{"insert":"{escaped}\\n"}}]}}'


# --- databases ------------------------------------------------------------------------------


def _conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy PostgreSQL URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_url: str) -> str:
    """Create a scratch database on the PostgreSQL server of ``admin_url``; returns its
    SQLAlchemy URL (same driver and credentials, the new database name)."""
    import psycopg

    name = f"kiiaren_bench_{secrets.token_hex(4)}"
    with psycopg.connect(_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, database_url: str) -> None:
    """Drop the database of ``database_url`` (made by :func:`create_database`), closing any
    connection still open to it."""
    import psycopg

    name = make_url(database_url).database
    with psycopg.connect(_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temporary_database(kind: DatabaseKind, admin_url: str | None = None) -> Iterator[str]:
    """A scratch database's SQLAlchemy URL for the duration of the block.

    ``sqlite``: a file in a temporary directory (``sqlite+aiosqlite:///...``), removed after.
    ``postgres``: a fresh database on the server ``admin_url`` names
    (``postgresql+psycopg://user@host:port/db``), dropped after.
    """
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="kiiaren-bench-db-") as scratch:
            yield f"sqlite+aiosqlite:///{scratch}/bench.db"
        return
    if not admin_url:
        raise ValueError("a PostgreSQL benchmark needs the URL of a server to use")
    url = create_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


# --- the server process ---------------------------------------------------------------------


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, *, path: str = "/ready"
) -> None:
    """Poll ``GET url+path`` until it answers 200.

    Raises:
        RuntimeError: the process exited, or :data:`START_TIMEOUT` passed; the message
            carries the end of the process's log.
    """
    parsed = httpx.URL(url)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n" + _tail(log))
        conn = http.client.HTTPConnection(parsed.host, parsed.port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"{url}{path} did not answer 200 within {START_TIMEOUT:g} s:\n" + _tail(log))


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait up to :data:`STOP_TIMEOUT`, then SIGKILL. Idempotent."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def spawn(
    command: list[str], env: Mapping[str, str], log: Path, *, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` with stdout and stderr appended to ``log`` (a file, so a chatty
    process can never block on a full pipe); stop it with :func:`stop_process` at the end.
    An exception raised inside the block gets the end of the log as a note."""
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command, env=dict(env), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd
        )
    try:
        yield process
    except Exception as exc:
        # Whatever failed inside the block (a 500, a refused request), the process's own
        # log usually says why: attach its end to the error without changing its type.
        exc.add_note(f"--- end of {log} ---\n{_tail(log, 25)}")
        raise
    finally:
        stop_process(process)


def server_env(
    database_url: str, files_dir: Path, port: int, extra_env: Mapping[str, str] | None
) -> dict[str, str]:
    """The environment of a benchmark server: the caller's, minus any ``KIIAREN_*`` it had,
    plus :data:`BENCH_ENV`, the database, storage and URL, plus ``extra_env``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KIIAREN_")}
    env.update(BENCH_ENV)
    env.update(
        {
            "KIIAREN_SELFHOST_DATABASE_URL": database_url,
            "KIIAREN_SELFHOST_STORAGE_PATH": str(files_dir),
            "KIIAREN_SELFHOST_PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
    )
    env.update(extra_env or {})
    return env


@contextlib.contextmanager
def kiiaren_server(
    database_url: str,
    *,
    workers: int = 1,
    files_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """The bundled server in a subprocess, ready (``GET /ready`` answered 200).

    Migrates a PostgreSQL database first (``python -m selfhost_server migrate``; SQLite
    migrates on start), then runs
    ``python -m selfhost_server serve --host 127.0.0.1 --port P [--workers N]``. Its output
    goes to ``files_dir/../server-P.log`` (quoted in the error if it fails to start). On exit
    the server gets SIGTERM (graceful stop), then SIGKILL after :data:`STOP_TIMEOUT`.

    Raises:
        RuntimeError: migration failed, or the server died or was not ready in time.
    """
    port = free_port()
    files_dir.mkdir(parents=True, exist_ok=True)
    env = server_env(database_url, files_dir, port, extra_env)
    log = files_dir.parent / f"server-{port}.log"
    if not database_url.startswith("sqlite"):
        # PostgreSQL deployments migrate as a step of their own; SQLite migrates on start.
        migrated = subprocess.run(
            [sys.executable, "-m", "selfhost_server", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migration failed ({migrated.returncode}):\n{migrated.stderr}")
    command = [sys.executable, "-m", "selfhost_server", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if workers != 1:
        command += ["--workers", str(workers)]
    with spawn(command, env, log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process, log)
        yield ServerProcess(url, process.pid, process)


# --- data -----------------------------------------------------------------------------------


def _ok(response: httpx.Response, expected: int) -> httpx.Response:
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} (expected {expected}): {response.text[:500]}"
        )
    return response


async def _sign_up(client: httpx.AsyncClient, index: int) -> tuple[str, str]:
    email = f"bench-{index}-{secrets.token_hex(6)}@example.com"
    grant = _ok(
        await client.post(
            "/v1/auth/sign-up",
            json={"email": email, "password": PASSWORD, "name": f"Bench {index}"},
        ),
        201,
    ).json()
    return grant["tokens"]["access_token"], grant["session"]["user_id"]


async def bootstrap(url: str, *, users: int = 1) -> Bootstrap:
    """Sign up ``users`` accounts over HTTP; the first creates a workspace, the others join
    it with its join code. Returns the workspace, its ``general`` channel and the tokens.

    Raises:
        RuntimeError: any answer other than the expected success.
    """
    if users < 1:
        raise ValueError("users must be at least 1")
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        # One after another: sign-up hashes a password (argon2), which is bounded server-side.
        accounts = [await _sign_up(client, index) for index in range(users)]
        owner = {"Authorization": f"Bearer {accounts[0][0]}"}
        workspace = _ok(
            await client.post("/v1/workspaces", json={"name": "bench"}, headers=owner), 201
        ).json()
        workspace_id: str = workspace["id"]
        channels = _ok(
            await client.get(f"/v1/workspaces/{workspace_id}/channels", headers=owner), 200
        ).json()
        general = next(channel for channel in channels if channel["name"] == "general")
        for token, _ in accounts[1:]:
            _ok(
                await client.post(
                    f"/v1/workspaces/{workspace_id}/join",
                    json={"join_code": workspace["join_code"]},
                    headers={"Authorization": f"Bearer {token}"},
                ),
                200,
            )
    return Bootstrap(
        workspace_id,
        general["id"],
        [token for token, _ in accounts],
        [user_id for _, user_id in accounts],
    )

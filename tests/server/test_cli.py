"""``kiiaren-server`` as an operator runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kiiaren_selfhost import SelfHostProvider
from tests.server.conftest import PASSWORD

pytestmark = pytest.mark.anyio

SCRIPT = Path(sys.executable).with_name("kiiaren-server")


def environment(**variables: str) -> dict[str, str]:
    """The test process's environment without any KIIAREN_* setting, plus ``variables``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KIIAREN_")}
    return {**env, **variables}


def cli(
    *args: str, cwd: Path, stdin: str | None = None, **variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfhost_server", *args],
        cwd=cwd,
        env=environment(**variables),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KIIAREN_SERVER_PORT", "not-a-port"),
        ("KIIAREN_SERVER_TRUSTED_PROXIES", '["not-an-address"]'),
        ("KIIAREN_SERVER_CORS_ORIGINS", "not json"),
        ("KIIAREN_SELFHOST_POOL_SIZE", "0"),
        ("KIIAREN_PROVIDER", "no-such-provider"),
    ],
)
def test_configuration_errors_exit_2_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = cli("check-config", cwd=tmp_path, **{variable: value})
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_refuses_a_bad_configuration_before_starting(tmp_path: Path) -> None:
    result = cli("serve", cwd=tmp_path, KIIAREN_SERVER_WORKERS="0")
    assert result.returncode == 2
    assert "KIIAREN_SERVER_WORKERS" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_on_the_embedded_default(tmp_path: Path) -> None:
    """No configuration at all: SQLite ./kiiaren.db and ./kiiaren-data, ready."""
    result = subprocess.run(
        [str(SCRIPT), "check-config"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Configuration OK" in result.stdout
    assert (tmp_path / "kiiaren.db").exists()


def test_migrate_brings_a_database_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    unmigrated = cli(
        "check-config",
        cwd=tmp_path,
        KIIAREN_SELFHOST_DATABASE_URL=url,
        KIIAREN_SELFHOST_AUTO_MIGRATE="false",
    )
    assert unmigrated.returncode == 2, unmigrated.stderr
    assert "migrate" in unmigrated.stderr
    migrated = cli("migrate", cwd=tmp_path, KIIAREN_SELFHOST_DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stderr
    assert "up to date" in migrated.stdout
    ready = cli(
        "check-config",
        cwd=tmp_path,
        KIIAREN_SELFHOST_DATABASE_URL=url,
        KIIAREN_SELFHOST_AUTO_MIGRATE="false",
    )
    assert ready.returncode == 0, ready.stderr


async def test_migrate_and_create_user(selfhost_url: str, tmp_path: Path) -> None:
    database = {"KIIAREN_SELFHOST_DATABASE_URL": selfhost_url}
    assert cli("migrate", cwd=tmp_path, **database).returncode == 0
    email = f"cli-{os.urandom(4).hex()}@example.com"
    arguments = ("create-user", "--email", email, "--name", "Cli User", "--password-stdin")
    created = cli(*arguments, cwd=tmp_path, stdin=PASSWORD + "\n", **database)
    assert created.returncode == 0, created.stderr
    assert email in created.stdout
    assert PASSWORD not in created.stdout + created.stderr
    again = cli(*arguments, cwd=tmp_path, stdin=PASSWORD + "\n", **database)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    weak = cli(
        *arguments[:2], "weak@example.com", *arguments[3:], cwd=tmp_path, stdin="x\n", **database
    )
    assert weak.returncode == 1
    provider = SelfHostProvider(database_url=selfhost_url, storage_path=str(tmp_path))
    try:
        session = await provider.with_session(None).auth.sign_in_with_password(email, PASSWORD)
        assert session.user_id in created.stdout
    finally:
        await provider.aclose()


def start_server(tmp_path: Path, *args: str, **variables: str) -> tuple[subprocess.Popen[str], int]:
    """``kiiaren-server serve`` in a subprocess, once it answers ``/health``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "selfhost_server", "serve", "--port", str(port), *args],
        cwd=tmp_path,
        env=environment(**variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        while True:
            if process.poll() is not None:
                raise AssertionError(process.communicate())
            try:
                if http.get("/health").status_code == 200:
                    return process, port
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, then the output; the process must exit 0 within 15 seconds."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 15
    return stdout, stderr


def test_serve_and_graceful_shutdown(tmp_path: Path) -> None:
    process, port = start_server(tmp_path, KIIAREN_SERVER_LOG_FORMAT="json")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.get("/ready").status_code == 200
            assert (
                http.get("/v1/x?secret=do-not-log", headers={"X-Request-ID": "cli-1"}).status_code
                == 404
            )
    finally:
        stdout, stderr = stop(process)
    assert f"http://127.0.0.1:{port}" in stdout
    assert "/docs" in stdout
    assert "/openapi.json" in stdout
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "kiiaren.server.access"]
    assert any(line["request_id"] == "cli-1" and line["status"] == 404 for line in access)
    assert "do-not-log" not in stderr
    assert any("closed" in line["message"] for line in lines if line["logger"] == "kiiaren.server")


@pytest.mark.postgres
def test_several_worker_processes_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Two worker processes, no sticky sessions: a session and an Idempotency-Key made
    through one connection work through any other."""
    database = {"KIIAREN_SELFHOST_DATABASE_URL": postgres_url}
    assert cli("migrate", cwd=tmp_path, **database).returncode == 0
    # Other tests sign up from 127.0.0.1 on this database too: no sign-up limit here.
    limits = {"KIIAREN_SELFHOST_RATE_LIMIT_SIGN_UP": "100000/60"}
    process, port = start_server(tmp_path, "--workers", "2", **database, **limits)
    try:
        base = f"http://127.0.0.1:{port}"
        email = f"workers-{os.urandom(4).hex()}@example.com"
        with httpx.Client(base_url=base) as http:
            signed_up = http.post(
                "/v1/auth/sign-up", json={"email": email, "password": PASSWORD, "name": "W"}
            )
        assert signed_up.status_code == 201, signed_up.text
        grant = signed_up.json()
        headers = {
            "Authorization": f"Bearer {grant['tokens']['access_token']}",
            "Idempotency-Key": os.urandom(8).hex(),
        }
        answers = []
        for _ in range(8):
            # A new connection each time, so requests land on either process.
            with httpx.Client(base_url=base) as http:
                answers.append(
                    http.post("/v1/workspaces", json={"name": "shared"}, headers=headers)
                )
        assert {answer.status_code for answer in answers} == {201}
        assert len({answer.json()["id"] for answer in answers}) == 1
        assert sum("idempotent-replayed" in answer.headers for answer in answers) == 7
    finally:
        _, stderr = stop(process)
    assert stderr.count("provider selfhost closed") == 2

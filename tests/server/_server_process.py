"""The bundled server as a subprocess on an already migrated database, for fault tests.

Production runs ``python -m selfhost_server serve``: so do these tests, so a process can be
killed (SIGKILL) while the test survives. :func:`bench._serve.kiiaren_server` also migrates
in a process of its own first, which costs seconds of imports on a busy machine; tests that
start several servers, or restart databases, migrate once in-process instead.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from bench._serve import ServerProcess, free_port, server_env, spawn, wait_until_ready

__all__ = ["server_process"]


@contextlib.contextmanager
def server_process(
    database_url: str, files: Path, extra_env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """``python -m selfhost_server serve`` on a migrated database, once ``/ready`` answers
    (with :data:`bench._serve.BENCH_ENV`: generous rate limits, day-long tokens). Its log is
    ``files/../server-<port>.log``. Stopped with SIGTERM (SIGKILL after 15 s) at the end.
    """
    port = free_port()
    files.mkdir(parents=True)
    log = files.parent / f"server-{port}.log"
    command = [sys.executable, "-m", "selfhost_server", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with spawn(command, server_env(database_url, files, port, extra_env), log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process, log)
        yield ServerProcess(url, process.pid, process)

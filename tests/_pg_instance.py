"""A private PostgreSQL cluster for fault tests: crash it, freeze it, restart it.

The shared PostgreSQL every other test uses must never be stopped, so fault tests run their
own cluster: ``initdb`` in a temporary directory, ``postgres`` on a free loopback port with
its Unix socket inside that directory, ``fsync`` on (durability is what is being tested).

PostgreSQL refuses to run as root, and the suite runs as root in CI containers: every
PostgreSQL command then runs as the ``postgres`` OS user through ``runuser``, in a directory
that user owns. Run as any other user, the commands run directly.

:func:`private_postgres` yields a started :class:`PostgresInstance` and, whatever happens,
kills every process of the cluster and removes its directory afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

__all__ = ["PostgresInstance", "find_bin_dir", "private_postgres", "unavailable_reason"]

_OS_USER: Final = "postgres"
_START_TIMEOUT: Final = 60
_CHILD_EXIT_TIMEOUT: Final = 10.0


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding the server binaries, or the
    directory of ``initdb`` on ``PATH``."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (path for path in root.glob("*/bin") if path.parent.name.isdigit()),
        key=lambda path: int(path.parent.name),
        reverse=True,
    )
    for candidate in versions:
        if all((candidate / name).exists() for name in ("initdb", "postgres")):
            return candidate
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _as_root() -> bool:
    return os.geteuid() == 0


def unavailable_reason() -> str | None:
    """Why a private cluster cannot run here (a skip reason), or ``None`` when it can."""
    if find_bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, postgres) are installed"
    if _as_root():
        if shutil.which("runuser") is None:
            return "running as root, and runuser (to start PostgreSQL as postgres) is missing"
        try:
            pwd.getpwnam(_OS_USER)
        except KeyError:
            return "running as root, and there is no 'postgres' OS user to run PostgreSQL as"
    return None


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux ``/proc``)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces, in parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _signal(pids: Sequence[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class PostgresInstance:
    """One private cluster in ``root`` (``data/``, ``log``, the socket directory).

    Not thread-safe; meant for one test. ``port`` stays the same across restarts so a client
    configured once (a server's database URL) reaches the restarted cluster.
    """

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self.data_dir = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self._launchers: list[subprocess.Popen[bytes]] = []

    # --- commands -------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = _START_TIMEOUT) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if _as_root():
            command = ["runuser", "-u", _OS_USER, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                + self.log_tail()
            )

    def init(self) -> None:
        """``initdb`` with trust authentication for local and loopback connections.

        ``--no-sync`` only skips flushing the freshly created files once: the cluster runs
        with ``fsync`` on, and the machine is never power-cut, only the server killed.
        """
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the cluster (again) and wait until it accepts connections; after a crash
        this includes the crash recovery.

        ``postgres`` runs as a child of this process (through ``runuser`` as root) rather
        than daemonised by ``pg_ctl``: a daemon's exit is reaped by PID 1, and until it is,
        the zombie's pid in ``postmaster.pid`` keeps the cluster from starting again.
        """
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "full_page_writes=on",
            "-c",
            "max_connections=60",
            "-c",
            "shared_buffers=16MB",
            "-c",
            "max_wal_size=64MB",
        ]
        if _as_root():
            command = ["runuser", "-u", _OS_USER, "--", *command]
        with open(self.log, "ab") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, cwd=self.root
            )
        self._launchers.append(process)
        self._wait_ready(process)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        import psycopg

        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL exited with {process.returncode}:\n{self.log_tail()}"
                )
            try:
                with psycopg.connect(self.conninfo(), autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not accept connections in {_START_TIMEOUT} s:\n"
                        + self.log_tail()
                    ) from None
                time.sleep(0.05)

    @property
    def postmaster_pid(self) -> int | None:
        """The postmaster's pid, from ``postmaster.pid`` (``None`` if not running)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        pid = int(first) if first.strip().isdigit() else 0
        return pid if pid and _alive(pid) else None

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, WAL writer, ...)."""
        pid = self.postmaster_pid
        return [pid, *_children_of(pid)] if pid else []

    def crash(self) -> None:
        """``kill -9`` the postmaster, then wait for its children to notice and exit (they
        do so on their own when they next wait; stragglers get SIGKILL after a bound) so the
        cluster can be started again on the same data directory.
        """
        pids = self.processes()
        if not pids:
            raise RuntimeError("the private PostgreSQL is not running")
        _signal(pids[:1], signal.SIGKILL)
        self._wait_gone(pids)
        self._reap()

    def _reap(self) -> None:
        """Wait for launchers whose postmaster has gone (``runuser`` exits right after)."""
        for process in self._launchers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_CHILD_EXIT_TIMEOUT)

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the cluster: connections stay open and are accepted by
        the kernel, but nothing answers (a hung database or a network partition)."""
        pids = self.processes()
        _signal(pids, signal.SIGSTOP)
        return pids

    def thaw(self, pids: Sequence[int]) -> None:
        """Undo :meth:`freeze`. ``runuser`` stops itself when its child stops (job control,
        like ``su``), so it is continued too."""
        _signal(pids, signal.SIGCONT)
        _signal(
            [process.pid for process in self._launchers if process.poll() is None], signal.SIGCONT
        )

    def _wait_gone(self, pids: Sequence[int]) -> None:
        deadline = time.monotonic() + _CHILD_EXIT_TIMEOUT
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                _signal([pid for pid in pids if _alive(pid)], signal.SIGKILL)
                deadline = time.monotonic() + _CHILD_EXIT_TIMEOUT
            time.sleep(0.02)

    def kill_all(self) -> None:
        """SIGKILL every process of the cluster (thawing frozen ones) and wait. Idempotent."""
        pids = self.processes()
        _signal(pids, signal.SIGKILL)
        self.thaw(pids)
        self._wait_gone(pids)
        for process in self._launchers:
            try:
                process.wait(_CHILD_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- connecting -----------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg) for ``database`` over loopback TCP."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string for ``database`` over loopback TCP."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=5"

    def create_database(self, name: str) -> str:
        """Create ``name``; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no PostgreSQL log)"


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresInstance]:
    """A started private cluster; afterwards every process of it is killed and its
    directory removed (also when the block fails)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(unavailable_reason() or "no PostgreSQL binaries")
    root = Path(tempfile.mkdtemp(prefix="kiiaren-pg-"))
    try:
        if _as_root():
            entry = pwd.getpwnam(_OS_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        root.chmod(0o700)
        instance = PostgresInstance(root, bin_dir)
        instance.init()
        try:
            instance.start()
            yield instance
        finally:
            instance.kill_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)

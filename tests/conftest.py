"""Test-suite wiring: the conformance plugin, the PostgreSQL gate and per-run databases.

PostgreSQL tests (marker ``postgres``) use ``KIIAREN_TEST_DATABASE_URL`` (an admin URL such as
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``); each run creates its own database
and drops it afterwards. Without the variable they are skipped with a visible reason, unless
``KIIAREN_REQUIRE_POSTGRES=1`` (CI), where a skipped PostgreSQL test fails the run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

pytest_plugins = ["kiiaren_core.testing.plugin"]

_POSTGRES_URL = os.environ.get("KIIAREN_TEST_DATABASE_URL", "")
_REQUIRE_POSTGRES = os.environ.get("KIIAREN_REQUIRE_POSTGRES") == "1"
_skipped_postgres: list[str] = []
_ran_postgres: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "postgres" not in report.keywords:
        return
    if report.skipped and report.when in ("setup", "call"):
        _skipped_postgres.append(report.nodeid)
    elif report.when == "call" and report.passed:
        _ran_postgres.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _REQUIRE_POSTGRES or exitstatus not in (0,):
        return
    if _skipped_postgres or not _ran_postgres:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REQUIRE_POSTGRES and (_skipped_postgres or not _ran_postgres):
        terminalreporter.write_line(
            f"KIIAREN_REQUIRE_POSTGRES=1 but {len(_skipped_postgres)} PostgreSQL test(s) were "
            f"skipped and {len(_ran_postgres)} ran: failing the run.",
            red=True,
        )
        for nodeid in _skipped_postgres[:20]:
            terminalreporter.write_line(f"  skipped: {nodeid}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``slow`` tests out unless a ``-m`` expression names them (``-m slow``).

    Deselected rather than skipped: a skipped PostgreSQL test fails a CI run that requires
    PostgreSQL (``KIIAREN_REQUIRE_POSTGRES``).
    """
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The admin URL of the test PostgreSQL, or skip (fail in CI) when none is configured."""
    if not _POSTGRES_URL:
        pytest.skip("PostgreSQL tests need KIIAREN_TEST_DATABASE_URL (see README)")
    return _POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test run, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_admin_url)
    name = f"kiiaren_test_{secrets.token_hex(4)}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

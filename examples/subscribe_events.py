"""Realtime events over the hosted provider: one WebSocket, resumed by itself.

Start the bundled server (``make serve``), then:

    python examples/subscribe_events.py

It signs up, creates a workspace, opens a stream of new messages and posts a few messages
from a second session; the stream prints them as they arrive, with the connection's state.
If the connection drops, the client reconnects and resumes from the last seq: nothing is
missed or repeated. ``KIIAREN_HOSTED_BASE_URL`` names the server.
"""

from __future__ import annotations

import asyncio
import secrets

from kiiaren_core.errors import BackendUnavailableError
from kiiaren_core.events import EventEnvelope, NotRecovered
from kiiaren_hosted import ConnectionState, HostedProvider

MESSAGES = ("Is anyone here?", "Reading the notes now.", "See you tomorrow.")


async def main() -> None:
    async with HostedProvider() as provider:
        password = f"Events-{secrets.token_hex(8)}"
        email = f"ada-{secrets.token_hex(4)}@example.com"
        await provider.auth.sign_up_with_password(email, password, name="Ada")
        workspace = await provider.persistence.workspace.create("Realtime")
        general = (await provider.persistence.channel.get(workspace.id))[0]

        # A second session of the same user, sharing the HTTP pool: here, the "other tab".
        other = provider.with_session(provider.auth.tokens)

        def on_state(state: ConnectionState) -> None:
            print(f"[connection {state}]")

        provider.events.on_connection_state_change(on_state)

        async def post() -> None:
            for text in MESSAGES:
                await other.persistence.message.create(
                    workspace.id, body=text, channel_id=general.id
                )

        async with provider.events.stream(workspace.id, types=["message.created"]) as stream:
            poster = asyncio.create_task(post())
            received = 0
            async for item in stream:
                if isinstance(item, NotRecovered):
                    print(f"missed events ({item.reason}): reload the workspace")
                    continue
                assert isinstance(item, EventEnvelope)
                print(f"#{item.seq} {item.type}: {item.payload.body}")
                received += 1
                if received == len(MESSAGES):
                    break
            await poster
            print(f"resume point: seq {stream.last_seq}")
        await other.aclose()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BackendUnavailableError as error:
        hint = "is `make serve` running?"
        raise SystemExit(f"No KIIAREN server answered: {error.message} ({hint})") from None

"""Quickstart: the hosted provider, a client of a KIIAREN server over HTTP.

Start the bundled server in another terminal (``make serve``), then:

    python examples/quickstart_hosted.py

The server's address comes from ``KIIAREN_HOSTED_BASE_URL`` (default
``http://127.0.0.1:8000``). The code is the self-host quickstart's, provider aside: both
implement the same contract.
"""

from __future__ import annotations

import asyncio
import secrets

from kiiaren_core.errors import BackendUnavailableError, KiiarenError
from kiiaren_hosted import HostedProvider


async def main() -> None:
    async with HostedProvider() as provider:
        print(f"connected to {provider.settings.base_url}: {provider.name}")
        print(f"managed: {provider.is_managed}; areas: {sorted(provider.capabilities.areas)}")

        email = f"ada-{secrets.token_hex(4)}@example.com"
        password = f"Quickstart-{secrets.token_hex(8)}"
        session = await provider.auth.sign_up_with_password(email, password, name="Ada")
        print(f"signed up as {email} (user {session.user_id})")

        workspace = await provider.persistence.workspace.create("Analytical")
        general = (await provider.persistence.channel.get(workspace.id))[0]
        print(f"workspace {workspace.name!r} with #{general.name}")

        for text in ("Hello, KIIAREN!", "Notes on the Analytical Engine"):
            await provider.persistence.message.create(
                workspace.id, body=text, channel_id=general.id
            )
        page = await provider.persistence.message.get(channel_id=general.id)
        for message in reversed(page.items):  # pages are newest first
            author = message.member.user if message.member else None
            print(f"  {author.name if author else '?'}: {message.body}")

        # Upload: a ticket from the server, then the bytes to the ticket's URL.
        stored = await provider.storage.upload(
            workspace.id, b"first program", content_type="text/plain", filename="note.txt"
        )
        print(f"uploaded {stored.filename} ({stored.size_bytes} bytes)")

        # Errors arrive as the same classes the server raised.
        try:
            await provider.persistence.channel.create(workspace.id, "general")
        except KiiarenError as error:
            print(f"refused as expected: {error.code}: {error.message}")

        # provider.auth.tokens could be handed to another process (never log them).
        await provider.auth.sign_out()
        print("signed out")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BackendUnavailableError as error:
        hint = "is `make serve` running?"
        raise SystemExit(f"No KIIAREN server answered: {error.message} ({hint})") from None

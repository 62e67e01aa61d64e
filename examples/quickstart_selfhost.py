"""Quickstart: the self-host provider, in-process on SQLite. No server, nothing to install
beyond ``pip install "kiiaren[selfhost]"``.

    python examples/quickstart_selfhost.py

Where the data goes: ``KIIAREN_SELFHOST_DATABASE_URL`` (default ``./kiiaren.db``) and
``KIIAREN_SELFHOST_STORAGE_PATH`` (default ``./kiiaren-data``); point the first at
``postgresql+psycopg://...`` for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets

from kiiaren_core.errors import KiiarenError
from kiiaren_selfhost import SelfHostProvider


async def main() -> None:
    async with SelfHostProvider() as provider:
        # One provider object holds one signed-in session, like a client.
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

        stored = await provider.storage.upload(
            workspace.id, b"first program", content_type="text/plain", filename="note.txt"
        )
        print(f"uploaded {stored.filename} ({stored.size_bytes} bytes)")

        # Errors are typed and the same on every provider.
        try:
            await provider.persistence.channel.create(workspace.id, "general")
        except KiiarenError as error:
            print(f"refused as expected: {error.code}: {error.message}")


if __name__ == "__main__":
    asyncio.run(main())

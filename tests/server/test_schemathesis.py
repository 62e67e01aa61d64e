"""schemathesis against the running server's ``/openapi.json``, as an owner, a member and an
outsider (each in a workspace of its own, its ids fed to the fuzzer so requests reach real
objects), plus a run of the operations that end the caller's session.

Every check schemathesis has runs except ``positive_data_acceptance`` (schema-valid input
may still be refused by a business rule, e.g. an id that names nothing): 0 server errors,
0 status/schema/header violations, 0 ignored-auth findings, no accepted invalid input. The
seed is fixed and the examples bounded; ``-m slow`` runs the long version.
"""

from __future__ import annotations

import secrets
import sys
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import pytest

from kiiaren_core.models import Role
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.testing.base import unique_email
from tests.server.conftest import PASSWORD, LiveServer

pytestmark = pytest.mark.anyio

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
SEED: Final = 20260101
SESSION_ENDERS: Final = ("auth.sign_out", "auth.revoke_all_sessions", "auth.revoke_session")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)


async def signed_up(server: LiveServer, name: str) -> BackendProvider:
    view = server.provider.with_session(None)
    await view.auth.sign_up_with_password(unique_email(name.lower()), PASSWORD, name=name)
    return view


def token(view: BackendProvider) -> str:
    tokens = view.auth.tokens
    assert tokens is not None
    return tokens.access_token


async def workspace_ids(
    server: LiveServer,
) -> tuple[BackendProvider, BackendProvider, dict[str, str]]:
    """A workspace with an owner, an admin member and one object of each kind: its ids."""
    owner = await signed_up(server, "Owner")
    member = await signed_up(server, "Member")
    workspace = await owner.persistence.workspace.create(f"st-{secrets.token_hex(3)}")
    joined = await member.persistence.workspace.join(workspace.id, join_code=workspace.join_code)
    await owner.persistence.member.update_role(joined.id, Role.ADMIN)
    channel = (await owner.persistence.channel.get(workspace.id))[0]
    message = await owner.persistence.message.create(
        workspace.id, body="fuzz me", channel_id=channel.id
    )
    me = await owner.persistence.member.get_current(workspace.id)
    assert me is not None
    conversation = await owner.persistence.conversation.create_or_get(
        workspace.id, me.id, joined.id
    )
    invite = await owner.persistence.invite.create(workspace.id)
    stored = await owner.storage.upload(workspace.id, PNG, content_type="image/png")
    return (
        owner,
        member,
        {
            "workspace_id": workspace.id,
            "channel_id": channel.id,
            "message_id": message.id,
            "member_id": joined.id,
            "conversation_id": conversation.id,
            "doc_id": (await owner.persistence.doc.create(workspace.id, title="d")).id,
            "board_id": (await owner.persistence.board.create(workspace.id, title="b")).id,
            "invite_id": invite.id,
            "domain_id": (await owner.persistence.domain.add(workspace.id, "st.example.com")).id,
            "storage_id": stored.id,
        },
    )


async def schemathesis(
    server: LiveServer,
    directory: Path,
    bearer: str,
    ids: dict[str, str],
    *,
    examples: int,
    operations: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> None:
    """Run the schemathesis CLI against the server; fail with its report on any finding."""
    config = directory / "schemathesis.toml"
    config.write_text(
        "[parameters]\n" + "".join(f'"path.{name}" = "{value}"\n' for name, value in ids.items())
    )
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(examples),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--header",
        f"Authorization: Bearer {bearer}",
    ]
    for operation in operations:
        command += ["--include-operation-id", operation]
    for operation in exclude:
        command += ["--exclude-operation-id", operation]
    result = await anyio.run_process(command, cwd=directory, check=False)
    report = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, report[-20_000:]


async def fuzz_everything(server: LiveServer, directory: Path, examples: int) -> None:
    """The three roles concurrently, then the session-ending operations."""
    runs: list[tuple[str, str, dict[str, str]]] = []
    owner, _, owner_ids = await workspace_ids(server)
    runs.append(("owner", token(owner), owner_ids))
    _, member, member_ids = await workspace_ids(server)
    runs.append(("member", token(member), member_ids))
    _, _, outsider_ids = await workspace_ids(server)
    runs.append(("outsider", token(await signed_up(server, "Outsider")), outsider_ids))
    async with anyio.create_task_group() as group:
        for role, bearer, ids in runs:
            place = directory / role
            place.mkdir()
            group.start_soon(
                partial(
                    schemathesis,
                    server,
                    place,
                    bearer,
                    ids,
                    examples=examples,
                    exclude=SESSION_ENDERS,
                )
            )
    ender = await signed_up(server, "Leaving")
    place = directory / "session-enders"
    place.mkdir()
    await schemathesis(
        server, place, token(ender), owner_ids, examples=examples, operations=SESSION_ENDERS
    )


# A hang guard, not a speed check: a loaded 2-core machine has needed over 240 s.
@pytest.mark.timeout(600)
async def test_schemathesis(live_server: LiveServer, tmp_path: Path) -> None:
    await fuzz_everything(live_server, tmp_path, examples=3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_schemathesis_long(live_server: LiveServer, tmp_path: Path) -> None:
    await fuzz_everything(live_server, tmp_path, examples=50)

"""The schema itself refuses bad rows, and the refusal is a ConflictError naming the constraint.

The constraint names are the same on both backends: services may rely on them.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from kiiaren_core.errors import ConflictError
from kiiaren_selfhost.db import Database, new_id, ordered_pair, tables, utcnow
from tests.selfhost.db import rows

pytestmark = pytest.mark.anyio


async def refused(db: Database, statement: Any) -> ConflictError:
    """Run ``statement`` in its own write transaction and return the ConflictError it raises."""
    with pytest.raises(ConflictError) as caught:
        async with db.write() as conn:
            await conn.execute(statement)
    return caught.value


async def test_at_most_one_owner_per_workspace(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        await rows.member(conn, workspace_id, role="admin")
        await rows.member(conn, workspace_id, role="admin")  # many admins are fine
        other_user = await rows.user(conn)
    error = await refused(
        db,
        tables.members.insert().values(
            id=new_id(), workspace_id=workspace_id, user_id=other_user, role="owner"
        ),
    )
    assert error.details == {"violation": "unique", "constraint": "uq_members_one_owner"}


async def test_member_once_per_workspace(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        user_id = await rows.user(conn)
        await rows.member(conn, workspace_id, user_id)
    error = await refused(
        db,
        tables.members.insert().values(
            id=new_id(), workspace_id=workspace_id, user_id=user_id, role="member"
        ),
    )
    assert error.details["constraint"] == "uq_members_workspace_id_user_id"


async def test_role_is_checked(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        user_id = await rows.user(conn)
    error = await refused(
        db,
        tables.members.insert().values(
            id=new_id(), workspace_id=workspace_id, user_id=user_id, role="guest"
        ),
    )
    assert error.details == {"violation": "check", "constraint": "ck_members_role"}


async def test_one_verified_claim_per_domain(db: Database) -> None:
    name = f"{new_id()[:8]}.example.test"
    async with db.write() as conn:
        first, _ = await rows.workspace(conn)
        second, _ = await rows.workspace(conn)
        # Pending claims are not exclusive.
        await rows.domain(conn, first, name)
        claim = await rows.domain(conn, second, name)
        await conn.execute(
            tables.domains.update()
            .where(tables.domains.c.workspace_id == first)
            .values(status="verified", verified_at=utcnow())
        )
    error = await refused(
        db,
        tables.domains.update().where(tables.domains.c.id == claim).values(status="verified"),
    )
    assert error.details == {"violation": "unique", "constraint": "uq_domains_verified_domain"}
    # Once the first claim fails re-verification, the second can be verified.
    async with db.write() as conn:
        await conn.execute(
            tables.domains.update()
            .where(tables.domains.c.workspace_id == first)
            .values(status="failed")
        )
        await conn.execute(
            tables.domains.update().where(tables.domains.c.id == claim).values(status="verified")
        )


async def test_domain_once_per_workspace(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        await rows.domain(conn, workspace_id, "dup.example.test")
    error = await refused(
        db,
        tables.domains.insert().values(
            id=new_id(),
            workspace_id=workspace_id,
            domain="dup.example.test",
            verification_token=new_id(),
        ),
    )
    assert error.details["constraint"] == "uq_domains_workspace_id_domain"


async def test_conversation_pair_is_normalised(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, owner = await rows.workspace(conn)
        other = await rows.member(conn, workspace_id)
        await rows.conversation(conn, workspace_id, other, owner)
    low, high = ordered_pair(owner, other)
    # The reversed pair breaks the ordering check...
    error = await refused(
        db,
        tables.conversations.insert().values(
            id=new_id(), workspace_id=workspace_id, member_one_id=high, member_two_id=low
        ),
    )
    assert error.details == {"violation": "check", "constraint": "ck_conversations_ordered_members"}
    # ... and the ordered pair exists already.
    error = await refused(
        db,
        tables.conversations.insert().values(
            id=new_id(), workspace_id=workspace_id, member_one_id=low, member_two_id=high
        ),
    )
    assert (
        error.details["constraint"] == "uq_conversations_workspace_id_member_one_id_member_two_id"
    )


async def test_ordered_pair_agrees_with_the_database_order(db: Database) -> None:
    """Python's order of canonical ids is the database's, whatever case the input has."""
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        members = [await rows.member(conn, workspace_id) for _ in range(12)]
        for index in range(0, len(members), 2):
            a, b = members[index], members[index + 1]
            await rows.conversation(conn, workspace_id, a.upper(), b)


async def test_duplicate_reaction_is_refused(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, owner = await rows.workspace(conn)
        channel_id = await rows.channel(conn, workspace_id)
        message_id = await rows.message(conn, workspace_id, owner, channel_id=channel_id)
        await rows.reaction(conn, workspace_id, message_id, owner, "🎉")
        await rows.reaction(conn, workspace_id, message_id, owner, "👍")  # another value: fine
    error = await refused(
        db,
        tables.reactions.insert().values(
            id=new_id(),
            workspace_id=workspace_id,
            message_id=message_id,
            member_id=owner,
            value="🎉",
        ),
    )
    assert error.details == {
        "violation": "unique",
        "constraint": "uq_reactions_message_id_member_id_value",
    }


async def test_channel_names_are_unique_case_insensitively(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        await rows.channel(conn, workspace_id, "General")
    error = await refused(
        db,
        tables.channels.insert().values(
            id=new_id(), workspace_id=workspace_id, name="general", name_key="general"
        ),
    )
    assert error.details["constraint"] == "uq_channels_workspace_id_name_key"


async def test_message_lives_in_exactly_one_place(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, owner = await rows.workspace(conn)
        other = await rows.member(conn, workspace_id)
        channel_id = await rows.channel(conn, workspace_id)
        conversation_id = await rows.conversation(conn, workspace_id, owner, other)
    for where in ({}, {"channel_id": channel_id, "conversation_id": conversation_id}):
        error = await refused(
            db,
            tables.messages.insert().values(
                id=new_id(), workspace_id=workspace_id, member_id=owner, body="x", **where
            ),
        )
        assert error.details == {"violation": "check", "constraint": "ck_messages_one_location"}


async def test_invite_scope_and_uses_are_checked(db: Database) -> None:
    async with db.write() as conn:
        workspace_id, _ = await rows.workspace(conn)
        invite_id = await rows.invite(conn, workspace_id, max_uses=1)
        await conn.execute(
            tables.invite_links.update()
            .where(tables.invite_links.c.id == invite_id)
            .values(used_count=tables.invite_links.c.used_count + 1)
        )
    # A second redemption racing for the last use is refused by the database itself.
    error = await refused(
        db,
        tables.invite_links.update()
        .where(tables.invite_links.c.id == invite_id)
        .values(used_count=tables.invite_links.c.used_count + 1),
    )
    assert error.details == {"violation": "check", "constraint": "ck_invite_links_uses"}
    error = await refused(
        db,
        tables.invite_links.insert().values(
            id=new_id(),
            workspace_id=workspace_id,
            code=new_id(),
            expires_at=utcnow(),
            scope_type="channel",  # without a channel
        ),
    )
    assert error.details == {"violation": "check", "constraint": "ck_invite_links_scope_channel"}


async def test_unique_tokens(db: Database) -> None:
    async with db.write() as conn:
        user_id = await rows.user(conn, email="Token@Example.test".lower())
    error = await refused(db, tables.users.insert().values(id=new_id(), email="token@example.test"))
    assert error.details["constraint"] == "uq_users_email"
    statement = tables.verification_tokens.insert().values(
        user_id=user_id,
        purpose="password_reset",
        token_hash="same-hash",
        email="token@example.test",
        expires_at=utcnow(),
    )
    async with db.write() as conn:
        await conn.execute(statement.values(id=new_id()))
    error = await refused(db, statement.values(id=new_id()))
    assert error.details["constraint"] == "uq_verification_tokens_token_hash"
    error = await refused(db, statement.values(id=new_id(), token_hash="x", purpose="login"))
    assert error.details["constraint"] == "ck_verification_tokens_purpose"


async def test_missing_parent_is_a_foreign_key_conflict(db: Database) -> None:
    error = await refused(
        db,
        tables.members.insert().values(
            id=new_id(), workspace_id=new_id(), user_id=new_id(), role="member"
        ),
    )
    assert error.details["violation"] == "foreign_key"
    # PostgreSQL names the constraint; SQLite does not say which foreign key failed.
    assert error.details.get("constraint") in (
        None,
        "fk_members_workspace_id_workspaces",
        "fk_members_user_id_users",
    )


async def test_workspace_owner_cannot_be_deleted(db: Database, backend_name: str) -> None:
    async with db.write() as conn:
        owner = await rows.user(conn)
        await rows.workspace(conn, owner)
    error = await refused(db, tables.users.delete().where(tables.users.c.id == owner))
    assert error.details["violation"] == "foreign_key"
    if backend_name == "postgresql":
        assert error.details["constraint"] == "fk_workspaces_owner_id_users"


async def test_not_null_is_a_bug_not_a_conflict(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(tables.users.insert().values(id=new_id(), email=None))


async def test_conflict_details_hold_no_sql(db: Database) -> None:
    async with db.write() as conn:
        await rows.user(conn, email="secret-value@example.test")
    error = await refused(
        db, tables.users.insert().values(id=new_id(), email="secret-value@example.test")
    )
    text = f"{error.message} {error.details}"
    assert "INSERT" not in text
    assert "secret-value" not in text
    assert isinstance(error.__cause__, sa.exc.IntegrityError)

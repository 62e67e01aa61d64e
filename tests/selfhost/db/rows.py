"""Row factories for database tests: each inserts one valid row and returns its id."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_selfhost.db import new_id, ordered_pair, tables, utcnow


async def insert(conn: AsyncConnection, table: sa.Table, **values: Any) -> str:
    """Insert one row and return its ``id`` (generated when not given)."""
    values.setdefault("id", new_id())
    await conn.execute(table.insert().values(**values))
    return str(values["id"])


async def user(conn: AsyncConnection, **values: Any) -> str:
    values.setdefault("email", f"{new_id()}@example.test")
    return await insert(conn, tables.users, **values)


async def workspace(conn: AsyncConnection, owner_id: str | None = None) -> tuple[str, str]:
    """A workspace with its owner member: returns ``(workspace_id, owner_member_id)``."""
    owner_id = owner_id or await user(conn)
    workspace_id = await insert(
        conn, tables.workspaces, name="Acme", owner_id=owner_id, join_code="ABC123"
    )
    member_id = await member(conn, workspace_id, owner_id, role="owner")
    return workspace_id, member_id


async def member(
    conn: AsyncConnection, workspace_id: str, user_id: str | None = None, role: str = "member"
) -> str:
    user_id = user_id or await user(conn)
    return await insert(conn, tables.members, workspace_id=workspace_id, user_id=user_id, role=role)


async def channel(conn: AsyncConnection, workspace_id: str, name: str = "general") -> str:
    return await insert(
        conn, tables.channels, workspace_id=workspace_id, name=name, name_key=name.lower()
    )


async def conversation(conn: AsyncConnection, workspace_id: str, a: str, b: str) -> str:
    one, two = ordered_pair(a, b)
    return await insert(
        conn, tables.conversations, workspace_id=workspace_id, member_one_id=one, member_two_id=two
    )


async def message(conn: AsyncConnection, workspace_id: str, member_id: str, **values: Any) -> str:
    values.setdefault("body", '{"ops":[{"insert":"hi\\n"}]}')
    return await insert(
        conn, tables.messages, workspace_id=workspace_id, member_id=member_id, **values
    )


async def reaction(
    conn: AsyncConnection, workspace_id: str, message_id: str, member_id: str, value: str = "👍"
) -> str:
    return await insert(
        conn,
        tables.reactions,
        workspace_id=workspace_id,
        message_id=message_id,
        member_id=member_id,
        value=value,
    )


async def invite(conn: AsyncConnection, workspace_id: str, **values: Any) -> str:
    values.setdefault("code", new_id())
    values.setdefault("expires_at", utcnow() + timedelta(days=7))
    values.setdefault("scope_type", "workspace")
    return await insert(conn, tables.invite_links, workspace_id=workspace_id, **values)


async def domain(
    conn: AsyncConnection, workspace_id: str, name: str, status: str = "pending"
) -> str:
    return await insert(
        conn,
        tables.domains,
        workspace_id=workspace_id,
        domain=name,
        verification_token=new_id(),
        status=status,
    )


async def count(conn: AsyncConnection, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    value = await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where))
    return int(value or 0)

"""Ids, timestamps and JSON behave the same on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from kiiaren_selfhost.db import Database, canonical_id, new_id, ordered_pair, tables, utcnow
from tests.selfhost.db import rows

pytestmark = pytest.mark.anyio


async def test_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=plus_five)
    async with db.write() as conn:
        user_id = await rows.user(conn, email_verified_at=moment)
    async with db.read() as conn:
        row = (
            await conn.execute(
                sa.select(tables.users.c.email_verified_at, tables.users.c.created_at).where(
                    tables.users.c.id == user_id
                )
            )
        ).one()
    assert row.email_verified_at == moment
    assert row.email_verified_at.tzinfo is UTC
    assert row.email_verified_at.isoformat() == "2024-02-29T18:29:58.123456+00:00"
    assert row.created_at.tzinfo is UTC  # the Python-side default is aware too
    assert abs(row.created_at - utcnow()) < timedelta(minutes=1)


async def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(sa.exc.StatementError) as caught:
        async with db.write() as conn:
            await rows.user(conn, email_verified_at=datetime(2024, 1, 1))
    assert isinstance(caught.value.orig, ValueError)
    assert "naive" in str(caught.value.orig)


async def test_timestamps_compare_and_sort_chronologically(db: Database) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    offsets = [timedelta(microseconds=1), timedelta(0), timedelta(hours=-1), timedelta(days=1)]
    async with db.write() as conn:
        workspace_id, owner = await rows.workspace(conn)
        channel_id = await rows.channel(conn, workspace_id)
        for offset in offsets:
            # Written through a non-UTC offset: the order must still be the instant's.
            at = (base + offset).astimezone(timezone(timedelta(hours=-7)))
            await rows.message(conn, workspace_id, owner, channel_id=channel_id, created_at=at)
    async with db.read() as conn:
        found = (
            await conn.scalars(
                sa.select(tables.messages.c.created_at)
                .where(tables.messages.c.channel_id == channel_id)
                .where(tables.messages.c.created_at >= base - timedelta(minutes=1))
                .order_by(tables.messages.c.created_at.desc(), tables.messages.c.id.desc())
            )
        ).all()
    assert found == sorted(
        (base + offset for offset in offsets if offset >= -timedelta(minutes=1)), reverse=True
    )


async def test_ids_are_canonical_whatever_case_is_given(db: Database) -> None:
    user_id = new_id()
    async with db.write() as conn:
        await rows.user(conn, id=user_id.upper())
    async with db.read() as conn:
        found = await conn.scalar(sa.select(tables.users.c.id).where(tables.users.c.id == user_id))
        also = await conn.scalar(
            sa.select(tables.users.c.id).where(tables.users.c.id == user_id.upper())
        )
    assert found == also == user_id


async def test_invalid_ids_fail_the_same_on_both(db: Database) -> None:
    with pytest.raises(sa.exc.StatementError) as caught:
        async with db.read() as conn:
            await conn.execute(sa.select(tables.users).where(tables.users.c.id == "not-a-uuid"))
    assert isinstance(caught.value.orig, ValueError)


async def test_json_round_trip(db: Database) -> None:
    payload = {"name": "Acme ✓", "nested": {"list": [1, 2.5, None, True]}, "empty": {}}
    workspace_id = new_id()
    async with db.write() as conn:
        await conn.execute(
            tables.events.insert().values(
                workspace_id=workspace_id, seq=1, type="workspace.updated", payload=payload
            )
        )
    async with db.read() as conn:
        row = (
            await conn.execute(
                sa.select(tables.events.c.payload, tables.events.c.id).where(
                    tables.events.c.workspace_id == workspace_id
                )
            )
        ).one()
    assert row.payload == payload
    assert canonical_id(row.id) == row.id  # defaulted id


def test_helpers() -> None:
    a, b = new_id(), new_id()
    assert ordered_pair(a, b) == ordered_pair(b.upper(), a) == tuple(sorted((a, b)))
    assert canonical_id(a.upper()) == a
    with pytest.raises(ValueError, match="badly formed"):
        canonical_id("nope")
    assert utcnow().tzinfo is UTC

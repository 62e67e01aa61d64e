"""PostgreSQL refuses NUL characters in text: bad input, translated as such."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from kiiaren_core.errors import InvalidInputError
from kiiaren_selfhost.db import Database, migrate
from kiiaren_selfhost.db import tables as t

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_nul_in_text_is_invalid_input(postgres_url: str) -> None:
    await migrate(postgres_url)
    async with Database.from_url(postgres_url) as db:
        with pytest.raises(InvalidInputError) as caught:
            async with db.write() as conn:
                await conn.execute(
                    sa.insert(t.instance_secrets).values(name="nul\x00name", value="x")
                )
    assert caught.value.details["reason"] == "unstorable_text"

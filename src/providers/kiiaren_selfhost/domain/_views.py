"""Row -> model conversions shared by the stores (what each viewer may see is decided here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.models import Member, Role, UserSummary, Workspace
from kiiaren_selfhost.db import tables as t

__all__ = [
    "MEMBER_COLUMNS",
    "TrustedBuilder",
    "member_from_row",
    "member_model",
    "members_by_id",
    "workspace_from_row",
]

M = TypeVar("M", bound=BaseModel)

_set = object.__setattr__


class TrustedBuilder:
    """Builds instances of a model from values we produced ourselves, without validation.

    What ``model_construct`` does, minus its per-field Python loop (which costs ~50 us per
    model on this kind of machine, and a page holds hundreds of models): the caller passes a
    value for *every* field, in a dict that becomes the instance's ``__dict__``; ``set``
    names the fields counted as explicitly set (``model_fields_set``), exactly as a
    validating constructor called with those keywords would report them.
    """

    __slots__ = ("_cls", "_fields", "_set")

    def __init__(self, cls: type[BaseModel], explicitly_set: Iterable[str]) -> None:
        self._cls = cls
        self._fields = frozenset(cls.model_fields)
        self._set = frozenset(explicitly_set)
        if not self._set <= self._fields:
            raise ValueError(f"unknown fields of {cls.__name__}: {self._set - self._fields}")

    def check(self, values: dict[str, Any]) -> None:
        """Raise ValueError unless ``values`` names exactly the model's fields (for tests)."""
        if set(values) != self._fields:
            raise ValueError(f"fields of {self._cls.__name__} differ: {set(values) ^ self._fields}")

    def __call__(self, values: dict[str, Any]) -> Any:
        model = self._cls.__new__(self._cls)
        _set(model, "__dict__", values)
        _set(model, "__pydantic_fields_set__", set(self._set))
        _set(model, "__pydantic_extra__", None)
        _set(model, "__pydantic_private__", None)
        return model


_ROLES: Final = {role.value: role for role in Role}
"""Role by stored value: a dict lookup instead of the enum's (slow) call protocol."""

_USER: Final = TrustedBuilder(UserSummary, ("id", "name", "image", "email"))
_MEMBER: Final = TrustedBuilder(
    Member, ("id", "user_id", "workspace_id", "role", "joined_at", "user")
)

MEMBER_COLUMNS = (
    t.members.c.id,
    t.members.c.user_id,
    t.members.c.workspace_id,
    t.members.c.role,
    t.members.c.joined_at,
    t.users.c.name.label("user_name"),
    t.users.c.image.label("user_image"),
    t.users.c.email.label("user_email"),
)
"""Columns of ``members JOIN users`` that :func:`member_from_row` reads."""


def member_from_row(row: Any, *, show_email: bool) -> Member:
    """A member with its user summary; the email only when ``show_email``.

    Built without validation: the row is ours, its values typed by the column types.
    """
    user_id = str(row.user_id)
    return member_model(
        str(row.id),
        user_id,
        str(row.workspace_id),
        row.role,
        row.joined_at,
        row.user_name,
        row.user_image,
        row.user_email if show_email else None,
    )


def member_model(
    member_id: str,
    user_id: str,
    workspace_id: str,
    role: str,
    joined_at: Any,
    name: str | None,
    image: str | None,
    email: str | None,
) -> Member:
    """A :class:`Member` with its :class:`UserSummary` from our own row values, unvalidated
    (see :class:`TrustedBuilder`); ``email`` already filtered for the viewer."""
    user = _USER({"id": user_id, "name": name, "image": image, "email": email})
    return _MEMBER(  # type: ignore[no-any-return]
        {
            "id": member_id,
            "user_id": user_id,
            "workspace_id": workspace_id,
            "role": _ROLES.get(role) or Role(role),
            "joined_at": joined_at,
            "user": user,
        }
    )


async def members_by_id(
    conn: AsyncConnection, member_ids: set[str], *, show_email: bool
) -> dict[str, Member]:
    """Members (with user summaries) for a set of ids, in one query."""
    if not member_ids:
        return {}
    rows = (
        await conn.execute(
            sa.select(*MEMBER_COLUMNS)
            .join(t.users, t.users.c.id == t.members.c.user_id)
            .where(t.members.c.id.in_(sorted(member_ids)))
        )
    ).all()
    return {str(row.id): member_from_row(row, show_email=show_email) for row in rows}


def workspace_from_row(row: Any, *, viewer_role: Role | None) -> Workspace:
    """A workspace; the join code only for admin and owner viewers."""
    return Workspace(
        id=str(row.id),
        name=row.name,
        owner_id=str(row.owner_id),
        join_code=row.join_code if viewer_role is not None and viewer_role.is_admin else None,
        created_at=row.created_at,
        domain_verified=bool(row.domain_verified),
        join_code_enabled=bool(row.join_code_enabled),
    )

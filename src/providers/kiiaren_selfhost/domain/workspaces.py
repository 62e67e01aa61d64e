"""Workspaces: create, read, rename, delete, join (reference 3.3), join codes, ownership."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from kiiaren_core.models import Member, Role, Workspace, WorkspaceInfo
from kiiaren_core.validation import email_domain, validate_workspace_name
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import (
    as_id,
    find_membership,
    require_admin,
    require_membership,
    require_owner,
)
from kiiaren_selfhost.domain._tokens import new_join_code, unique_token
from kiiaren_selfhost.domain._unit import Mutation, Store
from kiiaren_selfhost.domain._views import MEMBER_COLUMNS, member_from_row, workspace_from_row
from kiiaren_selfhost.ratelimit import Limit

__all__ = ["WorkspaceStoreImpl", "add_member", "collect_stored_objects"]

ALREADY_MEMBER = "Already a member of this workspace."


async def add_member(tx: Mutation, workspace_id: str, user_id: str, role: Role) -> Member:
    """Insert a membership and emit ``member.joined``; a duplicate is ConflictError."""
    member_id = str(uuid.uuid4())
    now = utcnow()
    try:
        await tx.conn.execute(
            t.members.insert().values(
                id=member_id,
                workspace_id=workspace_id,
                user_id=user_id,
                role=role.value,
                joined_at=now,
            )
        )
    except sa.exc.IntegrityError:
        # A concurrent join of the same user committed first (unique (workspace, user)).
        raise ConflictError(ALREADY_MEMBER) from None
    tx.emit(
        workspace_id,
        "member.joined",
        {"member_id": member_id, "user_id": user_id, "role": role.value},
    )
    tx.audit("member.join", "member", member_id, workspace_id, {"role": role.value})
    row = (
        await tx.conn.execute(
            sa.select(*MEMBER_COLUMNS)
            .join(t.users, t.users.c.id == t.members.c.user_id)
            .where(t.members.c.id == member_id)
        )
    ).one()
    return member_from_row(row, show_email=True)


async def collect_stored_objects(
    conn: AsyncConnection, *conditions: sa.ColumnElement[bool]
) -> list[str]:
    """Ids of the stored objects matching ``conditions`` (to delete after commit)."""
    rows = await conn.execute(sa.select(t.stored_objects.c.id).where(*conditions))
    return [str(value) for value in rows.scalars()]


class WorkspaceStoreImpl(Store):
    """``persistence.workspace`` of the self-host provider."""

    async def create(self, name: str) -> Workspace:
        clean = validate_workspace_name(name)
        async with self.mutation() as tx:
            now = utcnow()
            workspace_id, channel_id = str(uuid.uuid4()), str(uuid.uuid4())
            # Join codes are looked up together with their workspace id, so they need not
            # be globally unique; a fresh code is still never reused within one workspace.
            join_code = new_join_code()
            await tx.conn.execute(
                t.workspaces.insert().values(
                    id=workspace_id,
                    name=clean,
                    owner_id=tx.user_id,
                    join_code=join_code,
                    join_code_enabled=True,
                    domain_verified=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            tx.emit(workspace_id, "workspace.created", {"name": clean})
            await add_member(tx, workspace_id, tx.user_id, Role.OWNER)
            await tx.conn.execute(
                t.channels.insert().values(
                    id=channel_id,
                    workspace_id=workspace_id,
                    name="general",
                    name_key="general",
                    created_at=now,
                )
            )
            tx.emit(workspace_id, "channel.created", {"channel_id": channel_id, "name": "general"})
            tx.audit("workspace.create", "workspace", workspace_id, workspace_id)
            row = await self._row(tx.conn, workspace_id)
        return workspace_from_row(row, viewer_role=Role.OWNER)

    @staticmethod
    async def _row(conn: AsyncConnection, workspace_id: str) -> sa.Row[tuple[object, ...]]:
        row = (
            await conn.execute(sa.select(t.workspaces).where(t.workspaces.c.id == workspace_id))
        ).one_or_none()
        if row is None:
            raise NotFoundError("Workspace not found.")
        return row

    async def get(self, workspace_id: str) -> Workspace | None:
        async with self.query() as q:
            membership = await find_membership(q.conn, workspace_id, q.user_id)
            if membership is None:
                return None
            row = await self._row(q.conn, membership.workspace_id)
        return workspace_from_row(row, viewer_role=membership.role)

    async def get_by_user_id(self, user_id: str | None = None) -> list[Workspace]:
        async with self.query(anonymous=True) as q:
            if q.user_id is None:
                return []
            if user_id is not None and as_id(user_id) != q.user_id:
                raise PermissionDeniedError("You can only list your own workspaces.")
            rows = (
                await q.conn.execute(
                    sa.select(t.workspaces, t.members.c.role.label("viewer_role"))
                    .join(t.members, t.members.c.workspace_id == t.workspaces.c.id)
                    .where(t.members.c.user_id == q.user_id)
                    .order_by(t.members.c.joined_at, t.workspaces.c.id)
                )
            ).all()
        return [workspace_from_row(row, viewer_role=Role(row.viewer_role)) for row in rows]

    async def get_info(self, workspace_id: str) -> WorkspaceInfo | None:
        async with self.query() as q:
            key = as_id(workspace_id)
            if key is None:
                return None
            row = (
                await q.conn.execute(
                    sa.select(t.workspaces.c.id, t.workspaces.c.name).where(
                        t.workspaces.c.id == key
                    )
                )
            ).one_or_none()
            if row is None:
                return None
            membership = await find_membership(q.conn, key, q.user_id)
        return WorkspaceInfo(
            id=str(row.id),
            name=row.name,
            is_member=membership is not None,
            role=membership.role if membership else None,
        )

    async def update(self, workspace_id: str, *, name: str) -> Workspace:
        clean = validate_workspace_name(name)
        async with self.mutation() as tx:
            membership = require_admin(await require_membership(tx.conn, workspace_id, tx.user_id))
            await tx.conn.execute(
                t.workspaces.update()
                .where(t.workspaces.c.id == membership.workspace_id)
                .values(name=clean, updated_at=utcnow())
            )
            tx.emit(membership.workspace_id, "workspace.updated", {"name": clean})
            tx.audit(
                "workspace.update", "workspace", membership.workspace_id, membership.workspace_id
            )
            row = await self._row(tx.conn, membership.workspace_id)
        return workspace_from_row(row, viewer_role=membership.role)

    async def remove(self, workspace_id: str) -> None:
        async with self.mutation() as tx:
            membership = require_owner(
                await require_membership(tx.conn, workspace_id, tx.user_id),
                "Only the workspace owner can delete the workspace.",
            )
            key = membership.workspace_id
            files = await collect_stored_objects(tx.conn, t.stored_objects.c.workspace_id == key)
            # Rows referencing the workspace go with it through ON DELETE CASCADE; the files
            # are removed from storage after commit (their rows have no foreign key).
            await tx.conn.execute(t.workspaces.delete().where(t.workspaces.c.id == key))
            tx.remove_files(files)
            tx.emit(key, "workspace.deleted", {})
            tx.audit("workspace.delete", "workspace", key, key)

    async def join(
        self,
        workspace_id: str,
        *,
        join_code: str | None = None,
        invite_code: str | None = None,
    ) -> Member:
        await self._auth.ready()
        claims = await self._auth.claims()
        limit = self._rt.limit("join")
        await self._rt.limiter.hit("join", limit, [("user", claims.user_id)])
        # Per workspace the budget is wider: enough for an announcement's burst of joins,
        # still far too small to walk the 2^30 join-code space.
        await self._rt.limiter.hit(
            "join_workspace",
            Limit(limit.count * 10, limit.seconds),
            [("workspace", as_id(workspace_id))],
        )
        from kiiaren_selfhost.domain.invites import claim_invite

        async with self.mutation() as tx:
            key = as_id(workspace_id)
            workspace = (
                (
                    await tx.conn.execute(sa.select(t.workspaces).where(t.workspaces.c.id == key))
                ).one_or_none()
                if key
                else None
            )
            if workspace is None:
                raise NotFoundError("Workspace not found.")
            if await find_membership(tx.conn, key, tx.user_id) is not None:
                raise ConflictError(ALREADY_MEMBER)
            if workspace.domain_verified and await self._email_domain_verified(tx, str(key)):
                return await add_member(tx, str(key), tx.user_id, Role.MEMBER)
            if invite_code:
                invite = await claim_invite(tx, invite_code, workspace_id=str(key))
                member = await add_member(tx, str(key), tx.user_id, Role.MEMBER)
                await invite.record(tx, member.id)
                return member
            if workspace.domain_verified:
                raise InvalidInputError(
                    "This workspace requires an invite link to join. "
                    "Contact a workspace admin to get an invite.",
                    details={"field": "invite_code"},
                )
            # join_code_enabled is always "not domain_verified" (domains.py recomputes both),
            # so the reference's "Join codes are disabled" case is the branch just above.
            if not join_code or not isinstance(join_code, str):
                raise InvalidInputError("Join code is required.", details={"field": "join_code"})
            if str(workspace.join_code).upper() != join_code.strip().upper():
                raise InvalidInputError("Invalid join code.", details={"field": "join_code"})
            return await add_member(tx, str(key), tx.user_id, Role.MEMBER)

    @staticmethod
    async def _email_domain_verified(tx: Mutation, workspace_id: str) -> bool:
        """Auto-join needs a *verified* email whose domain the workspace verified (3.3, S4)."""
        user = (
            await tx.conn.execute(
                sa.select(t.users.c.email, t.users.c.email_verified_at).where(
                    t.users.c.id == tx.user_id
                )
            )
        ).one()
        domain = email_domain(user.email or "")
        if user.email_verified_at is None or domain is None:
            return False
        match = await tx.conn.execute(
            sa.select(t.domains.c.id).where(
                t.domains.c.workspace_id == workspace_id,
                t.domains.c.domain == domain,
                t.domains.c.status == "verified",
            )
        )
        return bool(match.first() is not None)

    async def regenerate_join_code(self, workspace_id: str) -> str:
        async with self.mutation() as tx:
            membership = require_admin(await require_membership(tx.conn, workspace_id, tx.user_id))
            current = str((await self._row(tx.conn, membership.workspace_id)).join_code)

            async def taken(code: str) -> bool:
                return code == current

            code = await unique_token(new_join_code, taken, "join code")
            await tx.conn.execute(
                t.workspaces.update()
                .where(t.workspaces.c.id == membership.workspace_id)
                .values(join_code=code, updated_at=utcnow())
            )
            tx.emit(membership.workspace_id, "workspace.join_code_rotated", {})
            tx.audit(
                "workspace.join_code_rotate",
                "workspace",
                membership.workspace_id,
                membership.workspace_id,
            )
        return code

    async def transfer_ownership(self, workspace_id: str, member_id: str) -> Member:
        async with self.mutation() as tx:
            me = require_owner(
                await require_membership(tx.conn, workspace_id, tx.user_id),
                "Only the workspace owner can transfer ownership.",
            )
            target_id = as_id(member_id)
            target = (
                (
                    await tx.conn.execute(
                        sa.select(t.members.c.id, t.members.c.user_id, t.members.c.role).where(
                            t.members.c.id == target_id,
                            t.members.c.workspace_id == me.workspace_id,
                        )
                    )
                ).one_or_none()
                if target_id
                else None
            )
            if target is None:
                raise NotFoundError("Member not found.")
            if str(target.id) == me.member_id:
                raise InvalidInputError(
                    "You already own this workspace.", details={"field": "member_id"}
                )
            # Demote first: the partial unique index allows one owner at any instant.
            await tx.conn.execute(
                t.members.update().where(t.members.c.id == me.member_id).values(role="admin")
            )
            await tx.conn.execute(
                t.members.update().where(t.members.c.id == target.id).values(role="owner")
            )
            await tx.conn.execute(
                t.workspaces.update()
                .where(t.workspaces.c.id == me.workspace_id)
                .values(owner_id=target.user_id, updated_at=utcnow())
            )
            tx.emit(
                me.workspace_id,
                "workspace.ownership_transferred",
                {"previous_owner_id": me.user_id, "owner_id": str(target.user_id)},
            )
            tx.emit(
                me.workspace_id,
                "member.role_changed",
                {
                    "member_id": me.member_id,
                    "user_id": me.user_id,
                    "role": "admin",
                    "previous_role": "owner",
                },
            )
            tx.emit(
                me.workspace_id,
                "member.role_changed",
                {
                    "member_id": str(target.id),
                    "user_id": str(target.user_id),
                    "role": "owner",
                    "previous_role": target.role,
                },
            )
            tx.audit(
                "workspace.transfer_ownership",
                "workspace",
                me.workspace_id,
                me.workspace_id,
                {"to_member_id": str(target.id)},
            )
            row = (
                await tx.conn.execute(
                    sa.select(*MEMBER_COLUMNS)
                    .join(t.users, t.users.c.id == t.members.c.user_id)
                    .where(t.members.c.id == target.id)
                )
            ).one()
        return member_from_row(row, show_email=True)

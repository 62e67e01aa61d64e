"""Invite links (reference rows 51-55 and 7.4) and the redemption used by ``workspace.join``.

Fixes over the reference (C2): links work whether or not the workspace verified a domain;
a channel-scoped link joins the workspace and names the channel to open; every redemption is
recorded (``invite_redemptions``, ``invite.redeemed``); and a use is taken with one
conditional ``UPDATE`` (:func:`claim_invite`), so ``used_count`` never exceeds ``max_uses``
however many joins race for the last use.

Expiry keeps the reference's strict comparison: a link is expired when ``expires_at < now``,
so a link whose expiry is exactly now still works.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import ConflictError, InvalidInputError, InviteLinkError, NotFoundError
from kiiaren_core.models import (
    ChannelScope,
    CreatedInvite,
    InviteCreator,
    InviteLink,
    InviteLinkStatus,
    InvitePreview,
    InviteRedemption,
    InviteValidation,
    Role,
    WorkspaceScope,
)
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import find_membership, require_admin, require_membership
from kiiaren_selfhost.domain._content import row_by_id
from kiiaren_selfhost.domain._tokens import new_invite_code, unique_token
from kiiaren_selfhost.domain._unit import Mutation, Store
from kiiaren_selfhost.domain.workspaces import ALREADY_MEMBER, add_member

__all__ = [
    "MAX_EXPIRY_HOURS",
    "MAX_INVITE_USES",
    "MIN_EXPIRY_HOURS",
    "ClaimedInvite",
    "InviteStoreImpl",
    "claim_invite",
]

MIN_EXPIRY_HOURS: Final = 1
MAX_EXPIRY_HOURS: Final = 720
MAX_INVITE_USES: Final = 1_000_000
"""Upper bound of ``max_uses`` (the column is a 32-bit integer; more is "unlimited" anyway)."""
_MAX_CODE_LENGTH: Final = 64
"""Codes are 22 characters; anything much longer is refused before touching the database."""

INVITE_NOT_FOUND = "Invite link not found."
EXPIRED = "Invite link has expired."
REVOKED = "Invite link has been revoked."
EXHAUSTED = "Invite link has reached maximum uses."

_i = t.invite_links


def _code_key(code: object) -> str | None:
    """The code to look up, or None when it cannot be one (wrong type, empty, too long)."""
    if not isinstance(code, str) or not 0 < len(code) <= _MAX_CODE_LENGTH:
        return None
    return code


def _problem(row: Any, now: datetime) -> tuple[str, str] | None:
    """Why a link cannot be redeemed now, as ``(reason, text)`` in the reference's order."""
    if row.expires_at < now:
        return "expired", EXPIRED
    if row.revoked_at is not None:
        return "revoked", REVOKED
    if row.max_uses is not None and row.used_count >= row.max_uses:
        return "max_uses", EXHAUSTED
    return None


def _status(row: Any, now: datetime) -> InviteLinkStatus:
    """Status with precedence revoked > expired > exhausted > active."""
    if row.revoked_at is not None:
        return InviteLinkStatus.REVOKED
    if row.expires_at < now:
        return InviteLinkStatus.EXPIRED
    if row.max_uses is not None and row.used_count >= row.max_uses:
        return InviteLinkStatus.EXHAUSTED
    return InviteLinkStatus.ACTIVE


def _scope(row: Any) -> WorkspaceScope | ChannelScope:
    if row.scope_type == "channel":
        return ChannelScope(channel_id=str(row.scope_channel_id))
    return WorkspaceScope()


async def _by_code(conn: AsyncConnection, code: str) -> Any:
    """The link with ``code`` and its workspace's name, or None."""
    return (
        await conn.execute(
            sa.select(
                _i.c.id,
                _i.c.workspace_id,
                _i.c.expires_at,
                _i.c.revoked_at,
                _i.c.max_uses,
                _i.c.used_count,
                _i.c.scope_type,
                _i.c.scope_channel_id,
                t.workspaces.c.name.label("workspace_name"),
            )
            .join(t.workspaces, t.workspaces.c.id == _i.c.workspace_id)
            .where(_i.c.code == code)
        )
    ).one_or_none()


@dataclass(frozen=True, slots=True)
class ClaimedInvite:
    """One use taken from an invite link, to be recorded once the membership exists."""

    invite_id: str
    workspace_id: str
    channel_id: str | None
    """The channel a channel-scoped link names (to open after joining), else None."""

    async def record(self, tx: Mutation, member_id: str) -> None:
        """Record who redeemed the link (``invite_redemptions``) and emit ``invite.redeemed``."""
        await tx.conn.execute(
            t.invite_redemptions.insert().values(
                id=str(uuid.uuid4()),
                invite_id=self.invite_id,
                user_id=tx.user_id,
                member_id=member_id,
                redeemed_at=utcnow(),
            )
        )
        tx.emit(
            self.workspace_id,
            "invite.redeemed",
            {
                "invite_id": self.invite_id,
                "scope_channel_id": self.channel_id,
                "member_id": member_id,
            },
        )
        tx.audit(
            "invite.redeem", "invite", self.invite_id, self.workspace_id, {"member_id": member_id}
        )


async def claim_invite(tx: Mutation, code: str, *, workspace_id: str | None) -> ClaimedInvite:
    """Take one use of the link ``code`` inside ``tx``, or raise why it cannot be used.

    With ``workspace_id`` (``workspace.join``) the link must belong to that workspace and the
    texts are those of reference 3.3 (``Invalid invite link.``, ``Invalid invite link for this
    workspace.``); without it (``invite.redeem``) a missing link is ``Invite link not found.``.
    Then, in this order: ``Invite link has expired.``, ``Invite link has been revoked.``,
    ``Invite link has reached maximum uses.``.

    The use is taken by one conditional ``UPDATE`` that re-checks every condition, so two
    transactions racing for the last use cannot both win (the loser waits for the winner's
    row lock on PostgreSQL, or for the write lock on SQLite, and then sees the new count).
    The caller's transaction must then create the membership and call
    :meth:`ClaimedInvite.record`; if it fails instead, the rollback returns the use.

    Raises:
        InviteLinkError: with ``reason`` ``not_found``, ``expired``, ``revoked`` or
            ``max_uses`` and the exact text as its message.
    """
    now = utcnow()
    key = _code_key(code)
    conditions = [
        _i.c.code == key,
        _i.c.revoked_at.is_(None),
        _i.c.expires_at >= now,
        sa.or_(_i.c.max_uses.is_(None), _i.c.used_count < _i.c.max_uses),
    ]
    if workspace_id is not None:
        conditions.append(_i.c.workspace_id == workspace_id)
    claimed = (
        (
            await tx.conn.execute(
                _i.update()
                .where(*conditions)
                .values(used_count=_i.c.used_count + 1)
                .returning(_i.c.id, _i.c.workspace_id, _i.c.scope_channel_id)
            )
        ).one_or_none()
        if key is not None
        else None
    )
    if claimed is not None:
        channel = claimed.scope_channel_id
        return ClaimedInvite(str(claimed.id), str(claimed.workspace_id), channel and str(channel))
    # Refused: read the link (as committed now) to say why, in the reference's order.
    row = await _by_code(tx.conn, key) if key is not None else None
    if row is None:
        raise InviteLinkError(
            str(code),
            "not_found",
            "Invalid invite link." if workspace_id is not None else INVITE_NOT_FOUND,
        )
    if workspace_id is not None and str(row.workspace_id) != workspace_id:
        raise InviteLinkError(str(code), "not_found", "Invalid invite link for this workspace.")
    # Expiry and revocation are checked by the UPDATE too; if neither applies, the only
    # condition left is the use count, which a concurrent redemption just exhausted.
    reason, text = _problem(row, now) or ("max_uses", EXHAUSTED)
    raise InviteLinkError(str(code), reason, text)


def _check_expiry(hours: object) -> float:
    if (
        isinstance(hours, bool)
        or not isinstance(hours, int | float)
        or not math.isfinite(hours)
        or not MIN_EXPIRY_HOURS <= hours <= MAX_EXPIRY_HOURS
    ):
        raise InvalidInputError(
            "Expiry must be between 1 and 720 hours (30 days).",
            details={"field": "expires_in_hours"},
        )
    return float(hours)


def _check_max_uses(max_uses: object) -> int | None:
    if max_uses is None:
        return None
    if isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1:
        raise InvalidInputError("Max uses must be at least 1.", details={"field": "max_uses"})
    if max_uses > MAX_INVITE_USES:
        raise InvalidInputError(
            f"Max uses must be at most {MAX_INVITE_USES}.", details={"field": "max_uses"}
        )
    return max_uses


class InviteStoreImpl(Store):
    """``persistence.invite`` of the self-host provider."""

    async def create(
        self,
        workspace_id: str,
        *,
        expires_in_hours: float = 24,
        scope: WorkspaceScope | ChannelScope | None = None,
        max_uses: int | None = None,
    ) -> CreatedInvite:
        """Create a link with a fresh 22-character code (admins).

        Raises:
            InvalidInputError: expiry outside 1-720 hours, ``max_uses`` not an integer >= 1,
                or a scope that is not a WorkspaceScope / ChannelScope.
            NotFoundError: ``Workspace not found.`` for outsiders; ``Channel not found in this
                workspace.`` for a channel scope outside the workspace.
            PermissionDeniedError: the caller is a plain member.
        """
        hours = _check_expiry(expires_in_hours)
        uses = _check_max_uses(max_uses)
        if scope is None:
            scope = WorkspaceScope()
        if not isinstance(scope, WorkspaceScope | ChannelScope):
            raise InvalidInputError("Invalid invite scope.", details={"field": "scope"})
        async with self.mutation() as tx:
            me = require_admin(await require_membership(tx.conn, workspace_id, tx.user_id))
            channel_id = None
            if isinstance(scope, ChannelScope):
                channel = await row_by_id(
                    tx.conn,
                    t.channels,
                    scope.channel_id,
                    t.channels.c.workspace_id == me.workspace_id,
                    columns=(t.channels.c.id,),
                )
                if channel is None:
                    raise NotFoundError("Channel not found in this workspace.")
                channel_id = str(channel.id)

            async def taken(candidate: str) -> bool:
                found = await tx.conn.execute(sa.select(_i.c.id).where(_i.c.code == candidate))
                return found.first() is not None

            code = await unique_token(new_invite_code, taken, "invite code")
            invite_id, now = str(uuid.uuid4()), utcnow()
            await tx.conn.execute(
                _i.insert().values(
                    id=invite_id,
                    workspace_id=me.workspace_id,
                    code=code,
                    created_by=tx.user_id,
                    created_at=now,
                    expires_at=now + timedelta(hours=hours),
                    max_uses=uses,
                    used_count=0,
                    scope_type=scope.type,
                    scope_channel_id=channel_id,
                )
            )
            tx.emit(
                me.workspace_id,
                "invite.created",
                {"invite_id": invite_id, "scope_channel_id": channel_id},
            )
            tx.audit(
                "invite.create",
                "invite",
                invite_id,
                me.workspace_id,
                {"expires_in_hours": hours, "max_uses": uses, "scope": scope.type},
            )
        return CreatedInvite(id=invite_id, code=code)

    async def get_by_code(self, code: str) -> InvitePreview | None:
        """Public preview (no session needed): None if the link is missing, expired,
        revoked or used up."""
        key = _code_key(code)
        if key is None:
            return None
        async with self.query(anonymous=True) as q:
            row = await _by_code(q.conn, key)
        if row is None or _problem(row, utcnow()) is not None:
            return None
        return InvitePreview(
            id=str(row.id),
            workspace_id=str(row.workspace_id),
            workspace_name=row.workspace_name,
            expires_at=row.expires_at,
            scope=_scope(row),
        )

    async def validate_for_redemption(self, code: str) -> InviteValidation:
        """Public check (no session needed): the target, or the first problem in the
        reference's order (``Invite link not found.``, expired, revoked, maximum uses).

        A link whose workspace is deleted is deleted with it, so it reads as not found.
        """
        key = _code_key(code)
        async with self.query(anonymous=True) as q:
            row = await _by_code(q.conn, key) if key is not None else None
        if row is None:
            return InviteValidation(valid=False, error=INVITE_NOT_FOUND)
        problem = _problem(row, utcnow())
        if problem is not None:
            return InviteValidation(valid=False, error=problem[1])
        return InviteValidation(
            valid=True,
            workspace_id=str(row.workspace_id),
            workspace_name=row.workspace_name,
            scope=_scope(row),
        )

    async def list(self, workspace_id: str) -> list[InviteLink]:
        """Every link of the workspace, newest first, with its computed status (admins;
        ``[]`` for outsiders). Revoked and expired links stay listed."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            require_admin(me)
            rows = (
                await q.conn.execute(
                    sa.select(_i, t.users.c.name.label("creator_name"))
                    .outerjoin(t.users, t.users.c.id == _i.c.created_by)
                    .where(_i.c.workspace_id == me.workspace_id)
                    .order_by(_i.c.created_at.desc(), _i.c.id.desc())
                )
            ).all()
        now = utcnow()
        return [
            InviteLink(
                id=str(row.id),
                workspace_id=str(row.workspace_id),
                code=row.code,
                created_by=InviteCreator(
                    id=str(row.created_by) if row.created_by else None,
                    name=row.creator_name or "Unknown",
                ),
                created_at=row.created_at,
                expires_at=row.expires_at,
                max_uses=row.max_uses,
                used_count=row.used_count,
                scope=_scope(row),
                revoked_at=row.revoked_at,
                status=_status(row, now),
            )
            for row in rows
        ]

    async def revoke(self, invite_id: str) -> None:
        """Revoke a link at once (admins).

        Raises:
            NotFoundError: ``Invite link not found.`` (also for links of other workspaces).
            PermissionDeniedError: the caller is a plain member.
            ConflictError: ``Invite link is already revoked.``
        """
        async with self.mutation() as tx:
            row = await row_by_id(
                tx.conn, _i, invite_id, columns=(_i.c.id, _i.c.workspace_id, _i.c.scope_channel_id)
            )
            if row is None:
                raise NotFoundError(INVITE_NOT_FOUND)
            me = require_admin(
                await require_membership(
                    tx.conn, str(row.workspace_id), tx.user_id, missing=INVITE_NOT_FOUND
                )
            )
            # Conditional, so of two concurrent revocations exactly one succeeds.
            revoked = await tx.conn.execute(
                _i.update()
                .where(_i.c.id == row.id, _i.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if revoked.rowcount != 1:
                raise ConflictError("Invite link is already revoked.")
            channel = row.scope_channel_id
            tx.emit(
                me.workspace_id,
                "invite.revoked",
                {"invite_id": str(row.id), "scope_channel_id": channel and str(channel)},
            )
            tx.audit("invite.revoke", "invite", str(row.id), me.workspace_id)

    async def redeem(self, code: str) -> InviteRedemption:
        """Join the link's workspace as a member (signed in), whether or not it verified a
        domain; a channel-scoped link also names the channel to open.

        Shares the ``join`` rate limit with ``workspace.join``.

        Raises:
            ConflictError: ``Already a member of this workspace.`` (no use is taken).
            InviteLinkError: ``Invite link not found.``, expired, revoked or maximum uses.
            RateLimitedError: too many joins.
        """
        await self._auth.ready()
        claims = await self._auth.claims()
        await self._rt.limiter.hit("join", self._rt.limit("join"), [("user", claims.user_id)])
        key = _code_key(code)
        async with self.mutation() as tx:
            target = await _by_code(tx.conn, key) if key is not None else None
            # Membership first, as in join (3.3 step 1), so a member never spends a use.
            if target is not None and await find_membership(
                tx.conn, str(target.workspace_id), tx.user_id
            ):
                raise ConflictError(ALREADY_MEMBER)
            invite = await claim_invite(tx, code, workspace_id=None)
            member = await add_member(tx, invite.workspace_id, tx.user_id, Role.MEMBER)
            await invite.record(tx, member.id)
        return InviteRedemption(
            workspace_id=invite.workspace_id, member_id=member.id, channel_id=invite.channel_id
        )

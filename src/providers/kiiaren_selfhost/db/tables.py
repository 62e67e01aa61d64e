"""The self-host schema as SQLAlchemy Core tables (one :data:`metadata`).

Column names are a contract the services code against. The migrations under
``migrations/versions`` create exactly this schema (a test compares them); nothing calls
``metadata.create_all``.

Conventions:

* ids are :class:`~kiiaren_selfhost.db.types.UUIDString` (canonical UUID strings in Python,
  native ``uuid`` on PostgreSQL); ``id`` columns default to a new UUID4.
* timestamps are :class:`~kiiaren_selfhost.db.types.UTCDateTime`; ``created_at`` (and the
  other "when it happened" columns) default to now on insert, ``updated_at`` also on update.
  They are set from Python, never by the database, so both databases store the same precision.
* every constraint and index has a deterministic name (:data:`NAMING_CONVENTION`, all names
  within PostgreSQL's 63 characters), so error translation reports the same constraint name on
  both databases; services may compare ``ConflictError.details["constraint"]`` against the
  names below (for example ``"uq_members_workspace_id_user_id"``).
* foreign keys cascade as the domain needs (a workspace delete removes everything in it, see
  the design's decision 4); tables holding what must outlive a row (stored files, the event
  stream) deliberately have no foreign key.
* every foreign-key column is the leading column of some index, so cascades and ``SET NULL``
  actions on PostgreSQL never scan a whole table.
* enumerations are ``text`` with a ``CHECK`` constraint (no native enum types: adding a value
  would need a PostgreSQL-only migration).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import sqlalchemy as sa

from kiiaren_selfhost.db.types import JSONType, UTCDateTime, UUIDString, new_id, utcnow

__all__ = [
    "NAMING_CONVENTION",
    "auth_sessions",
    "boards",
    "channels",
    "conversations",
    "docs",
    "domains",
    "event_streams",
    "events",
    "idempotency_keys",
    "instance_secrets",
    "invite_links",
    "invite_redemptions",
    "members",
    "messages",
    "metadata",
    "oauth_accounts",
    "oauth_states",
    "presence",
    "rate_limits",
    "reactions",
    "refresh_tokens",
    "stored_objects",
    "users",
    "verification_tokens",
    "workspaces",
]

NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""How constraints and indexes are named (explicit names are used for partial indexes)."""

metadata: Final = sa.MetaData(naming_convention=NAMING_CONVENTION)
"""Every self-host table. The Alembic target metadata."""


# --- column helpers --------------------------------------------------------------------------


def _id() -> sa.Column[str]:
    return sa.Column("id", UUIDString(), primary_key=True, default=new_id)


def _ref(name: str, target: str, *, ondelete: str, nullable: bool = False) -> sa.Column[str]:
    """A UUID foreign-key column."""
    return sa.Column(
        name, UUIDString(), sa.ForeignKey(target, ondelete=ondelete), nullable=nullable
    )


def _uuid(name: str, *, nullable: bool) -> sa.Column[str]:
    """A UUID column without a foreign key (see the table's docstring for why)."""
    return sa.Column(name, UUIDString(), nullable=nullable)


def _text(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _when(name: str, *, nullable: bool = False, now: bool = False) -> sa.Column[datetime]:
    """A UTC timestamp; ``now`` makes it default to the current time on insert."""
    return sa.Column(name, UTCDateTime(), nullable=nullable, default=utcnow if now else None)


def _created_at() -> sa.Column[datetime]:
    return _when("created_at", now=True)


def _updated_at() -> sa.Column[datetime]:
    return sa.Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow)


def _flag(name: str, *, default: bool) -> sa.Column[bool]:
    return sa.Column(
        name, sa.Boolean(), nullable=False, server_default=sa.true() if default else sa.false()
    )


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    listed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=name)


# --- instance and auth -----------------------------------------------------------------------

instance_secrets: Final = sa.Table(
    "instance_secrets",
    metadata,
    sa.Column("name", sa.Text(), primary_key=True),
    _text("value"),
    _created_at(),
)
"""Secrets generated once per deployment and shared by every process (e.g. the JWT key)."""

users: Final = sa.Table(
    "users",
    metadata,
    _id(),
    # Stored lowercased by the services (no CHECK: Python's and the databases' ideas of
    # Unicode lowercase differ).
    _text("email"),
    _text("name", nullable=True),
    _text("image", nullable=True),
    _text("password_hash", nullable=True),
    _when("email_verified_at", nullable=True),
    _created_at(),
    _updated_at(),
    sa.UniqueConstraint("email"),
)

oauth_accounts: Final = sa.Table(
    "oauth_accounts",
    metadata,
    _id(),
    _ref("user_id", "users.id", ondelete="CASCADE"),
    _text("provider"),
    _text("subject"),
    _text("email", nullable=True),
    _created_at(),
    sa.UniqueConstraint("provider", "subject"),
    sa.Index(None, "user_id"),
)

auth_sessions: Final = sa.Table(
    "auth_sessions",
    metadata,
    _id(),
    _ref("user_id", "users.id", ondelete="CASCADE"),
    _created_at(),
    _when("last_used_at", now=True),
    _when("expires_at"),
    _when("revoked_at", nullable=True),
    _text("revoke_reason", nullable=True),
    _text("user_agent", nullable=True),
    _text("ip_address", nullable=True),
    sa.Index(None, "user_id"),
    sa.Index(None, "expires_at"),  # pruning expired sessions
)

refresh_tokens: Final = sa.Table(
    "refresh_tokens",
    metadata,
    _id(),
    _ref("session_id", "auth_sessions.id", ondelete="CASCADE"),
    _text("token_hash"),
    _ref("parent_id", "refresh_tokens.id", ondelete="SET NULL", nullable=True),
    _created_at(),
    _when("used_at", nullable=True),
    _ref("replaced_by_id", "refresh_tokens.id", ondelete="SET NULL", nullable=True),
    sa.UniqueConstraint("token_hash"),
    sa.Index(None, "session_id"),
    sa.Index(None, "parent_id"),
    sa.Index(None, "replaced_by_id"),
)

verification_tokens: Final = sa.Table(
    "verification_tokens",
    metadata,
    _id(),
    _ref("user_id", "users.id", ondelete="CASCADE"),
    _text("purpose"),
    _text("token_hash"),
    _text("email"),
    _when("expires_at"),
    _when("used_at", nullable=True),
    _created_at(),
    sa.UniqueConstraint("token_hash"),
    _one_of("purpose", ("email_verification", "password_reset"), "purpose"),
    sa.Index(None, "user_id", "purpose"),
    sa.Index(None, "expires_at"),
)

oauth_states: Final = sa.Table(
    "oauth_states",
    metadata,
    sa.Column("state_hash", sa.Text(), primary_key=True),
    _text("provider"),
    _text("code_verifier"),
    _text("nonce", nullable=True),
    _text("redirect_to", nullable=True),
    _when("expires_at"),
    _created_at(),
    sa.Index(None, "expires_at"),
)

rate_limits: Final = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("key", sa.Text(), primary_key=True),
    # Fixed windows: the epoch second the window starts at.
    sa.Column("window_start", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("count", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Index(None, "window_start"),  # pruning old windows
)

# --- workspaces and messaging ----------------------------------------------------------------

workspaces: Final = sa.Table(
    "workspaces",
    metadata,
    _id(),
    _text("name"),
    # RESTRICT: a user who owns a workspace cannot be deleted before ownership moves.
    _ref("owner_id", "users.id", ondelete="RESTRICT"),
    _text("join_code"),
    _flag("join_code_enabled", default=True),
    _flag("domain_verified", default=False),
    _created_at(),
    _updated_at(),
    sa.Index(None, "owner_id"),
)

members: Final = sa.Table(
    "members",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _ref("user_id", "users.id", ondelete="CASCADE"),
    _text("role"),
    _when("joined_at", now=True),
    sa.UniqueConstraint("workspace_id", "user_id"),
    _one_of("role", ("owner", "admin", "member"), "role"),
    sa.Index(None, "user_id"),
    # Exactly one owner per workspace (design decision 1): at most one here, at least one is
    # the services' job (ownership is transferred, never dropped).
    sa.Index(
        "uq_members_one_owner",
        "workspace_id",
        unique=True,
        postgresql_where=sa.text("role = 'owner'"),
        sqlite_where=sa.text("role = 'owner'"),
    ),
)

channels: Final = sa.Table(
    "channels",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _text("name"),
    _text("name_key"),  # the lowercased name: channel names are unique case-insensitively
    _created_at(),
    sa.UniqueConstraint("workspace_id", "name_key"),
)

conversations: Final = sa.Table(
    "conversations",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _ref("member_one_id", "members.id", ondelete="CASCADE"),
    _ref("member_two_id", "members.id", ondelete="CASCADE"),
    _created_at(),
    # The pair is stored ordered (types.ordered_pair), so (a, b) and (b, a) are one row.
    sa.UniqueConstraint("workspace_id", "member_one_id", "member_two_id"),
    sa.CheckConstraint("member_one_id < member_two_id", name="ordered_members"),
    sa.Index(None, "member_one_id"),
    sa.Index(None, "member_two_id"),
)

stored_objects: Final = sa.Table(
    "stored_objects",
    metadata,
    _id(),
    # No foreign key: the object must still be found (and deleted from storage) after its
    # workspace row is gone.
    _uuid("workspace_id", nullable=False),
    _text("object_key"),
    _text("content_type"),
    sa.Column("max_bytes", sa.BigInteger(), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=True),
    _text("filename", nullable=True),
    _uuid("uploaded_by", nullable=True),
    sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
    _created_at(),
    _when("ticket_expires_at"),
    _when("attached_at", nullable=True),
    sa.UniqueConstraint("object_key"),
    _one_of("status", ("pending", "ready", "deleting"), "status"),
    sa.Index(None, "workspace_id"),
    sa.Index(None, "status", "created_at"),  # garbage collection of stale uploads
)

messages: Final = sa.Table(
    "messages",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _ref("member_id", "members.id", ondelete="CASCADE"),
    _ref("channel_id", "channels.id", ondelete="CASCADE", nullable=True),
    _ref("conversation_id", "conversations.id", ondelete="CASCADE", nullable=True),
    _ref("parent_message_id", "messages.id", ondelete="CASCADE", nullable=True),
    _text("body"),
    _uuid("image_id", nullable=True),  # a stored_objects id (no FK, see stored_objects)
    _created_at(),
    _when("updated_at", nullable=True),
    # A message lives in a channel or in a conversation, never both, never neither.
    sa.CheckConstraint("(channel_id IS NULL) <> (conversation_id IS NULL)", name="one_location"),
    # Keyset paging, newest first, over (created_at, id).
    sa.Index(None, "channel_id", "parent_message_id", "created_at", "id"),
    sa.Index(None, "conversation_id", "parent_message_id", "created_at", "id"),
    sa.Index(None, "parent_message_id", "created_at", "id"),
    sa.Index(None, "member_id"),
    sa.Index(None, "workspace_id"),
)

reactions: Final = sa.Table(
    "reactions",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _ref("message_id", "messages.id", ondelete="CASCADE"),
    _ref("member_id", "members.id", ondelete="CASCADE"),
    _text("value"),
    _created_at(),
    sa.UniqueConstraint("message_id", "member_id", "value"),
    sa.Index(None, "member_id"),
    sa.Index(None, "workspace_id"),
)

# --- docs, boards ----------------------------------------------------------------------------

docs: Final = sa.Table(
    "docs",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _ref("parent_document_id", "docs.id", ondelete="CASCADE", nullable=True),
    _text("title"),
    _text("content", nullable=True),
    _text("icon", nullable=True),
    _uuid("cover_image_id", nullable=True),
    _flag("is_archived", default=False),
    _flag("is_published", default=False),
    _ref("created_by", "users.id", ondelete="SET NULL", nullable=True),
    _created_at(),
    _updated_at(),
    sa.Index(None, "workspace_id", "parent_document_id", "is_archived", "created_at"),
    sa.Index(None, "parent_document_id"),
    sa.Index(None, "created_by"),
)

boards: Final = sa.Table(
    "boards",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _text("title"),
    _text("excalidraw_data", nullable=True),
    _uuid("thumbnail_id", nullable=True),
    _ref("created_by", "users.id", ondelete="SET NULL", nullable=True),
    _created_at(),
    _updated_at(),
    sa.Index(None, "workspace_id", "created_at"),
    sa.Index(None, "created_by"),
)

# --- invites and domains ---------------------------------------------------------------------

invite_links: Final = sa.Table(
    "invite_links",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _text("code"),
    _ref("created_by", "users.id", ondelete="SET NULL", nullable=True),
    _created_at(),
    _when("expires_at"),
    sa.Column("max_uses", sa.Integer(), nullable=True),
    sa.Column("used_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
    _text("scope_type"),
    _ref("scope_channel_id", "channels.id", ondelete="CASCADE", nullable=True),
    _when("revoked_at", nullable=True),
    sa.UniqueConstraint("code"),
    _one_of("scope_type", ("workspace", "channel"), "scope_type"),
    sa.CheckConstraint(
        "(scope_type = 'channel') = (scope_channel_id IS NOT NULL)", name="scope_channel"
    ),
    # The last guard against over-redemption when two joins race for the last use.
    sa.CheckConstraint(
        "used_count >= 0 AND (max_uses IS NULL OR used_count <= max_uses)", name="uses"
    ),
    sa.Index(None, "workspace_id", "created_at"),
    sa.Index(None, "created_by"),
    sa.Index(None, "scope_channel_id"),
)

invite_redemptions: Final = sa.Table(
    "invite_redemptions",
    metadata,
    _id(),
    _ref("invite_id", "invite_links.id", ondelete="CASCADE"),
    _ref("user_id", "users.id", ondelete="CASCADE"),
    _ref("member_id", "members.id", ondelete="SET NULL", nullable=True),
    _when("redeemed_at", now=True),
    sa.Index(None, "invite_id", "user_id"),
    sa.Index(None, "user_id"),
    sa.Index(None, "member_id"),
)

domains: Final = sa.Table(
    "domains",
    metadata,
    _id(),
    _ref("workspace_id", "workspaces.id", ondelete="CASCADE"),
    _text("domain"),  # lowercased by the services
    _text("verification_token"),
    sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
    _when("verified_at", nullable=True),
    _created_at(),
    _ref("created_by", "users.id", ondelete="SET NULL", nullable=True),
    sa.UniqueConstraint("workspace_id", "domain"),
    sa.UniqueConstraint("verification_token"),
    _one_of("status", ("pending", "verified", "failed"), "status"),
    # Pending claims are not exclusive; a verified one is (design decision 6).
    sa.Index(
        "uq_domains_verified_domain",
        "domain",
        unique=True,
        postgresql_where=sa.text("status = 'verified'"),
        sqlite_where=sa.text("status = 'verified'"),
    ),
    sa.Index(None, "domain"),
    sa.Index(None, "created_by"),
)

# --- events and idempotency ------------------------------------------------------------------

event_streams: Final = sa.Table(
    "event_streams",
    metadata,
    # No foreign key: the stream outlives its workspace so ``workspace.deleted`` is delivered.
    sa.Column("workspace_id", UUIDString(), primary_key=True),
    sa.Column("last_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    # Changes when the stream is recreated, so a subscriber's old seq is recognisably stale.
    _text("epoch"),
    _created_at(),
)

events: Final = sa.Table(
    "events",
    metadata,
    sa.Column("workspace_id", UUIDString(), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("id", UUIDString(), nullable=False, default=new_id),
    _text("type"),
    _uuid("actor_id", nullable=True),
    sa.Column("payload", JSONType, nullable=False),
    _created_at(),
    sa.UniqueConstraint("id"),
    sa.Index(None, "created_at"),  # retention pruning
)
"""The transactional outbox: one row per event, gap-free ``seq`` per workspace."""

presence: Final = sa.Table(
    "presence",
    metadata,
    # No foreign keys: presence is soft state; a vanished workspace or user only leaves a row
    # that snapshots never show (they are read through a membership check).
    sa.Column("workspace_id", UUIDString(), primary_key=True),
    sa.Column("user_id", UUIDString(), primary_key=True),
    _text("status"),
    _when("last_seen_at"),
    sa.CheckConstraint("status IN ('online', 'away', 'offline')", name="status"),
    sa.Index(None, "status", "last_seen_at"),  # the offline sweep
)
"""Presence of a user in a workspace (shared by every process; see events/presence.py)."""

idempotency_keys: Final = sa.Table(
    "idempotency_keys",
    metadata,
    _text("key"),
    _text("principal"),
    _text("method"),
    _text("path"),
    _text("request_hash"),
    sa.Column("status_code", sa.Integer(), nullable=True),
    _text("response_body", nullable=True),
    _created_at(),
    _when("expires_at"),
    # True: recorded in the operation's own transaction, so the effect committed; an
    # unanswered row then means "answer lost", never "abandoned" (see idempotency.py).
    _flag("effect_bound", default=False),
    sa.PrimaryKeyConstraint("principal", "key"),
    sa.Index(None, "expires_at"),
)

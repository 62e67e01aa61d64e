"""Initial schema: every self-host table (see kiiaren_selfhost/db/tables.py).

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Generated with autogenerate against PostgreSQL, then reviewed: types are spelled out here
(not imported from the package, so later changes to tables.py cannot change what this
revision creates), boolean defaults use ``sa.true()``/``sa.false()`` (rendered per dialect),
and the downgrade drops the tables in reverse dependency order (their indexes go with them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of kiiaren_selfhost.db.types (same DDL): native uuid / CHAR(32),
# timestamptz / DATETIME, JSONB / JSON.
_UUID = sa.Uuid(as_uuid=False)
_TIMESTAMP = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# Creation order (parents before children); the downgrade drops in reverse.
_TABLES = (
    "event_streams",
    "events",
    "idempotency_keys",
    "instance_secrets",
    "oauth_states",
    "rate_limits",
    "stored_objects",
    "users",
    "auth_sessions",
    "oauth_accounts",
    "verification_tokens",
    "workspaces",
    "boards",
    "channels",
    "docs",
    "domains",
    "members",
    "refresh_tokens",
    "conversations",
    "invite_links",
    "invite_redemptions",
    "messages",
    "reactions",
)


def upgrade() -> None:
    """Create every table, constraint and index."""
    op.create_table(
        "event_streams",
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("epoch", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_event_streams")),
    )
    op.create_table(
        "events",
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", _UUID, nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("actor_id", _UUID, nullable=True),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "seq", name=op.f("pk_events")),
        sa.UniqueConstraint("id", name=op.f("uq_events_id")),
    )
    op.create_index(op.f("ix_events_created_at"), "events", ["created_at"], unique=False)
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("principal", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_expires_at"), "idempotency_keys", ["expires_at"], unique=False
    )
    op.create_table(
        "instance_secrets",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_instance_secrets")),
    )
    op.create_table(
        "oauth_states",
        sa.Column("state_hash", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("code_verifier", sa.Text(), nullable=False),
        sa.Column("nonce", sa.Text(), nullable=True),
        sa.Column("redirect_to", sa.Text(), nullable=True),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_oauth_states")),
    )
    op.create_index(
        op.f("ix_oauth_states_expires_at"), "oauth_states", ["expires_at"], unique=False
    )
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_rate_limits")),
    )
    op.create_index(
        op.f("ix_rate_limits_window_start"), "rate_limits", ["window_start"], unique=False
    )
    op.create_table(
        "stored_objects",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("filename", sa.Text(), nullable=True),
        sa.Column("uploaded_by", _UUID, nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("ticket_expires_at", _TIMESTAMP, nullable=False),
        sa.Column("attached_at", _TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'ready', 'deleting')", name=op.f("ck_stored_objects_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_objects")),
        sa.UniqueConstraint("object_key", name=op.f("uq_stored_objects_object_key")),
    )
    op.create_index(
        op.f("ix_stored_objects_status_created_at"),
        "stored_objects",
        ["status", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_stored_objects_workspace_id"), "stored_objects", ["workspace_id"], unique=False
    )
    op.create_table(
        "users",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("email_verified_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "auth_sessions",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("last_used_at", _TIMESTAMP, nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("revoked_at", _TIMESTAMP, nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("ip_address", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_auth_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
    )
    op.create_index(
        op.f("ix_auth_sessions_expires_at"), "auth_sessions", ["expires_at"], unique=False
    )
    op.create_index(op.f("ix_auth_sessions_user_id"), "auth_sessions", ["user_id"], unique=False)
    op.create_table(
        "oauth_accounts",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_oauth_accounts_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_accounts")),
        sa.UniqueConstraint("provider", "subject", name=op.f("uq_oauth_accounts_provider_subject")),
    )
    op.create_index(op.f("ix_oauth_accounts_user_id"), "oauth_accounts", ["user_id"], unique=False)
    op.create_table(
        "verification_tokens",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("used_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "purpose IN ('email_verification', 'password_reset')",
            name=op.f("ck_verification_tokens_purpose"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_verification_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_verification_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_verification_tokens_expires_at"),
        "verification_tokens",
        ["expires_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_verification_tokens_user_id_purpose"),
        "verification_tokens",
        ["user_id", "purpose"],
        unique=False,
    )
    op.create_table(
        "workspaces",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("owner_id", _UUID, nullable=False),
        sa.Column("join_code", sa.Text(), nullable=False),
        sa.Column("join_code_enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("domain_verified", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_workspaces_owner_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
    )
    op.create_index(op.f("ix_workspaces_owner_id"), "workspaces", ["owner_id"], unique=False)
    op.create_table(
        "boards",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("excalidraw_data", sa.Text(), nullable=True),
        sa.Column("thumbnail_id", _UUID, nullable=True),
        sa.Column("created_by", _UUID, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_boards_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_boards_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boards")),
    )
    op.create_index(op.f("ix_boards_created_by"), "boards", ["created_by"], unique=False)
    op.create_index(
        op.f("ix_boards_workspace_id_created_at"),
        "boards",
        ["workspace_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "channels",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("name_key", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_channels_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint(
            "workspace_id", "name_key", name=op.f("uq_channels_workspace_id_name_key")
        ),
    )
    op.create_table(
        "docs",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("parent_document_id", _UUID, nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("icon", sa.Text(), nullable=True),
        sa.Column("cover_image_id", _UUID, nullable=True),
        sa.Column("is_archived", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("is_published", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_by", _UUID, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_docs_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["parent_document_id"],
            ["docs.id"],
            name=op.f("fk_docs_parent_document_id_docs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_docs_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_docs")),
    )
    op.create_index(op.f("ix_docs_created_by"), "docs", ["created_by"], unique=False)
    op.create_index(
        op.f("ix_docs_parent_document_id"), "docs", ["parent_document_id"], unique=False
    )
    op.create_index(
        op.f("ix_docs_workspace_id_parent_document_id_is_archived_created_at"),
        "docs",
        ["workspace_id", "parent_document_id", "is_archived", "created_at"],
        unique=False,
    )
    op.create_table(
        "domains",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("verification_token", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("verified_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("created_by", _UUID, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'verified', 'failed')", name=op.f("ck_domains_status")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_domains_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_domains_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domains")),
        sa.UniqueConstraint("verification_token", name=op.f("uq_domains_verification_token")),
        sa.UniqueConstraint("workspace_id", "domain", name=op.f("uq_domains_workspace_id_domain")),
    )
    op.create_index(op.f("ix_domains_created_by"), "domains", ["created_by"], unique=False)
    op.create_index(op.f("ix_domains_domain"), "domains", ["domain"], unique=False)
    op.create_index(
        "uq_domains_verified_domain",
        "domains",
        ["domain"],
        unique=True,
        postgresql_where=sa.text("status = 'verified'"),
        sqlite_where=sa.text("status = 'verified'"),
    )
    op.create_table(
        "members",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("joined_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name=op.f("ck_members_role")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_members_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_members_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_members")),
        sa.UniqueConstraint(
            "workspace_id", "user_id", name=op.f("uq_members_workspace_id_user_id")
        ),
    )
    op.create_index(op.f("ix_members_user_id"), "members", ["user_id"], unique=False)
    op.create_index(
        "uq_members_one_owner",
        "members",
        ["workspace_id"],
        unique=True,
        postgresql_where=sa.text("role = 'owner'"),
        sqlite_where=sa.text("role = 'owner'"),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("session_id", _UUID, nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("parent_id", _UUID, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("used_at", _TIMESTAMP, nullable=True),
        sa.Column("replaced_by_id", _UUID, nullable=True),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["refresh_tokens.id"],
            name=op.f("fk_refresh_tokens_parent_id_refresh_tokens"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["replaced_by_id"],
            ["refresh_tokens.id"],
            name=op.f("fk_refresh_tokens_replaced_by_id_refresh_tokens"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["auth_sessions.id"],
            name=op.f("fk_refresh_tokens_session_id_auth_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_refresh_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_refresh_tokens_parent_id"), "refresh_tokens", ["parent_id"], unique=False
    )
    op.create_index(
        op.f("ix_refresh_tokens_replaced_by_id"), "refresh_tokens", ["replaced_by_id"], unique=False
    )
    op.create_index(
        op.f("ix_refresh_tokens_session_id"), "refresh_tokens", ["session_id"], unique=False
    )
    op.create_table(
        "conversations",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("member_one_id", _UUID, nullable=False),
        sa.Column("member_two_id", _UUID, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "member_one_id < member_two_id", name=op.f("ck_conversations_ordered_members")
        ),
        sa.ForeignKeyConstraint(
            ["member_one_id"],
            ["members.id"],
            name=op.f("fk_conversations_member_one_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_two_id"],
            ["members.id"],
            name=op.f("fk_conversations_member_two_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_conversations_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint(
            "workspace_id",
            "member_one_id",
            "member_two_id",
            name=op.f("uq_conversations_workspace_id_member_one_id_member_two_id"),
        ),
    )
    op.create_index(
        op.f("ix_conversations_member_one_id"), "conversations", ["member_one_id"], unique=False
    )
    op.create_index(
        op.f("ix_conversations_member_two_id"), "conversations", ["member_two_id"], unique=False
    )
    op.create_table(
        "invite_links",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("created_by", _UUID, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("used_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("scope_type", sa.Text(), nullable=False),
        sa.Column("scope_channel_id", _UUID, nullable=True),
        sa.Column("revoked_at", _TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "(scope_type = 'channel') = (scope_channel_id IS NOT NULL)",
            name=op.f("ck_invite_links_scope_channel"),
        ),
        sa.CheckConstraint(
            "scope_type IN ('workspace', 'channel')", name=op.f("ck_invite_links_scope_type")
        ),
        sa.CheckConstraint(
            "used_count >= 0 AND (max_uses IS NULL OR used_count <= max_uses)",
            name=op.f("ck_invite_links_uses"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_invite_links_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["scope_channel_id"],
            ["channels.id"],
            name=op.f("fk_invite_links_scope_channel_id_channels"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_invite_links_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invite_links")),
        sa.UniqueConstraint("code", name=op.f("uq_invite_links_code")),
    )
    op.create_index(
        op.f("ix_invite_links_created_by"), "invite_links", ["created_by"], unique=False
    )
    op.create_index(
        op.f("ix_invite_links_scope_channel_id"), "invite_links", ["scope_channel_id"], unique=False
    )
    op.create_index(
        op.f("ix_invite_links_workspace_id_created_at"),
        "invite_links",
        ["workspace_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "invite_redemptions",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("invite_id", _UUID, nullable=False),
        sa.Column("user_id", _UUID, nullable=False),
        sa.Column("member_id", _UUID, nullable=True),
        sa.Column("redeemed_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["invite_id"],
            ["invite_links.id"],
            name=op.f("fk_invite_redemptions_invite_id_invite_links"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_invite_redemptions_member_id_members"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_invite_redemptions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invite_redemptions")),
    )
    op.create_index(
        op.f("ix_invite_redemptions_invite_id_user_id"),
        "invite_redemptions",
        ["invite_id", "user_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_invite_redemptions_member_id"), "invite_redemptions", ["member_id"], unique=False
    )
    op.create_index(
        op.f("ix_invite_redemptions_user_id"), "invite_redemptions", ["user_id"], unique=False
    )
    op.create_table(
        "messages",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("member_id", _UUID, nullable=False),
        sa.Column("channel_id", _UUID, nullable=True),
        sa.Column("conversation_id", _UUID, nullable=True),
        sa.Column("parent_message_id", _UUID, nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("image_id", _UUID, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "(channel_id IS NULL) <> (conversation_id IS NULL)",
            name=op.f("ck_messages_one_location"),
        ),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.id"],
            name=op.f("fk_messages_channel_id_channels"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_messages_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_message_id"],
            ["messages.id"],
            name=op.f("fk_messages_parent_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_messages_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(
        op.f("ix_messages_channel_id_parent_message_id_created_at_id"),
        "messages",
        ["channel_id", "parent_message_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_messages_conversation_id_parent_message_id_created_at_id"),
        "messages",
        ["conversation_id", "parent_message_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_messages_member_id"), "messages", ["member_id"], unique=False)
    op.create_index(
        op.f("ix_messages_parent_message_id_created_at_id"),
        "messages",
        ["parent_message_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_messages_workspace_id"), "messages", ["workspace_id"], unique=False)
    op.create_table(
        "reactions",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("workspace_id", _UUID, nullable=False),
        sa.Column("message_id", _UUID, nullable=False),
        sa.Column("member_id", _UUID, nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_reactions_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_reactions_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_reactions_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reactions")),
        sa.UniqueConstraint(
            "message_id", "member_id", "value", name=op.f("uq_reactions_message_id_member_id_value")
        ),
    )
    op.create_index(op.f("ix_reactions_member_id"), "reactions", ["member_id"], unique=False)
    op.create_index(op.f("ix_reactions_workspace_id"), "reactions", ["workspace_id"], unique=False)


def downgrade() -> None:
    """Drop every table (and with them their indexes): back to an empty database."""
    for table in reversed(_TABLES):
        op.drop_table(table)

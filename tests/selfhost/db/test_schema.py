"""Static properties of the schema and the package's public surface."""

from __future__ import annotations

import sqlalchemy as sa

import kiiaren_selfhost.db as db_package
from kiiaren_selfhost.db import metadata, tables

# The contract other code is written against (brief's column list, plus nothing removed).
EXPECTED_COLUMNS = {
    "instance_secrets": "name value created_at",
    "users": "id email name image password_hash email_verified_at created_at updated_at",
    "oauth_accounts": "id user_id provider subject email created_at",
    "auth_sessions": "id user_id created_at last_used_at expires_at revoked_at revoke_reason "
    "user_agent ip_address",
    "refresh_tokens": "id session_id token_hash parent_id created_at used_at replaced_by_id",
    "verification_tokens": "id user_id purpose token_hash email expires_at used_at created_at",
    "oauth_states": "state_hash provider code_verifier nonce redirect_to expires_at created_at",
    "rate_limits": "key window_start count",
    "workspaces": "id name owner_id join_code join_code_enabled domain_verified created_at "
    "updated_at",
    "members": "id workspace_id user_id role joined_at",
    "channels": "id workspace_id name name_key created_at",
    "conversations": "id workspace_id member_one_id member_two_id created_at",
    "stored_objects": "id workspace_id object_key content_type max_bytes size_bytes filename "
    "uploaded_by status created_at ticket_expires_at attached_at",
    "messages": "id workspace_id member_id channel_id conversation_id parent_message_id body "
    "image_id created_at updated_at",
    "reactions": "id workspace_id message_id member_id value created_at",
    "docs": "id workspace_id parent_document_id title content icon cover_image_id is_archived "
    "is_published created_by created_at updated_at",
    "boards": "id workspace_id title excalidraw_data thumbnail_id created_by created_at updated_at",
    "invite_links": "id workspace_id code created_by created_at expires_at max_uses used_count "
    "scope_type scope_channel_id revoked_at",
    "invite_redemptions": "id invite_id user_id member_id redeemed_at",
    "domains": "id workspace_id domain verification_token status verified_at created_at created_by",
    "event_streams": "workspace_id last_seq epoch created_at",
    "events": "workspace_id seq id type actor_id payload created_at",
    "presence": "workspace_id user_id status last_seen_at",
    "idempotency_keys": "key principal method path request_hash status_code response_body "
    "created_at expires_at effect_bound",
}


def test_columns_are_the_contract() -> None:
    assert {name: " ".join(table.c.keys()) for name, table in metadata.tables.items()} == (
        EXPECTED_COLUMNS
    )


def test_no_foreign_key_where_rows_must_outlive_their_workspace() -> None:
    for table, column in (
        (tables.stored_objects, "workspace_id"),
        (tables.event_streams, "workspace_id"),
        (tables.events, "workspace_id"),
        (tables.messages, "image_id"),
    ):
        assert not table.c[column].foreign_keys, f"{table.name}.{column}"


def _names() -> list[str]:
    names: list[str] = []
    for table in metadata.tables.values():
        names += [str(constraint.name) for constraint in table.constraints]
        names += [str(index.name) for index in table.indexes]
    return names


def test_every_constraint_and_index_is_named_within_postgres_limits() -> None:
    names = _names()
    assert all(name and name != "None" for name in names)
    assert len(names) == len(set(names))
    # Longer names would be truncated (differently) on PostgreSQL only.
    assert max(len(name) for name in names) <= 63


def test_unique_keys_are_identified_by_their_columns() -> None:
    """SQLite reports unique violations by column list; each list must map to one name."""
    for table in metadata.tables.values():
        keys = [
            tuple(column.name for column in constraint.columns)
            for constraint in table.constraints
            if isinstance(constraint, sa.PrimaryKeyConstraint | sa.UniqueConstraint)
        ]
        keys += [tuple(c.name for c in index.columns) for index in table.indexes if index.unique]
        assert len(keys) == len(set(keys)), table.name


def test_every_foreign_key_column_leads_an_index() -> None:
    """Cascades and SET NULL on PostgreSQL must not scan the referencing table."""
    for table in metadata.tables.values():
        leading = {index.columns[0].name for index in table.indexes if len(index.columns)}
        for constraint in table.constraints:
            if isinstance(constraint, sa.PrimaryKeyConstraint | sa.UniqueConstraint):
                leading.add(next(iter(constraint.columns)).name)
        for foreign_key in table.foreign_keys:
            assert foreign_key.parent.name in leading, f"{table.name}.{foreign_key.parent.name}"


def _isort_style_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then everything else."""
    if name.upper() == name:
        return 0, name
    return (1 if name[:1].isupper() else 2), name


def test_public_surface() -> None:
    exported = db_package.__all__
    assert list(exported) == sorted(exported, key=_isort_style_key)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert getattr(db_package, name) is not None, name
    assert callable(db_package.migrate)

"""Immutable domain models returned by every provider (pydantic v2, frozen).

Identifiers are opaque strings (UUIDs in the self-host provider). Timestamps are timezone-aware
``datetime`` values in UTC. Models never carry secrets; what a caller may see (for example a
workspace's join code or a member's email) is decided by the provider, which leaves the field
``None`` when the viewer is not allowed to see it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from kiiaren_core.validation import JOIN_CODE_ALPHABET, JOIN_CODE_LENGTH

__all__ = [
    "UNSET",
    "AuthProviderName",
    "AuthState",
    "Board",
    "Channel",
    "ChannelScope",
    "ClientContext",
    "Conversation",
    "CreatedInvite",
    "Doc",
    "Domain",
    "DomainStatus",
    "DomainVerificationInstructions",
    "DomainVerificationResult",
    "EmailDomainCheck",
    "InviteCreator",
    "InviteLink",
    "InviteLinkStatus",
    "InvitePreview",
    "InviteRedemption",
    "InviteScope",
    "InviteValidation",
    "KiiarenModel",
    "Member",
    "Message",
    "OAuthStart",
    "Page",
    "PresenceEntry",
    "PresenceStatus",
    "ReactionGroup",
    "ReactionToggle",
    "Role",
    "Session",
    "SessionInfo",
    "SessionTokens",
    "StoredObject",
    "StreamPosition",
    "TextDateTime",
    "ThreadSummary",
    "Unset",
    "UploadTicket",
    "UserIdentity",
    "UserSummary",
    "Workspace",
    "WorkspaceInfo",
    "WorkspaceScope",
]

T = TypeVar("T")


def _refuse_numbers(value: object) -> object:
    if isinstance(value, int | float):
        raise ValueError("expected an ISO 8601 date-time string, not a number")
    return value


TextDateTime = Annotated[datetime, BeforeValidator(_refuse_numbers)]
"""A date-time given by a caller: ISO 8601 text (or a ``datetime``). Numbers are refused:
the wire schema says ``string``, and pydantic would otherwise read them as Unix times."""


class KiiarenModel(BaseModel):
    """Base of every model: frozen, unknown fields refused, enums as values."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class Role(StrEnum):
    """A member's role. Exactly one owner per workspace; the owner has every admin right."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def is_admin(self) -> bool:
        """True for owners and admins."""
        return self is not Role.MEMBER


AuthProviderName = Literal["password", "oauth"]


class UserIdentity(KiiarenModel):
    """The signed-in user as the auth provider knows them."""

    id: str
    email: str | None = None
    name: str | None = None
    image: str | None = None
    provider: AuthProviderName = "password"
    oauth_provider: Literal["google", "github"] | None = None
    email_verified: bool = False


class Session(KiiarenModel):
    """The current session as seen by the application (no secrets)."""

    user_id: str
    session_id: str
    is_authenticated: bool = True
    expires_at: datetime | None = None


class SessionTokens(KiiarenModel):
    """Bearer credentials of one session, to hand to another process. Never log these."""

    access_token: str = Field(repr=False)
    refresh_token: str | None = Field(default=None, repr=False)
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime | None = None
    """When the access token expires (``None`` when unknown, e.g. a bare token string)."""


class SessionInfo(KiiarenModel):
    """One of the user's sessions, for a "devices" list."""

    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None = None
    ip_address: str | None = None
    current: bool = False


class AuthState(KiiarenModel):
    """Passed to ``on_auth_state_change`` callbacks: what happened and the resulting session."""

    event: Literal["signed_in", "signed_up", "token_refreshed", "signed_out", "session_revoked"]
    session: Session | None


class OAuthStart(KiiarenModel):
    """First step of an OAuth sign-in: send the user to ``url``; keep ``state`` to finish."""

    provider: Literal["google", "github"]
    url: str
    state: str


class Workspace(KiiarenModel):
    """A workspace. ``join_code`` is ``None`` unless the viewer is an admin or the owner."""

    id: str
    name: str
    owner_id: str
    join_code: str | None = None
    created_at: datetime
    domain_verified: bool = False
    join_code_enabled: bool = True

    @field_validator("join_code")
    @classmethod
    def _join_code_alphabet(cls, value: str | None) -> str | None:
        if value is not None and (
            len(value) != JOIN_CODE_LENGTH or any(ch not in JOIN_CODE_ALPHABET for ch in value)
        ):
            raise ValueError("join code must be 6 characters of the join-code alphabet")
        return value


class WorkspaceInfo(KiiarenModel):
    """What the join page shows any signed-in user about a workspace."""

    id: str
    name: str
    is_member: bool
    role: Role | None = None


class Channel(KiiarenModel):
    """A channel; ``name`` is normalised (lowercase, words joined by ``-``)."""

    id: str
    workspace_id: str
    name: str
    created_at: datetime


class UserSummary(KiiarenModel):
    """The public face of a user inside a workspace; ``email`` only for admin viewers."""

    id: str
    name: str | None = None
    image: str | None = None
    email: str | None = None


class Member(KiiarenModel):
    """A user's membership of a workspace."""

    id: str
    user_id: str
    workspace_id: str
    role: Role
    joined_at: datetime
    user: UserSummary | None = None


class ReactionGroup(KiiarenModel):
    """All reactions with one value on one message, in first-seen order of members."""

    value: str
    count: int = Field(ge=1)
    member_ids: tuple[str, ...]


class ReactionToggle(KiiarenModel):
    """The result of toggling a reaction."""

    message_id: str
    value: str
    added: bool


class ThreadSummary(KiiarenModel):
    """Replies to a top-level message: how many, and who replied last."""

    count: int = 0
    last_reply_at: datetime | None = None
    last_replier_name: str | None = None
    last_replier_image: str | None = None


class Message(KiiarenModel):
    """A message with its read model: author, grouped reactions and thread summary.

    Exactly one of ``channel_id`` / ``conversation_id`` is set. ``body`` is opaque (Quill
    Delta JSON in the reference client).
    """

    id: str
    workspace_id: str
    member_id: str
    body: str
    channel_id: str | None = None
    conversation_id: str | None = None
    parent_message_id: str | None = None
    image_id: str | None = None
    image_url: str | None = None
    created_at: datetime
    updated_at: datetime | None = None
    member: Member | None = None
    reactions: tuple[ReactionGroup, ...] = ()
    thread: ThreadSummary = ThreadSummary()


class Conversation(KiiarenModel):
    """A direct conversation between two members of one workspace."""

    id: str
    workspace_id: str
    member_one_id: str
    member_two_id: str
    created_at: datetime


class Doc(KiiarenModel):
    """A document in the workspace's doc tree."""

    id: str
    workspace_id: str
    title: str
    content: str | None = None
    parent_document_id: str | None = None
    cover_image_id: str | None = None
    cover_image_url: str | None = None
    icon: str | None = None
    is_archived: bool = False
    is_published: bool = False
    created_by: str
    created_at: datetime
    updated_at: datetime


class Board(KiiarenModel):
    """A whiteboard (Excalidraw JSON kept opaque)."""

    id: str
    workspace_id: str
    title: str
    excalidraw_data: str | None = None
    thumbnail_id: str | None = None
    thumbnail_url: str | None = None
    created_by: str
    created_at: datetime
    updated_at: datetime


class WorkspaceScope(KiiarenModel):
    """An invite that joins the workspace."""

    type: Literal["workspace"] = "workspace"


class ChannelScope(KiiarenModel):
    """An invite that joins the workspace and names the channel to open."""

    type: Literal["channel"] = "channel"
    channel_id: str


InviteScope = Annotated[WorkspaceScope | ChannelScope, Field(discriminator="type")]


class InviteLinkStatus(StrEnum):
    """Computed with precedence revoked > expired > exhausted > active."""

    ACTIVE = "active"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"
    REVOKED = "revoked"


class InviteCreator(KiiarenModel):
    """Who created an invite (``name`` is ``"Unknown"`` when the user is gone)."""

    id: str | None
    name: str


class InviteLink(KiiarenModel):
    """An invite link as admins see it."""

    id: str
    workspace_id: str
    code: str = Field(repr=False)
    created_by: InviteCreator
    created_at: datetime
    expires_at: datetime
    max_uses: int | None = None
    used_count: int = 0
    scope: InviteScope
    revoked_at: datetime | None = None
    status: InviteLinkStatus


class CreatedInvite(KiiarenModel):
    """Returned by ``invite.create``."""

    id: str
    code: str = Field(repr=False)


class InvitePreview(KiiarenModel):
    """What anyone holding a valid code may see (``invite.get_by_code``)."""

    id: str
    workspace_id: str
    workspace_name: str
    expires_at: datetime
    scope: InviteScope


class InviteValidation(KiiarenModel):
    """``invite.validate_for_redemption``: valid with the target, or the exact error text."""

    valid: bool
    error: str | None = None
    workspace_id: str | None = None
    workspace_name: str | None = None
    scope: InviteScope | None = None


class InviteRedemption(KiiarenModel):
    """The result of redeeming an invite: the workspace joined and the channel to open."""

    workspace_id: str
    member_id: str
    channel_id: str | None = None


class DomainStatus(StrEnum):
    """Verification state of a claimed email domain."""

    PENDING = "pending"
    VERIFIED = "verified"
    FAILED = "failed"


class Domain(KiiarenModel):
    """An email domain claimed by a workspace (admins only)."""

    id: str
    workspace_id: str
    domain: str
    status: DomainStatus
    verification_token: str = Field(repr=False)
    verified_at: datetime | None = None
    created_at: datetime
    created_by: str


class DomainVerificationInstructions(KiiarenModel):
    """The DNS record an admin must publish."""

    record_type: Literal["TXT"] = "TXT"
    record_name: str
    record_value: str
    instructions: tuple[str, ...]


class DomainVerificationResult(KiiarenModel):
    """Outcome of a DNS check; ``error`` holds the reference's exact text on failure."""

    success: bool
    domain: Domain
    error: str | None = None
    records_found: tuple[str, ...] = ()


class EmailDomainCheck(KiiarenModel):
    """Whether an email's domain is a verified domain of the workspace."""

    matches: bool
    domain: str | None = None


class UploadTicket(KiiarenModel):
    """Permission to upload one object: send ``method`` to ``url`` with ``headers``."""

    storage_id: str
    url: str = Field(repr=False)
    method: Literal["PUT", "POST"] = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)
    expires_at: datetime
    max_bytes: int
    content_type: str


class StoredObject(KiiarenModel):
    """Metadata of an uploaded object (the file name lives only here)."""

    id: str
    workspace_id: str
    content_type: str
    size_bytes: int | None = None
    filename: str | None = None
    uploaded_by: str
    created_at: datetime
    attached: bool = False


class PresenceStatus(StrEnum):
    """Presence of a user in a workspace."""

    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class PresenceEntry(KiiarenModel):
    """One user's presence in a snapshot."""

    user_id: str
    status: PresenceStatus
    last_seen_at: datetime | None = None


class Page(KiiarenModel, Generic[T]):
    """One page of a keyset-paginated list.

    ``cursor`` is opaque; pass it back to get the next page. ``has_more`` is False on the
    last page (where ``cursor`` is ``None``).
    """

    items: tuple[T, ...]
    cursor: str | None = None
    has_more: bool = False


class StreamPosition(KiiarenModel):
    """Where a workspace's event stream stands: resume with ``since=seq`` and this ``epoch``."""

    workspace_id: str
    seq: int = Field(ge=0)
    epoch: str


class ClientContext(KiiarenModel):
    """Facts about the caller's connection, used for rate limits and the session list."""

    ip_address: str | None = None
    user_agent: str | None = None


class Unset:
    """Type of :data:`UNSET`: "leave this field as it is" in partial updates."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()
"""Default of optional update arguments: not given. ``None`` means "clear the field"."""

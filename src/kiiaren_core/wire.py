"""The KIIAREN wire protocol (HTTP, version 1) as one declarative table.

Every protocol operation that crosses the wire is an :class:`Operation`: its HTTP method and
path, the provider method it calls, where its arguments come from and what it answers. The
bundled server generates its routes from :data:`OPERATIONS`, the hosted client builds its
requests from it, and the authorization matrix test enumerates it, so the three cannot drift.

Argument binding: path parameters, query parameters and the JSON body's fields are passed to
the provider method *by name*. In a ``PATCH`` body a field that is absent means "leave it"
(``UNSET``); ``null`` means "clear it". An operation whose method returns ``None`` answers
``204`` (mutations) or ``404`` with the ``not_found`` error (reads, ``none_is_404``).

Errors travel as ``{"error": {"code", "message", "details"}, "request_id"}`` with the status
of the error class (:mod:`kiiaren_core.errors`). Secrets (invite codes, tokens) never appear
in paths or query strings: they travel in bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiiaren_core.capabilities import Capabilities
from kiiaren_core.events import EventEnvelope
from kiiaren_core.extensions.gate import ManagedFeature
from kiiaren_core.extensions.types import (
    AIMemory,
    AIRequest,
    AIResponse,
    AuditEvent,
    AuditQueryParams,
    AuditRecord,
    DeviceToken,
    EncryptedData,
    KeyInfo,
    PushNotification,
    SearchHit,
    SearchIndexEvent,
    SearchParams,
)
from kiiaren_core.models import (
    Board,
    Channel,
    ChannelScope,
    Conversation,
    CreatedInvite,
    Doc,
    Domain,
    DomainVerificationInstructions,
    DomainVerificationResult,
    EmailDomainCheck,
    InviteLink,
    InvitePreview,
    InviteRedemption,
    InviteValidation,
    Member,
    Message,
    OAuthStart,
    Page,
    PresenceEntry,
    PresenceStatus,
    ReactionToggle,
    Role,
    Session,
    SessionInfo,
    SessionTokens,
    StoredObject,
    StreamPosition,
    UploadTicket,
    UserIdentity,
    Workspace,
    WorkspaceInfo,
    WorkspaceScope,
)

__all__ = [
    "API_PREFIX",
    "OPERATIONS",
    "OPERATIONS_BY_NAME",
    "Access",
    "CapabilitiesReport",
    "Count",
    "DownloadUrl",
    "JoinCode",
    "Operation",
    "Plaintext",
    "SessionGrant",
]

API_PREFIX: Final = "/v1"

Access = Literal["public", "optional", "session"]
"""``public``: no session needed; ``optional``: works signed out; ``session``: 401 without."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- response shapes that are not domain models --------------------------------------------


class SessionGrant(_Body):
    """Answer of sign-up, sign-in, refresh and OAuth completion: the session and its tokens."""

    session: Session
    tokens: SessionTokens


class Count(_Body):
    """How many things an operation affected."""

    count: int


class JoinCode(_Body):
    """A workspace's new join code."""

    join_code: str


class DownloadUrl(_Body):
    """A short-lived download URL."""

    url: str


class Plaintext(_Body):
    """Decrypted data."""

    plaintext: str


class CapabilitiesReport(_Body):
    """``GET /v1/capabilities``: who the provider is and what it offers."""

    provider_id: str
    provider_name: str
    is_managed: bool
    capabilities: Capabilities
    available_features: tuple[ManagedFeature, ...]
    protocol_version: int = 1


# --- request bodies -------------------------------------------------------------------------


class SignUpBody(_Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    name: str = Field(max_length=200)


class SignInBody(_Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class RefreshBody(_Body):
    refresh_token: str = Field(max_length=512)


class ChangePasswordBody(_Body):
    current_password: str = Field(max_length=4096)
    new_password: str = Field(max_length=4096)


class TokenBody(_Body):
    token: str = Field(max_length=512)


class EmailBody(_Body):
    # No length bound here: an impossible address is the provider's "no match", as in-process.
    email: str


class ResetPasswordBody(_Body):
    token: str = Field(max_length=512)
    new_password: str = Field(max_length=4096)


class NameBody(_Body):
    name: str = Field(max_length=200)


class JoinBody(_Body):
    join_code: str | None = Field(default=None, max_length=64)
    invite_code: str | None = Field(default=None, max_length=128)


class MemberIdBody(_Body):
    member_id: str = Field(max_length=64)


class RoleBody(_Body):
    role: Role


class MessageCreateBody(_Body):
    body: str
    channel_id: str | None = Field(default=None, max_length=64)
    conversation_id: str | None = Field(default=None, max_length=64)
    parent_message_id: str | None = Field(default=None, max_length=64)
    image_id: str | None = Field(default=None, max_length=64)


class MessageUpdateBody(_Body):
    body: str


class ReactionBody(_Body):
    value: str = Field(max_length=64)


class ConversationBody(_Body):
    member_one_id: str = Field(max_length=64)
    member_two_id: str = Field(max_length=64)


class DocCreateBody(_Body):
    title: str = Field(max_length=1000)
    parent_document_id: str | None = Field(default=None, max_length=64)


class DocUpdateBody(_Body):
    title: str | None = Field(default=None, max_length=1000)
    content: str | None = None
    icon: str | None = Field(default=None, max_length=200)
    cover_image_id: str | None = Field(default=None, max_length=64)
    is_published: bool | None = None


class BoardCreateBody(_Body):
    title: str = Field(max_length=1000)


class BoardUpdateBody(_Body):
    title: str | None = Field(default=None, max_length=1000)
    excalidraw_data: str | None = None
    thumbnail_id: str | None = Field(default=None, max_length=64)


class InviteCreateBody(_Body):
    expires_in_hours: float = 24
    scope: WorkspaceScope | ChannelScope | None = Field(default=None, discriminator="type")
    max_uses: int | None = None


class InviteCodeBody(_Body):
    # Unbounded like EmailBody: an over-long code is simply "not found" (the body limit caps it).
    code: str


class DomainBody(_Body):
    domain: str = Field(max_length=300)


class UploadTicketBody(_Body):
    content_type: str = Field(max_length=200)
    size: int
    filename: str | None = Field(default=None, max_length=1000)


class EmitBody(_Body):
    type: str = Field(max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class PresenceBody(_Body):
    status: PresenceStatus


class KmsEncryptBody(_Body):
    data: str
    key_id: str | None = None


class KmsDecryptBody(_Body):
    ciphertext: str
    key_id: str | None = None


class KmsRotateBody(_Body):
    key_id: str


# --- query parameter shapes -----------------------------------------------------------------


class UserIdQuery(_Body):
    user_id: str | None = Field(default=None, max_length=64)


class MessageListQuery(_Body):
    channel_id: str | None = Field(default=None, max_length=64)
    conversation_id: str | None = Field(default=None, max_length=64)
    parent_message_id: str | None = Field(default=None, max_length=64)
    cursor: str | None = Field(default=None, max_length=512)
    limit: int = Field(default=20, ge=-(2**31), le=2**31 - 1)
    """Clamped by the provider to ``1..limits.max_page_size`` (the contract), not refused."""


class ParentQuery(_Body):
    parent_document_id: str | None = Field(default=None, max_length=64)


class SearchQuery(_Body):
    query: str = ""


class RedirectQuery(_Body):
    redirect_to: str | None = Field(default=None, max_length=2000)


class OAuthCallbackQuery(_Body):
    code: str = Field(max_length=2000)
    state: str = Field(max_length=512)


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One wire operation.

    Attributes:
        name: stable id, ``"<area>.<method>"`` (e.g. ``"message.create"``).
        method: HTTP method.
        path: path template under :data:`API_PREFIX`, parameters in braces.
        target: dotted attribute path of the provider method (``persistence.message.create``).
        access: who may call (see :data:`Access`).
        body: model of the JSON body, if any.
        query: model of the query string, if any.
        response: model (or ``list[model]``) of a 200 answer; ``None`` answers 204.
        none_is_404: a ``None`` result answers 404 ``not_found`` (reads).
        status: success status (200, 201 for creations, 204 when nothing is returned).
        summary: one line for the API docs.
        body_as: pass the whole body model as this one argument (the extension hooks)
            instead of spreading its fields.
        wrap: the provider returns a scalar; the answer is ``response(**{wrap: result})``.
    """

    name: str
    method: Literal["GET", "POST", "PATCH", "PUT", "DELETE"]
    path: str
    target: str
    access: Access
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    none_is_404: bool = False
    status: int = 200
    body_as: str | None = None
    wrap: str | None = None
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        params = tuple(
            part[1:-1]
            for part in self.path.split("/")
            if part.startswith("{") and part.endswith("}")
        )
        object.__setattr__(self, "path_params", params)

    @property
    def url_path(self) -> str:
        """The full path template, prefix included."""
        return f"{API_PREFIX}{self.path}"

    @property
    def mutating(self) -> bool:
        """True for methods that change state (they accept an ``Idempotency-Key``)."""
        return self.method != "GET"


def _op(
    name: str,
    method: Literal["GET", "POST", "PATCH", "PUT", "DELETE"],
    path: str,
    target: str,
    summary: str,
    *,
    access: Access = "session",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: Any = None,
    none_is_404: bool = False,
    status: int | None = None,
    body_as: str | None = None,
    wrap: str | None = None,
) -> Operation:
    if status is None:
        status = 204 if response is None else 200
    return Operation(
        name=name,
        method=method,
        path=path,
        target=target,
        access=access,
        summary=summary,
        body=body,
        query=query,
        response=response,
        none_is_404=none_is_404,
        status=status,
        body_as=body_as,
        wrap=wrap,
    )


W = "/workspaces/{workspace_id}"

OPERATIONS: Final[tuple[Operation, ...]] = (
    # --- auth (the server binds the resulting session; see SessionGrant) ---
    _op(
        "auth.sign_up",
        "POST",
        "/auth/sign-up",
        "auth.sign_up_with_password",
        "Create a password account and sign in",
        access="public",
        body=SignUpBody,
        response=SessionGrant,
        status=201,
    ),
    _op(
        "auth.sign_in",
        "POST",
        "/auth/sign-in",
        "auth.sign_in_with_password",
        "Sign in with email and password",
        access="public",
        body=SignInBody,
        response=SessionGrant,
    ),
    _op(
        "auth.refresh",
        "POST",
        "/auth/refresh",
        "auth.refresh_session",
        "Rotate a refresh token",
        access="public",
        body=RefreshBody,
        response=SessionGrant,
    ),
    _op("auth.sign_out", "POST", "/auth/sign-out", "auth.sign_out", "Revoke this session"),
    _op(
        "auth.session",
        "GET",
        "/auth/session",
        "auth.get_session",
        "The current session",
        response=Session,
        none_is_404=False,
    ),
    _op(
        "auth.user",
        "GET",
        "/auth/user",
        "auth.get_current_user",
        "The signed-in user",
        response=UserIdentity,
    ),
    _op(
        "auth.sessions",
        "GET",
        "/auth/sessions",
        "auth.list_sessions",
        "The user's active sessions",
        response=list[SessionInfo],
    ),
    _op(
        "auth.revoke_session",
        "DELETE",
        "/auth/sessions/{session_id}",
        "auth.revoke_session",
        "Revoke one of the user's sessions",
    ),
    _op(
        "auth.revoke_other_sessions",
        "POST",
        "/auth/sessions/revoke-others",
        "auth.revoke_other_sessions",
        "Revoke every other session",
        response=Count,
        wrap="count",
    ),
    _op(
        "auth.revoke_all_sessions",
        "POST",
        "/auth/sessions/revoke-all",
        "auth.revoke_all_sessions",
        "Revoke every session",
        response=Count,
        wrap="count",
    ),
    _op(
        "auth.change_password",
        "POST",
        "/auth/password",
        "auth.change_password",
        "Change the password",
        body=ChangePasswordBody,
    ),
    _op(
        "auth.request_email_verification",
        "POST",
        "/auth/verify-email/request",
        "auth.request_email_verification",
        "Email a verification link",
    ),
    _op(
        "auth.verify_email",
        "POST",
        "/auth/verify-email",
        "auth.verify_email",
        "Verify the email with a token",
        access="public",
        body=TokenBody,
        response=UserIdentity,
    ),
    _op(
        "auth.request_password_reset",
        "POST",
        "/auth/password-reset/request",
        "auth.request_password_reset",
        "Email a password reset link",
        access="public",
        body=EmailBody,
        status=202,
    ),
    _op(
        "auth.reset_password",
        "POST",
        "/auth/password-reset",
        "auth.reset_password",
        "Set a new password with a reset token",
        access="public",
        body=ResetPasswordBody,
    ),
    _op(
        "auth.oauth_start",
        "GET",
        "/auth/oauth/{provider}/authorize",
        "auth.sign_in_with_oauth",
        "Start an OAuth sign-in",
        access="public",
        query=RedirectQuery,
        response=OAuthStart,
    ),
    _op(
        "auth.oauth_callback",
        "GET",
        "/auth/oauth/{provider}/callback",
        "auth.complete_oauth",
        "Finish an OAuth sign-in",
        access="public",
        query=OAuthCallbackQuery,
        response=SessionGrant,
    ),
    # --- workspaces ---
    _op(
        "workspace.create",
        "POST",
        "/workspaces",
        "persistence.workspace.create",
        "Create a workspace",
        body=NameBody,
        response=Workspace,
        status=201,
    ),
    _op(
        "workspace.list",
        "GET",
        "/workspaces",
        "persistence.workspace.get_by_user_id",
        "The caller's workspaces",
        access="optional",
        query=UserIdQuery,
        response=list[Workspace],
    ),
    _op(
        "workspace.get",
        "GET",
        W,
        "persistence.workspace.get",
        "One workspace",
        response=Workspace,
        none_is_404=True,
    ),
    _op(
        "workspace.info",
        "GET",
        W + "/info",
        "persistence.workspace.get_info",
        "Join-page information",
        response=WorkspaceInfo,
        none_is_404=True,
    ),
    _op(
        "workspace.update",
        "PATCH",
        W,
        "persistence.workspace.update",
        "Rename a workspace",
        body=NameBody,
        response=Workspace,
    ),
    _op(
        "workspace.remove",
        "DELETE",
        W,
        "persistence.workspace.remove",
        "Delete a workspace and everything in it",
    ),
    _op(
        "workspace.join",
        "POST",
        W + "/join",
        "persistence.workspace.join",
        "Join a workspace",
        body=JoinBody,
        response=Member,
    ),
    _op(
        "workspace.regenerate_join_code",
        "POST",
        W + "/join-code",
        "persistence.workspace.regenerate_join_code",
        "Replace the join code",
        response=JoinCode,
        wrap="join_code",
    ),
    _op(
        "workspace.transfer_ownership",
        "POST",
        W + "/transfer-ownership",
        "persistence.workspace.transfer_ownership",
        "Make another member the owner",
        body=MemberIdBody,
        response=Member,
    ),
    # --- channels ---
    _op(
        "channel.create",
        "POST",
        W + "/channels",
        "persistence.channel.create",
        "Create a channel",
        body=NameBody,
        response=Channel,
        status=201,
    ),
    _op(
        "channel.list",
        "GET",
        W + "/channels",
        "persistence.channel.get",
        "The workspace's channels",
        response=list[Channel],
    ),
    _op(
        "channel.get",
        "GET",
        "/channels/{channel_id}",
        "persistence.channel.get_by_id",
        "One channel",
        response=Channel,
        none_is_404=True,
    ),
    _op(
        "channel.update",
        "PATCH",
        "/channels/{channel_id}",
        "persistence.channel.update",
        "Rename a channel",
        body=NameBody,
        response=Channel,
    ),
    _op(
        "channel.remove",
        "DELETE",
        "/channels/{channel_id}",
        "persistence.channel.remove",
        "Delete a channel and its messages",
    ),
    # --- members ---
    _op(
        "member.list",
        "GET",
        W + "/members",
        "persistence.member.get",
        "The workspace's members",
        response=list[Member],
    ),
    _op(
        "member.current",
        "GET",
        W + "/members/me",
        "persistence.member.get_current",
        "The caller's membership",
        response=Member,
        none_is_404=True,
    ),
    _op(
        "member.get",
        "GET",
        "/members/{member_id}",
        "persistence.member.get_by_id",
        "One member",
        response=Member,
        none_is_404=True,
    ),
    _op(
        "member.update_role",
        "PATCH",
        "/members/{member_id}",
        "persistence.member.update_role",
        "Change a member's role",
        body=RoleBody,
        response=Member,
    ),
    _op(
        "member.remove",
        "DELETE",
        "/members/{member_id}",
        "persistence.member.remove",
        "Remove a member (or leave)",
    ),
    # --- messages and reactions ---
    _op(
        "message.create",
        "POST",
        W + "/messages",
        "persistence.message.create",
        "Post a message",
        body=MessageCreateBody,
        response=Message,
        status=201,
    ),
    _op(
        "message.list",
        "GET",
        "/messages",
        "persistence.message.get",
        "A page of messages, newest first",
        query=MessageListQuery,
        response=Page[Message],
    ),
    _op(
        "message.get",
        "GET",
        "/messages/{message_id}",
        "persistence.message.get_by_id",
        "One message",
        response=Message,
        none_is_404=True,
    ),
    _op(
        "message.update",
        "PATCH",
        "/messages/{message_id}",
        "persistence.message.update",
        "Edit a message",
        body=MessageUpdateBody,
        response=Message,
    ),
    _op(
        "message.remove",
        "DELETE",
        "/messages/{message_id}",
        "persistence.message.remove",
        "Delete a message with its replies",
    ),
    _op(
        "reaction.toggle",
        "POST",
        "/messages/{message_id}/reactions",
        "persistence.reaction.toggle",
        "Toggle a reaction",
        body=ReactionBody,
        response=ReactionToggle,
    ),
    # --- conversations ---
    _op(
        "conversation.create_or_get",
        "POST",
        W + "/conversations",
        "persistence.conversation.create_or_get",
        "Open a direct conversation",
        body=ConversationBody,
        response=Conversation,
    ),
    _op(
        "conversation.list",
        "GET",
        W + "/conversations",
        "persistence.conversation.get",
        "The caller's conversations",
        response=list[Conversation],
    ),
    _op(
        "conversation.get",
        "GET",
        "/conversations/{conversation_id}",
        "persistence.conversation.get_by_id",
        "One conversation",
        response=Conversation,
        none_is_404=True,
    ),
    # --- docs ---
    _op(
        "doc.create",
        "POST",
        W + "/docs",
        "persistence.doc.create",
        "Create a doc",
        body=DocCreateBody,
        response=Doc,
        status=201,
    ),
    _op(
        "doc.list",
        "GET",
        W + "/docs",
        "persistence.doc.get",
        "Docs at one tree level",
        query=ParentQuery,
        response=list[Doc],
    ),
    _op(
        "doc.list_archived",
        "GET",
        W + "/docs/archived",
        "persistence.doc.list_archived",
        "Archived docs",
        response=list[Doc],
    ),
    _op(
        "doc.search",
        "GET",
        W + "/docs/search",
        "persistence.doc.search",
        "Search doc titles",
        query=SearchQuery,
        response=list[Doc],
    ),
    _op(
        "doc.get",
        "GET",
        "/docs/{doc_id}",
        "persistence.doc.get_by_id",
        "One doc",
        response=Doc,
        none_is_404=True,
    ),
    _op(
        "doc.update",
        "PATCH",
        "/docs/{doc_id}",
        "persistence.doc.update",
        "Update a doc (absent: unchanged, null: cleared)",
        body=DocUpdateBody,
        response=Doc,
    ),
    _op(
        "doc.archive",
        "POST",
        "/docs/{doc_id}/archive",
        "persistence.doc.archive",
        "Archive a doc and its descendants",
        response=Doc,
    ),
    _op(
        "doc.restore",
        "POST",
        "/docs/{doc_id}/restore",
        "persistence.doc.restore",
        "Restore an archived doc",
        response=Doc,
    ),
    _op(
        "doc.remove",
        "DELETE",
        "/docs/{doc_id}",
        "persistence.doc.remove",
        "Delete a doc and its descendants",
    ),
    # --- boards ---
    _op(
        "board.create",
        "POST",
        W + "/boards",
        "persistence.board.create",
        "Create a board",
        body=BoardCreateBody,
        response=Board,
        status=201,
    ),
    _op(
        "board.list",
        "GET",
        W + "/boards",
        "persistence.board.get",
        "The workspace's boards",
        response=list[Board],
    ),
    _op(
        "board.search",
        "GET",
        W + "/boards/search",
        "persistence.board.search",
        "Search board titles",
        query=SearchQuery,
        response=list[Board],
    ),
    _op(
        "board.get",
        "GET",
        "/boards/{board_id}",
        "persistence.board.get_by_id",
        "One board",
        response=Board,
        none_is_404=True,
    ),
    _op(
        "board.update",
        "PATCH",
        "/boards/{board_id}",
        "persistence.board.update",
        "Update a board (absent: unchanged, null: cleared)",
        body=BoardUpdateBody,
        response=Board,
    ),
    _op(
        "board.remove", "DELETE", "/boards/{board_id}", "persistence.board.remove", "Delete a board"
    ),
    # --- invites (codes travel in bodies, never in URLs) ---
    _op(
        "invite.create",
        "POST",
        W + "/invites",
        "persistence.invite.create",
        "Create an invite link",
        body=InviteCreateBody,
        response=CreatedInvite,
        status=201,
    ),
    _op(
        "invite.list",
        "GET",
        W + "/invites",
        "persistence.invite.list",
        "The workspace's invite links",
        response=list[InviteLink],
    ),
    _op(
        "invite.revoke",
        "POST",
        "/invites/{invite_id}/revoke",
        "persistence.invite.revoke",
        "Revoke an invite link",
    ),
    _op(
        "invite.preview",
        "POST",
        "/invites/preview",
        "persistence.invite.get_by_code",
        "What a valid code leads to",
        access="public",
        body=InviteCodeBody,
        response=InvitePreview,
        none_is_404=True,
    ),
    _op(
        "invite.validate",
        "POST",
        "/invites/validate",
        "persistence.invite.validate_for_redemption",
        "Check a code",
        access="public",
        body=InviteCodeBody,
        response=InviteValidation,
    ),
    _op(
        "invite.redeem",
        "POST",
        "/invites/redeem",
        "persistence.invite.redeem",
        "Join with an invite code",
        body=InviteCodeBody,
        response=InviteRedemption,
    ),
    # --- domains ---
    _op(
        "domain.add",
        "POST",
        W + "/domains",
        "persistence.domain.add",
        "Claim an email domain",
        body=DomainBody,
        response=Domain,
        status=201,
    ),
    _op(
        "domain.list",
        "GET",
        W + "/domains",
        "persistence.domain.list",
        "The workspace's domains",
        response=list[Domain],
    ),
    _op(
        "domain.check_email",
        "POST",
        W + "/domains/check-email",
        "persistence.domain.check_email",
        "Whether an email's domain is verified here",
        access="public",
        body=EmailBody,
        response=EmailDomainCheck,
    ),
    _op(
        "domain.get",
        "GET",
        "/domains/{domain_id}",
        "persistence.domain.get_by_id",
        "One domain",
        response=Domain,
        none_is_404=True,
    ),
    _op(
        "domain.instructions",
        "GET",
        "/domains/{domain_id}/instructions",
        "persistence.domain.get_verification_instructions",
        "The DNS record to publish",
        response=DomainVerificationInstructions,
    ),
    _op(
        "domain.verify",
        "POST",
        "/domains/{domain_id}/verify",
        "persistence.domain.verify",
        "Check the DNS record",
        response=DomainVerificationResult,
    ),
    _op(
        "domain.remove",
        "DELETE",
        "/domains/{domain_id}",
        "persistence.domain.remove",
        "Remove a domain claim",
    ),
    # --- storage ---
    _op(
        "storage.upload_ticket",
        "POST",
        W + "/uploads",
        "storage.generate_upload_url",
        "Permission to upload one file",
        body=UploadTicketBody,
        response=UploadTicket,
        status=201,
    ),
    _op(
        "storage.metadata",
        "GET",
        "/files/{storage_id}",
        "storage.get_metadata",
        "A file's metadata",
        response=StoredObject,
        none_is_404=True,
    ),
    _op(
        "storage.url",
        "GET",
        "/files/{storage_id}/url",
        "storage.get_url",
        "A short-lived download URL",
        response=DownloadUrl,
        none_is_404=True,
        wrap="url",
    ),
    _op("storage.remove", "DELETE", "/files/{storage_id}", "storage.remove", "Delete a file"),
    # --- events (the stream itself is the WebSocket at /v1/events) ---
    _op(
        "events.position",
        "GET",
        W + "/events/position",
        "events.position",
        "Current seq and epoch of the workspace's stream",
        response=StreamPosition,
    ),
    _op(
        "events.emit",
        "POST",
        W + "/events",
        "events.emit",
        "Publish an application event",
        body=EmitBody,
        response=EventEnvelope,
        status=201,
    ),
    _op(
        "events.set_presence",
        "PUT",
        W + "/presence",
        "events.set_presence",
        "Report the caller's presence",
        body=PresenceBody,
    ),
    _op(
        "events.presence",
        "GET",
        W + "/presence",
        "events.get_presence",
        "Presence snapshot",
        response=list[PresenceEntry],
    ),
    # --- extension hooks ---
    _op(
        "extensions.audit.log",
        "POST",
        "/extensions/audit/log",
        "extensions.audit.log",
        "Record an audit event",
        body=AuditEvent,
        body_as="event",
    ),
    _op(
        "extensions.audit.query",
        "POST",
        "/extensions/audit/query",
        "extensions.audit.query",
        "Query the audit trail (managed)",
        body=AuditQueryParams,
        body_as="params",
        response=list[AuditRecord],
    ),
    _op(
        "extensions.search.index",
        "POST",
        "/extensions/search/index",
        "extensions.search.index",
        "Index a document",
        body=SearchIndexEvent,
        body_as="event",
    ),
    _op(
        "extensions.search.search",
        "POST",
        "/extensions/search/search",
        "extensions.search.search",
        "Indexed search (managed)",
        body=SearchParams,
        body_as="params",
        response=list[SearchHit],
    ),
    _op(
        "extensions.ai.process",
        "POST",
        "/extensions/ai/process",
        "extensions.ai.process",
        "Run an AI request (managed)",
        body=AIRequest,
        body_as="request",
        response=AIResponse,
    ),
    _op(
        "extensions.ai.store_memory",
        "POST",
        "/extensions/ai/memory",
        "extensions.ai.store_memory",
        "Store an agent memory",
        body=AIMemory,
        body_as="memory",
    ),
    _op(
        "extensions.notification.send_push",
        "POST",
        "/extensions/notifications/push",
        "extensions.notification.send_push",
        "Send a push notification",
        body=PushNotification,
        body_as="notification",
    ),
    _op(
        "extensions.notification.register_device",
        "POST",
        "/extensions/notifications/devices",
        "extensions.notification.register_device",
        "Register a device",
        body=DeviceToken,
        body_as="device",
    ),
    _op(
        "extensions.kms.encrypt",
        "POST",
        "/extensions/kms/encrypt",
        "extensions.kms.encrypt",
        "Encrypt (managed)",
        body=KmsEncryptBody,
        response=EncryptedData,
    ),
    _op(
        "extensions.kms.decrypt",
        "POST",
        "/extensions/kms/decrypt",
        "extensions.kms.decrypt",
        "Decrypt (managed)",
        body=KmsDecryptBody,
        response=Plaintext,
        wrap="plaintext",
    ),
    _op(
        "extensions.kms.rotate_key",
        "POST",
        "/extensions/kms/rotate",
        "extensions.kms.rotate_key",
        "Rotate a key (managed)",
        body=KmsRotateBody,
        response=KeyInfo,
    ),
)

OPERATIONS_BY_NAME: Final[dict[str, Operation]] = {op.name: op for op in OPERATIONS}

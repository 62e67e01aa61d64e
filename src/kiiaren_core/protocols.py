"""The ``BackendProvider`` contract: every operation an application can call, on any provider.

Conventions shared by every method below (DESIGN.md section 3):

* All operations are coroutines and run as the provider's (or view's) signed-in user.
* Anonymous calls raise :class:`~kiiaren_core.errors.NotAuthenticatedError`, except the
  public reads that say otherwise.
* A target the caller may not see behaves exactly like a missing one: a ``get*`` returns
  ``None`` (a list returns ``[]``), a mutation raises :class:`~kiiaren_core.errors.NotFoundError`.
  No error reveals that something exists in a workspace the caller is not a member of.
* Inside a visible workspace, an action the caller's role forbids raises
  :class:`~kiiaren_core.errors.PermissionDeniedError`.
* Bad input raises :class:`~kiiaren_core.errors.InvalidInputError` (``details["field"]``)
  before anything is written; a conflicting change raises
  :class:`~kiiaren_core.errors.ConflictError`.
* A backend that cannot be reached raises :class:`~kiiaren_core.errors.BackendUnavailableError`;
  a closed provider raises :class:`~kiiaren_core.errors.ProviderClosedError`.
* Every mutation commits its kernel events with it and calls the extension hooks after commit.

Roles: ``owner`` (exactly one per workspace, every admin right, alone may delete the workspace
or transfer ownership), ``admin``, ``member``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import ConfigDict, Field

from kiiaren_core.capabilities import Capabilities
from kiiaren_core.events import EventEnvelope, StreamItem
from kiiaren_core.extensions.gate import FeatureGate
from kiiaren_core.extensions.hooks import ExtensionHooks
from kiiaren_core.models import (
    UNSET,
    AuthState,
    Board,
    Channel,
    ChannelScope,
    ClientContext,
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
    KiiarenModel,
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
    Unset,
    UploadTicket,
    UserIdentity,
    Workspace,
    WorkspaceInfo,
    WorkspaceScope,
)

__all__ = [
    "AuthProvider",
    "AuthStateCallback",
    "BackendProvider",
    "BoardStore",
    "ChannelStore",
    "ConversationStore",
    "DocStore",
    "DomainStore",
    "Download",
    "EffectBoundIdempotencyStore",
    "EventCallback",
    "EventStream",
    "EventsProvider",
    "IdempotencyBinding",
    "IdempotencyStore",
    "IdempotentReplay",
    "InviteStore",
    "MemberStore",
    "MessageStore",
    "OperableProvider",
    "PersistenceProvider",
    "ReactionStore",
    "ServedStorage",
    "StorageProvider",
    "Unsubscribe",
    "WorkspaceStore",
]

Unsubscribe = Callable[[], None]
"""Stops a subscription; calling it twice is harmless."""
AuthStateCallback = Callable[[AuthState], Awaitable[None] | None]
EventCallback = Callable[[StreamItem], Awaitable[None] | None]


# --- auth -----------------------------------------------------------------------------------


@runtime_checkable
class AuthProvider(Protocol):
    """Accounts and sessions of the provider's (or view's) user.

    A successful sign-up or sign-in binds the session to this provider object; its tokens are
    readable through :attr:`tokens` (to hand to another process) and are never logged.
    """

    @property
    def tokens(self) -> SessionTokens | None:
        """The bound session's bearer credentials, or ``None`` when signed out."""
        ...

    async def sign_up_with_password(self, email: str, password: str, *, name: str) -> Session:
        """Create a password account and sign in.

        Raises:
            InvalidInputError: bad email, name, or a password outside the policy (8+
                characters, at most 1024 bytes, not a common password).
            ConflictError: indistinguishable from other failures to outsiders only where
                the provider offers email verification; otherwise the email is taken.
            RateLimitedError: too many sign-ups from this client.
        """
        ...

    async def sign_in_with_password(self, email: str, password: str) -> Session:
        """Sign in. Unknown email and wrong password raise the same NotAuthenticatedError
        (``"Invalid email or password."``) in the same time; RateLimitedError when throttled.
        """
        ...

    async def sign_in_with_oauth(
        self, provider: str, *, redirect_to: str | None = None
    ) -> OAuthStart:
        """Start an OAuth sign-in (``"google"`` or ``"github"``): returns the URL to visit.

        Raises InvalidInputError for a provider that is not configured.
        """
        ...

    async def complete_oauth(self, provider: str, *, code: str, state: str) -> Session:
        """Finish an OAuth sign-in from the callback's ``code`` and ``state``.

        Raises NotAuthenticatedError for an unknown, expired or replayed ``state`` or a
        rejected code or ID token.
        """
        ...

    async def refresh_session(self) -> Session:
        """Rotate the refresh token and issue a new access token.

        Replaying a rotated refresh token outside the grace window revokes the session
        (NotAuthenticatedError).
        """
        ...

    async def sign_out(self) -> None:
        """Revoke the bound session at once (everywhere it is used). Idempotent."""
        ...

    async def get_session(self) -> Session | None:
        """The bound session if it is still valid, else ``None`` (never raises for anonymous)."""
        ...

    async def get_current_user(self) -> UserIdentity | None:
        """The signed-in user, or ``None`` when signed out or the session is invalid."""
        ...

    def on_auth_state_change(self, callback: AuthStateCallback) -> Unsubscribe:
        """Call ``callback`` on sign-in, sign-up, refresh, sign-out and revocation."""
        ...

    async def list_sessions(self) -> list[SessionInfo]:
        """The user's active sessions, newest first; the bound one has ``current=True``."""
        ...

    async def revoke_session(self, session_id: str) -> None:
        """Revoke one of the user's sessions (NotFoundError if it is not theirs)."""
        ...

    async def revoke_other_sessions(self) -> int:
        """Revoke every session of the user except the bound one; returns how many."""
        ...

    async def revoke_all_sessions(self) -> int:
        """Revoke every session of the user, the bound one included; returns how many."""
        ...

    async def change_password(self, current_password: str, new_password: str) -> None:
        """Change the password; every other session of the user is revoked."""
        ...

    async def request_email_verification(self) -> None:
        """Send a single-use verification link to the user's email (through the mailer)."""
        ...

    async def verify_email(self, token: str) -> UserIdentity:
        """Mark the email verified. NotAuthenticatedError for a bad, used or expired token.

        Public: works without a session (the token identifies the user).
        """
        ...

    async def request_password_reset(self, email: str) -> None:
        """Send a reset link if the account exists; answers the same either way (no oracle)."""
        ...

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password from a reset token and revoke every session of the user."""
        ...


# --- events ---------------------------------------------------------------------------------


@runtime_checkable
class EventStream(Protocol):
    """An open subscription as an async iterator (and async context manager that closes it).

    Yields :class:`EventEnvelope` in ``seq`` order, preceded by a single
    :class:`~kiiaren_core.events.NotRecovered` when ``since`` could not be honoured. A
    subscriber that falls too far behind is cut off: iteration raises
    BackendUnavailableError with ``details["reason"] == "slow_consumer"``; resume from
    :attr:`last_seq`. Removal from the workspace ends iteration with NotFoundError.
    """

    @property
    def last_seq(self) -> int | None:
        """The seq of the last durable event delivered (to resume from)."""
        ...

    def __aiter__(self) -> AsyncIterator[StreamItem]: ...

    async def __anext__(self) -> StreamItem: ...

    async def aclose(self) -> None:
        """Stop the subscription; idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class EventsProvider(Protocol):
    """Per-workspace realtime events. Members only: a foreign workspace raises NotFoundError."""

    async def subscribe(
        self,
        workspace_id: str,
        types: Sequence[str] | None,
        callback: EventCallback,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Unsubscribe:
        """Call ``callback`` for each event whose type matches a pattern of ``types``.

        ``types`` holds topic patterns (``"message.*"``, ``"*.created"``, ``"*"``; ``None``
        means all). With ``since``, every durable event after that seq is replayed first,
        with no gap and no duplicate before live delivery; if that is impossible the callback
        receives one ``NotRecovered`` first. Callbacks may be sync or async; one subscriber's
        slow callback never delays the others.
        """
        ...

    def stream(
        self,
        workspace_id: str,
        *,
        types: Sequence[str] | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> EventStream:
        """Open a subscription as an :class:`EventStream` (membership is checked on first use)."""
        ...

    async def emit(self, event: EventEnvelope) -> EventEnvelope:
        """Publish an application event (``AppEvent``, namespaced) or a ``typing.changed``.

        Members only. Ephemeral types get no seq and are not stored; other application events
        are logged with the next seq. Returns the event as delivered. Kernel types other than
        ephemeral ones are refused (InvalidInputError): the provider emits them itself.
        """
        ...

    async def position(self, workspace_id: str) -> StreamPosition:
        """The current seq and epoch of the workspace's stream (members only)."""
        ...

    async def set_presence(self, workspace_id: str, status: PresenceStatus) -> None:
        """Report the user's presence (``online``/``away``/``offline``); also a heartbeat."""
        ...

    async def get_presence(self, workspace_id: str) -> list[PresenceEntry]:
        """Snapshot of the presence of every member seen recently (members only)."""
        ...


# --- persistence ----------------------------------------------------------------------------


@runtime_checkable
class WorkspaceStore(Protocol):
    """Workspaces (reference rows 1-8)."""

    async def create(self, name: str) -> Workspace:
        """Create a workspace (name trimmed, 3-20 characters); the caller becomes its owner,
        a ``general`` channel and a join code are created."""
        ...

    async def get(self, workspace_id: str) -> Workspace | None:
        """The workspace if the caller is a member (``join_code`` only for admins)."""
        ...

    async def get_by_user_id(self, user_id: str | None = None) -> list[Workspace]:
        """The caller's workspaces. ``user_id`` may only name the caller
        (PermissionDeniedError otherwise); anonymous callers get ``[]``."""
        ...

    async def get_info(self, workspace_id: str) -> WorkspaceInfo | None:
        """Name, membership and role for the join page; any signed-in user. None if missing."""
        ...

    async def update(self, workspace_id: str, *, name: str) -> Workspace:
        """Rename (admins). ``Invalid workspace name.`` for a bad name."""
        ...

    async def remove(self, workspace_id: str) -> None:
        """Delete the workspace and everything in it, stored files included (owner only)."""
        ...

    async def join(
        self,
        workspace_id: str,
        *,
        join_code: str | None = None,
        invite_code: str | None = None,
    ) -> Member:
        """Join with the trust order of reference 3.3: verified-email domain auto-join, then
        an invite code (also without a verified domain), then the join code when enabled.

        Raises ConflictError(``Already a member of this workspace.``), InvalidInputError with
        the reference's texts, InviteLinkError, NotFoundError, RateLimitedError.
        """
        ...

    async def regenerate_join_code(self, workspace_id: str) -> str:
        """Replace the join code (admins); returns the new code. The old one stops at once."""
        ...

    async def transfer_ownership(self, workspace_id: str, member_id: str) -> Member:
        """Make another member the owner (owner only); the previous owner becomes an admin."""
        ...


@runtime_checkable
class ChannelStore(Protocol):
    """Channels (reference rows 9-13)."""

    async def create(self, workspace_id: str, name: str) -> Channel:
        """Create a channel (admins). The name is normalised and unique per workspace
        (ConflictError), ``Invalid channel name.`` otherwise."""
        ...

    async def get(self, workspace_id: str) -> list[Channel]:
        """The workspace's channels in creation order (members; ``[]`` otherwise)."""
        ...

    async def get_by_id(self, channel_id: str) -> Channel | None:
        """One channel (members of its workspace)."""
        ...

    async def update(self, channel_id: str, *, name: str) -> Channel:
        """Rename (admins), same rules as create."""
        ...

    async def remove(self, channel_id: str) -> None:
        """Delete the channel with its messages, replies, reactions, images and
        channel-scoped invites (admins)."""
        ...


@runtime_checkable
class MemberStore(Protocol):
    """Members (reference rows 14-18)."""

    async def get(self, workspace_id: str) -> list[Member]:
        """Members with user summaries; emails only for admin viewers (``[]`` for outsiders)."""
        ...

    async def get_by_id(self, member_id: str) -> Member | None:
        """One member of a workspace the caller belongs to."""
        ...

    async def get_current(self, workspace_id: str) -> Member | None:
        """The caller's own membership, or None."""
        ...

    async def update_role(self, member_id: str, role: Role) -> Member:
        """Set ``admin`` or ``member`` (admins). The owner's role cannot be changed and
        ``owner`` cannot be granted here (use transfer_ownership): PermissionDeniedError."""
        ...

    async def remove(self, member_id: str) -> None:
        """Remove a member (admins remove non-owners; anyone may remove themselves = leave;
        the owner must transfer ownership first). Cascades per reference 3.5, completely."""
        ...


@runtime_checkable
class MessageStore(Protocol):
    """Messages and threads (reference rows 19-23)."""

    async def create(
        self,
        workspace_id: str,
        *,
        body: str,
        channel_id: str | None = None,
        conversation_id: str | None = None,
        parent_message_id: str | None = None,
        image_id: str | None = None,
    ) -> Message:
        """Post as the caller. Exactly one context: a channel, a conversation (participants
        only), or a parent (a reply inherits the parent's context; no reply to a reply). Every
        id must belong to ``workspace_id`` (NotFoundError otherwise). Body non-empty and
        bounded; ``image_id`` must be an upload of this workspace."""
        ...

    async def get(
        self,
        *,
        channel_id: str | None = None,
        conversation_id: str | None = None,
        parent_message_id: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> Page[Message]:
        """A page of messages, newest first, with the read model of reference 3.4.

        Give a channel or a conversation for top-level messages, or a parent for its replies.
        Outsiders get an empty page. ``limit`` is clamped to 1..max_page_size.
        """
        ...

    async def get_by_id(self, message_id: str) -> Message | None:
        """One message with its read model (members of its workspace; DM participants)."""
        ...

    async def update(self, message_id: str, *, body: str) -> Message:
        """Edit the body (author only); sets ``updated_at``."""
        ...

    async def remove(self, message_id: str) -> None:
        """Delete (author, admins, owner) with its replies, reactions and image."""
        ...


@runtime_checkable
class ReactionStore(Protocol):
    """Reactions (reference row 24)."""

    async def toggle(self, message_id: str, value: str) -> ReactionToggle:
        """Add the caller's reaction ``value`` to a message, or remove it if present."""
        ...


@runtime_checkable
class ConversationStore(Protocol):
    """Direct conversations (reference row 25)."""

    async def create_or_get(
        self, workspace_id: str, member_one_id: str, member_two_id: str
    ) -> Conversation:
        """Return the conversation between two members of ``workspace_id``, creating it once
        (race-free). The caller must be one of the two; the two must differ."""
        ...

    async def get_by_id(self, conversation_id: str) -> Conversation | None:
        """A conversation the caller takes part in."""
        ...

    async def get(self, workspace_id: str) -> list[Conversation]:
        """The caller's conversations in the workspace."""
        ...


@runtime_checkable
class DocStore(Protocol):
    """Docs (reference rows 26-34). Any member may write; archive is the soft delete."""

    async def create(
        self, workspace_id: str, *, title: str, parent_document_id: str | None = None
    ) -> Doc:
        """Create a doc, optionally under a parent of the same workspace
        (``Invalid parent document.``)."""
        ...

    async def get(self, workspace_id: str, *, parent_document_id: str | None = None) -> list[Doc]:
        """Non-archived docs at one tree level (top level when no parent), newest first."""
        ...

    async def list_archived(self, workspace_id: str) -> list[Doc]:
        """Archived docs at every level, newest first."""
        ...

    async def get_by_id(self, doc_id: str) -> Doc | None:
        """One doc (archived ones too)."""
        ...

    async def update(
        self,
        doc_id: str,
        *,
        title: str | Unset = UNSET,
        content: str | Unset | None = UNSET,
        icon: str | Unset | None = UNSET,
        cover_image_id: str | Unset | None = UNSET,
        is_published: bool | Unset = UNSET,
    ) -> Doc:
        """Patch the given fields (``None`` clears one) and ``updated_at``."""
        ...

    async def archive(self, doc_id: str) -> Doc:
        """Archive the doc and all its descendants."""
        ...

    async def restore(self, doc_id: str) -> Doc:
        """Unarchive this doc; moved to the top level if its parent is archived."""
        ...

    async def remove(self, doc_id: str) -> None:
        """Delete the doc, its descendants and their cover images."""
        ...

    async def search(self, workspace_id: str, query: str) -> list[Doc]:
        """Non-archived docs whose title contains ``query`` (case-insensitive)."""
        ...


@runtime_checkable
class BoardStore(Protocol):
    """Whiteboards (reference rows 35-40)."""

    async def create(self, workspace_id: str, *, title: str) -> Board:
        """Create a board (members)."""
        ...

    async def get(self, workspace_id: str) -> list[Board]:
        """The workspace's boards, newest first."""
        ...

    async def get_by_id(self, board_id: str) -> Board | None:
        """One board."""
        ...

    async def update(
        self,
        board_id: str,
        *,
        title: str | Unset = UNSET,
        excalidraw_data: str | Unset | None = UNSET,
        thumbnail_id: str | Unset | None = UNSET,
    ) -> Board:
        """Patch the given fields (``None`` clears one); cheap enough for debounced autosave."""
        ...

    async def remove(self, board_id: str) -> None:
        """Delete the board and its thumbnail (members)."""
        ...

    async def search(self, workspace_id: str, query: str) -> list[Board]:
        """Boards whose title contains ``query`` (case-insensitive)."""
        ...


@runtime_checkable
class InviteStore(Protocol):
    """Invite links (reference rows 51-55 and 7.4)."""

    async def create(
        self,
        workspace_id: str,
        *,
        expires_in_hours: float = 24,
        scope: WorkspaceScope | ChannelScope | None = None,
        max_uses: int | None = None,
    ) -> CreatedInvite:
        """Create a link (admins): 1-720 hours, ``max_uses`` >= 1 or unlimited, workspace or
        channel scope (the channel must be in the workspace)."""
        ...

    async def get_by_code(self, code: str) -> InvitePreview | None:
        """Public preview; None if missing, expired, revoked, exhausted or workspace gone."""
        ...

    async def validate_for_redemption(self, code: str) -> InviteValidation:
        """Public check with the reference's error texts, in its order."""
        ...

    async def list(self, workspace_id: str) -> list[InviteLink]:
        """All links with computed status (admins)."""
        ...

    async def revoke(self, invite_id: str) -> None:
        """Revoke (admins); ConflictError(``Invite link is already revoked.``) the second time."""
        ...

    async def redeem(self, code: str) -> InviteRedemption:
        """Join the link's workspace (signed in). ``used_count`` never exceeds ``max_uses``."""
        ...


@runtime_checkable
class DomainStore(Protocol):
    """Email-domain verification (reference rows 43-50 and 7.2). Admins unless stated."""

    async def add(self, workspace_id: str, domain: str) -> Domain:
        """Claim a domain (normalised, validated) with a fresh verification token."""
        ...

    async def get_by_id(self, domain_id: str) -> Domain | None:
        """One domain of a workspace the caller administers."""
        ...

    async def list(self, workspace_id: str) -> list[Domain]:
        """The workspace's domains."""
        ...

    async def get_verification_instructions(self, domain_id: str) -> DomainVerificationInstructions:
        """The TXT record to publish and the six instruction lines."""
        ...

    async def verify(self, domain_id: str) -> DomainVerificationResult:
        """Look the TXT record up and update the status and the workspace flags.

        A DNS failure raises DomainVerificationError(reason ``dns_error``) and changes
        nothing; a missing or wrong record marks the domain failed with the reference's text.
        """
        ...

    async def remove(self, domain_id: str) -> None:
        """Delete the claim; the workspace flags are recomputed."""
        ...

    async def check_email(self, workspace_id: str, email: str) -> EmailDomainCheck:
        """Whether ``email``'s domain is verified for the workspace (public; no session)."""
        ...


@runtime_checkable
class PersistenceProvider(Protocol):
    """The domain, one store per entity."""

    @property
    def workspace(self) -> WorkspaceStore: ...
    @property
    def channel(self) -> ChannelStore: ...
    @property
    def member(self) -> MemberStore: ...
    @property
    def message(self) -> MessageStore: ...
    @property
    def reaction(self) -> ReactionStore: ...
    @property
    def conversation(self) -> ConversationStore: ...
    @property
    def doc(self) -> DocStore: ...
    @property
    def board(self) -> BoardStore: ...
    @property
    def invite(self) -> InviteStore: ...
    @property
    def domain(self) -> DomainStore: ...


# --- storage --------------------------------------------------------------------------------


@runtime_checkable
class StorageProvider(Protocol):
    """Files owned by a workspace: message images, doc covers, board thumbnails."""

    async def generate_upload_url(
        self,
        workspace_id: str,
        *,
        content_type: str,
        size: int,
        filename: str | None = None,
    ) -> UploadTicket:
        """Issue a short-lived ticket to upload one object (members only).

        The key is chosen by the provider under the workspace's prefix. ``size`` must not
        exceed the limit and ``content_type`` must be allowed (InvalidInputError /
        PayloadTooLargeError).
        """
        ...

    async def upload(
        self,
        workspace_id: str,
        data: bytes,
        *,
        content_type: str,
        filename: str | None = None,
    ) -> StoredObject:
        """Ticket + upload in one call; returns the stored object's metadata."""
        ...

    async def get_url(self, storage_id: str) -> str | None:
        """A short-lived download URL (members of the owning workspace), else None."""
        ...

    async def get_metadata(self, storage_id: str) -> StoredObject | None:
        """The object's metadata (members of the owning workspace), else None."""
        ...

    async def remove(self, storage_id: str) -> None:
        """Delete the object (its uploader or a workspace admin)."""
        ...


# --- the provider ---------------------------------------------------------------------------


@runtime_checkable
class BackendProvider(Protocol):
    """One backend: a signed-in session (or none) plus the sub-providers that act for it.

    Use it as ``async with provider:`` (``initialize`` on entry, ``aclose`` on exit).
    :meth:`with_session` gives cheap views bound to other sessions that share the pools.
    """

    @property
    def id(self) -> str:
        """Stable provider id (``"selfhost"``, ``"hosted"``, ...)."""
        ...

    @property
    def name(self) -> str:
        """Human-readable name."""
        ...

    @property
    def is_managed(self) -> bool:
        """True only for a managed deployment; never configurable."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def auth(self) -> AuthProvider: ...

    @property
    def events(self) -> EventsProvider: ...

    @property
    def persistence(self) -> PersistenceProvider: ...

    @property
    def storage(self) -> StorageProvider: ...

    @property
    def extensions(self) -> ExtensionHooks: ...

    @property
    def features(self) -> FeatureGate: ...

    async def initialize(self) -> None:
        """Open pools and check the backend (schema version, reachability). Idempotent."""
        ...

    async def aclose(self) -> None:
        """Release every pool, socket, task and thread. Idempotent; afterwards every
        operation raises ProviderClosedError. Closing a view closes only the view."""
        ...

    async def destroy(self) -> None:
        """Alias of :meth:`aclose` (the reference's name)."""
        ...

    def with_session(
        self,
        tokens: SessionTokens | str | None,
        *,
        context: ClientContext | None = None,
    ) -> BackendProvider:
        """A view acting as another session (an access token string or tokens), or signed
        out with ``None``; shares the pools. The token is checked on each use, so a revoked
        session fails at once (NotAuthenticatedError)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# --- what a server needs from a provider it hosts (optional; checked with isinstance) ------


class IdempotentReplay(KiiarenModel):
    """A stored answer to replay for a repeated ``Idempotency-Key``."""

    status_code: int
    body: str
    content_type: str = "application/json"


@runtime_checkable
class IdempotencyStore(Protocol):
    """Durable ``Idempotency-Key`` records, shared by every server process.

    A request fingerprint (method, path, body hash) is bound to ``(principal, key)``. The
    first request claims the key and later completes it with its answer; repeats replay that
    answer; a different fingerprint, or a repeat while the first is still running, is refused.
    """

    async def claim(
        self, principal: str, key: str, fingerprint: str, *, ttl_seconds: float
    ) -> IdempotentReplay | None:
        """``None``: proceed (then :meth:`complete` or :meth:`release`). A replay: answer it.

        Raises:
            IdempotencyConflictError: another fingerprint holds the key, or the first request
                with this key has not finished yet.
        """
        ...

    async def complete(self, principal: str, key: str, replay: IdempotentReplay) -> None:
        """Store the answer of a claimed key."""
        ...

    async def release(self, principal: str, key: str) -> None:
        """Forget a claim whose request failed in a way worth retrying (5xx)."""
        ...


@runtime_checkable
class IdempotencyBinding(Protocol):
    """What became of a key bound to an operation (see :class:`EffectBoundIdempotencyStore`).

    ``recorded`` is true once the key was recorded in a transaction that committed, that is,
    once the operation's effect (its first write transaction) committed. False: nothing of
    the operation was written under the key (it wrote nothing, or its first write rolled
    back, or that transaction's outcome is unknown), and nothing is stored for it.
    """

    @property
    def recorded(self) -> bool: ...


@runtime_checkable
class EffectBoundIdempotencyStore(IdempotencyStore, Protocol):
    """Optional: a store that records a key *in the operation's own first write transaction*.

    The key then commits if and only if the effect commits: a crash or an outage between
    the two cannot leave a claimed key without an effect, nor an effect without its key.
    The hosting server runs an operation inside :meth:`bound`; afterwards, when
    ``binding.recorded``, it stores the answer with :meth:`IdempotencyStore.complete` and
    never releases the key (the effect happened). When the key is already recorded, the
    operation's first write raises :class:`~kiiaren_core.errors.IdempotencyKeyTaken` (and
    rolls back); the server then reads the record through :meth:`IdempotencyStore.claim`.

    A recorded key without an answer means "carried out, answer not stored (yet)": it is
    never taken to be abandoned; once the store stops expecting its answer, ``claim``
    refuses it with ``409 idempotency_conflict``
    (``details["reason"] == "answer_unavailable"``).
    """

    def bound(
        self, principal: str, key: str, fingerprint: str, *, ttl_seconds: float
    ) -> AbstractAsyncContextManager[IdempotencyBinding]:
        """Bind ``key`` to the operation run inside the block (in this task's context).

        Raises (from the operation's first write transaction, not from entering):
            IdempotencyKeyTaken: the key is already recorded; the operation had no effect.
        """
        ...


class Download(KiiarenModel):
    """An object being served: its metadata and its bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    content_type: str
    size: int
    filename: str | None = None
    chunks: Any = Field(repr=False)
    """An async iterator of ``bytes``."""


@runtime_checkable
class ServedStorage(Protocol):
    """A storage whose signed URLs point at the hosting server (local disk), not at a bucket."""

    async def receive_upload(
        self,
        storage_id: str,
        params: Mapping[str, str],
        content_type: str,
        chunks: AsyncIterator[bytes],
    ) -> StoredObject:
        """Store the bytes of a signed upload URL (signature, expiry, size and type checked)."""
        ...

    async def open_download(self, storage_id: str, params: Mapping[str, str]) -> Download:
        """Open the object of a signed download URL (NotFoundError / NotAuthenticatedError)."""
        ...


@runtime_checkable
class OperableProvider(Protocol):
    """Operations a self-hosted deployment's tooling runs on the root provider."""

    async def migrate(self) -> None:
        """Bring the backend's schema to the current version."""
        ...

    async def check_ready(self) -> None:
        """Raise BackendUnavailableError unless the database and storage answer."""
        ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

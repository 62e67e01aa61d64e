"""Kernel events: the typed record of every change, delivered per workspace.

Every event is an :class:`EventEnvelope` subclass with a literal ``type`` and a typed
``payload``; :data:`KernelEvent` is their discriminated union. Durable events carry a
per-workspace ``seq`` (previous + 1, in commit order); ephemeral events (presence, typing) and
application events sent with ``events.emit`` may carry ``seq=None``.

Topic patterns select event types for a subscription: ``"*"`` matches everything,
``"message.*"`` every message event, ``"*.created"`` every creation; a ``*`` segment matches
exactly one segment, except that a trailing ``*`` also matches any deeper segments
(``"app.*"`` matches ``"app.chat.ping"``). See :func:`matches`.

``actor_id`` is the *user* who caused the event; ids inside payloads are member ids where
the field name says so.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kiiaren_core.errors import InvalidInputError
from kiiaren_core.models import PresenceStatus, Role

__all__ = [
    "EPHEMERAL_EVENT_TYPES",
    "EVENT_CLASSES",
    "KERNEL_EVENT_TYPES",
    "RESERVED_NAMESPACES",
    "AppEvent",
    "BoardCreatedEvent",
    "BoardDeletedEvent",
    "BoardUpdatedEvent",
    "ChannelCreatedEvent",
    "ChannelDeletedEvent",
    "ChannelUpdatedEvent",
    "ConversationCreatedEvent",
    "DocArchivedEvent",
    "DocCreatedEvent",
    "DocDeletedEvent",
    "DocRestoredEvent",
    "DocUpdatedEvent",
    "DomainAddedEvent",
    "DomainRemovedEvent",
    "DomainVerificationFailedEvent",
    "DomainVerifiedEvent",
    "EventEnvelope",
    "InviteCreatedEvent",
    "InviteRedeemedEvent",
    "InviteRevokedEvent",
    "KernelEvent",
    "MemberJoinedEvent",
    "MemberLeftEvent",
    "MemberRoleChangedEvent",
    "MessageCreatedEvent",
    "MessageDeletedEvent",
    "MessageUpdatedEvent",
    "NotRecovered",
    "PresenceChangedEvent",
    "ReactionToggledEvent",
    "StreamItem",
    "TypingChangedEvent",
    "WorkspaceCreatedEvent",
    "WorkspaceDeletedEvent",
    "WorkspaceJoinCodeRotatedEvent",
    "WorkspaceOwnershipTransferredEvent",
    "WorkspaceUpdatedEvent",
    "compile_patterns",
    "matches",
    "matches_any",
    "new_event",
    "parse_event",
    "validate_app_event_type",
    "validate_pattern",
]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventEnvelope(BaseModel):
    """Fields every event carries. ``payload`` is typed by each subclass."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ephemeral: ClassVar[bool] = False

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    seq: int | None = None
    type: str
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    workspace_id: str
    actor_id: str | None = None
    payload: Any


# --- payloads -------------------------------------------------------------------------------


class MessageCreatedPayload(_Payload):
    message_id: str
    channel_id: str | None = None
    conversation_id: str | None = None
    parent_message_id: str | None = None
    body: str
    has_attachment: bool = False


class MessageUpdatedPayload(_Payload):
    message_id: str
    body: str


class MessageDeletedPayload(_Payload):
    message_id: str
    channel_id: str | None = None
    conversation_id: str | None = None
    parent_message_id: str | None = None


class ReactionToggledPayload(_Payload):
    message_id: str
    reaction: str
    added: bool
    member_id: str | None = None


class ChannelPayload(_Payload):
    channel_id: str
    name: str


class ChannelDeletedPayload(_Payload):
    channel_id: str


class MemberJoinedPayload(_Payload):
    member_id: str
    user_id: str
    role: Role


class MemberLeftPayload(_Payload):
    member_id: str
    user_id: str


class MemberRoleChangedPayload(_Payload):
    member_id: str
    user_id: str
    role: Role
    previous_role: Role


class PresenceChangedPayload(_Payload):
    user_id: str
    status: PresenceStatus


class TypingPayload(_Payload):
    user_id: str
    member_id: str | None = None
    channel_id: str | None = None
    conversation_id: str | None = None
    parent_message_id: str | None = None
    is_typing: bool = True


class WorkspacePayload(_Payload):
    name: str


class WorkspaceDeletedPayload(_Payload):
    pass


class WorkspaceOwnershipPayload(_Payload):
    previous_owner_id: str
    owner_id: str


class ConversationCreatedPayload(_Payload):
    conversation_id: str
    member_one_id: str
    member_two_id: str


class DocPayload(_Payload):
    doc_id: str
    title: str | None = None
    parent_document_id: str | None = None


class BoardPayload(_Payload):
    board_id: str
    title: str | None = None


class DomainPayload(_Payload):
    domain_id: str
    domain: str
    error: str | None = None


class InvitePayload(_Payload):
    invite_id: str
    scope_channel_id: str | None = None
    member_id: str | None = None


class EmptyPayload(_Payload):
    pass


# --- event classes (one per type; ``type`` is the discriminator) ---------------------------


class MessageCreatedEvent(EventEnvelope):
    """``message.created``."""

    type: Literal["message.created"] = "message.created"
    payload: MessageCreatedPayload


class MessageUpdatedEvent(EventEnvelope):
    """``message.updated``."""

    type: Literal["message.updated"] = "message.updated"
    payload: MessageUpdatedPayload


class MessageDeletedEvent(EventEnvelope):
    """``message.deleted``."""

    type: Literal["message.deleted"] = "message.deleted"
    payload: MessageDeletedPayload


class ReactionToggledEvent(EventEnvelope):
    """``reaction.toggled``."""

    type: Literal["reaction.toggled"] = "reaction.toggled"
    payload: ReactionToggledPayload


class ChannelCreatedEvent(EventEnvelope):
    """``channel.created``."""

    type: Literal["channel.created"] = "channel.created"
    payload: ChannelPayload


class ChannelUpdatedEvent(EventEnvelope):
    """``channel.updated``."""

    type: Literal["channel.updated"] = "channel.updated"
    payload: ChannelPayload


class MemberJoinedEvent(EventEnvelope):
    """``member.joined``."""

    type: Literal["member.joined"] = "member.joined"
    payload: MemberJoinedPayload


class MemberLeftEvent(EventEnvelope):
    """``member.left``."""

    type: Literal["member.left"] = "member.left"
    payload: MemberLeftPayload


class PresenceChangedEvent(EventEnvelope):
    """``presence.changed`` (ephemeral: no seq, not stored)."""

    ephemeral: ClassVar[bool] = True
    type: Literal["presence.changed"] = "presence.changed"
    payload: PresenceChangedPayload


class WorkspaceCreatedEvent(EventEnvelope):
    """``workspace.created``."""

    type: Literal["workspace.created"] = "workspace.created"
    payload: WorkspacePayload


class WorkspaceUpdatedEvent(EventEnvelope):
    """``workspace.updated``."""

    type: Literal["workspace.updated"] = "workspace.updated"
    payload: WorkspacePayload


class WorkspaceDeletedEvent(EventEnvelope):
    """``workspace.deleted``."""

    type: Literal["workspace.deleted"] = "workspace.deleted"
    payload: WorkspaceDeletedPayload


class WorkspaceJoinCodeRotatedEvent(EventEnvelope):
    """``workspace.join_code_rotated``."""

    type: Literal["workspace.join_code_rotated"] = "workspace.join_code_rotated"
    payload: EmptyPayload


class WorkspaceOwnershipTransferredEvent(EventEnvelope):
    """``workspace.ownership_transferred``."""

    type: Literal["workspace.ownership_transferred"] = "workspace.ownership_transferred"
    payload: WorkspaceOwnershipPayload


class ChannelDeletedEvent(EventEnvelope):
    """``channel.deleted``."""

    type: Literal["channel.deleted"] = "channel.deleted"
    payload: ChannelDeletedPayload


class MemberRoleChangedEvent(EventEnvelope):
    """``member.role_changed``."""

    type: Literal["member.role_changed"] = "member.role_changed"
    payload: MemberRoleChangedPayload


class ConversationCreatedEvent(EventEnvelope):
    """``conversation.created``."""

    type: Literal["conversation.created"] = "conversation.created"
    payload: ConversationCreatedPayload


class DocCreatedEvent(EventEnvelope):
    """``doc.created``."""

    type: Literal["doc.created"] = "doc.created"
    payload: DocPayload


class DocUpdatedEvent(EventEnvelope):
    """``doc.updated``."""

    type: Literal["doc.updated"] = "doc.updated"
    payload: DocPayload


class DocArchivedEvent(EventEnvelope):
    """``doc.archived``."""

    type: Literal["doc.archived"] = "doc.archived"
    payload: DocPayload


class DocRestoredEvent(EventEnvelope):
    """``doc.restored``."""

    type: Literal["doc.restored"] = "doc.restored"
    payload: DocPayload


class DocDeletedEvent(EventEnvelope):
    """``doc.deleted``."""

    type: Literal["doc.deleted"] = "doc.deleted"
    payload: DocPayload


class BoardCreatedEvent(EventEnvelope):
    """``board.created``."""

    type: Literal["board.created"] = "board.created"
    payload: BoardPayload


class BoardUpdatedEvent(EventEnvelope):
    """``board.updated``."""

    type: Literal["board.updated"] = "board.updated"
    payload: BoardPayload


class BoardDeletedEvent(EventEnvelope):
    """``board.deleted``."""

    type: Literal["board.deleted"] = "board.deleted"
    payload: BoardPayload


class DomainAddedEvent(EventEnvelope):
    """``domain.added``."""

    type: Literal["domain.added"] = "domain.added"
    payload: DomainPayload


class DomainVerifiedEvent(EventEnvelope):
    """``domain.verified``."""

    type: Literal["domain.verified"] = "domain.verified"
    payload: DomainPayload


class DomainVerificationFailedEvent(EventEnvelope):
    """``domain.verification_failed``."""

    type: Literal["domain.verification_failed"] = "domain.verification_failed"
    payload: DomainPayload


class DomainRemovedEvent(EventEnvelope):
    """``domain.removed``."""

    type: Literal["domain.removed"] = "domain.removed"
    payload: DomainPayload


class InviteCreatedEvent(EventEnvelope):
    """``invite.created``."""

    type: Literal["invite.created"] = "invite.created"
    payload: InvitePayload


class InviteRevokedEvent(EventEnvelope):
    """``invite.revoked``."""

    type: Literal["invite.revoked"] = "invite.revoked"
    payload: InvitePayload


class InviteRedeemedEvent(EventEnvelope):
    """``invite.redeemed``."""

    type: Literal["invite.redeemed"] = "invite.redeemed"
    payload: InvitePayload


class TypingChangedEvent(EventEnvelope):
    """``typing.changed`` (ephemeral: no seq, not stored)."""

    ephemeral: ClassVar[bool] = True
    type: Literal["typing.changed"] = "typing.changed"
    payload: TypingPayload


_EVENT_CLASSES: Final[tuple[type[EventEnvelope], ...]] = (
    MessageCreatedEvent,
    MessageUpdatedEvent,
    MessageDeletedEvent,
    ReactionToggledEvent,
    ChannelCreatedEvent,
    ChannelUpdatedEvent,
    MemberJoinedEvent,
    MemberLeftEvent,
    PresenceChangedEvent,
    WorkspaceCreatedEvent,
    WorkspaceUpdatedEvent,
    WorkspaceDeletedEvent,
    WorkspaceJoinCodeRotatedEvent,
    WorkspaceOwnershipTransferredEvent,
    ChannelDeletedEvent,
    MemberRoleChangedEvent,
    ConversationCreatedEvent,
    DocCreatedEvent,
    DocUpdatedEvent,
    DocArchivedEvent,
    DocRestoredEvent,
    DocDeletedEvent,
    BoardCreatedEvent,
    BoardUpdatedEvent,
    BoardDeletedEvent,
    DomainAddedEvent,
    DomainVerifiedEvent,
    DomainVerificationFailedEvent,
    DomainRemovedEvent,
    InviteCreatedEvent,
    InviteRevokedEvent,
    InviteRedeemedEvent,
    TypingChangedEvent,
)
EVENT_CLASSES: Final[dict[str, type[EventEnvelope]]] = {
    cls.model_fields["type"].default: cls for cls in _EVENT_CLASSES
}
"""Kernel event type name -> its class."""
KERNEL_EVENT_TYPES: Final[frozenset[str]] = frozenset(EVENT_CLASSES)
EPHEMERAL_EVENT_TYPES: Final[frozenset[str]] = frozenset(
    name for name, cls in EVENT_CLASSES.items() if cls.ephemeral
)
# ``stream`` is the namespace of control items such as ``stream.not_recovered`` (NotRecovered).
RESERVED_NAMESPACES: Final[frozenset[str]] = frozenset(
    {"stream", *(name.split(".", 1)[0] for name in KERNEL_EVENT_TYPES)}
)

KernelEvent = Annotated[
    MessageCreatedEvent
    | MessageUpdatedEvent
    | MessageDeletedEvent
    | ReactionToggledEvent
    | ChannelCreatedEvent
    | ChannelUpdatedEvent
    | MemberJoinedEvent
    | MemberLeftEvent
    | PresenceChangedEvent
    | WorkspaceCreatedEvent
    | WorkspaceUpdatedEvent
    | WorkspaceDeletedEvent
    | WorkspaceJoinCodeRotatedEvent
    | WorkspaceOwnershipTransferredEvent
    | ChannelDeletedEvent
    | MemberRoleChangedEvent
    | ConversationCreatedEvent
    | DocCreatedEvent
    | DocUpdatedEvent
    | DocArchivedEvent
    | DocRestoredEvent
    | DocDeletedEvent
    | BoardCreatedEvent
    | BoardUpdatedEvent
    | BoardDeletedEvent
    | DomainAddedEvent
    | DomainVerifiedEvent
    | DomainVerificationFailedEvent
    | DomainRemovedEvent
    | InviteCreatedEvent
    | InviteRevokedEvent
    | InviteRedeemedEvent
    | TypingChangedEvent,
    Field(discriminator="type"),
]
"""The discriminated union of every kernel event class."""
_KERNEL_ADAPTER: Final[TypeAdapter[KernelEvent]] = TypeAdapter(KernelEvent)


class AppEvent(EventEnvelope):
    """An application-defined event sent with ``events.emit`` (namespaced, untyped payload)."""

    type: str
    payload: dict[str, Any] = Field(default_factory=dict)


_SEGMENT: Final = re.compile(r"^[a-z0-9_][a-z0-9_-]*$")


def validate_app_event_type(type_name: str) -> str:
    """Check an application event type: ``namespace.name`` outside the kernel namespaces."""
    segments = type_name.split(".") if isinstance(type_name, str) else []
    if len(segments) < 2 or not all(_SEGMENT.match(segment) for segment in segments):
        raise InvalidInputError(
            "Application event types are namespaced: 'namespace.name' in lowercase.",
            details={"field": "type"},
        )
    if segments[0] in RESERVED_NAMESPACES:
        raise InvalidInputError(
            f"The event namespace {segments[0]!r} is reserved for kernel events.",
            details={"field": "type"},
        )
    return type_name


def parse_event(data: dict[str, Any] | EventEnvelope) -> EventEnvelope:
    """Validate a serialised event into its typed class (an :class:`AppEvent` if not kernel)."""
    if isinstance(data, EventEnvelope):
        return data
    if data.get("type") in KERNEL_EVENT_TYPES:
        return _KERNEL_ADAPTER.validate_python(data)
    return AppEvent.model_validate(data)


def new_event(
    type_name: str,
    *,
    workspace_id: str,
    actor_id: str | None,
    payload: dict[str, Any] | BaseModel,
    seq: int | None = None,
) -> EventEnvelope:
    """Build a typed event of ``type_name`` (kernel or application) with a fresh id and time."""
    body = payload.model_dump() if isinstance(payload, BaseModel) else payload
    return parse_event(
        {
            "type": type_name,
            "workspace_id": workspace_id,
            "actor_id": actor_id,
            "payload": body,
            "seq": seq,
            "id": str(uuid.uuid4()),
            "timestamp": datetime.now(UTC),
        }
    )


# --- topic patterns -------------------------------------------------------------------------


def validate_pattern(pattern: str) -> str:
    """Check a topic pattern: dot-separated segments, each a name or ``*``."""
    segments = pattern.split(".") if isinstance(pattern, str) else []
    if not segments or not all(seg == "*" or _SEGMENT.match(seg) for seg in segments):
        raise InvalidInputError(f"Invalid event pattern: {pattern!r}.", details={"field": "types"})
    return pattern


def matches(pattern: str, event_type: str) -> bool:
    """True if ``event_type`` is selected by ``pattern`` (see the module docstring)."""
    if pattern == "*":
        return True
    want = pattern.split(".")
    have = event_type.split(".")
    if want[-1] == "*" and len(have) >= len(want):
        have = [*have[: len(want) - 1], "*"]
    if len(want) != len(have):
        return False
    return all(w in ("*", h) for w, h in zip(want, have, strict=True))


def compile_patterns(patterns: Iterable[str] | None) -> tuple[str, ...]:
    """Validate patterns; ``None`` or an empty list means every event (``("*",)``)."""
    checked = tuple(validate_pattern(p) for p in (patterns or ()))
    return checked or ("*",)


def matches_any(patterns: Iterable[str], event_type: str) -> bool:
    """True if any pattern selects ``event_type``."""
    return any(matches(pattern, event_type) for pattern in patterns)


class NotRecovered(BaseModel):
    """Delivered instead of a replay when a stream cannot resume from ``since``.

    The subscriber missed events it cannot get back (``reason``): ``"future"`` (``since`` is
    beyond the last seq), ``"expired"`` (older than the log's retention) or
    ``"epoch_changed"`` (the log was reset). It should reload its state; live events for
    ``workspace_id`` continue after this signal, starting after ``seq``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["stream.not_recovered"] = "stream.not_recovered"
    workspace_id: str
    reason: Literal["future", "expired", "epoch_changed"]
    requested_since: int | None = None
    seq: int
    epoch: str


StreamItem = EventEnvelope | NotRecovered
"""What a subscription delivers: events, and at most one :class:`NotRecovered` at its start."""

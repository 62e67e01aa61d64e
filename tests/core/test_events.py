"""Kernel events: typed envelopes, the discriminated union, topic patterns and NotRecovered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from kiiaren_core.errors import InvalidInputError
from kiiaren_core.events import (
    EPHEMERAL_EVENT_TYPES,
    EVENT_CLASSES,
    KERNEL_EVENT_TYPES,
    RESERVED_NAMESPACES,
    AppEvent,
    EventEnvelope,
    MemberJoinedEvent,
    MessageCreatedEvent,
    NotRecovered,
    PresenceChangedEvent,
    TypingChangedEvent,
    compile_patterns,
    matches,
    matches_any,
    new_event,
    parse_event,
    validate_app_event_type,
    validate_pattern,
)
from kiiaren_core.models import PresenceStatus, Role

# One valid payload per kernel type; the table must cover every type the module defines.
PAYLOADS: dict[str, dict[str, Any]] = {
    "message.created": {
        "message_id": "m1",
        "channel_id": "c1",
        "body": '{"ops":[{"insert":"hi\\n"}]}',
        "has_attachment": True,
    },
    "message.updated": {"message_id": "m1", "body": "edited"},
    "message.deleted": {"message_id": "m1", "conversation_id": "dm1"},
    "reaction.toggled": {"message_id": "m1", "reaction": "👍", "added": False, "member_id": "mb1"},
    "channel.created": {"channel_id": "c1", "name": "general"},
    "channel.updated": {"channel_id": "c1", "name": "random"},
    "channel.deleted": {"channel_id": "c1"},
    "member.joined": {"member_id": "mb1", "user_id": "u1", "role": "admin"},
    "member.left": {"member_id": "mb1", "user_id": "u1"},
    "member.role_changed": {
        "member_id": "mb1",
        "user_id": "u1",
        "role": "admin",
        "previous_role": "member",
    },
    "presence.changed": {"user_id": "u1", "status": "away"},
    "typing.changed": {"user_id": "u1", "channel_id": "c1", "is_typing": False},
    "workspace.created": {"name": "Analytical"},
    "workspace.updated": {"name": "Engines"},
    "workspace.deleted": {},
    "workspace.join_code_rotated": {},
    "workspace.ownership_transferred": {"previous_owner_id": "u1", "owner_id": "u2"},
    "conversation.created": {"conversation_id": "dm1", "member_one_id": "a", "member_two_id": "b"},
    "doc.created": {"doc_id": "d1", "title": "Notes", "parent_document_id": "d0"},
    "doc.updated": {"doc_id": "d1", "title": "Notes v2"},
    "doc.archived": {"doc_id": "d1"},
    "doc.restored": {"doc_id": "d1"},
    "doc.deleted": {"doc_id": "d1"},
    "board.created": {"board_id": "b1", "title": "Plan"},
    "board.updated": {"board_id": "b1"},
    "board.deleted": {"board_id": "b1"},
    "domain.added": {"domain_id": "dm", "domain": "acme.com"},
    "domain.verified": {"domain_id": "dm", "domain": "acme.com"},
    "domain.verification_failed": {"domain_id": "dm", "domain": "acme.com", "error": "no TXT"},
    "domain.removed": {"domain_id": "dm", "domain": "acme.com"},
    "invite.created": {"invite_id": "i1", "scope_channel_id": "c1"},
    "invite.revoked": {"invite_id": "i1"},
    "invite.redeemed": {"invite_id": "i1", "member_id": "mb2"},
}

TIMESTAMP = datetime(2026, 1, 15, 12, 30, tzinfo=UTC)


def _wire(type_name: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "evt-1",
        "seq": 41,
        "type": type_name,
        "timestamp": TIMESTAMP.isoformat(),
        "workspace_id": "w1",
        "actor_id": "u1",
        "payload": payload,
        **extra,
    }


# --- the kernel event table -----------------------------------------------------------------------


def test_the_payload_table_covers_every_kernel_type() -> None:
    assert set(PAYLOADS) == KERNEL_EVENT_TYPES == set(EVENT_CLASSES)


def test_the_reference_types_are_kernel_types() -> None:
    """The nine types of reference section 4.2 and the proposed additions all exist."""
    reference = {
        "message.created",
        "message.updated",
        "message.deleted",
        "reaction.toggled",
        "channel.created",
        "channel.updated",
        "member.joined",
        "member.left",
        "presence.changed",
    }
    proposed = {
        "workspace.created",
        "workspace.updated",
        "workspace.deleted",
        "workspace.join_code_rotated",
        "channel.deleted",
        "member.role_changed",
        "conversation.created",
        *(f"doc.{verb}" for verb in ("created", "updated", "archived", "restored", "deleted")),
        *(f"board.{verb}" for verb in ("created", "updated", "deleted")),
        *(f"domain.{v}" for v in ("added", "verified", "verification_failed", "removed")),
        *(f"invite.{verb}" for verb in ("created", "revoked", "redeemed")),
    }
    assert reference | proposed <= KERNEL_EVENT_TYPES


@pytest.mark.parametrize("type_name", sorted(EVENT_CLASSES))
def test_each_class_declares_its_type(type_name: str) -> None:
    cls = EVENT_CLASSES[type_name]
    assert issubclass(cls, EventEnvelope)
    assert cls.model_fields["type"].default == type_name


@pytest.mark.parametrize("type_name", sorted(PAYLOADS))
def test_parse_event_gives_the_typed_class(type_name: str) -> None:
    event = parse_event(_wire(type_name, PAYLOADS[type_name]))
    assert type(event) is EVENT_CLASSES[type_name]
    assert event.type == type_name
    assert event.seq == 41
    assert event.id == "evt-1"
    assert event.workspace_id == "w1"
    assert event.actor_id == "u1"
    assert event.timestamp == TIMESTAMP
    assert isinstance(event.payload, BaseModel)
    for key, value in PAYLOADS[type_name].items():
        assert str(getattr(event.payload, key)) == str(value)


@pytest.mark.parametrize("type_name", sorted(PAYLOADS))
def test_round_trip_through_json(type_name: str) -> None:
    event = parse_event(_wire(type_name, PAYLOADS[type_name]))
    dumped = event.model_dump(mode="json")
    text = json.dumps(dumped)  # really JSON-safe
    again = parse_event(json.loads(text))
    assert type(again) is type(event)
    assert again == event
    assert again.model_dump(mode="json") == dumped


def test_typed_payload_fields_are_parsed_into_enums() -> None:
    joined = parse_event(_wire("member.joined", PAYLOADS["member.joined"]))
    assert isinstance(joined, MemberJoinedEvent)
    assert joined.payload.role is Role.ADMIN
    presence = parse_event(_wire("presence.changed", PAYLOADS["presence.changed"]))
    assert isinstance(presence, PresenceChangedEvent)
    assert presence.payload.status is PresenceStatus.AWAY


def test_a_kernel_type_with_a_wrong_payload_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse_event(_wire("message.created", {"message_id": "m1"}))  # body missing
    with pytest.raises(ValidationError):
        parse_event(_wire("member.joined", {"member_id": "m", "user_id": "u", "role": "king"}))
    with pytest.raises(ValidationError):
        parse_event(_wire("channel.deleted", {"channel_id": "c1", "surprise": 1}))


def test_unknown_envelope_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_event(_wire("channel.deleted", {"channel_id": "c1"}, priority="high"))
    with pytest.raises(ValidationError):
        parse_event(_wire("app.chat.ping", {}, priority="high"))


def test_events_are_frozen() -> None:
    event = parse_event(_wire("channel.deleted", {"channel_id": "c1"}))
    with pytest.raises(ValidationError):
        event.seq = 42  # type: ignore[misc]


def test_other_types_parse_as_app_events() -> None:
    event = parse_event(_wire("app.chat.ping", {"n": 1, "nested": {"ok": True}}, seq=None))
    assert type(event) is AppEvent
    assert event.payload == {"n": 1, "nested": {"ok": True}}
    assert event.seq is None
    assert parse_event(event.model_dump(mode="json")) == event


def test_parse_event_returns_an_envelope_unchanged() -> None:
    event = parse_event(_wire("channel.deleted", {"channel_id": "c1"}))
    assert parse_event(event) is event


def test_envelope_defaults_are_fresh_and_utc() -> None:
    first = MessageCreatedEvent(workspace_id="w1", payload={"message_id": "m", "body": "b"})
    second = MessageCreatedEvent(workspace_id="w1", payload={"message_id": "m", "body": "b"})
    assert first.id != second.id
    assert first.seq is None
    assert first.actor_id is None
    assert first.timestamp.tzinfo is not None
    assert first.timestamp.utcoffset() == UTC.utcoffset(None)


def test_new_event_builds_typed_and_app_events() -> None:
    created = new_event(
        "channel.created",
        workspace_id="w1",
        actor_id="u1",
        payload={"channel_id": "c1", "name": "general"},
        seq=7,
    )
    assert type(created) is EVENT_CLASSES["channel.created"]
    assert created.seq == 7
    assert created.payload.name == "general"

    from_model = new_event(
        "channel.updated", workspace_id="w1", actor_id=None, payload=created.payload
    )
    assert type(from_model) is EVENT_CLASSES["channel.updated"]
    assert from_model.payload.channel_id == "c1"
    assert from_model.id != created.id

    app = new_event("app.ping", workspace_id="w1", actor_id="u1", payload={"x": 1})
    assert type(app) is AppEvent
    assert app.payload == {"x": 1}


# --- ephemeral types ------------------------------------------------------------------------------


def test_presence_and_typing_are_the_ephemeral_types() -> None:
    assert {"presence.changed", "typing.changed"} == EPHEMERAL_EVENT_TYPES
    assert PresenceChangedEvent.ephemeral is True
    assert TypingChangedEvent.ephemeral is True


@pytest.mark.parametrize("type_name", sorted(EVENT_CLASSES))
def test_only_ephemeral_types_have_the_flag(type_name: str) -> None:
    assert EVENT_CLASSES[type_name].ephemeral is (type_name in EPHEMERAL_EVENT_TYPES)


def test_the_flag_is_not_part_of_the_wire_form() -> None:
    event = parse_event(_wire("presence.changed", PAYLOADS["presence.changed"], seq=None))
    assert event.ephemeral is True
    assert "ephemeral" not in event.model_dump()
    assert AppEvent.ephemeral is False


# --- application event types ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["app.ping", "acme.chat.ping", "my_app.v2-event", "x1.y"])
def test_valid_app_event_types(name: str) -> None:
    assert validate_app_event_type(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "ping",  # not namespaced
        "",
        "App.Ping",  # uppercase
        "app..ping",
        "app.",
        ".ping",
        "app.*",
        "app.pi ng",
        "-app.ping",
        None,
        42,
    ],
)
def test_malformed_app_event_types_are_refused(name: Any) -> None:
    with pytest.raises(InvalidInputError, match="namespaced") as caught:
        validate_app_event_type(name)
    assert caught.value.details == {"field": "type"}


@pytest.mark.parametrize(
    "name",
    [
        "message.custom",
        "workspace.exported",
        "presence.custom",
        "typing.started",
        "invite.x",
        "stream.not_recovered",
        "stream.anything",
    ],
)
def test_reserved_namespaces_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match="reserved for kernel events"):
        validate_app_event_type(name)


def test_every_kernel_namespace_is_reserved() -> None:
    assert {name.split(".")[0] for name in KERNEL_EVENT_TYPES} <= RESERVED_NAMESPACES
    # NotRecovered travels in the same stream as events: its namespace is not free either.
    assert NotRecovered.model_fields["type"].default.split(".")[0] in RESERVED_NAMESPACES


# --- topic patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("*", "message.created", True),
        ("*", "app.chat.ping", True),
        ("*", "x", True),
        ("message.*", "message.created", True),
        ("message.*", "message.deleted", True),
        ("message.*", "reaction.toggled", False),
        ("message.*", "message", False),
        ("message.*", "messages.created", False),
        ("*.created", "message.created", True),
        ("*.created", "channel.created", True),
        ("*.created", "channel.updated", False),
        ("*.created", "app.chat.created", False),
        ("*.created", "created", False),
        ("app.*", "app.ping", True),
        ("app.*", "app.chat.ping", True),  # a trailing * also matches deeper segments
        ("app.*", "app.chat.ping.deep", True),
        ("app.*", "application.ping", False),
        ("app.chat.*", "app.chat.ping", True),
        ("app.chat.*", "app.other.ping", False),
        ("*.*", "message.created", True),
        ("*.*", "app.chat.ping", True),
        ("*.*", "message", False),
        ("app.*.ping", "app.chat.ping", True),
        ("app.*.ping", "app.chat.pong", False),
        ("app.*.ping", "app.a.b.ping", False),  # an inner * is exactly one segment
        ("message.created", "message.created", True),
        ("message.created", "message.created.extra", False),
        ("message.created", "message.create", False),
        ("message.cre", "message.created", False),  # no partial-segment matches
        ("mess", "message.created", False),
        ("message", "message.created", False),
    ],
)
def test_pattern_matching(pattern: str, event_type: str, expected: bool) -> None:
    assert validate_pattern(pattern) == pattern
    assert matches(pattern, event_type) is expected


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ".",
        "message.",
        ".created",
        "message..created",
        "Message.*",
        "mess*",
        "message.cre*",
        "**",
        "message.**",
        "message created",
        "message/created",
        None,
        3,
    ],
)
def test_invalid_patterns_are_refused(pattern: Any) -> None:
    with pytest.raises(InvalidInputError, match="Invalid event pattern") as caught:
        validate_pattern(pattern)
    assert caught.value.details == {"field": "types"}


def test_compile_patterns() -> None:
    assert compile_patterns(None) == ("*",)
    assert compile_patterns([]) == ("*",)
    assert compile_patterns(["message.*", "*.created"]) == ("message.*", "*.created")
    assert compile_patterns(iter(["a.b"])) == ("a.b",)
    with pytest.raises(InvalidInputError):
        compile_patterns(["message.*", "bad pattern"])


def test_matches_any() -> None:
    patterns = compile_patterns(["message.*", "*.created"])
    assert matches_any(patterns, "message.deleted")
    assert matches_any(patterns, "channel.created")
    assert not matches_any(patterns, "channel.updated")
    assert not matches_any((), "message.created")


# --- NotRecovered ---------------------------------------------------------------------------------


def test_not_recovered_is_a_typed_signal() -> None:
    signal = NotRecovered(
        workspace_id="w1", reason="expired", requested_since=3, seq=120, epoch="e1"
    )
    assert signal.type == "stream.not_recovered"
    dumped = signal.model_dump(mode="json")
    assert dumped == {
        "type": "stream.not_recovered",
        "workspace_id": "w1",
        "reason": "expired",
        "requested_since": 3,
        "seq": 120,
        "epoch": "e1",
    }
    assert NotRecovered.model_validate(dumped) == signal


@pytest.mark.parametrize("reason", ["future", "expired", "epoch_changed"])
def test_not_recovered_reasons(reason: str) -> None:
    assert NotRecovered(workspace_id="w", reason=reason, seq=0, epoch="e").reason == reason


@pytest.mark.parametrize(
    "data",
    [
        {"workspace_id": "w", "reason": "lost", "seq": 1, "epoch": "e"},
        {"workspace_id": "w", "reason": "future", "epoch": "e"},
        {"workspace_id": "w", "reason": "future", "seq": 1},
        {"reason": "future", "seq": 1, "epoch": "e"},
        {"workspace_id": "w", "reason": "future", "seq": 1, "epoch": "e", "extra": 1},
        {"workspace_id": "w", "reason": "future", "seq": 1, "epoch": "e", "type": "other"},
    ],
)
def test_not_recovered_validation(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NotRecovered.model_validate(data)


def test_not_recovered_is_frozen_and_not_an_event() -> None:
    signal = NotRecovered(workspace_id="w", reason="future", seq=1, epoch="e")
    with pytest.raises(ValidationError):
        signal.seq = 2  # type: ignore[misc]
    assert not isinstance(signal, EventEnvelope)

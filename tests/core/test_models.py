"""Domain models: frozen, strict, with the few rules that belong to values."""

from __future__ import annotations

import copy
import inspect
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from kiiaren_core import capabilities, models
from kiiaren_core.capabilities import CAPABILITY_FLAGS, Capabilities, Limits
from kiiaren_core.extensions import types as extension_types
from kiiaren_core.extensions.gate import FeatureAvailability, ManagedFeature
from kiiaren_core.models import (
    UNSET,
    Channel,
    ChannelScope,
    CreatedInvite,
    Domain,
    DomainStatus,
    InviteLink,
    InviteLinkStatus,
    InvitePreview,
    InviteScope,
    KiiarenModel,
    Member,
    Message,
    Page,
    ReactionGroup,
    Role,
    SessionTokens,
    StreamPosition,
    ThreadSummary,
    Unset,
    UploadTicket,
    Workspace,
    WorkspaceScope,
)
from kiiaren_core.validation import MAX_MESSAGE_BODY_BYTES

NOW = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)


def _kiiaren_models() -> list[type[KiiarenModel]]:
    found = []
    for module in (models, capabilities, extension_types):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, KiiarenModel) and value.__module__ == module.__name__:
                found.append(value)
    return found


def _channel(**overrides: Any) -> Channel:
    return Channel(
        **{"id": "c1", "workspace_id": "w1", "name": "general", "created_at": NOW, **overrides}
    )


def _workspace(**overrides: Any) -> Workspace:
    data = {"id": "w1", "name": "Analytical", "owner_id": "u1", "created_at": NOW, **overrides}
    return Workspace(**data)


# --- frozen and strict ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", _kiiaren_models(), ids=lambda cls: cls.__name__)
def test_every_model_is_frozen_and_refuses_unknown_fields(cls: type[KiiarenModel]) -> None:
    assert cls.model_config.get("frozen") is True
    assert cls.model_config.get("extra") == "forbid"


def test_the_model_list_is_complete() -> None:
    names = {cls.__name__ for cls in _kiiaren_models()}
    assert {"Workspace", "Channel", "Message", "Page", "Capabilities", "AuditEvent"} <= names
    assert FeatureAvailability.model_config.get("frozen") is True


def test_mutation_is_refused() -> None:
    channel = _channel()
    with pytest.raises(ValidationError):
        channel.name = "random"  # type: ignore[misc]
    assert channel.name == "general"
    workspace = _workspace()
    with pytest.raises(ValidationError):
        workspace.join_code_enabled = False  # type: ignore[misc]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        _channel(topic="chit-chat")
    with pytest.raises(ValidationError):
        Channel.model_validate(
            {"id": "c", "workspace_id": "w", "name": "n", "created_at": NOW, "userId": "u"}
        )


def test_models_are_hashable_values() -> None:
    assert _channel() == _channel()
    assert hash(_channel()) == hash(_channel())
    assert _channel() != _channel(name="random")
    assert _channel().model_copy(update={"name": "random"}).name == "random"


def test_models_round_trip_through_json() -> None:
    message = Message(
        id="m1",
        workspace_id="w1",
        member_id="mb1",
        body="{}",
        channel_id="c1",
        created_at=NOW,
        reactions=[ReactionGroup(value="👍", count=2, member_ids=["a", "b"])],
        member=Member(id="mb1", user_id="u1", workspace_id="w1", role="admin", joined_at=NOW),
    )
    assert Message.model_validate_json(message.model_dump_json()) == message
    assert message.reactions[0].member_ids == ("a", "b")
    assert message.thread == ThreadSummary()
    assert message.member is not None
    assert message.member.role is Role.ADMIN


# --- workspaces and join codes --------------------------------------------------------------------


def test_workspace_defaults_follow_the_legacy_rules() -> None:
    workspace = _workspace()
    assert workspace.domain_verified is False
    assert workspace.join_code_enabled is True
    assert workspace.join_code is None  # hidden from non-admins


@pytest.mark.parametrize("code", ["ABC234", "ZZZZZZ", "023456", "HJKMNP"])
def test_workspace_accepts_join_codes_of_the_alphabet(code: str) -> None:
    assert _workspace(join_code=code).join_code == code


@pytest.mark.parametrize(
    "code", ["ABC23", "ABC2345", "ABCI23", "ABCL23", "ABCO23", "ABC123", "abc234", "ABC 23", ""]
)
def test_workspace_refuses_other_join_codes(code: str) -> None:
    with pytest.raises(ValidationError, match="join-code alphabet"):
        _workspace(join_code=code)


# --- roles ----------------------------------------------------------------------------------------


def test_roles() -> None:
    assert [role.value for role in Role] == ["owner", "admin", "member"]
    assert Role.OWNER.is_admin is True
    assert Role.ADMIN.is_admin is True
    assert Role.MEMBER.is_admin is False
    assert Role("admin") is Role.ADMIN
    assert Role.ADMIN == "admin"
    with pytest.raises(ValueError):
        Role("superuser")


# --- pages ----------------------------------------------------------------------------------------


def test_page_validates_its_items() -> None:
    page = Page[Channel](
        items=[_channel(), _channel(id="c2").model_dump()], cursor="abc", has_more=True
    )
    assert all(isinstance(item, Channel) for item in page.items)
    assert isinstance(page.items, tuple)
    assert [item.id for item in page.items] == ["c1", "c2"]
    assert (page.cursor, page.has_more) == ("abc", True)
    with pytest.raises(ValidationError):
        Page[Channel](items=[{"id": "c3"}])
    with pytest.raises(ValidationError):
        Page[int](items=["not a number"])


def test_page_defaults_to_the_last_page() -> None:
    page = Page[int](items=[])
    assert page.items == ()
    assert page.cursor is None
    assert page.has_more is False


def test_page_round_trips() -> None:
    page = Page[Channel](items=[_channel()], cursor="next", has_more=True)
    assert Page[Channel].model_validate_json(page.model_dump_json()) == page


# --- invite scopes --------------------------------------------------------------------------------

SCOPE = TypeAdapter(InviteScope)


def test_invite_scope_is_a_discriminated_union() -> None:
    workspace = SCOPE.validate_python({"type": "workspace"})
    assert type(workspace) is WorkspaceScope
    channel = SCOPE.validate_python({"type": "channel", "channel_id": "c1"})
    assert type(channel) is ChannelScope
    assert channel.channel_id == "c1"
    assert SCOPE.dump_python(channel) == {"type": "channel", "channel_id": "c1"}
    assert SCOPE.validate_json('{"type":"workspace"}') == WorkspaceScope()


@pytest.mark.parametrize(
    "data",
    [
        {"type": "channel"},  # channel scope needs its channel
        {"type": "guild"},
        {},
        {"channel_id": "c1"},
        {"type": "workspace", "channel_id": "c1"},  # extra field on the workspace scope
        "workspace",  # the interface's bare string is not accepted
    ],
)
def test_invalid_invite_scopes(data: Any) -> None:
    with pytest.raises(ValidationError):
        SCOPE.validate_python(data)


def test_invite_models_parse_their_scope() -> None:
    preview = InvitePreview.model_validate(
        {
            "id": "i1",
            "workspace_id": "w1",
            "workspace_name": "Analytical",
            "expires_at": NOW,
            "scope": {"type": "channel", "channel_id": "c9"},
        }
    )
    assert isinstance(preview.scope, ChannelScope)
    link = InviteLink(
        id="i1",
        workspace_id="w1",
        code="secret-code-22-chars-x",
        created_by={"id": None, "name": "Unknown"},
        created_at=NOW,
        expires_at=NOW,
        scope={"type": "workspace"},
        status="revoked",
    )
    assert isinstance(link.scope, WorkspaceScope)
    assert link.status is InviteLinkStatus.REVOKED
    assert link.used_count == 0
    assert link.max_uses is None


# --- secrets stay out of reprs --------------------------------------------------------------------


def test_secrets_are_not_in_reprs() -> None:
    tokens = SessionTokens(
        access_token="ACCESS-SECRET", refresh_token="REFRESH-SECRET", expires_at=NOW
    )
    created = CreatedInvite(id="i1", code="INVITE-SECRET")
    domain = Domain(
        id="d1",
        workspace_id="w1",
        domain="acme.com",
        status=DomainStatus.PENDING,
        verification_token="TOKEN-SECRET",
        created_at=NOW,
        created_by="u1",
    )
    ticket = UploadTicket(
        storage_id="s1",
        url="https://bucket/UPLOAD-SECRET",
        expires_at=NOW,
        max_bytes=10,
        content_type="image/png",
    )
    device = extension_types.DeviceToken(user_id="u1", platform="ios", token="DEVICE-SECRET")
    for value, secret in [
        (tokens, "ACCESS-SECRET"),
        (tokens, "REFRESH-SECRET"),
        (created, "INVITE-SECRET"),
        (domain, "TOKEN-SECRET"),
        (ticket, "UPLOAD-SECRET"),
        (device, "DEVICE-SECRET"),
    ]:
        assert secret not in repr(value)
        assert secret not in str(value)
    # The values are still there for whoever is allowed to read them.
    assert tokens.access_token == "ACCESS-SECRET"
    assert tokens.token_type == "bearer"


# --- small value rules ----------------------------------------------------------------------------


def test_reaction_groups_have_at_least_one_reaction() -> None:
    with pytest.raises(ValidationError):
        ReactionGroup(value="👍", count=0, member_ids=[])


def test_stream_positions_are_not_negative() -> None:
    assert StreamPosition(workspace_id="w", seq=0, epoch="e").seq == 0
    with pytest.raises(ValidationError):
        StreamPosition(workspace_id="w", seq=-1, epoch="e")


def test_enums_parse_from_their_values() -> None:
    assert (
        Domain.model_validate(
            {
                "id": "d",
                "workspace_id": "w",
                "domain": "acme.com",
                "status": "verified",
                "verification_token": "t",
                "created_at": NOW,
                "created_by": "u",
            }
        ).status
        is DomainStatus.VERIFIED
    )
    assert [s.value for s in InviteLinkStatus] == ["active", "expired", "exhausted", "revoked"]


# --- UNSET ----------------------------------------------------------------------------------------


def test_unset_is_a_falsy_singleton_distinct_from_none() -> None:
    assert Unset() is UNSET
    assert UNSET is not None
    assert UNSET != None  # noqa: E711 - "clear the field" and "leave it" must differ
    assert not UNSET
    assert bool(UNSET) is False
    assert repr(UNSET) == "UNSET"
    assert isinstance(UNSET, Unset)


def test_unset_survives_copies_and_pickling() -> None:
    assert copy.copy(UNSET) is UNSET
    assert copy.deepcopy(UNSET) is UNSET
    assert copy.deepcopy({"name": UNSET})["name"] is UNSET
    assert pickle.loads(pickle.dumps(UNSET)) is UNSET


def test_unset_lets_an_update_tell_the_three_cases_apart() -> None:
    def describe(icon: str | Unset | None = UNSET) -> str:
        if isinstance(icon, Unset):
            return "keep"
        return "clear" if icon is None else f"set {icon}"

    assert describe() == "keep"
    assert describe(None) == "clear"
    assert describe("📄") == "set 📄"


# --- capabilities ---------------------------------------------------------------------------------


def test_capability_flags_are_the_boolean_fields() -> None:
    booleans = {
        name for name, field in Capabilities.model_fields.items() if field.annotation is bool
    }
    assert booleans == CAPABILITY_FLAGS


def test_capabilities_default_to_nothing() -> None:
    caps = Capabilities()
    assert caps.areas == frozenset()
    assert caps.managed_features == frozenset()
    for flag in CAPABILITY_FLAGS:
        assert caps.has(flag) is False
    assert caps.has("auth") is False


def test_capabilities_has_reads_flags_and_areas() -> None:
    caps = Capabilities(areas={"auth", "events"}, resume=True, managed_features={"kms"})
    assert caps.has("resume") is True
    assert caps.has("presence") is False
    assert caps.has("auth") is True
    assert caps.has("events") is True
    assert caps.has("storage") is False
    assert caps.has("not-a-capability") is False
    assert caps.managed_features == {ManagedFeature.KMS}


def test_capabilities_refuse_unknown_areas_and_features() -> None:
    with pytest.raises(ValidationError):
        Capabilities(areas={"teleport"})
    with pytest.raises(ValidationError):
        Capabilities(managed_features={"time_travel"})


def test_limits_agree_with_the_validation_constants() -> None:
    limits = Limits()
    assert limits.max_message_bytes == MAX_MESSAGE_BODY_BYTES
    assert limits.max_upload_bytes == 10 * 1024 * 1024
    with pytest.raises(ValidationError):
        Limits(max_page_size=0)


def test_capabilities_round_trip() -> None:
    caps = Capabilities(areas={"auth"}, presence=True, oauth_providers=("github",))
    dumped = caps.model_dump(mode="json")
    assert Capabilities.model_validate(dumped) == caps
    assert isinstance(Capabilities.model_fields["limits"].default, BaseModel)


@pytest.mark.parametrize("number", [0, 1_700_000_000, 1.5], ids=["zero", "unix", "float"])
def test_caller_date_times_refuse_numbers(number: float) -> None:
    """The wire says ``string`` for date-times; pydantic alone would read a number as a
    Unix time (schemathesis found a 204 for ``"timestamp": 0``)."""
    adapter: TypeAdapter[datetime] = TypeAdapter(models.TextDateTime)
    with pytest.raises(ValidationError, match="ISO 8601"):
        adapter.validate_python(number)
    assert adapter.validate_python("2026-01-02T03:04:05Z") == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )

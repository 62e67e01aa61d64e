"""The error tree: one code <-> class <-> HTTP status table and a lossless wire round trip."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable

import pytest

from kiiaren_core import errors
from kiiaren_core.errors import (
    ERROR_CLASSES,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    DomainVerificationError,
    IdempotencyConflictError,
    InvalidInputError,
    InviteLinkError,
    KiiarenError,
    ManagedOnlyError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProviderClosedError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    RateLimitedError,
    TokenCollisionError,
    UnsupportedError,
    error_from_wire,
    is_kiiaren_error,
)


def _defined_error_classes() -> list[type[KiiarenError]]:
    """Every KiiarenError subclass defined in ``kiiaren_core.errors`` (found by introspection)."""
    return [
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, KiiarenError) and value.__module__ == errors.__name__
    ]


def _all_subclasses(cls: type[KiiarenError]) -> set[type[KiiarenError]]:
    found: set[type[KiiarenError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


# The documented table (errors.py docstring, DESIGN.md section 3): class -> (code, status, parent).
DOCUMENTED: dict[type[KiiarenError], tuple[str, int, type[Exception]]] = {
    KiiarenError: ("internal_error", 500, Exception),
    NotAuthenticatedError: ("not_authenticated", 401, KiiarenError),
    PermissionDeniedError: ("permission_denied", 403, KiiarenError),
    ManagedOnlyError: ("managed_only", 403, PermissionDeniedError),
    NotFoundError: ("not_found", 404, KiiarenError),
    ConflictError: ("conflict", 409, KiiarenError),
    IdempotencyConflictError: ("idempotency_conflict", 409, ConflictError),
    InvalidInputError: ("invalid_input", 422, KiiarenError),
    PayloadTooLargeError: ("payload_too_large", 413, InvalidInputError),
    InviteLinkError: ("invite_link_invalid", 422, InvalidInputError),
    DomainVerificationError: ("domain_verification_failed", 422, InvalidInputError),
    RateLimitedError: ("rate_limited", 429, KiiarenError),
    UnsupportedError: ("unsupported", 501, KiiarenError),
    BackendUnavailableError: ("backend_unavailable", 503, KiiarenError),
    TokenCollisionError: ("token_collision", 503, KiiarenError),
    ProviderClosedError: ("provider_closed", 503, KiiarenError),
    ConfigurationError: ("configuration_error", 500, KiiarenError),
    ProviderNotFoundError: ("provider_not_found", 500, ConfigurationError),
    ProviderUnavailableError: ("provider_unavailable", 500, ConfigurationError),
}


# --- the table ------------------------------------------------------------------------------------


def test_introspection_finds_the_whole_tree() -> None:
    defined = set(_defined_error_classes())
    in_module = {
        cls
        for cls in {KiiarenError, *_all_subclasses(KiiarenError)}
        if cls.__module__ == errors.__name__
    }
    assert defined == in_module
    assert len(defined) >= 19


@pytest.mark.parametrize("cls", _defined_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_is_in_the_table_under_its_code(cls: type[KiiarenError]) -> None:
    assert ERROR_CLASSES.get(cls.code) is cls, f"{cls.__name__} missing from ERROR_CLASSES"


def test_codes_are_unique_and_the_table_holds_only_module_classes() -> None:
    classes = _defined_error_classes()
    codes = [cls.code for cls in classes]
    duplicates = sorted({code for code in codes if codes.count(code) > 1})
    assert not duplicates, f"codes shared by several classes: {duplicates}"
    assert set(ERROR_CLASSES.values()) == set(classes)
    for code, cls in ERROR_CLASSES.items():
        assert cls.code == code
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code)


def test_every_class_has_its_own_code() -> None:
    """A subclass that forgot to set ``code`` would silently inherit its parent's."""
    for cls in _defined_error_classes():
        if cls is not KiiarenError:
            assert "code" in vars(cls), f"{cls.__name__} inherits its code"


def test_codes_statuses_and_parents_are_the_documented_ones() -> None:
    assert set(DOCUMENTED) == set(_defined_error_classes())
    for cls, (code, status, parent) in DOCUMENTED.items():
        assert cls.code == code, cls.__name__
        assert cls.http_status == status, cls.__name__
        assert cls.__bases__ == (parent,), cls.__name__


def test_module_docstring_tree_matches_the_code() -> None:
    """The tree drawn in errors.py is the documentation users read: it must not drift."""
    line_re = re.compile(
        r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w*Error)\s+(?P<code>[a-z_]+)\s+(?P<status>\d{3})$"
    )
    drawn: dict[str, tuple[str, int, str | None]] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = line_re.match(line.rstrip())
        if not match:
            continue
        depth = (len(match["indent"]) - 4) // 4
        del stack[depth:]
        parent = stack[-1] if stack else None
        stack.append(match["name"])
        drawn[match["name"]] = (match["code"], int(match["status"]), parent)
    in_code = {
        cls.__name__: (
            cls.code,
            cls.http_status,
            None if cls is KiiarenError else cls.__bases__[0].__name__,
        )
        for cls in _defined_error_classes()
    }
    assert drawn == in_code


def test_all_exports_every_error_class() -> None:
    for cls in _defined_error_classes():
        assert cls.__name__ in errors.__all__


# --- construction and messages --------------------------------------------------------------------


def test_default_messages_keep_the_reference_strings() -> None:
    assert NotAuthenticatedError().message == "Unauthorized. Please sign in."
    assert PermissionDeniedError().message == "Unauthorized."
    assert str(NotAuthenticatedError()) == "Unauthorized. Please sign in."
    assert KiiarenError().message == "An internal error occurred."


def test_message_and_details_are_kept() -> None:
    error = NotFoundError("Channel not found.", details={"field": "channel_id"})
    assert error.message == "Channel not found."
    assert str(error) == "Channel not found."
    assert error.details == {"field": "channel_id"}
    assert repr(error) == "NotFoundError('Channel not found.')"
    assert error.to_wire() == {
        "code": "not_found",
        "message": "Channel not found.",
        "details": {"field": "channel_id"},
    }


def test_details_are_copied_not_shared() -> None:
    source = {"field": "name"}
    error = InvalidInputError("bad", details=source)
    source["field"] = "changed"
    assert error.details == {"field": "name"}


@pytest.mark.parametrize(
    "feature", ["kms", "audit_logs", "indexed_search", "ai_agents", "sso_saml"]
)
def test_managed_only_error_has_the_reference_message(feature: str) -> None:
    error = ManagedOnlyError(feature)
    assert error.feature == feature
    assert error.message == (
        f'[KIIAREN] "{feature}" requires managed tier. This feature is not available in '
        "self-hosted deployments. See https://kiiaren.com/docs/editioning for feature "
        "availability."
    )
    assert error.details == {"feature": feature}
    assert isinstance(error, PermissionDeniedError)


@pytest.mark.parametrize("token_type", ["join code", "verification token", "invite code"])
def test_token_collision_error_has_the_reference_message(token_type: str) -> None:
    error = TokenCollisionError(token_type)
    assert error.token_type == token_type
    assert error.message == (
        f"Failed to generate unique {token_type} after 5 attempts. This is extremely "
        "unlikely and may indicate a system issue."
    )
    assert error.details == {"token_type": token_type}


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("not_found", "Invite link not found"),
        ("expired", "Invite link has expired"),
        ("revoked", "Invite link has been revoked"),
        ("max_uses", "Invite link has reached maximum uses"),
        ("already_member", "You are already a member of this workspace"),
        ("something_new", "Invite link is invalid"),
    ],
)
def test_invite_link_error_messages_match_the_reference(reason: str, text: str) -> None:
    error = InviteLinkError("c0de-secret", reason)
    assert error.message == f"[KIIAREN] {text}"
    assert error.reason == reason
    assert error.invite_code == "c0de-secret"
    assert error.details == {"reason": reason}
    # The code is a bearer secret: it never reaches the details, the message or the wire.
    assert "c0de-secret" not in json.dumps(error.to_wire())


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("not_found", "DNS TXT record not found for _kiiaren-verification.acme.com"),
        ("invalid_token", "DNS TXT record found but verification token does not match"),
        ("dns_error", "Failed to query DNS for acme.com"),
        ("already_claimed", "Domain acme.com is already claimed by another workspace"),
    ],
)
def test_domain_verification_error_messages_match_the_reference(reason: str, text: str) -> None:
    error = DomainVerificationError("acme.com", reason)
    assert error.message == f"[KIIAREN] Domain verification failed: {text}"
    assert (error.domain, error.reason) == ("acme.com", reason)
    assert error.details == {"domain": "acme.com", "reason": reason}
    with_detail = DomainVerificationError("acme.com", reason, "Resolver timed out")
    assert with_detail.message == (
        f"[KIIAREN] Domain verification failed: {text}. Resolver timed out"
    )


def test_rate_limited_error_clamps_retry_after() -> None:
    assert RateLimitedError(-5).retry_after == 0.0
    error = RateLimitedError(2)
    assert error.retry_after == 2.0
    assert isinstance(error.retry_after, float)
    assert error.message == "Too many requests. Try again later."
    assert error.details == {"retry_after": 2.0}


def test_backend_unavailable_retry_after_is_optional() -> None:
    plain = BackendUnavailableError()
    assert plain.retry_after is None
    assert plain.details == {}
    assert plain.message == "The backend is temporarily unavailable. Try again shortly."
    assert BackendUnavailableError(retry_after=4.0).details == {"retry_after": 4.0}


def test_provider_not_found_lists_available_names_sorted() -> None:
    error = ProviderNotFoundError("nope", ["selfhost", "hosted"])
    assert error.available == ["hosted", "selfhost"]
    assert (
        error.message == "No KIIAREN provider named 'nope'. Available providers: hosted, selfhost."
    )
    assert ProviderNotFoundError("x", []).message.endswith("Available providers: none.")


# --- wire round trip ------------------------------------------------------------------------------

SAMPLES: dict[type[KiiarenError], Callable[[], KiiarenError]] = {
    KiiarenError: lambda: KiiarenError("boom", details={"k": 1}),
    NotAuthenticatedError: lambda: NotAuthenticatedError(),
    PermissionDeniedError: lambda: PermissionDeniedError(
        "You must be a workspace admin to perform this action.", details={"role": "member"}
    ),
    ManagedOnlyError: lambda: ManagedOnlyError("indexed_search", details={"hook": "search"}),
    NotFoundError: lambda: NotFoundError("Channel not found.", details={"field": "channel_id"}),
    ConflictError: lambda: ConflictError("Already a member of this workspace."),
    IdempotencyConflictError: lambda: IdempotencyConflictError(details={"key": "k-1"}),
    InvalidInputError: lambda: InvalidInputError("Invalid workspace name.", details={"field": "n"}),
    PayloadTooLargeError: lambda: PayloadTooLargeError(details={"max_bytes": 10}),
    InviteLinkError: lambda: InviteLinkError("SeCrEtCoDe", "revoked", details={"extra": [1, 2]}),
    DomainVerificationError: lambda: DomainVerificationError(
        "acme.com", "not_found", "Wait for propagation", details={"records": ["a", "b"]}
    ),
    RateLimitedError: lambda: RateLimitedError(2.5, details={"scope": "ip"}),
    UnsupportedError: lambda: UnsupportedError("presence is not supported"),
    BackendUnavailableError: lambda: BackendUnavailableError(
        "db down", retry_after=3.0, details={"reason": "slow_consumer"}
    ),
    TokenCollisionError: lambda: TokenCollisionError("invite code"),
    ProviderClosedError: lambda: ProviderClosedError(),
    ConfigurationError: lambda: ConfigurationError(
        "Invalid configuration KIIAREN_X.", details={"variable": "KIIAREN_X"}
    ),
    ProviderNotFoundError: lambda: ProviderNotFoundError(
        "nope", ["selfhost", "hosted"], details={"hint": "check KIIAREN_PROVIDER"}
    ),
    ProviderUnavailableError: lambda: ProviderUnavailableError(
        "missing deps", details={"name": "selfhost", "install": 'pip install "kiiaren[selfhost]"'}
    ),
}

SPECIAL_FIELDS: dict[type[KiiarenError], tuple[str, ...]] = {
    RateLimitedError: ("retry_after",),
    ManagedOnlyError: ("feature",),
    BackendUnavailableError: ("retry_after",),
    TokenCollisionError: ("token_type",),
    InviteLinkError: ("reason",),
    DomainVerificationError: ("domain", "reason"),
    ProviderNotFoundError: ("name", "available"),
}


def test_every_class_has_a_round_trip_sample() -> None:
    assert set(SAMPLES) == set(_defined_error_classes())


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_wire_round_trip_rebuilds_the_same_error(cls: type[KiiarenError]) -> None:
    original = SAMPLES[cls]()
    assert type(original) is cls
    # What the server sends is plain JSON.
    wire = json.loads(json.dumps(original.to_wire()))
    assert wire["code"] == cls.code

    rebuilt = error_from_wire(
        wire["code"], wire["message"], wire["details"], http_status=cls.http_status
    )

    assert type(rebuilt) is cls
    assert rebuilt.message == original.message
    assert str(rebuilt) == str(original)
    assert rebuilt.args == (original.message,)
    assert rebuilt.details == original.details
    assert rebuilt.to_wire() == original.to_wire()
    for name in SPECIAL_FIELDS.get(cls, ()):
        assert getattr(rebuilt, name) == getattr(original, name), name


def test_round_trip_of_backend_unavailable_without_retry_after() -> None:
    wire = BackendUnavailableError("down").to_wire()
    rebuilt = error_from_wire(**wire)
    assert isinstance(rebuilt, BackendUnavailableError)
    assert rebuilt.retry_after is None
    assert rebuilt.details == {}


def test_invite_code_is_not_rebuilt_from_the_wire() -> None:
    rebuilt = error_from_wire(**InviteLinkError("SeCrEtCoDe", "expired").to_wire())
    assert isinstance(rebuilt, InviteLinkError)
    assert rebuilt.invite_code == ""
    assert rebuilt.reason == "expired"


def test_the_server_message_is_authoritative() -> None:
    rebuilt = error_from_wire("managed_only", "Upgrade to search.", {"feature": "indexed_search"})
    assert isinstance(rebuilt, ManagedOnlyError)
    assert rebuilt.feature == "indexed_search"
    assert rebuilt.message == "Upgrade to search."
    assert str(rebuilt) == "Upgrade to search."


def test_a_known_code_wins_over_the_http_status() -> None:
    assert type(error_from_wire("not_found", "gone", None, http_status=500)) is NotFoundError


def test_missing_special_fields_get_safe_defaults() -> None:
    rate = error_from_wire("rate_limited", "slow down", {})
    assert isinstance(rate, RateLimitedError)
    assert rate.retry_after == 1.0
    managed = error_from_wire("managed_only", "m", {})
    assert isinstance(managed, ManagedOnlyError)
    assert managed.feature == "unknown"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidInputError),
        (401, NotAuthenticatedError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, InvalidInputError),
        (429, RateLimitedError),
        (501, UnsupportedError),
        (503, BackendUnavailableError),
        (500, KiiarenError),
        (418, KiiarenError),
        (502, KiiarenError),
    ],
)
def test_unknown_codes_fall_back_by_http_status(status: int, expected: type[KiiarenError]) -> None:
    details = {"retry_after": 7, "future_field": "kept"}
    rebuilt = error_from_wire("from_a_newer_server", "Something new.", details, http_status=status)
    assert type(rebuilt) is expected
    assert rebuilt.message == "Something new."
    assert str(rebuilt) == "Something new."
    assert rebuilt.details["future_field"] == "kept"
    if expected is RateLimitedError:
        assert isinstance(rebuilt, RateLimitedError)
        assert rebuilt.retry_after == 7.0


def test_unknown_code_without_status_is_a_generic_error() -> None:
    rebuilt = error_from_wire("brand_new", "?")
    assert type(rebuilt) is KiiarenError
    assert rebuilt.details == {}


# --- is_kiiaren_error -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_is_kiiaren_error_is_true_for_every_sdk_error(cls: type[KiiarenError]) -> None:
    error = SAMPLES[cls]()
    assert is_kiiaren_error(error) is True
    assert error.is_kiiaren_error is True


@pytest.mark.parametrize(
    "value", [ValueError("x"), Exception(), None, "KiiarenError", KiiarenError, NotFoundError]
)
def test_is_kiiaren_error_is_false_for_anything_else(value: object) -> None:
    assert is_kiiaren_error(value) is False

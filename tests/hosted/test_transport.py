"""Requests built from the wire table, answers parsed back, errors rebuilt: no I/O here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from kiiaren_core.errors import (
    ERROR_CLASSES,
    BackendUnavailableError,
    DomainVerificationError,
    InviteLinkError,
    KiiarenError,
    ManagedOnlyError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderNotFoundError,
    RateLimitedError,
    TokenCollisionError,
)
from kiiaren_core.extensions import AuditEvent
from kiiaren_core.models import UNSET, ChannelScope
from kiiaren_core.wire import OPERATIONS, OPERATIONS_BY_NAME, Operation
from kiiaren_hosted.transport import (
    IDEMPOTENCY_HEADER,
    build_request,
    error_from_response,
    parse_result,
    parse_retry_after,
)

BASE = "http://kiiaren.test"


def op(name: str) -> Operation:
    return OPERATIONS_BY_NAME[name]


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message, "details": details or {}},
        "request_id": "req-123",
    }


def answer(status: int, body: Any = None, **kwargs: Any) -> httpx.Response:
    request = httpx.Request("GET", f"{BASE}/v1/x")
    if body is None:
        return httpx.Response(status, request=request, **kwargs)
    if isinstance(body, bytes | str):
        return httpx.Response(status, content=body, request=request, **kwargs)
    return httpx.Response(status, json=body, request=request, **kwargs)


# --- requests ---------------------------------------------------------------------------------


def test_path_parameters_are_escaped_as_one_segment() -> None:
    request = build_request(
        op("storage.metadata"), {"storage_id": "../../etc/passwd"}, base_url=BASE
    )
    assert request.url.raw_path == b"/v1/files/..%2F..%2Fetc%2Fpasswd"
    dots = build_request(op("storage.metadata"), {"storage_id": ".."}, base_url=BASE)
    assert dots.url.raw_path == b"/v1/files/%2E%2E", "never normalised away"
    spaced = build_request(op("channel.get"), {"channel_id": "a b?c#d"}, base_url=BASE)
    assert spaced.url.raw_path == b"/v1/channels/a%20b%3Fc%23d"


def test_body_and_query_are_bound_by_name() -> None:
    request = build_request(
        op("message.create"),
        {"workspace_id": "w1", "body": "hi", "channel_id": "c1", "image_id": None},
        base_url=BASE,
        access_token="tok",
        idempotency_key="key-1",
    )
    assert request.method == "POST"
    assert request.url.path == "/v1/workspaces/w1/messages"
    assert json.loads(request.content) == {"body": "hi", "channel_id": "c1", "image_id": None}
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers[IDEMPOTENCY_HEADER] == "key-1"
    assert request.headers["Content-Type"] == "application/json"

    listing = build_request(
        op("message.list"),
        {"channel_id": "c1", "conversation_id": None, "cursor": None, "limit": 50},
        base_url=BASE,
    )
    assert listing.url.path == "/v1/messages"
    assert dict(listing.url.params) == {"channel_id": "c1", "limit": "50"}
    assert listing.content == b""
    assert "Authorization" not in listing.headers
    assert IDEMPOTENCY_HEADER not in listing.headers


def test_patch_leaves_unset_fields_out_and_sends_null_to_clear() -> None:
    request = build_request(
        op("doc.update"),
        {"doc_id": "d1", "title": UNSET, "content": None, "icon": "x", "is_published": UNSET},
        base_url=BASE,
    )
    assert json.loads(request.content) == {"content": None, "icon": "x"}


def test_nested_models_and_body_as_are_serialised() -> None:
    scoped = build_request(
        op("invite.create"),
        {"workspace_id": "w1", "scope": ChannelScope(channel_id="c1"), "max_uses": 3},
        base_url=BASE,
    )
    assert json.loads(scoped.content) == {
        "scope": {"type": "channel", "channel_id": "c1"},
        "max_uses": 3,
    }
    event = AuditEvent(
        action="a",
        actor_id=None,
        resource_type="message",
        resource_id="m1",
        workspace_id="w1",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    logged = build_request(op("extensions.audit.log"), {"event": event}, base_url=BASE)
    assert json.loads(logged.content) == event.model_dump(mode="json")


def test_an_argument_the_operation_does_not_take_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="surprise"):
        build_request(op("channel.get"), {"channel_id": "c", "surprise": 1}, base_url=BASE)


def _sample_arguments(operation: Operation) -> dict[str, Any]:
    arguments: dict[str, Any] = dict.fromkeys(operation.path_params, "id")
    if operation.body_as is not None:
        assert operation.body is not None
        arguments[operation.body_as] = operation.body.model_construct()
    elif operation.body is not None:
        arguments.update(dict.fromkeys(operation.body.model_fields, None))
    if operation.query is not None:
        arguments.update(dict.fromkeys(operation.query.model_fields, None))
    return arguments


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: o.name)
def test_every_operation_builds_its_request(operation: Operation) -> None:
    request = build_request(
        operation,
        _sample_arguments(operation),
        base_url=BASE,
        idempotency_key="k" if operation.mutating else None,
    )
    assert request.method == operation.method
    assert request.url.path == operation.url_path.format(
        **dict.fromkeys(operation.path_params, "id")
    )
    assert (IDEMPOTENCY_HEADER in request.headers) is operation.mutating
    assert bool(request.content) is (operation.body is not None)


# --- answers ----------------------------------------------------------------------------------


def test_success_is_validated_and_unwrapped() -> None:
    assert (
        parse_result(op("workspace.regenerate_join_code"), answer(200, {"join_code": "ABCDEF"}))
        == "ABCDEF"
    )
    assert parse_result(op("workspace.remove"), answer(204)) is None
    page = parse_result(op("message.list"), answer(200, {"items": [], "cursor": None}))
    assert page.items == ()
    with pytest.raises(KiiarenError) as caught:
        parse_result(op("channel.get"), answer(200, {"unexpected": True}))
    assert type(caught.value) is KiiarenError
    assert "does not match the protocol" in caught.value.message


def test_not_found_is_none_only_where_the_table_says_so() -> None:
    missing = answer(404, envelope("not_found", "Channel not found."))
    assert parse_result(op("channel.get"), missing) is None
    with pytest.raises(NotFoundError) as caught:
        parse_result(op("channel.remove"), missing)
    assert caught.value.message == "Channel not found."


def test_a_404_that_is_not_an_envelope_is_an_error_even_for_reads() -> None:
    stray = answer(404, b"<html>nginx</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(NotFoundError) as caught:
        parse_result(op("channel.get"), stray)
    assert caught.value.details == {"status": 404}


def _instance(cls: type[KiiarenError]) -> KiiarenError:
    """A realistic instance of every error class, as a provider would raise it."""
    special: dict[type[KiiarenError], KiiarenError] = {
        ManagedOnlyError: ManagedOnlyError("audit_logs"),
        InviteLinkError: InviteLinkError("secret-code", "expired"),
        DomainVerificationError: DomainVerificationError("example.com", "dns_error", "timeout"),
        RateLimitedError: RateLimitedError(12.5, "Slow down."),
        BackendUnavailableError: BackendUnavailableError("Database down.", retry_after=2.0),
        TokenCollisionError: TokenCollisionError("join code"),
        ProviderNotFoundError: ProviderNotFoundError("nope", ["selfhost", "hosted"]),
    }
    if cls in special:
        return special[cls]
    return cls(f"{cls.__name__} happened.", details={"field": "name", "n": 1})


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()), ids=list(ERROR_CLASSES))
def test_every_error_class_is_rebuilt(cls: type[KiiarenError]) -> None:
    raised = _instance(cls)
    response = answer(raised.http_status, {"error": raised.to_wire(), "request_id": "req-9"})
    rebuilt = error_from_response(response)
    assert type(rebuilt) is cls
    assert rebuilt.code == raised.code
    assert rebuilt.message == raised.message
    assert rebuilt.details == raised.details
    assert str(rebuilt) == str(raised)
    for attribute in ("feature", "reason", "domain", "retry_after", "token_type", "available"):
        if hasattr(raised, attribute):
            assert getattr(rebuilt, attribute) == getattr(raised, attribute), attribute
    assert "request_id: req-9" in (rebuilt.__notes__ or [])


def test_retry_after_header_fills_in_a_missing_detail() -> None:
    rebuilt = error_from_response(
        answer(429, envelope("rate_limited", "Slow down."), headers={"Retry-After": "7"})
    )
    assert isinstance(rebuilt, RateLimitedError)
    assert rebuilt.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("body", [b"", b"<html>Bad gateway</html>", b'{"error": "nope"}', b"[1]"])
def test_malformed_5xx_is_backend_unavailable(status: int, body: bytes) -> None:
    rebuilt = error_from_response(answer(status, body, headers={"Retry-After": "3"}))
    assert type(rebuilt) is BackendUnavailableError
    assert rebuilt.details["status"] == status
    assert rebuilt.retry_after == 3.0


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, "InvalidInputError"),
        (404, "NotFoundError"),
        (413, "PayloadTooLargeError"),
        (418, "KiiarenError"),
    ],
)
def test_malformed_4xx_keeps_the_status(status: int, cls: str) -> None:
    rebuilt = error_from_response(answer(status, b"not json"))
    assert type(rebuilt).__name__ == cls
    assert rebuilt.details["status"] == status
    assert str(status) in rebuilt.message


def test_an_unknown_code_falls_back_to_the_class_of_its_status() -> None:
    rebuilt = error_from_response(answer(413, envelope("too_big_in_v2", "Too big.")))
    assert type(rebuilt) is PayloadTooLargeError
    assert rebuilt.message == "Too big."
    method = error_from_response(answer(405, envelope("method_not_allowed", "No.")))
    assert type(method) is KiiarenError


def test_details_of_the_wrong_shape_do_not_break_reconstruction() -> None:
    rebuilt = error_from_response(
        answer(429, envelope("rate_limited", "Slow.", {"retry_after": "soon"}))
    )
    assert isinstance(rebuilt, RateLimitedError)
    assert rebuilt.message == "Slow."


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now)
        == 30.0
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None

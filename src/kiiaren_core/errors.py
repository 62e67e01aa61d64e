"""The KIIAREN error tree, shared by every provider, the server and the hosted client.

Every error raised across the SDK boundary is a :class:`KiiarenError`. Each class carries a
stable machine ``code`` and an ``http_status``; the bundled server serialises an error as
``{"error": {"code", "message", "details"}, "request_id"}`` and the hosted client rebuilds the
same class from the code with :func:`error_from_wire`, so application code catches the same
exception whichever provider it runs on.

::

    KiiarenError                      internal_error        500
    ├── NotAuthenticatedError         not_authenticated     401
    ├── PermissionDeniedError         permission_denied     403
    │   └── ManagedOnlyError          managed_only          403
    ├── NotFoundError                 not_found             404
    ├── ConflictError                 conflict              409
    │   └── IdempotencyConflictError  idempotency_conflict  409
    ├── InvalidInputError             invalid_input         422
    │   ├── PayloadTooLargeError      payload_too_large     413
    │   ├── InviteLinkError           invite_link_invalid   422
    │   └── DomainVerificationError   domain_verification_failed 422
    ├── RateLimitedError              rate_limited          429
    ├── UnsupportedError              unsupported           501
    ├── BackendUnavailableError       backend_unavailable   503
    ├── TokenCollisionError           token_collision       503
    ├── ProviderClosedError           provider_closed       503
    └── ConfigurationError            configuration_error   500
        ├── ProviderNotFoundError     provider_not_found    500
        └── ProviderUnavailableError  provider_unavailable  500

Messages keep the exact English strings of the KIIAREN reference where one exists (for
example ``"Unauthorized. Please sign in."``) so parity tests can compare them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

__all__ = [
    "ERROR_CLASSES",
    "BackendUnavailableError",
    "ConfigurationError",
    "ConflictError",
    "DomainVerificationError",
    "IdempotencyConflictError",
    "IdempotencyKeyTaken",
    "InvalidInputError",
    "InviteLinkError",
    "KiiarenError",
    "ManagedOnlyError",
    "NotAuthenticatedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProviderClosedError",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "TokenCollisionError",
    "UnsupportedError",
    "error_from_wire",
    "is_kiiaren_error",
]


class KiiarenError(Exception):
    """Base of every error the SDK raises on purpose.

    Attributes:
        code: Stable machine-readable code (class attribute, part of the wire protocol).
        http_status: Status the bundled server answers with.
        message: Human-readable English message.
        details: JSON-safe extra facts (never secrets, never internal paths or SQL).
    """

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "An internal error occurred."
    is_kiiaren_error: ClassVar[bool] = True

    def __init__(self, message: str | None = None, *, details: Mapping[str, Any] | None = None):
        self.message = message or self.default_message
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def to_wire(self) -> dict[str, Any]:
        """Return the ``error`` object of the wire envelope."""
        return {"code": self.code, "message": self.message, "details": self.details}

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        """Rebuild an instance from its wire form; subclasses with fields override this."""
        return cls(message, details=details)


class NotAuthenticatedError(KiiarenError):
    """No valid session: sign in first (or the session was revoked or expired)."""

    code = "not_authenticated"
    http_status = 401
    default_message = "Unauthorized. Please sign in."


class PermissionDeniedError(KiiarenError):
    """Signed in, and the target is visible, but the caller's role does not allow the action."""

    code = "permission_denied"
    http_status = 403
    default_message = "Unauthorized."


class ManagedOnlyError(PermissionDeniedError):
    """A managed-tier feature was used on a deployment that does not offer it."""

    code = "managed_only"
    http_status = 403

    def __init__(self, feature: str, *, details: Mapping[str, Any] | None = None):
        self.feature = str(feature)
        super().__init__(
            f'[KIIAREN] "{self.feature}" requires managed tier. This feature is not available '
            "in self-hosted deployments. See https://kiiaren.com/docs/editioning for feature "
            "availability.",
            details={**(details or {}), "feature": self.feature},
        )

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        return cls(str(details.get("feature", "unknown")), details=details)


class NotFoundError(KiiarenError):
    """The target does not exist, or the caller may not know that it exists."""

    code = "not_found"
    http_status = 404
    default_message = "Not found."


class ConflictError(KiiarenError):
    """The change conflicts with the current state (duplicate, already done, ...)."""

    code = "conflict"
    http_status = 409
    default_message = "The request conflicts with the current state."


class IdempotencyConflictError(ConflictError):
    """An ``Idempotency-Key`` was reused with a different request, or is still in flight."""

    code = "idempotency_conflict"
    default_message = "This Idempotency-Key was already used with a different request."


class InvalidInputError(KiiarenError):
    """The input breaks a validation rule; ``details`` may name the ``field``."""

    code = "invalid_input"
    http_status = 422
    default_message = "Invalid input."


class PayloadTooLargeError(InvalidInputError):
    """A body, file or field is larger than the configured limit."""

    code = "payload_too_large"
    http_status = 413
    default_message = "Payload too large."


InviteLinkReason = Literal["not_found", "expired", "revoked", "max_uses", "already_member"]
_INVITE_MESSAGES: Final[dict[str, str]] = {
    "not_found": "Invite link not found",
    "expired": "Invite link has expired",
    "revoked": "Invite link has been revoked",
    "max_uses": "Invite link has reached maximum uses",
    "already_member": "You are already a member of this workspace",
}


class InviteLinkError(InvalidInputError):
    """An invite code cannot be redeemed; ``reason`` says why."""

    code = "invite_link_invalid"

    def __init__(
        self,
        invite_code: str,
        reason: str,
        message: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.invite_code = invite_code
        self.reason = reason
        text = _INVITE_MESSAGES.get(reason, "Invite link is invalid")
        # The code itself is a bearer secret: it is kept on the instance, never in the details.
        super().__init__(
            message or f"[KIIAREN] {text}", details={**(details or {}), "reason": reason}
        )

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        return cls("", str(details.get("reason", "not_found")), details=details)


DomainVerificationReason = Literal["not_found", "invalid_token", "dns_error", "already_claimed"]


class DomainVerificationError(InvalidInputError):
    """A domain could not be verified; ``reason`` says why."""

    code = "domain_verification_failed"

    def __init__(
        self,
        domain: str,
        reason: str,
        detail_text: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.domain = domain
        self.reason = reason
        texts = {
            "not_found": f"DNS TXT record not found for _kiiaren-verification.{domain}",
            "invalid_token": "DNS TXT record found but verification token does not match",
            "dns_error": f"Failed to query DNS for {domain}",
            "already_claimed": f"Domain {domain} is already claimed by another workspace",
        }
        text = texts.get(reason, f"Domain verification failed for {domain}")
        suffix = f". {detail_text}" if detail_text else ""
        super().__init__(
            f"[KIIAREN] Domain verification failed: {text}{suffix}",
            details={**(details or {}), "domain": domain, "reason": reason},
        )

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        return cls(str(details.get("domain", "")), str(details.get("reason", "")), details=details)


class RateLimitedError(KiiarenError):
    """Too many attempts; retry after ``retry_after`` seconds."""

    code = "rate_limited"
    http_status = 429

    def __init__(
        self,
        retry_after: float,
        message: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(
            message or "Too many requests. Try again later.",
            details={**(details or {}), "retry_after": self.retry_after},
        )

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        return cls(float(details.get("retry_after", 1.0)), message, details=details)


class UnsupportedError(KiiarenError):
    """The provider does not implement this operation (see its capabilities)."""

    code = "unsupported"
    http_status = 501
    default_message = "This operation is not supported by this provider."


class BackendUnavailableError(KiiarenError):
    """The database, storage or remote service cannot be reached right now; safe to retry."""

    code = "backend_unavailable"
    http_status = 503
    default_message = "The backend is temporarily unavailable. Try again shortly."

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.retry_after = retry_after
        extra = {"retry_after": retry_after} if retry_after is not None else {}
        super().__init__(message, details={**(details or {}), **extra})

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        retry_after = details.get("retry_after")
        return cls(
            message,
            retry_after=float(retry_after) if retry_after is not None else None,
            details=details,
        )


class TokenCollisionError(KiiarenError):
    """Random token generation collided ``MAX_COLLISION_RETRIES`` times in a row."""

    code = "token_collision"
    http_status = 503

    def __init__(self, token_type: str, *, details: Mapping[str, Any] | None = None):
        self.token_type = token_type
        super().__init__(
            f"Failed to generate unique {token_type} after 5 attempts. This is extremely "
            "unlikely and may indicate a system issue.",
            details={**(details or {}), "token_type": token_type},
        )

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        return cls(str(details.get("token_type", "token")), details=details)


class ProviderClosedError(KiiarenError):
    """The provider (or view) was closed with ``aclose()``; create a new one."""

    code = "provider_closed"
    http_status = 503
    default_message = "This provider has been closed."


class ConfigurationError(KiiarenError):
    """Configuration is missing or invalid; ``details["variable"]`` names the setting."""

    code = "configuration_error"
    http_status = 500
    default_message = "Invalid configuration."


class ProviderNotFoundError(ConfigurationError):
    """No provider is registered under the requested name."""

    code = "provider_not_found"

    def __init__(
        self, name: str, available: list[str], *, details: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.available = sorted(available)
        listed = ", ".join(self.available) or "none"
        super().__init__(
            f"No KIIAREN provider named {name!r}. Available providers: {listed}.",
            details={**(details or {}), "name": name, "available": self.available},
        )

    @classmethod
    def _from_wire(cls, message: str, details: Mapping[str, Any]) -> KiiarenError:
        return cls(
            str(details.get("name", "")), list(details.get("available", [])), details=details
        )


class ProviderUnavailableError(ConfigurationError):
    """The provider is registered but its optional dependencies are not installed."""

    code = "provider_unavailable"


ERROR_CLASSES: Final[Mapping[str, type[KiiarenError]]] = {
    cls.code: cls
    for cls in (
        KiiarenError,
        NotAuthenticatedError,
        PermissionDeniedError,
        ManagedOnlyError,
        NotFoundError,
        ConflictError,
        IdempotencyConflictError,
        InvalidInputError,
        PayloadTooLargeError,
        InviteLinkError,
        DomainVerificationError,
        RateLimitedError,
        UnsupportedError,
        BackendUnavailableError,
        TokenCollisionError,
        ProviderClosedError,
        ConfigurationError,
        ProviderNotFoundError,
        ProviderUnavailableError,
    )
}
"""The one code -> class table, used by the server (serialise) and the hosted client (rebuild)."""


def error_from_wire(
    code: str, message: str, details: Mapping[str, Any] | None = None, *, http_status: int = 500
) -> KiiarenError:
    """Rebuild the error a server sent as ``{"code", "message", "details"}``.

    An unknown code (a newer server) falls back to the class registered for the closest
    HTTP status, so a caller catching ``NotFoundError`` still catches a future subclass's 404.
    """
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        by_status = {
            401: NotAuthenticatedError,
            403: PermissionDeniedError,
            404: NotFoundError,
            409: ConflictError,
            413: PayloadTooLargeError,
            422: InvalidInputError,
            400: InvalidInputError,
            429: RateLimitedError,
            501: UnsupportedError,
            503: BackendUnavailableError,
        }
        cls = by_status.get(http_status, KiiarenError)
    error = cls._from_wire(message, dict(details or {}))
    # The server's text is authoritative, whatever the class would have written itself.
    error.message = message
    error.args = (message,)
    return error


def is_kiiaren_error(value: object) -> bool:
    """True for any error raised on purpose by the SDK (the reference's ``isKiiarenError``)."""
    return isinstance(value, KiiarenError)


class IdempotencyKeyTaken(Exception):  # noqa: N818 - a signal between layers, not an error
    """Internal: the ``Idempotency-Key`` an operation was bound to is already recorded.

    Raised by a store's effect-bound claim (see
    :class:`kiiaren_core.protocols.EffectBoundIdempotencyStore`) from the operation's first
    write transaction, which it rolls back: the operation had no effect. The hosting server
    catches it and answers from the existing record (replay, or a 409). Deliberately *not* a
    :class:`KiiarenError`, so no domain code turns it into an answer of its own; it never
    crosses the wire.
    """

    def __init__(self, principal: str, key: str) -> None:
        super().__init__("This Idempotency-Key is already recorded.")
        self.principal = principal
        self.key = key

"""Email-domain verification (reference rows 43-50 and 7.2) and the TXT lookups it needs.

An admin claims a domain, publishes ``kiiaren-verification=<token>`` as a TXT record at
``_kiiaren-verification.<domain>`` and asks for verification. Fixes over the reference:

* only admins may verify (S7), and the workspace flags are recomputed after *every* status
  change and removal: ``domain_verified`` = some domain of the workspace is verified,
  ``join_code_enabled`` = not ``domain_verified`` (7.2 items 7 and 9);
* pending claims are not exclusive (S10): many workspaces may claim one domain, only one may
  hold it verified (a partial unique index backs this). The second workspace to verify gets
  DomainVerificationError(``already_claimed``) and its claim stays as it was;
* DNS failures are errors, not "no records" (DomainVerificationError ``dns_error``, nothing
  changes), the lookup runs outside any database transaction, and multi-string TXT records
  are joined.
"""

from __future__ import annotations

import functools
import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any, Final

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kiiaren_core.errors import (
    ConfigurationError,
    ConflictError,
    DomainVerificationError,
    NotFoundError,
)
from kiiaren_core.models import (
    Domain,
    DomainStatus,
    DomainVerificationInstructions,
    DomainVerificationResult,
    EmailDomainCheck,
)
from kiiaren_core.validation import email_domain, normalize_domain
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain._access import (
    Membership,
    as_id,
    find_membership,
    require_admin,
    require_membership,
)
from kiiaren_selfhost.domain._content import row_by_id
from kiiaren_selfhost.domain._tokens import new_verification_token, unique_token
from kiiaren_selfhost.domain._unit import Store
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = ["RECORD_PREFIX", "DomainStoreImpl", "TxtResolver"]

RECORD_PREFIX: Final = "_kiiaren-verification"
"""The label under the domain where the TXT record is published."""
VALUE_PREFIX: Final = "kiiaren-verification="
DOMAIN_NOT_FOUND = "Domain not found."
_MAX_EMAIL_LENGTH: Final = 320

_d = t.domains


def _parse_nameserver(text: str) -> tuple[str, int]:
    """``"host"``, ``"host:port"``, ``"[v6]:port"`` or a bare IPv6 address -> (ip, port)."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65_536:
            raise ValueError(port)
    except ValueError:
        raise ConfigurationError(
            f"Invalid DNS nameserver {text!r}: expected an IP address with an optional port.",
            details={"variable": "KIIAREN_SELFHOST_DNS_NAMESERVERS"},
        ) from None
    return host, number


class TxtResolver:
    """TXT lookups through dnspython, against the configured nameservers or the system's.

    Args:
        nameservers: ``"ip"`` or ``"ip:port"`` (``"[v6]:port"``) entries; empty means the
            system's resolver configuration (read on first use).
        timeout: seconds one lookup may take in all.

    Raises:
        ConfigurationError: a malformed nameserver entry.
    """

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 5.0) -> None:
        self._nameservers = [
            dns.nameserver.Do53Nameserver(host, port)
            for host, port in map(_parse_nameserver, nameservers)
        ]
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    @classmethod
    def from_settings(cls, settings: SelfHostSettings) -> TxtResolver:
        """The resolver ``dns_nameservers`` and ``dns_timeout_seconds`` describe."""
        return cls(settings.dns_nameservers, timeout=settings.dns_timeout_seconds)

    def _get(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            resolver = dns.asyncresolver.Resolver(configure=not self._nameservers)
            if self._nameservers:
                resolver.nameservers = list(self._nameservers)
            resolver.timeout = resolver.lifetime = self._timeout
            self._resolver = resolver
        return self._resolver

    async def txt(self, name: str, *, domain: str) -> list[str]:
        """The TXT strings published at ``name`` (the strings of a multi-string record
        joined), ``[]`` when the name does not exist or has no TXT record.

        Raises:
            DomainVerificationError: reason ``dns_error`` (naming ``domain``) on a timeout,
                SERVFAIL/REFUSED from every nameserver, or no usable resolver configuration.
        """
        try:
            answer = await self._get().resolve(name, "TXT", search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DomainVerificationError(domain, "dns_error") from exc
        if answer.rrset is None:
            return []
        return [b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer.rrset]


def _domain(row: Any) -> Domain:
    return Domain(
        id=str(row.id),
        workspace_id=str(row.workspace_id),
        domain=row.domain,
        status=DomainStatus(row.status),
        verification_token=row.verification_token,
        verified_at=row.verified_at,
        created_at=row.created_at,
        # The creator's account may be gone (ON DELETE SET NULL).
        created_by=str(row.created_by) if row.created_by else "",
    )


async def _recompute_flags(conn: AsyncConnection, workspace_id: str) -> None:
    """Restore the invariant ``domain_verified`` <=> a verified domain exists, and
    ``join_code_enabled`` = not ``domain_verified`` (reference 7.2 item 9)."""
    verified = sa.exists().where(_d.c.workspace_id == workspace_id, _d.c.status == "verified")
    await conn.execute(
        t.workspaces.update()
        .where(t.workspaces.c.id == workspace_id)
        .values(domain_verified=verified, join_code_enabled=~verified, updated_at=utcnow())
    )


async def _load(conn: AsyncConnection, domain_id: str, user_id: str) -> tuple[Any, Membership]:
    """The domain row and the caller's admin membership of its workspace.

    Raises:
        NotFoundError: ``Domain not found.`` for a missing, malformed or foreign id.
        PermissionDeniedError: the caller is a plain member of the domain's workspace.
    """
    row = await row_by_id(conn, _d, domain_id)
    if row is None:
        raise NotFoundError(DOMAIN_NOT_FOUND)
    me = await require_membership(conn, str(row.workspace_id), user_id, missing=DOMAIN_NOT_FOUND)
    return row, require_admin(me)


class DomainStoreImpl(Store):
    """``persistence.domain`` of the self-host provider."""

    @functools.cached_property
    def _resolver(self) -> TxtResolver:
        # Built on first use: views are created per request and most never verify.
        return TxtResolver.from_settings(self._rt.settings)

    async def add(self, workspace_id: str, domain: str) -> Domain:
        """Claim ``domain`` (normalised and validated) for the workspace (admins).

        Raises:
            InvalidInputError: ``Invalid domain format: ...``.
            ConflictError: ``Domain "<d>" is already added to this workspace.``, or
                ``Domain "<d>" is already claimed by another workspace.`` when another
                workspace holds it *verified* (pending claims elsewhere do not block).
            NotFoundError / PermissionDeniedError: outsiders / plain members.
        """
        name = normalize_domain(domain)
        async with self.mutation() as tx:
            me = require_admin(await require_membership(tx.conn, workspace_id, tx.user_id))
            claims = (
                await tx.conn.execute(
                    sa.select(_d.c.workspace_id, _d.c.status).where(_d.c.domain == name)
                )
            ).all()
            if any(str(c.workspace_id) == me.workspace_id for c in claims):
                raise ConflictError(f'Domain "{name}" is already added to this workspace.')
            if any(c.status == DomainStatus.VERIFIED.value for c in claims):
                raise ConflictError(f'Domain "{name}" is already claimed by another workspace.')

            async def taken(token: str) -> bool:
                found = await tx.conn.execute(
                    sa.select(_d.c.id).where(_d.c.verification_token == token)
                )
                return found.first() is not None

            token = await unique_token(new_verification_token, taken, "verification token")
            try:
                row = (
                    await tx.conn.execute(
                        _d.insert()
                        .values(
                            id=str(uuid.uuid4()),
                            workspace_id=me.workspace_id,
                            domain=name,
                            verification_token=token,
                            status=DomainStatus.PENDING.value,
                            created_at=utcnow(),
                            created_by=tx.user_id,
                        )
                        .returning(*_d.c)
                    )
                ).one()
            except sa.exc.IntegrityError:
                # A concurrent add of the same domain to this workspace committed first.
                raise ConflictError(
                    f'Domain "{name}" is already added to this workspace.'
                ) from None
            tx.emit(me.workspace_id, "domain.added", {"domain_id": str(row.id), "domain": name})
            tx.audit("domain.add", "domain", str(row.id), me.workspace_id, {"domain": name})
        return _domain(row)

    async def get_by_id(self, domain_id: str) -> Domain | None:
        """One domain, for admins of its workspace (None for everyone else)."""
        async with self.query() as q:
            row = await row_by_id(q.conn, _d, domain_id)
            if row is None:
                return None
            me = await find_membership(q.conn, str(row.workspace_id), q.user_id)
        return _domain(row) if me is not None and me.is_admin else None

    async def list(self, workspace_id: str) -> list[Domain]:
        """The workspace's domains in the order they were added (admins; ``[]`` for
        outsiders, PermissionDeniedError for plain members)."""
        async with self.query() as q:
            me = await find_membership(q.conn, workspace_id, q.user_id)
            if me is None:
                return []
            require_admin(me)
            rows = (
                await q.conn.execute(
                    sa.select(_d)
                    .where(_d.c.workspace_id == me.workspace_id)
                    .order_by(_d.c.created_at, _d.c.id)
                )
            ).all()
        return [_domain(row) for row in rows]

    async def get_verification_instructions(self, domain_id: str) -> DomainVerificationInstructions:
        """The TXT record to publish and the six instruction lines of reference 7.2 (admins).

        Raises:
            NotFoundError: ``Domain not found.``; PermissionDeniedError for plain members.
        """
        async with self.query() as q:
            row, _ = await _load(q.conn, domain_id, str(q.user_id))
        value = f"{VALUE_PREFIX}{row.verification_token}"
        return DomainVerificationInstructions(
            record_name=f"{RECORD_PREFIX}.{row.domain}",
            record_value=value,
            instructions=(
                f"Go to your DNS provider for {row.domain}",
                "Add a new TXT record",
                f"Set the record name to: {RECORD_PREFIX}",
                f"Set the record value to: {value}",
                "Wait for DNS propagation (usually 5-15 minutes)",
                'Click "Verify" to complete verification',
            ),
        )

    async def verify(self, domain_id: str) -> DomainVerificationResult:
        """Look the TXT record up and record the outcome (admins; rate-limited).

        The lookup runs between two short transactions, never inside one. A matching record
        marks the domain verified; no record or no match marks it failed (a verified domain
        that fails a re-check is downgraded) with the reference's text in ``error``. The
        workspace flags follow in the same transaction.

        Raises:
            DomainVerificationError: ``dns_error`` when DNS cannot answer, or
                ``already_claimed`` when another workspace holds the domain verified; in
                both cases nothing changes.
            NotFoundError / PermissionDeniedError: outsiders / plain members.
            RateLimitedError: too many verifications.
        """
        await self._auth.ready()
        claims = await self._auth.claims()
        await self._rt.limiter.hit(
            "domain_verify",
            self._rt.limit("domain_verify"),
            [("user", claims.user_id), ("domain", as_id(domain_id))],
        )
        async with self.query() as q:
            row, _ = await _load(q.conn, domain_id, str(q.user_id))
        dns_name = f"{RECORD_PREFIX}.{row.domain}"
        records = await self._resolver.txt(dns_name, domain=row.domain)
        expected = f"{VALUE_PREFIX}{row.verification_token}"
        error: str | None = None
        if not records:
            error = (
                f"No TXT records found at {dns_name}. Please add the DNS record and wait for "
                "propagation (usually 5-15 minutes)."
            )
        elif not any(record.strip() == expected for record in records):
            error = (
                f"TXT records found at {dns_name} but none match the expected value. "
                f"Found: {', '.join(records)}"
            )
        async with self.mutation() as tx:
            # Re-read: the domain may have been removed, or the caller demoted, meanwhile.
            row, me = await _load(tx.conn, domain_id, tx.user_id)
            if error is None:
                await self._mark_verified(tx.conn, row)
            else:
                await tx.conn.execute(
                    _d.update()
                    .where(_d.c.id == row.id)
                    .values(status=DomainStatus.FAILED.value, verified_at=None)
                )
            await _recompute_flags(tx.conn, me.workspace_id)
            tx.emit(
                me.workspace_id,
                "domain.verified" if error is None else "domain.verification_failed",
                {"domain_id": str(row.id), "domain": row.domain, "error": error},
            )
            tx.audit(
                "domain.verify", "domain", str(row.id), me.workspace_id, {"success": error is None}
            )
            row = (await tx.conn.execute(sa.select(_d).where(_d.c.id == row.id))).one()
        return DomainVerificationResult(
            success=error is None, domain=_domain(row), error=error, records_found=tuple(records)
        )

    @staticmethod
    async def _mark_verified(conn: AsyncConnection, row: Any) -> None:
        """Set the claim verified, unless another workspace holds the domain verified."""
        other = await conn.execute(
            sa.select(_d.c.id).where(
                _d.c.domain == row.domain,
                _d.c.status == DomainStatus.VERIFIED.value,
                _d.c.id != row.id,
            )
        )
        if other.first() is not None:
            raise DomainVerificationError(row.domain, "already_claimed")
        try:
            await conn.execute(
                _d.update()
                .where(_d.c.id == row.id)
                .values(status=DomainStatus.VERIFIED.value, verified_at=utcnow())
            )
        except sa.exc.IntegrityError:
            # Another workspace's verification committed between the check and this update
            # (the partial unique index on verified domains).
            raise DomainVerificationError(row.domain, "already_claimed") from None

    async def remove(self, domain_id: str) -> None:
        """Delete the claim (admins) and recompute the workspace flags.

        Raises:
            NotFoundError: ``Domain not found.``; PermissionDeniedError for plain members.
        """
        async with self.mutation() as tx:
            row, me = await _load(tx.conn, domain_id, tx.user_id)
            await tx.conn.execute(_d.delete().where(_d.c.id == row.id))
            await _recompute_flags(tx.conn, me.workspace_id)
            tx.emit(
                me.workspace_id, "domain.removed", {"domain_id": str(row.id), "domain": row.domain}
            )
            tx.audit(
                "domain.remove", "domain", str(row.id), me.workspace_id, {"domain": row.domain}
            )

    async def check_email(self, workspace_id: str, email: str) -> EmailDomainCheck:
        """Whether ``email``'s domain (exactly; subdomains do not count) is a verified
        domain of the workspace. Public: no session needed; unknown workspaces and malformed
        input answer ``matches=False``."""
        key = as_id(workspace_id)
        domain = (
            email_domain(email)
            if isinstance(email, str) and len(email) <= _MAX_EMAIL_LENGTH
            else None
        )
        if key is None or domain is None:
            return EmailDomainCheck(matches=False)
        async with self.query(anonymous=True) as q:
            found = (
                await q.conn.execute(
                    sa.select(_d.c.id).where(
                        _d.c.workspace_id == key,
                        _d.c.domain == domain,
                        _d.c.status == DomainStatus.VERIFIED.value,
                    )
                )
            ).first()
        return (
            EmailDomainCheck(matches=True, domain=domain)
            if found
            else EmailDomainCheck(matches=False)
        )

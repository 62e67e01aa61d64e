"""Self-host content behaviour the conformance suite cannot reach through the protocols.

Domain verification runs against a real DNS server served on 127.0.0.1 by the test (UDP,
messages built with dnspython), so the provider's resolver, timeouts and error handling are
exercised for real. Also here: invite redemption under concurrency, expiry at the exact
boundary (the invite module's clock is frozen), domain auto-join with a verified email
(through the real email-verification flow and a capturing mailer), the autosave cost of a
board update, content size limits and the rows a workspace deletion leaves behind (none).

Decision documented by these tests: when a second workspace verifies a domain another
workspace already holds verified, ``verify`` raises DomainVerificationError(``already_claimed``)
and leaves the second claim as it was (pending or failed), like a DNS error does.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest
import sqlalchemy as sa

from kiiaren_core.errors import (
    ConfigurationError,
    ConflictError,
    DomainVerificationError,
    InvalidInputError,
    InviteLinkError,
    PayloadTooLargeError,
    RateLimitedError,
)
from kiiaren_core.models import DomainStatus, InviteLinkStatus, InviteRedemption, Member, Role
from kiiaren_core.testing.base import unique_email
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.auth.mailer import OutgoingEmail
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.domain import invites as invites_module
from kiiaren_selfhost.domain.boards import MAX_EXCALIDRAW_BYTES
from kiiaren_selfhost.domain.docs import MAX_DOC_CONTENT_BYTES
from kiiaren_selfhost.domain.domains import TxtResolver
from tests.selfhost.conftest import TEST_OPTIONS

pytestmark = pytest.mark.anyio

PASSWORD = "Content-test-password-1"
REQUIRES_INVITE = (
    "This workspace requires an invite link to join. Contact a workspace admin to get an invite."
)


# --- a DNS server on loopback ---------------------------------------------------------------


class FakeDns(asyncio.DatagramProtocol):
    """A tiny authoritative server: TXT answers from :attr:`records`, NXDOMAIN otherwise.

    A name mapped to an empty list exists without TXT records (NOERROR, empty answer); a
    name in :attr:`servfail` gets SERVFAIL.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[bytes, ...]]] = {}
        self.servfail: set[str] = set()
        self.transport: asyncio.DatagramTransport | None = None

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def publish(self, name: str, *strings: str) -> None:
        """Add one TXT record at ``name`` (several strings make a multi-string record)."""
        self.records.setdefault(name.lower(), []).append(tuple(s.encode() for s in strings))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and self.records[name]:
            rdatas = [
                dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
                for strings in self.records[name]
            ]
            response.answer.append(dns.rrset.from_rdata_list(question.name, 60, rdatas))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[FakeDns]:
    server = FakeDns()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    yield server
    transport.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on loopback that receives queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def record_name(domain: str) -> str:
    return f"_kiiaren-verification.{domain}"


def unique_domain() -> str:
    return f"kiiaren-{secrets.token_hex(6)}.example.org"


# --- providers and users ----------------------------------------------------------------------


class CapturingMailer:
    """Keeps every email instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []

    async def send(self, message: OutgoingEmail) -> None:
        self.sent.append(message)

    def token_for(self, address: str) -> str:
        text = next(m.text for m in reversed(self.sent) if m.to == address)
        match = re.search(r"token=([A-Za-z0-9_\-]+)", text)
        assert match is not None, text
        return match.group(1)


MakeProvider = Callable[..., Awaitable[SelfHostProvider]]


@pytest.fixture
async def make_provider(selfhost_url: str, tmp_path: Path) -> AsyncIterator[MakeProvider]:
    """Factory: a provider on the session's database with extra settings."""
    made: list[SelfHostProvider] = []

    async def make(*, mailer: CapturingMailer | None = None, **options: Any) -> SelfHostProvider:
        provider = SelfHostProvider(
            database_url=selfhost_url,
            storage_path=str(tmp_path / "files"),
            mailer=mailer,
            **{**TEST_OPTIONS, **options},
        )
        await provider.initialize()
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


@pytest.fixture
def mailer() -> CapturingMailer:
    return CapturingMailer()


@pytest.fixture
async def provider(
    make_provider: MakeProvider, dns_server: FakeDns, mailer: CapturingMailer
) -> SelfHostProvider:
    """A provider resolving TXT records through :func:`dns_server`."""
    return await make_provider(
        mailer=mailer,
        dns_nameservers=(f"127.0.0.1:{dns_server.port}",),
        dns_timeout_seconds=2.0,
    )


SignUp = Callable[..., Awaitable[SelfHostProvider]]


@pytest.fixture
async def sign_up(provider: SelfHostProvider) -> AsyncIterator[SignUp]:
    """Factory: a view signed in as a fresh user of ``provider`` (or of ``on``)."""
    views: list[SelfHostProvider] = []

    async def make(
        name: str = "User", *, email: str | None = None, on: SelfHostProvider | None = None
    ) -> SelfHostProvider:
        view = (on or provider).with_session(None)
        views.append(view)
        await view.auth.sign_up_with_password(email or unique_email(), PASSWORD, name=name)
        return view

    yield make
    for view in views:
        await view.aclose()


async def verified_domain(owner: SelfHostProvider, dns_server: FakeDns, workspace_id: str) -> str:
    """Claim a fresh domain for the workspace, publish its record and verify it."""
    name = unique_domain()
    domain = await owner.persistence.domain.add(workspace_id, name)
    dns_server.publish(record_name(name), f"kiiaren-verification={domain.verification_token}")
    result = await owner.persistence.domain.verify(domain.id)
    assert result.success, result.error
    return name


async def flags(owner: SelfHostProvider, workspace_id: str) -> tuple[bool, bool]:
    workspace = await owner.persistence.workspace.get(workspace_id)
    assert workspace is not None
    return workspace.domain_verified, workspace.join_code_enabled


# --- the resolver -----------------------------------------------------------------------------


async def test_resolver_answers_and_errors(dns_server: FakeDns) -> None:
    dns_server.publish("multi.example.org", "kiiaren-verification=", "abc", "def")
    dns_server.publish("multi.example.org", "v=spf1 -all")
    dns_server.records["empty.example.org"] = []
    dns_server.servfail.add("broken.example.org")
    resolver = TxtResolver([f"127.0.0.1:{dns_server.port}"], timeout=2.0)
    found = await resolver.txt("multi.example.org", domain="example.org")
    assert sorted(found) == ["kiiaren-verification=abcdef", "v=spf1 -all"]
    assert await resolver.txt("missing.example.org", domain="example.org") == []
    assert await resolver.txt("empty.example.org", domain="example.org") == []
    with pytest.raises(DomainVerificationError) as caught:
        await resolver.txt("broken.example.org", domain="example.org")
    assert (caught.value.reason, caught.value.domain) == ("dns_error", "example.org")


async def test_resolver_times_out_as_dns_error(silent_port: int) -> None:
    resolver = TxtResolver([f"127.0.0.1:{silent_port}"], timeout=0.3)
    with pytest.raises(DomainVerificationError) as caught:
        await resolver.txt("any.example.org", domain="example.org")
    assert caught.value.reason == "dns_error"


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353"])
def test_resolver_accepts_nameserver_forms(entry: str) -> None:
    TxtResolver([entry])


@pytest.mark.parametrize("entry", ["dns.example.org", "127.0.0.1:0", "127.0.0.1:x", "[::1]:99999"])
def test_resolver_refuses_bad_nameservers(entry: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TxtResolver([entry])
    assert caught.value.details["variable"] == "KIIAREN_SELFHOST_DNS_NAMESERVERS"


# --- domain verification ----------------------------------------------------------------------


async def test_verify_success_sets_flags_and_auto_join_needs_a_verified_email(
    provider: SelfHostProvider, dns_server: FakeDns, sign_up: SignUp, mailer: CapturingMailer
) -> None:
    owner = await sign_up("Owner")
    ws = await owner.persistence.workspace.create("Verified")
    name = unique_domain()
    domain = await owner.persistence.domain.add(ws.id, name)
    # A multi-string record: the strings are joined before comparing.
    dns_server.publish(record_name(name), "kiiaren-verification=", domain.verification_token)
    dns_server.publish(record_name(name), "v=spf1 -all")
    result = await owner.persistence.domain.verify(domain.id)
    assert (result.success, result.error) == (True, None)
    assert result.domain.status is DomainStatus.VERIFIED
    assert result.domain.verified_at is not None
    assert sorted(result.records_found) == sorted(
        [f"kiiaren-verification={domain.verification_token}", "v=spf1 -all"]
    )
    assert await flags(owner, ws.id) == (True, False)

    anonymous = provider.with_session(None)
    assert (await anonymous.persistence.domain.check_email(ws.id, f"ADA@{name}")).matches
    assert (await anonymous.persistence.domain.check_email(ws.id, f"ADA@{name}")).domain == name
    assert not (await anonymous.persistence.domain.check_email(ws.id, f"ada@sub.{name}")).matches
    await anonymous.aclose()

    # An unverified address of the domain does not auto-join, and join codes are off.
    address = unique_email("ada").replace("@example.com", f"@{name}")
    ada = await sign_up("Ada", email=address)
    assert ws.join_code is not None
    with pytest.raises(InvalidInputError) as caught:
        await ada.persistence.workspace.join(ws.id, join_code=ws.join_code)
    assert caught.value.message == REQUIRES_INVITE
    await ada.auth.request_email_verification()
    await ada.auth.verify_email(mailer.token_for(address.lower()))
    member = await ada.persistence.workspace.join(ws.id)
    assert member.role is Role.MEMBER

    # Invite links still work for anyone, verified domain or not.
    invite = await owner.persistence.invite.create(ws.id)
    bob = await sign_up("Bob")
    assert (
        await bob.persistence.workspace.join(ws.id, invite_code=invite.code)
    ).role is Role.MEMBER


async def test_missing_or_wrong_record_fails_with_the_reference_texts(
    provider: SelfHostProvider, dns_server: FakeDns, sign_up: SignUp
) -> None:
    owner = await sign_up("Owner")
    ws = await owner.persistence.workspace.create("Failing")
    name = unique_domain()
    domain = await owner.persistence.domain.add(ws.id, name)
    dns_name = record_name(name)
    result = await owner.persistence.domain.verify(domain.id)
    assert (result.success, result.records_found) == (False, ())
    assert result.error == (
        f"No TXT records found at {dns_name}. Please add the DNS record and wait for "
        "propagation (usually 5-15 minutes)."
    )
    assert result.domain.status is DomainStatus.FAILED
    dns_server.records[dns_name] = []  # the name exists, without TXT records
    assert (await owner.persistence.domain.verify(domain.id)).error == result.error
    dns_server.publish(dns_name, "kiiaren-verification=wrong")
    dns_server.publish(dns_name, "v=spf1 -all")
    result = await owner.persistence.domain.verify(domain.id)
    assert result.success is False
    assert result.error is not None
    assert result.error.startswith(
        f"TXT records found at {dns_name} but none match the expected value. Found: "
    )
    assert sorted(result.error.split("Found: ")[1].split(", ")) == [
        "kiiaren-verification=wrong",
        "v=spf1 -all",
    ]
    stored = await owner.persistence.domain.get_by_id(domain.id)
    assert stored is not None
    assert (stored.status, stored.verified_at) == (DomainStatus.FAILED, None)
    assert await flags(owner, ws.id) == (False, True)


async def test_failed_recheck_and_removal_recompute_the_flags(
    provider: SelfHostProvider, dns_server: FakeDns, sign_up: SignUp
) -> None:
    owner = await sign_up("Owner")
    ws = await owner.persistence.workspace.create("Recheck")
    first = await verified_domain(owner, dns_server, ws.id)
    second = await verified_domain(owner, dns_server, ws.id)
    domains = {d.domain: d for d in await owner.persistence.domain.list(ws.id)}
    assert await flags(owner, ws.id) == (True, False)
    # The first record disappears: a re-check downgrades it, the second still holds.
    del dns_server.records[record_name(first)]
    result = await owner.persistence.domain.verify(domains[first].id)
    assert (result.success, result.domain.status) == (False, DomainStatus.FAILED)
    assert result.domain.verified_at is None
    assert await flags(owner, ws.id) == (True, False)
    # The second is removed: no verified domain remains, join codes work again.
    await owner.persistence.domain.remove(domains[second].id)
    assert await flags(owner, ws.id) == (False, True)
    joiner = await sign_up("Joiner")
    code = (await owner.persistence.workspace.get(ws.id)).join_code  # type: ignore[union-attr]
    assert code is not None
    assert (await joiner.persistence.workspace.join(ws.id, join_code=code)).role is Role.MEMBER
    async with provider._runtime.db.read() as conn:
        logged = await conn.execute(
            sa.select(t.events.c.type, t.events.c.payload)
            .where(t.events.c.workspace_id == ws.id, t.events.c.type.startswith("domain."))
            .order_by(t.events.c.seq)
        )
        events = [(row.type, row.payload["domain"], row.payload["error"]) for row in logged]
    assert events == [
        ("domain.added", first, None),
        ("domain.verified", first, None),
        ("domain.added", second, None),
        ("domain.verified", second, None),
        ("domain.verification_failed", first, result.error),
        ("domain.removed", second, None),
    ]


async def test_dns_errors_change_nothing(
    make_provider: MakeProvider,
    provider: SelfHostProvider,
    dns_server: FakeDns,
    sign_up: SignUp,
    silent_port: int,
) -> None:
    owner = await sign_up("Owner")
    ws = await owner.persistence.workspace.create("Dns errors")
    name = await verified_domain(owner, dns_server, ws.id)
    (domain,) = await owner.persistence.domain.list(ws.id)
    dns_server.servfail.add(record_name(name))
    with pytest.raises(DomainVerificationError) as caught:
        await owner.persistence.domain.verify(domain.id)
    assert (caught.value.reason, caught.value.domain) == ("dns_error", name)
    # Nobody answers at all: a timeout is a DNS error too.
    silent = await make_provider(
        dns_nameservers=(f"127.0.0.1:{silent_port}",), dns_timeout_seconds=0.3
    )
    assert owner.auth.tokens is not None
    through_silent = silent.with_session(owner.auth.tokens)
    with pytest.raises(DomainVerificationError) as caught:
        await through_silent.persistence.domain.verify(domain.id)
    assert caught.value.reason == "dns_error"
    await through_silent.aclose()
    assert await owner.persistence.domain.get_by_id(domain.id) == domain
    assert await flags(owner, ws.id) == (True, False)


async def test_verified_claims_are_exclusive(
    provider: SelfHostProvider, dns_server: FakeDns, sign_up: SignUp
) -> None:
    alice, bob = await sign_up("Alice"), await sign_up("Bob")
    ws_a = await alice.persistence.workspace.create("Team A")
    ws_b = await bob.persistence.workspace.create("Team B")
    name = unique_domain()
    claim_a = await alice.persistence.domain.add(ws_a.id, name)
    claim_b = await bob.persistence.domain.add(ws_b.id, name)  # pending claims coexist
    for claim in (claim_a, claim_b):
        dns_server.publish(record_name(name), f"kiiaren-verification={claim.verification_token}")
    assert (await alice.persistence.domain.verify(claim_a.id)).success
    with pytest.raises(DomainVerificationError) as caught:
        await bob.persistence.domain.verify(claim_b.id)
    assert (caught.value.reason, caught.value.domain) == ("already_claimed", name)
    assert await bob.persistence.domain.get_by_id(claim_b.id) == claim_b, "left as it was"
    assert await flags(bob, ws_b.id) == (False, True)
    ws_c = await alice.persistence.workspace.create("Team C")
    with pytest.raises(ConflictError) as conflict:
        await alice.persistence.domain.add(ws_c.id, name)
    assert conflict.value.message == f'Domain "{name}" is already claimed by another workspace.'
    # Once A lets go, B may verify.
    await alice.persistence.domain.remove(claim_a.id)
    assert await flags(alice, ws_a.id) == (False, True)
    assert (await bob.persistence.domain.verify(claim_b.id)).success
    assert await flags(bob, ws_b.id) == (True, False)


async def test_verification_is_rate_limited(
    make_provider: MakeProvider, dns_server: FakeDns, sign_up: SignUp
) -> None:
    limited = await make_provider(
        dns_nameservers=(f"127.0.0.1:{dns_server.port}",), rate_limit_domain_verify="2/60"
    )
    owner = await sign_up("Owner", on=limited)
    ws = await owner.persistence.workspace.create("Limited")
    domain = await owner.persistence.domain.add(ws.id, unique_domain())
    for _ in range(2):
        assert (await owner.persistence.domain.verify(domain.id)).success is False
    with pytest.raises(RateLimitedError) as caught:
        await owner.persistence.domain.verify(domain.id)
    assert caught.value.retry_after > 0


# --- invites under concurrency and at the expiry boundary -----------------------------------


async def test_concurrent_redemptions_never_exceed_max_uses(
    provider: SelfHostProvider, sign_up: SignUp
) -> None:
    owner = await sign_up("Owner")
    users = await asyncio.gather(*(sign_up(f"Racer {n}") for n in range(10)))

    async def race(
        attempt: Callable[[SelfHostProvider], Awaitable[InviteRedemption | Member]],
        contenders: list[SelfHostProvider],
    ) -> tuple[int, list[BaseException]]:
        results = await asyncio.gather(*(attempt(u) for u in contenders), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        return len(results) - len(errors), errors

    # 10 users redeem one link limited to 3 uses.
    ws = await owner.persistence.workspace.create("Race one")
    invite = await owner.persistence.invite.create(ws.id, max_uses=3)
    won, errors = await race(lambda u: u.persistence.invite.redeem(invite.code), users)
    assert won == 3
    assert all(isinstance(e, InviteLinkError) and e.reason == "max_uses" for e in errors), errors
    (link,) = await owner.persistence.invite.list(ws.id)
    assert (link.used_count, link.status) == (3, InviteLinkStatus.EXHAUSTED)
    assert len(await owner.persistence.member.get(ws.id)) == 4

    # The same through workspace.join, against another workspace's link.
    ws2 = await owner.persistence.workspace.create("Race two")
    invite2 = await owner.persistence.invite.create(ws2.id, max_uses=4)
    won, errors = await race(
        lambda u: u.persistence.workspace.join(ws2.id, invite_code=invite2.code), users
    )
    assert won == 4
    assert all(isinstance(e, InviteLinkError) and e.reason == "max_uses" for e in errors), errors
    (link,) = await owner.persistence.invite.list(ws2.id)
    assert link.used_count == 4

    # One user redeeming twice at once (a double click) joins once and spends one use.
    ws3 = await owner.persistence.workspace.create("Double click")
    invite3 = await owner.persistence.invite.create(ws3.id, max_uses=5)
    won, errors = await race(
        lambda u: u.persistence.invite.redeem(invite3.code), [users[0], users[0]]
    )
    assert won == 1
    assert [type(e) for e in errors] == [ConflictError]
    (link,) = await owner.persistence.invite.list(ws3.id)
    assert link.used_count == 1
    async with provider._runtime.db.read() as conn:
        recorded = await conn.execute(
            sa.select(t.invite_redemptions.c.user_id, t.invite_redemptions.c.member_id).where(
                t.invite_redemptions.c.invite_id == invite3.id
            )
        )
        rows = recorded.all()
    member = await users[0].persistence.member.get_current(ws3.id)
    assert member is not None
    assert [(str(r.user_id), str(r.member_id)) for r in rows] == [(member.user_id, member.id)]


async def test_expiry_boundary_is_strict(
    provider: SelfHostProvider, sign_up: SignUp, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, guest = await sign_up("Owner"), await sign_up("Guest")
    ws = await owner.persistence.workspace.create("Expiry")
    invite = await owner.persistence.invite.create(ws.id, expires_in_hours=1)
    now = utcnow().replace(microsecond=0) + timedelta(minutes=30)
    monkeypatch.setattr(invites_module, "utcnow", lambda: now)

    async def expire_at(moment: Any, **values: Any) -> None:
        async with provider._runtime.db.write() as conn:
            await conn.execute(
                t.invite_links.update()
                .where(t.invite_links.c.id == invite.id)
                .values(expires_at=moment, **values)
            )

    # Expiring exactly now is still valid (the reference's strict "<").
    await expire_at(now)
    assert await guest.persistence.invite.get_by_code(invite.code) is not None
    assert (await guest.persistence.invite.validate_for_redemption(invite.code)).valid
    (link,) = await owner.persistence.invite.list(ws.id)
    assert link.status is InviteLinkStatus.ACTIVE
    # One microsecond earlier it has expired; expiry is reported before revocation...
    await expire_at(now - timedelta(microseconds=1), revoked_at=now)
    assert await guest.persistence.invite.get_by_code(invite.code) is None
    check = await guest.persistence.invite.validate_for_redemption(invite.code)
    assert (check.valid, check.error) == (False, "Invite link has expired.")
    with pytest.raises(InviteLinkError) as caught:
        await guest.persistence.invite.redeem(invite.code)
    assert (caught.value.reason, caught.value.message) == ("expired", "Invite link has expired.")
    # ...while the admin's status gives revocation precedence.
    (link,) = await owner.persistence.invite.list(ws.id)
    assert link.status is InviteLinkStatus.REVOKED
    await expire_at(now - timedelta(microseconds=1), revoked_at=None)
    (link,) = await owner.persistence.invite.list(ws.id)
    assert link.status is InviteLinkStatus.EXPIRED
    await expire_at(now)
    assert (await guest.persistence.invite.redeem(invite.code)).workspace_id == ws.id


# --- docs and boards --------------------------------------------------------------------------


async def test_board_autosave_is_one_statement_on_boards(
    provider: SelfHostProvider, sign_up: SignUp
) -> None:
    owner = await sign_up("Owner")
    ws = await owner.persistence.workspace.create("Autosave")
    board = await owner.persistence.board.create(ws.id, title="Board")
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = provider._runtime.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        saved = await owner.persistence.board.update(board.id, excalidraw_data='{"elements":[]}')
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert saved.excalidraw_data == '{"elements":[]}'
    on_boards = [s for s in statements if re.search(r"\bboards\b", s)]
    assert len(on_boards) == 1, on_boards
    assert on_boards[0].lstrip().upper().startswith("UPDATE BOARDS")


async def test_content_limits_count_bytes(provider: SelfHostProvider, sign_up: SignUp) -> None:
    owner = await sign_up("Owner")
    ws = await owner.persistence.workspace.create("Limits")
    doc = await owner.persistence.doc.create(ws.id, title="Big")
    board = await owner.persistence.board.create(ws.id, title="Big")
    exact = "é" * (MAX_DOC_CONTENT_BYTES // 2)  # two bytes each: exactly the limit
    assert (await owner.persistence.doc.update(doc.id, content=exact)).content == exact
    with pytest.raises(PayloadTooLargeError) as caught:
        await owner.persistence.doc.update(doc.id, content=exact + "x")
    assert caught.value.details == {"field": "content", "max_bytes": MAX_DOC_CONTENT_BYTES}
    scene = "x" * MAX_EXCALIDRAW_BYTES
    assert (await owner.persistence.board.update(board.id, excalidraw_data=scene)).title == "Big"
    with pytest.raises(PayloadTooLargeError):
        await owner.persistence.board.update(board.id, excalidraw_data=scene + "é")


async def test_workspace_deletion_leaves_no_rows(
    provider: SelfHostProvider, dns_server: FakeDns, sign_up: SignUp
) -> None:
    owner, guest = await sign_up("Owner"), await sign_up("Guest")
    p = owner.persistence
    ws = await p.workspace.create("Doomed")
    parent = await p.doc.create(ws.id, title="Parent")
    await p.doc.create(ws.id, title="Child", parent_document_id=parent.id)
    await p.board.create(ws.id, title="Board")
    invite = await p.invite.create(ws.id)
    await guest.persistence.invite.redeem(invite.code)
    await verified_domain(owner, dns_server, ws.id)
    await p.domain.add(ws.id, unique_domain())
    await p.workspace.remove(ws.id)
    async with provider._runtime.db.read() as conn:
        for table in (t.docs, t.boards, t.invite_links, t.domains, t.members, t.channels):
            count = await conn.scalar(
                sa.select(sa.func.count()).select_from(table).where(table.c.workspace_id == ws.id)
            )
            assert count == 0, table.name
        redemptions = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.invite_redemptions)
            .where(t.invite_redemptions.c.invite_id == invite.id)
        )
        assert redemptions == 0

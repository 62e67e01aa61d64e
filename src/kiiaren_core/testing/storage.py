"""Conformance area ``storage``: tickets, uploads, URLs, limits, visibility and removal.

Written against the protocols only, so it runs against any provider, the hosted one over
HTTP included. Moving bytes to a ticket's URL and back needs an HTTP client this package may
not import; a test class that can do it overrides :meth:`StorageConformance.object_transport`
(see :class:`ObjectTransport`), otherwise the tests that need it are skipped and the rest use
``storage.upload``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from kiiaren_core.errors import (
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kiiaren_core.models import Member, Role, StoredObject, UploadTicket, Workspace
from kiiaren_core.protocols import BackendProvider
from kiiaren_core.testing.base import ConformanceBase, TestUser

__all__ = ["ObjectTransport", "StorageConformance"]

MakeUser = Callable[..., Awaitable[TestUser]]
MISSING_ID = "00000000-0000-4000-8000-000000000000"
"""A well-formed id that names nothing."""
BAD_IDS = (MISSING_ID, "not-an-id", "", "../../etc/passwd", "x" * 500)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
"""Bytes that start like a PNG file (nothing checks more than that)."""
URL_SLACK = timedelta(seconds=5)
"""Clock slack allowed when comparing a ticket's expiry with the declared lifetime."""


class ObjectTransport(Protocol):
    """How a test sends bytes to a ticket and reads them from a download URL."""

    async def send(self, ticket: UploadTicket, data: bytes) -> None:
        """Upload ``data`` exactly as a client would (``ticket.method`` to ``ticket.url``
        with ``ticket.headers``), raising if the upload is refused. When it returns, the
        object has arrived (a provider may still verify it on first use)."""
        ...

    async def fetch(self, url: str) -> bytes:
        """The bytes served at a download URL (raising unless served)."""
        ...


class StorageConformance(ConformanceBase):
    """``provider.storage``.

    Fixtures a test class may override: :meth:`object_transport`.
    """

    pytestmark = [pytest.mark.anyio, pytest.mark.requires_capability("storage")]

    @pytest.fixture
    def object_transport(self) -> ObjectTransport | None:
        """Override to move bytes over ticket and download URLs; None skips those tests."""
        return None

    @pytest.fixture
    def transport(self, object_transport: ObjectTransport | None) -> ObjectTransport:
        if object_transport is None:
            pytest.skip("the test class provides no object_transport")
        return object_transport

    @pytest.fixture
    async def member(self, make_user: MakeUser, user: TestUser, workspace: Workspace) -> TestUser:
        """A plain member of ``workspace`` (joined with the join code)."""
        member = await make_user("Member")
        await _join(user, workspace, member)
        return member

    @pytest.fixture
    async def outsider(self, make_user: MakeUser) -> TestUser:
        """A signed-in user who is not a member of ``workspace``."""
        return await make_user("Outsider")

    @pytest.fixture
    async def anonymous(self, provider: BackendProvider) -> AsyncIterator[BackendProvider]:
        """A signed-out view."""
        view = provider.with_session(None)
        yield view
        await view.aclose()

    @pytest.fixture
    def max_upload_bytes(self, provider: BackendProvider) -> int:
        return provider.capabilities.limits.max_upload_bytes

    # --- upload and read back -----------------------------------------------------------

    async def test_upload_returns_metadata(self, user: TestUser, workspace: Workspace) -> None:
        before = datetime.now(UTC)
        stored = await user.provider.storage.upload(
            workspace.id, PNG, content_type="image/png", filename="cat.png"
        )
        assert isinstance(stored, StoredObject)
        assert stored.id
        assert stored.workspace_id == workspace.id
        assert stored.content_type == "image/png"
        assert stored.size_bytes == len(PNG)
        assert stored.filename == "cat.png"
        assert stored.uploaded_by == user.user_id
        assert stored.attached is False
        assert before - URL_SLACK <= stored.created_at <= datetime.now(UTC) + URL_SLACK
        assert await user.provider.storage.get_metadata(stored.id) == stored

    async def test_upload_without_filename(self, user: TestUser, workspace: Workspace) -> None:
        stored = await user.provider.storage.upload(
            workspace.id, b"hello", content_type="text/plain"
        )
        assert stored.filename is None
        assert stored.size_bytes == 5

    async def test_get_url_for_members(
        self, user: TestUser, member: TestUser, workspace: Workspace
    ) -> None:
        stored = await user.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        url = await user.provider.storage.get_url(stored.id)
        assert isinstance(url, str)
        assert url.startswith(("http://", "https://"))
        assert isinstance(await member.provider.storage.get_url(stored.id), str)
        assert await member.provider.storage.get_metadata(stored.id) == stored

    async def test_upload_ids_are_unique(self, user: TestUser, workspace: Workspace) -> None:
        first = await user.provider.storage.upload(workspace.id, b"one", content_type="text/plain")
        second = await user.provider.storage.upload(workspace.id, b"one", content_type="text/plain")
        assert first.id != second.id

    async def test_download_serves_the_bytes(
        self, user: TestUser, workspace: Workspace, transport: ObjectTransport
    ) -> None:
        stored = await user.provider.storage.upload(
            workspace.id, PNG, content_type="image/png", filename="x.png"
        )
        url = await user.provider.storage.get_url(stored.id)
        assert url is not None
        assert await transport.fetch(url) == PNG

    # --- tickets ------------------------------------------------------------------------

    async def test_ticket_fields(
        self, provider: BackendProvider, user: TestUser, workspace: Workspace
    ) -> None:
        ttl = timedelta(seconds=provider.capabilities.limits.upload_url_ttl_seconds)
        before = datetime.now(UTC)
        ticket = await user.provider.storage.generate_upload_url(
            workspace.id, content_type="image/png", size=1234, filename="a.png"
        )
        assert isinstance(ticket, UploadTicket)
        assert ticket.storage_id
        assert ticket.url.startswith(("http://", "https://"))
        assert ticket.method in ("PUT", "POST")
        assert ticket.max_bytes == 1234
        assert ticket.content_type == "image/png"
        assert before < ticket.expires_at <= before + ttl + URL_SLACK
        header = {name.lower(): value for name, value in ticket.headers.items()}
        assert header.get("content-type", "image/png") == "image/png"
        # The file name is metadata, never part of where the bytes go.
        assert "a.png" not in ticket.url

    async def test_tickets_are_distinct(self, user: TestUser, workspace: Workspace) -> None:
        tickets = [
            await user.provider.storage.generate_upload_url(
                workspace.id, content_type="image/png", size=10
            )
            for _ in range(3)
        ]
        assert len({t.storage_id for t in tickets}) == 3
        assert len({t.url for t in tickets}) == 3

    async def test_ticket_metadata_before_upload(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        ticket = await user.provider.storage.generate_upload_url(
            workspace.id, content_type="image/png", size=10, filename="later.png"
        )
        pending = await user.provider.storage.get_metadata(ticket.storage_id)
        assert pending is not None
        assert pending.size_bytes is None
        assert (pending.filename, pending.content_type) == ("later.png", "image/png")
        assert await user.provider.storage.get_url(ticket.storage_id) is None

    async def test_ticket_round_trip(
        self, user: TestUser, member: TestUser, workspace: Workspace, transport: ObjectTransport
    ) -> None:
        ticket = await member.provider.storage.generate_upload_url(
            workspace.id, content_type="image/png", size=len(PNG), filename="t.png"
        )
        await transport.send(ticket, PNG)
        stored = await user.provider.storage.get_metadata(ticket.storage_id)
        assert stored is not None
        assert (stored.size_bytes, stored.uploaded_by) == (len(PNG), member.user_id)
        url = await user.provider.storage.get_url(ticket.storage_id)
        assert url is not None
        assert await transport.fetch(url) == PNG

    # --- limits -------------------------------------------------------------------------

    async def test_content_type_is_normalised(self, user: TestUser, workspace: Workspace) -> None:
        stored = await user.provider.storage.upload(
            workspace.id, b"hi", content_type="  Text/Plain ; charset=UTF-8"
        )
        assert stored.content_type == "text/plain"
        ticket = await user.provider.storage.generate_upload_url(
            workspace.id, content_type="IMAGE/PNG", size=3
        )
        assert ticket.content_type == "image/png"

    @pytest.mark.parametrize(
        "content_type",
        [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "application/octet-stream",
            "",
            "png",
            "image/png/evil",
            "image/png\r\nX-Injected: 1",
        ],
    )
    async def test_disallowed_content_types(
        self, user: TestUser, workspace: Workspace, content_type: str
    ) -> None:
        storage = user.provider.storage
        for call in (
            lambda: storage.generate_upload_url(workspace.id, content_type=content_type, size=3),
            lambda: storage.upload(workspace.id, b"abc", content_type=content_type),
        ):
            with pytest.raises(InvalidInputError) as caught:
                await call()
            assert not isinstance(caught.value, PayloadTooLargeError)
            assert caught.value.details.get("field") == "content_type"

    async def test_allowed_types_are_accepted(
        self, provider: BackendProvider, user: TestUser, workspace: Workspace
    ) -> None:
        for content_type in provider.capabilities.limits.allowed_upload_types:
            ticket = await user.provider.storage.generate_upload_url(
                workspace.id, content_type=content_type, size=1
            )
            assert ticket.content_type == content_type.lower()

    async def test_size_limits(
        self, user: TestUser, workspace: Workspace, max_upload_bytes: int
    ) -> None:
        storage = user.provider.storage
        ticket = await storage.generate_upload_url(
            workspace.id, content_type="image/png", size=max_upload_bytes
        )
        assert ticket.max_bytes == max_upload_bytes
        with pytest.raises(PayloadTooLargeError):
            await storage.generate_upload_url(
                workspace.id, content_type="image/png", size=max_upload_bytes + 1
            )
        for size in (0, -1):
            with pytest.raises(InvalidInputError) as caught:
                await storage.generate_upload_url(workspace.id, content_type="image/png", size=size)
            assert not isinstance(caught.value, PayloadTooLargeError)
            assert caught.value.details.get("field") == "size"

    async def test_empty_upload_is_refused(self, user: TestUser, workspace: Workspace) -> None:
        with pytest.raises(InvalidInputError) as caught:
            await user.provider.storage.upload(workspace.id, b"", content_type="text/plain")
        assert not isinstance(caught.value, PayloadTooLargeError)

    async def test_oversized_upload_is_refused(
        self, user: TestUser, workspace: Workspace, max_upload_bytes: int
    ) -> None:
        with pytest.raises(PayloadTooLargeError):
            await user.provider.storage.upload(
                workspace.id, b"\0" * (max_upload_bytes + 1), content_type="image/png"
            )

    # --- file names ---------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("given", "kept"),
        [
            ("../../etc/passwd", "passwd"),
            ("..\\..\\windows\\system.ini", "system.ini"),
            ("/abs/path/photo.png", "photo.png"),
            # No NUL: the wire refuses NUL anywhere in text (PostgreSQL cannot store it).
            ("a\x01b\x1fc\x7f.png", "abc.png"),
            ("evil\u202egnp.exe", "evilgnp.exe"),
            ("  spaced.png  ", "spaced.png"),
            ("..", None),
            ("dir/", None),
        ],
    )
    async def test_filename_is_sanitised(
        self, user: TestUser, workspace: Workspace, given: str, kept: str | None
    ) -> None:
        stored = await user.provider.storage.upload(
            workspace.id, b"x", content_type="text/plain", filename=given
        )
        assert stored.filename == kept

    async def test_long_filename_is_cut(self, user: TestUser, workspace: Workspace) -> None:
        stored = await user.provider.storage.upload(
            workspace.id, b"x", content_type="text/plain", filename="n" * 400 + ".txt"
        )
        assert stored.filename is not None
        assert len(stored.filename) <= 255
        assert stored.filename.endswith(".txt")

    # --- who may see and do what ----------------------------------------------------------

    async def test_outsiders_see_nothing(
        self, user: TestUser, outsider: TestUser, workspace: Workspace
    ) -> None:
        stored = await user.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        storage = outsider.provider.storage
        assert await storage.get_url(stored.id) is None
        assert await storage.get_metadata(stored.id) is None
        with pytest.raises(NotFoundError):
            await storage.remove(stored.id)
        with pytest.raises(NotFoundError) as caught:
            await storage.generate_upload_url(workspace.id, content_type="image/png", size=3)
        with pytest.raises(NotFoundError) as again:
            await storage.generate_upload_url(MISSING_ID, content_type="image/png", size=3)
        assert caught.value.message == again.value.message
        with pytest.raises(NotFoundError):
            await storage.upload(workspace.id, b"abc", content_type="image/png")
        assert await user.provider.storage.get_metadata(stored.id) == stored

    @pytest.mark.parametrize("bad_id", BAD_IDS)
    async def test_missing_and_malformed_ids(self, user: TestUser, bad_id: str) -> None:
        storage = user.provider.storage
        assert await storage.get_url(bad_id) is None
        assert await storage.get_metadata(bad_id) is None
        with pytest.raises(NotFoundError):
            await storage.remove(bad_id)
        with pytest.raises(NotFoundError):
            await storage.generate_upload_url(bad_id, content_type="image/png", size=3)

    async def test_anonymous(
        self, user: TestUser, workspace: Workspace, anonymous: BackendProvider
    ) -> None:
        stored = await user.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        storage = anonymous.storage
        with pytest.raises(NotAuthenticatedError):
            await storage.generate_upload_url(workspace.id, content_type="image/png", size=3)
        with pytest.raises(NotAuthenticatedError):
            await storage.upload(workspace.id, b"abc", content_type="image/png")
        with pytest.raises(NotAuthenticatedError):
            await storage.remove(stored.id)
        with pytest.raises(NotAuthenticatedError):
            await storage.get_url(stored.id)
        with pytest.raises(NotAuthenticatedError):
            await storage.get_metadata(stored.id)
        assert await user.provider.storage.get_metadata(stored.id) == stored

    async def test_member_cannot_remove_others_files(
        self, user: TestUser, member: TestUser, workspace: Workspace
    ) -> None:
        stored = await user.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        with pytest.raises(PermissionDeniedError):
            await member.provider.storage.remove(stored.id)
        assert await user.provider.storage.get_metadata(stored.id) == stored

    async def test_uploader_removes_own_file(
        self, user: TestUser, member: TestUser, workspace: Workspace
    ) -> None:
        stored = await member.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        await member.provider.storage.remove(stored.id)
        for storage in (member.provider.storage, user.provider.storage):
            assert await storage.get_url(stored.id) is None
            assert await storage.get_metadata(stored.id) is None
        with pytest.raises(NotFoundError):
            await member.provider.storage.remove(stored.id)

    async def test_admins_remove_members_files(
        self, make_user: MakeUser, user: TestUser, member: TestUser, workspace: Workspace
    ) -> None:
        admin = await make_user("Admin")
        joined = await _join(user, workspace, admin)
        await user.provider.persistence.member.update_role(joined.id, Role.ADMIN)
        first = await member.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        second = await member.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        await admin.provider.storage.remove(first.id)
        await user.provider.storage.remove(second.id)  # the owner is an admin too
        assert await member.provider.storage.get_metadata(first.id) is None
        assert await member.provider.storage.get_metadata(second.id) is None

    async def test_pending_ticket_can_be_removed(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        ticket = await user.provider.storage.generate_upload_url(
            workspace.id, content_type="image/png", size=10
        )
        await user.provider.storage.remove(ticket.storage_id)
        assert await user.provider.storage.get_metadata(ticket.storage_id) is None

    async def test_deleting_the_workspace_deletes_its_files(
        self, user: TestUser, workspace: Workspace
    ) -> None:
        stored = await user.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        await user.provider.persistence.workspace.remove(workspace.id)
        assert await user.provider.storage.get_metadata(stored.id) is None
        assert await user.provider.storage.get_url(stored.id) is None

    async def test_attached_flag(self, user: TestUser, workspace: Workspace) -> None:
        stored = await user.provider.storage.upload(workspace.id, PNG, content_type="image/png")
        channel = (await user.provider.persistence.channel.get(workspace.id))[0]
        await user.provider.persistence.message.create(
            workspace.id, body="look", channel_id=channel.id, image_id=stored.id
        )
        attached = await user.provider.storage.get_metadata(stored.id)
        assert attached is not None
        assert attached.attached is True


async def _join(owner: TestUser, workspace: Workspace, other: TestUser) -> Member:
    current = await owner.provider.persistence.workspace.get(workspace.id)
    assert current is not None
    assert current.join_code is not None
    return await other.provider.persistence.workspace.join(
        workspace.id, join_code=current.join_code
    )

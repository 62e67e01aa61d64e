"""Self-host storage beyond the conformance suite: keys, signed URLs, disk safety, S3 checks
with an independent client, expiry and ticket enforcement, cascades and orphan cleanup."""

# The S3 fixtures are imported from the conformance module; test parameters naming them are
# not redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from kiiaren_core.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
)
from kiiaren_core.models import UploadTicket, Workspace
from kiiaren_core.testing.base import unique_email
from kiiaren_selfhost import SelfHostProvider, SelfHostSettings
from kiiaren_selfhost.db import Database
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.storage import (
    SIGNING_KEY_SECRET_NAME,
    LocalDiskBackend,
    ObjectStorage,
    S3Backend,
    content_disposition,
    create_object_storage,
    normalize_content_type,
    object_key,
    parse_object_key,
    sanitize_filename,
    sign_download_url,
    sign_upload_url,
    verify_download_signature,
    verify_upload_signature,
)
from tests.selfhost.test_conformance_storage import (  # noqa: F401  (fixtures)
    LocalServerTransport,
    moto_endpoint,
    s3_bucket,
    s3_client,
    s3_provider,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(300)
KEY = b"k" * 32
# Fixed ids: parametrize ids must agree across xdist workers.
WS = "4d11c75e-f9a0-401e-a864-a19d5051c1bc"
SID = "7ecae9d5-d8e6-4dad-8bd9-78828819c283"
SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)


def files_of(provider: SelfHostProvider) -> ObjectStorage:
    return provider._runtime.files


async def sign_up(provider: SelfHostProvider) -> SelfHostProvider:
    view = provider.with_session(None)
    password = f"Storage-{secrets.token_hex(8)}!"
    await view.auth.sign_up_with_password(unique_email("storage"), password, name="Store")
    return view


async def new_workspace(view: SelfHostProvider) -> Workspace:
    return await view.persistence.workspace.create(f"ws-{secrets.token_hex(4)}")


async def row_of(provider: SelfHostProvider, storage_id: str) -> Any:
    so = t.stored_objects
    async with provider._runtime.db.read() as conn:
        return (await conn.execute(sa.select(so).where(so.c.id == storage_id))).one_or_none()


async def set_row(provider: SelfHostProvider, storage_id: str, **values: Any) -> None:
    so = t.stored_objects
    async with provider._runtime.db.write() as conn:
        await conn.execute(so.update().where(so.c.id == storage_id).values(**values))


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# --- names, keys, content types ---------------------------------------------------------------


def test_object_key_round_trip() -> None:
    key = object_key(WS.upper(), SID)
    assert key == f"ws/{WS}/{SID}"
    assert parse_object_key(key) == (WS, SID)


@pytest.mark.parametrize(
    "key",
    [
        f"ws/{WS}/{SID}/",
        f"ws/{WS.upper()}/{SID}",
        f"ws/{WS}/{SID}\n",
        f"/ws/{WS}/{SID}",
        f"ws/{WS}",
        "",
    ],
)
def test_parse_object_key_refuses_anything_else(key: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_object_key(key)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("image/png", "image/png"),
        (" IMAGE/PNG ; charset=binary", "image/png"),
        ("application/vnd.ms-excel", "application/vnd.ms-excel"),
        ("image/svg+xml", "image/svg+xml"),
        ("image", None),
        ("image/", None),
        ("/png", None),
        ("image/png/x", None),
        ("image/p ng", None),
        ("image/png\r\nx: y", None),
        (None, None),
        (42, None),
    ],
)
def test_normalize_content_type(given: object, expected: str | None) -> None:
    assert normalize_content_type(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\cv.pdf", "cv.pdf"),
        ("x\x00y\x1b[31m.txt", "xy[31m.txt"),
        ("\u202eexe.png", "exe.png"),
        ("e\u0301.png", "\u00e9.png"),
        ("   ", None),
        ("a/..", None),
        ("a/.", None),
        ("\u2025", "\u2025"),
    ],
)
def test_sanitize_filename(given: str | None, expected: str | None) -> None:
    assert sanitize_filename(given) == expected


def test_sanitize_filename_length() -> None:
    long = sanitize_filename("a" * 300 + ".jpeg")
    assert long is not None
    assert len(long) == 255
    assert long.endswith(".jpeg")
    no_suffix = sanitize_filename("b" * 300)
    assert no_suffix == "b" * 255
    with pytest.raises(InvalidInputError):
        sanitize_filename(b"bytes")  # type: ignore[arg-type]


def test_content_disposition() -> None:
    assert content_disposition(None, "image/png") == "inline"
    assert content_disposition(None, "text/plain") == "attachment"
    value = content_disposition('r\u00e9sum\u00e9 "final".pdf', "application/pdf")
    assert value.startswith('attachment; filename="r_sum_ _final_.pdf"; ')
    assert value.endswith("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf")


# --- signed URLs ------------------------------------------------------------------------------


def _upload_url(**overrides: Any) -> str:
    options: dict[str, Any] = {
        "workspace_id": WS,
        "storage_id": SID,
        "content_type": "image/png",
        "max_bytes": 100,
        "expires_at": SOON,
    }
    return sign_upload_url(KEY, "https://files.example.com/", **{**options, **overrides})


def test_upload_signature_round_trip() -> None:
    url = _upload_url()
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "files.example.com",
        f"/v1/storage/objects/{SID}",
    )
    grant = verify_upload_signature(
        KEY, storage_id=SID, query=query_of(url), content_type="image/PNG; x=y"
    )
    assert (grant.storage_id, grant.workspace_id, grant.object_key) == (
        SID,
        WS,
        f"ws/{WS}/{SID}",
    )
    assert (grant.content_type, grant.max_bytes, grant.expires_at) == ("image/png", 100, SOON)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("w", "0b3f7d4e-2a51-4c6e-9f0d-3c1b2a7e8d90"),
        ("e", str(int(SOON.timestamp()) + 3600)),
        ("t", "text/plain"),
        ("m", "101"),
        ("m", "1e9"),
        ("m", "\u0661\u0660"),
        ("s", "A" * 43),
        ("s", ""),
        ("n", "extra.png"),  # not part of an upload URL: ignored, still valid
    ],
    ids=["workspace", "expiry", "type", "max", "max-exp", "max-digits", "sig", "no-sig", "name"],
)
def test_upload_signature_tampering(name: str, value: str) -> None:
    query = query_of(_upload_url())
    query[name] = value
    if name == "n":
        verify_upload_signature(KEY, storage_id=SID, query=query, content_type="image/png")
        return
    with pytest.raises(NotAuthenticatedError):
        verify_upload_signature(KEY, storage_id=SID, query=query, content_type="text/plain")


def test_upload_signature_missing_parts_and_ids() -> None:
    query = query_of(_upload_url())
    for name in ("e", "t", "m", "s"):
        partial = {k: v for k, v in query.items() if k != name}
        with pytest.raises(NotAuthenticatedError):
            verify_upload_signature(KEY, storage_id=SID, query=partial, content_type="image/png")
    for bad in (str(uuid.uuid4()), SID.upper(), "../" + SID, SID + "/x", ""):
        with pytest.raises((NotFoundError, NotAuthenticatedError)):
            verify_upload_signature(KEY, storage_id=bad, query=query, content_type="image/png")
    with pytest.raises(NotFoundError):
        verify_upload_signature(
            KEY, storage_id=SID, query={**query, "w": "../x"}, content_type="image/png"
        )
    with pytest.raises(NotAuthenticatedError):
        verify_upload_signature(b"x" * 32, storage_id=SID, query=query, content_type="image/png")


def test_upload_signature_expiry_and_content_type() -> None:
    query = query_of(_upload_url())
    verify_upload_signature(KEY, storage_id=SID, query=query, content_type="image/png", now=SOON)
    with pytest.raises(NotAuthenticatedError):
        verify_upload_signature(
            KEY,
            storage_id=SID,
            query=query,
            content_type="image/png",
            now=SOON + timedelta(seconds=1),
        )
    for wrong in ("image/jpeg", None, ""):
        with pytest.raises(InvalidInputError) as caught:
            verify_upload_signature(KEY, storage_id=SID, query=query, content_type=wrong)
        assert caught.value.details["field"] == "content_type"


def test_download_signature() -> None:
    url = sign_download_url(
        KEY,
        "http://127.0.0.1:8000",
        workspace_id=WS,
        storage_id=SID,
        content_type="application/pdf",
        filename="cv.pdf",
        expires_at=SOON,
    )
    query = query_of(url)
    grant = verify_download_signature(KEY, storage_id=SID, query=query)
    assert (grant.filename, grant.content_type, grant.max_bytes) == (
        "cv.pdf",
        "application/pdf",
        None,
    )
    assert grant.content_disposition.startswith("attachment;")
    for name, value in (("n", "other.pdf"), ("t", "text/html"), ("w", str(uuid.uuid4()))):
        with pytest.raises(NotAuthenticatedError):
            verify_download_signature(KEY, storage_id=SID, query={**query, name: value})
    with pytest.raises(NotAuthenticatedError):
        verify_download_signature(KEY, storage_id=SID, query=query, now=SOON + timedelta(seconds=1))
    # A download URL is not an upload URL, and the other way round.
    with pytest.raises(NotAuthenticatedError):
        verify_upload_signature(
            KEY, storage_id=SID, query={**query, "m": "100"}, content_type="application/pdf"
        )
    with pytest.raises(NotAuthenticatedError):
        verify_download_signature(KEY, storage_id=SID, query=query_of(_upload_url()))


# --- local disk: streaming, atomicity, traversal ----------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> LocalDiskBackend:
    return LocalDiskBackend(tmp_path / "root", signing_key=KEY)


def leftovers(root: Path) -> list[Path]:
    """Every file under ``root``, temporary ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def names_in(root: Path) -> list[str]:
    """The names of everything under ``root``."""
    return sorted(p.name for p in root.rglob("*"))


async def test_write_stream_and_read(disk: LocalDiskBackend) -> None:
    key = object_key(WS, SID)
    assert await disk.write_stream(key, chunks_of(b"ab", b"", b"cd"), 4) == 4
    assert leftovers(disk.root) == [disk.root / "ws" / WS / SID]
    with await disk.open_for_read(key) as file:
        assert file.read() == b"abcd"
    info = await disk.head(key)
    assert info is not None
    assert (info.size, info.content_type) == (4, None)
    assert abs(info.last_modified - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ConflictError):
        await disk.write_stream(key, chunks_of(b"x"), 4)
    await disk.delete(key)
    await disk.delete(key)  # idempotent
    assert await disk.head(key) is None
    with pytest.raises(NotFoundError):
        await disk.open_for_read(key)


async def test_write_stream_limit_leaves_nothing(disk: LocalDiskBackend) -> None:
    key = object_key(WS, SID)
    with pytest.raises(PayloadTooLargeError):
        await disk.write_stream(key, chunks_of(b"x" * 600, b"y" * 600), 1000)
    assert leftovers(disk.root) == []


async def test_write_stream_failure_and_cancellation_leave_nothing(
    disk: LocalDiskBackend,
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        await disk.write_stream(object_key(WS, SID), failing(), 100)

    started = anyio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"partial"
        started.set()
        await anyio.sleep_forever()
        yield b"never"

    async with anyio.create_task_group() as group:
        group.start_soon(disk.write_stream, object_key(WS, str(uuid.uuid4())), stalled(), 100)
        await started.wait()
        group.cancel_scope.cancel()
    assert leftovers(disk.root) == []


async def test_concurrent_writes_to_one_key(disk: LocalDiskBackend) -> None:
    key = object_key(WS, SID)
    outcomes: list[str] = []

    async def write(data: bytes) -> None:
        try:
            await disk.write_stream(key, chunks_of(data[:3], data[3:]), 10)
            outcomes.append(data.decode())
        except ConflictError:
            outcomes.append("conflict")

    async with anyio.create_task_group() as group:
        for data in (b"first!", b"second"):
            group.start_soon(write, data)
    assert sorted(outcomes)[0] == "conflict"
    winner = next(o for o in outcomes if o != "conflict")
    with await disk.open_for_read(key) as file:
        assert file.read() == winner.encode()
    assert leftovers(disk.root) == [disk.root / "ws" / WS / SID]


TRAVERSAL_KEYS = [
    "../outside",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp/kiiaren-outside",
    "ws/../../outside",
    f"ws/{WS}/../../../outside",
    f"ws/{WS}/{SID}/../../../../outside",
    "..\\..\\outside",
    f"ws\\{WS}\\..\\..\\outside",
    f"ws/{WS}/{SID}\x00.png",
    "ws/\x00/x",
    "%2e%2e%2foutside",
    f"ws/%2e%2e/%2e%2e/{SID}",
    "\u2025/outside",
    "\uff0e\uff0e/outside",
    f"ws/\uff0e\uff0e/{SID}",
    f"./ws/{WS}/{SID}",
    f"ws//{WS}/{SID}",
    f"ws/{WS}/{SID}/",
    f"ws/{WS.upper()}/{SID}",
    f"ws/{WS}",
    "",
    ".",
    "..",
]


@pytest.mark.parametrize("key", TRAVERSAL_KEYS)
async def test_forged_keys_touch_nothing(tmp_path: Path, key: str) -> None:
    disk = LocalDiskBackend(tmp_path / "root", signing_key=KEY)
    (tmp_path / "outside").mkdir()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: disk.write_stream(key, chunks_of(b"evil"), 100),
        lambda: disk.put(key, b"evil", "image/png"),
        lambda: disk.head(key),
        lambda: disk.delete(key),
        lambda: disk.open_for_read(key),
        lambda: disk.upload_target(key, content_type="image/png", max_bytes=4, expires_at=SOON),
        lambda: disk.download_url(key, content_type="image/png", expires_at=SOON),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            await call()
    with pytest.raises(InvalidInputError):
        disk.path_for(key)
    assert names_in(tmp_path) == ["outside"]


async def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    disk = LocalDiskBackend(tmp_path / "root", signing_key=KEY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "root" / "ws").mkdir(parents=True)
    (tmp_path / "root" / "ws" / WS).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InvalidInputError):
        await disk.write_stream(object_key(WS, SID), chunks_of(b"evil"), 100)
    assert list(elsewhere.iterdir()) == []


async def test_default_signing_key_is_random(tmp_path: Path) -> None:
    first, second = LocalDiskBackend(tmp_path), LocalDiskBackend(tmp_path)
    key = object_key(WS, SID)
    target = await first.upload_target(key, content_type="image/png", max_bytes=4, expires_at=SOON)
    assert target.method == "PUT"
    assert target.headers == {"Content-Type": "image/png"}
    query = query_of(target.url)
    verify_upload_signature(
        await first.signing_key(), storage_id=SID, query=query, content_type="image/png"
    )
    with pytest.raises(NotAuthenticatedError):
        verify_upload_signature(
            await second.signing_key(), storage_id=SID, query=query, content_type="image/png"
        )


# --- the provider on local disk ---------------------------------------------------------------


@pytest.fixture
async def owner(selfhost_provider: SelfHostProvider) -> AsyncIterator[SelfHostProvider]:
    view = await sign_up(selfhost_provider)
    yield view
    await view.aclose()


async def test_capabilities(
    selfhost_provider: SelfHostProvider, s3_provider: SelfHostProvider
) -> None:
    for provider, presigned in ((selfhost_provider, False), (s3_provider, True)):
        assert provider.capabilities.has("storage")
        assert provider.capabilities.presigned_storage is presigned


async def test_ticket_row(selfhost_provider: SelfHostProvider, owner: SelfHostProvider) -> None:
    ws = await new_workspace(owner)
    ticket = await owner.storage.generate_upload_url(
        ws.id, content_type="Image/PNG", size=42, filename="../x.png"
    )
    row = await row_of(selfhost_provider, ticket.storage_id)
    assert row.object_key == f"ws/{ws.id}/{ticket.storage_id}"
    assert (row.workspace_id, row.content_type, row.max_bytes) == (ws.id, "image/png", 42)
    assert (row.filename, row.status, row.size_bytes, row.attached_at) == (
        "x.png",
        "pending",
        None,
        None,
    )
    assert row.uploaded_by == (await owner.auth.get_session()).user_id  # type: ignore[union-attr]
    assert row.ticket_expires_at == ticket.expires_at
    ttl = selfhost_provider.settings.upload_url_ttl_seconds
    assert timedelta(0) < ticket.expires_at - datetime.now(UTC) <= timedelta(seconds=ttl)
    assert ticket.url.startswith(f"{selfhost_provider.settings.public_url}/v1/storage/objects/")
    query = query_of(ticket.url)
    assert (query["w"], query["t"], query["m"]) == (ws.id, "image/png", "42")


async def test_local_upload_through_the_signed_url(
    selfhost_provider: SelfHostProvider, owner: SelfHostProvider, tmp_path: Path
) -> None:
    server = LocalServerTransport(selfhost_provider)
    ws = await new_workspace(owner)
    ticket = await owner.storage.generate_upload_url(
        ws.id, content_type="image/png", size=len(PNG), filename="p.png"
    )
    with pytest.raises(InvalidInputError):  # nothing arrived yet: nothing changes
        await files_of(selfhost_provider).complete_upload(ticket.storage_id)
    # A different content type, or a URL pointed at another object, is refused at the door.
    with pytest.raises(InvalidInputError):
        await server.verify_upload(ticket, "text/plain")
    forged = ticket.model_copy(update={"url": ticket.url.replace(ticket.storage_id, SID)})
    with pytest.raises(NotAuthenticatedError):
        await server.verify_upload(forged, "image/png")
    await server.send(ticket, PNG, chunk=64)
    path = tmp_path / "files" / "ws" / ws.id / ticket.storage_id
    assert path.read_bytes() == PNG
    assert leftovers(tmp_path) == [path]
    row = await row_of(selfhost_provider, ticket.storage_id)
    assert (row.status, row.size_bytes) == ("ready", len(PNG))
    # The ticket is single-use even while it is valid.
    with pytest.raises(ConflictError):
        await server.send(ticket, PNG)
    url = await owner.storage.get_url(ticket.storage_id)
    assert url is not None
    grant = await server.verify_download(url)
    assert (grant.filename, grant.content_type) == ("p.png", "image/png")
    assert await server.fetch(url) == PNG


async def test_local_upload_over_the_limit(
    selfhost_provider: SelfHostProvider, owner: SelfHostProvider, tmp_path: Path
) -> None:
    server = LocalServerTransport(selfhost_provider)
    ws = await new_workspace(owner)
    ticket = await owner.storage.generate_upload_url(ws.id, content_type="image/png", size=10)
    with pytest.raises(PayloadTooLargeError):
        await server.send(ticket, b"x" * 11, chunk=4)
    assert leftovers(tmp_path) == []
    assert (await row_of(selfhost_provider, ticket.storage_id)).status == "pending"


async def test_local_expired_ticket(
    selfhost_provider: SelfHostProvider, owner: SelfHostProvider, tmp_path: Path
) -> None:
    server = LocalServerTransport(selfhost_provider)
    files = files_of(selfhost_provider)
    ws = await new_workspace(owner)
    # At the door: the URL stops verifying at its expiry.
    ticket = await owner.storage.generate_upload_url(ws.id, content_type="image/png", size=10)
    storage_id, query = server.split(ticket.url)
    with pytest.raises(NotAuthenticatedError):
        verify_upload_signature(
            await files.signing_key(),
            storage_id=storage_id,
            query=query,
            content_type="image/png",
            now=ticket.expires_at + timedelta(seconds=1),
        )
    # Bytes fully written only after the expiry are refused and deleted on completion.
    grant = await server.verify_upload(ticket, "image/png")
    await server.backend.write_stream(grant.object_key, chunks_of(b"late bytes"), 10)
    await set_row(
        selfhost_provider,
        ticket.storage_id,
        ticket_expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    with pytest.raises(InvalidInputError, match="after its upload ticket expired"):
        await files.complete_upload(ticket.storage_id)
    assert leftovers(tmp_path) == []
    assert await owner.storage.get_metadata(ticket.storage_id) is None
    assert await row_of(selfhost_provider, ticket.storage_id) is None  # ticket over: row purged


async def test_upload_for_a_removed_ticket_is_deleted(
    selfhost_provider: SelfHostProvider, owner: SelfHostProvider, tmp_path: Path
) -> None:
    server = LocalServerTransport(selfhost_provider)
    ws = await new_workspace(owner)
    ticket = await owner.storage.generate_upload_url(ws.id, content_type="image/png", size=10)
    await owner.storage.remove(ticket.storage_id)
    # The row stays as a tombstone while the URL could still deliver bytes.
    assert (await row_of(selfhost_provider, ticket.storage_id)).status == "deleting"
    with pytest.raises(NotFoundError):
        await server.send(ticket, b"0123456789")
    assert leftovers(tmp_path) == []


async def test_filenames_never_reach_the_disk(
    selfhost_provider: SelfHostProvider, owner: SelfHostProvider, tmp_path: Path
) -> None:
    ws = await new_workspace(owner)
    expected = []
    for name in [
        "../../outside.png",
        "/etc/passwd",
        "..\\..\\outside.png",
        "a\x00b.png",
        "%2e%2e%2foutside",
        "\u2025/outside",
        "\uff0e\uff0e/outside",
        f"ws/{ws.id}/../../../x",
    ]:
        stored = await owner.storage.upload(ws.id, PNG, content_type="image/png", filename=name)
        expected.append(tmp_path / "files" / "ws" / ws.id / stored.id)
        assert stored.filename is None or "/" not in stored.filename
    assert leftovers(tmp_path) == sorted(expected)  # all inside the root, nothing else


async def test_signing_key_is_kept_per_database(selfhost_url: str, tmp_path: Path) -> None:
    """Without a configured key, every process on one database signs with the same key."""
    settings = SelfHostSettings(database_url=selfhost_url, storage_path=str(tmp_path))
    async with Database.from_url(selfhost_url) as one, Database.from_url(selfhost_url) as two:
        first, second = create_object_storage(settings, one), create_object_storage(settings, two)
        async with anyio.create_task_group() as group:  # two processes starting together
            group.start_soon(first.signing_key)
            group.start_soon(second.signing_key)
        assert await first.signing_key() == await second.signing_key()
        async with one.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.instance_secrets.c.value).where(
                        t.instance_secrets.c.name == SIGNING_KEY_SECRET_NAME
                    )
                )
            ).all()
        assert len(rows) == 1
        # The key is derived from the stored secret, never the secret itself.
        assert await first.signing_key() != rows[0].value.encode()
        await first.aclose()
        await second.aclose()


async def test_configured_and_handed_signing_keys(selfhost_url: str, tmp_path: Path) -> None:
    settings = SelfHostSettings(database_url=selfhost_url, storage_path=str(tmp_path))
    async with Database.from_url(selfhost_url) as db:
        per_database = await create_object_storage(settings, db).signing_key()
        configured = create_object_storage(
            settings.model_copy(update={"storage_signing_key": SecretStr("s" * 40)}), db
        )
        key = await configured.signing_key()
        assert key != per_database
        configured.use_signing_key(b"ignored: a key is configured")
        assert await configured.signing_key() == key
        handed = create_object_storage(settings, db)
        handed.use_signing_key(b"runtime secret")
        assert await handed.signing_key() not in (per_database, key, b"runtime secret")
        # URLs signed under one key do not verify under another.
        backend = LocalDiskBackend(tmp_path, signing_key=configured.signing_key)
        target = await backend.upload_target(
            object_key(WS, SID), content_type="image/png", max_bytes=3, expires_at=SOON
        )
        query = query_of(target.url)
        verify_upload_signature(key, storage_id=SID, query=query, content_type="image/png")
        with pytest.raises(NotAuthenticatedError):
            verify_upload_signature(
                per_database, storage_id=SID, query=query, content_type="image/png"
            )


def test_short_signing_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SelfHostProvider(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", storage_signing_key="short"
        )
    assert caught.value.details["variable"] == "KIIAREN_SELFHOST_STORAGE_SIGNING_KEY"


# --- S3 (moto), checked with an independent client --------------------------------------------


@pytest.fixture
async def s3_owner(s3_provider: SelfHostProvider) -> AsyncIterator[SelfHostProvider]:
    view = await sign_up(s3_provider)
    yield view
    await view.aclose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def put(http: httpx.AsyncClient, ticket: UploadTicket, data: bytes, **headers: str) -> int:
    response = await http.put(ticket.url, content=data, headers={**ticket.headers, **headers})
    return response.status_code


def head(s3_client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return dict(s3_client.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return None
        raise


async def test_s3_upload_is_written_under_the_workspace(
    s3_owner: SelfHostProvider, s3_client: S3Client, s3_bucket: str
) -> None:
    ws = await new_workspace(s3_owner)
    stored = await s3_owner.storage.upload(
        ws.id, PNG, content_type="image/png", filename="../../x.png"
    )
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"ws/{ws.id}/")
    assert [item["Key"] for item in listed.get("Contents", [])] == [f"ws/{ws.id}/{stored.id}"]
    found = head(s3_client, s3_bucket, f"ws/{ws.id}/{stored.id}")
    assert found is not None
    assert (found["ContentType"], found["ContentLength"]) == ("image/png", len(PNG))
    body = s3_client.get_object(Bucket=s3_bucket, Key=f"ws/{ws.id}/{stored.id}")["Body"]
    assert body.read() == PNG
    body.close()


async def test_s3_presigned_urls(
    s3_provider: SelfHostProvider,
    s3_owner: SelfHostProvider,
    s3_client: S3Client,
    s3_bucket: str,
    http: httpx.AsyncClient,
) -> None:
    ws = await new_workspace(s3_owner)
    ticket = await s3_owner.storage.generate_upload_url(
        ws.id, content_type="image/png", size=len(PNG), filename="p.png"
    )
    assert ticket.method == "PUT"
    assert ticket.headers == {"Content-Type": "image/png", "If-None-Match": "*"}
    query = query_of(ticket.url)
    assert urlsplit(ticket.url).path == f"/{s3_bucket}/ws/{ws.id}/{ticket.storage_id}"
    assert set(query["X-Amz-SignedHeaders"].split(";")) >= {
        "content-type",
        "content-length",
        "if-none-match",
        "host",
    }
    assert 0 < int(query["X-Amz-Expires"]) <= s3_provider.settings.upload_url_ttl_seconds
    assert await put(http, ticket, PNG) == 200
    assert await put(http, ticket, b"replacement") == 412  # one object per ticket
    found = head(s3_client, s3_bucket, f"ws/{ws.id}/{ticket.storage_id}")
    assert found is not None
    assert (found["ContentType"], found["ContentLength"]) == ("image/png", len(PNG))
    # Completed lazily on first read.
    assert (await row_of(s3_provider, ticket.storage_id)).status == "pending"
    url = await s3_owner.storage.get_url(ticket.storage_id)
    assert url is not None
    assert (await row_of(s3_provider, ticket.storage_id)).size_bytes == len(PNG)
    response = await http.get(url)
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith('inline; filename="p.png"')


async def test_s3_expired_ticket_is_refused(
    s3_provider: SelfHostProvider,
    s3_owner: SelfHostProvider,
    s3_client: S3Client,
    s3_bucket: str,
    http: httpx.AsyncClient,
) -> None:
    """moto accepts an upload after the ticket expired (its presigned URLs are not checked);
    we refuse to use it and delete it."""
    ws = await new_workspace(s3_owner)
    ticket = await s3_owner.storage.generate_upload_url(ws.id, content_type="image/png", size=5)
    await set_row(
        s3_provider, ticket.storage_id, ticket_expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    assert await put(http, ticket, b"late!") == 200  # the store took it...
    assert await s3_owner.storage.get_url(ticket.storage_id) is None  # ...we do not
    assert head(s3_client, s3_bucket, f"ws/{ws.id}/{ticket.storage_id}") is None
    assert await s3_owner.storage.get_metadata(ticket.storage_id) is None
    assert await row_of(s3_provider, ticket.storage_id) is None


async def test_s3_ticket_that_expired_unused(
    s3_provider: SelfHostProvider, s3_owner: SelfHostProvider
) -> None:
    ws = await new_workspace(s3_owner)
    ticket = await s3_owner.storage.generate_upload_url(ws.id, content_type="image/png", size=5)
    assert (await s3_owner.storage.get_metadata(ticket.storage_id)) is not None  # still waiting
    await set_row(
        s3_provider, ticket.storage_id, ticket_expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(InvalidInputError, match="expired before the file arrived"):
        await files_of(s3_provider).complete_upload(ticket.storage_id)
    assert await s3_owner.storage.get_metadata(ticket.storage_id) is None
    assert await row_of(s3_provider, ticket.storage_id) is None


@pytest.mark.parametrize(
    ("data", "headers", "error", "message"),
    [
        (b"<html>", {"Content-Type": "text/html"}, InvalidInputError, "uploaded as text/html"),
        (b"x" * 11, {}, PayloadTooLargeError, "larger than the 10 bytes"),
        (b"", {}, InvalidInputError, "empty"),
    ],
)
async def test_s3_object_not_matching_its_ticket_is_deleted(
    s3_provider: SelfHostProvider,
    s3_owner: SelfHostProvider,
    s3_client: S3Client,
    s3_bucket: str,
    http: httpx.AsyncClient,
    data: bytes,
    headers: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    """A store that checks signatures refuses these PUTs; moto does not, so we must."""
    ws = await new_workspace(s3_owner)
    ticket = await s3_owner.storage.generate_upload_url(ws.id, content_type="image/png", size=10)
    assert await put(http, ticket, data, **headers) == 200
    key = f"ws/{ws.id}/{ticket.storage_id}"
    assert head(s3_client, s3_bucket, key) is not None
    with pytest.raises(error, match=message):
        await files_of(s3_provider).complete_upload(ticket.storage_id)
    assert head(s3_client, s3_bucket, key) is None
    assert await s3_owner.storage.get_metadata(ticket.storage_id) is None
    assert await s3_owner.storage.get_url(ticket.storage_id) is None
    # The ticket is still valid, so the row stays as a tombstone that deletes late bytes.
    assert (await row_of(s3_provider, ticket.storage_id)).status == "deleting"
    assert await put(http, ticket, b"0123456789") == 200
    with pytest.raises(NotFoundError):
        await files_of(s3_provider).complete_upload(ticket.storage_id)
    assert head(s3_client, s3_bucket, key) is None


async def test_s3_remove_deletes_the_object(
    s3_owner: SelfHostProvider, s3_client: S3Client, s3_bucket: str
) -> None:
    ws = await new_workspace(s3_owner)
    stored = await s3_owner.storage.upload(ws.id, PNG, content_type="image/png")
    await s3_owner.storage.remove(stored.id)
    assert head(s3_client, s3_bucket, f"ws/{ws.id}/{stored.id}") is None


async def test_s3_backend_errors_are_translated() -> None:
    backend = S3Backend("http://127.0.0.1:9", "kiiaren", "us-east-1", "k", "s")
    try:
        with pytest.raises(BackendUnavailableError):
            await backend.head(object_key(WS, SID))
    finally:
        await backend.aclose()
        await backend.aclose()


# --- ObjectStorage: URLs, deletion, orphans ---------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage_provider(request: pytest.FixtureRequest, selfhost_url: str) -> SelfHostProvider:
    """The provider on local disk, then on S3 (on each database)."""
    name = "selfhost_provider" if request.param == "local" else "s3_provider"
    provider: SelfHostProvider = request.getfixturevalue(name)
    return provider


@pytest.fixture
def stored_bytes(
    storage_provider: SelfHostProvider, request: pytest.FixtureRequest
) -> Callable[[str, str], bool]:
    """``exists(workspace_id, storage_id)``: are the object's bytes in the store?"""
    backend = files_of(storage_provider).backend
    if isinstance(backend, LocalDiskBackend):
        return lambda ws, sid: backend.path_for(object_key(ws, sid)).exists()
    client: S3Client = request.getfixturevalue("s3_client")
    bucket: str = request.getfixturevalue("s3_bucket")
    return lambda ws, sid: head(client, bucket, object_key(ws, sid)) is not None


@pytest.fixture
async def member_view(storage_provider: SelfHostProvider) -> AsyncIterator[SelfHostProvider]:
    view = await sign_up(storage_provider)
    yield view
    await view.aclose()


async def test_urls_for_a_page(
    storage_provider: SelfHostProvider, member_view: SelfHostProvider
) -> None:
    ws = await new_workspace(member_view)
    ready = [
        await member_view.storage.upload(ws.id, PNG, content_type="image/png") for _ in range(3)
    ]
    pending = await member_view.storage.generate_upload_url(ws.id, content_type="image/png", size=5)
    removed = await member_view.storage.upload(ws.id, PNG, content_type="image/png")
    await member_view.storage.remove(removed.id)
    urls = await files_of(storage_provider).urls_for(
        [*(s.id for s in ready), pending.storage_id, removed.id, SID, "junk", ready[0].id.upper()]
    )
    assert set(urls) == {s.id for s in ready}
    assert all(url.startswith("http") for url in urls.values())
    assert await files_of(storage_provider).urls_for([]) == {}


async def test_delete_objects_never_raises(
    storage_provider: SelfHostProvider,
    member_view: SelfHostProvider,
    stored_bytes: Callable[[str, str], bool],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = files_of(storage_provider)
    ws = await new_workspace(member_view)
    stored = await member_view.storage.upload(ws.id, PNG, content_type="image/png")

    async def broken(key: str) -> None:
        raise OSError("store down")

    monkeypatch.setattr(files.backend, "delete", broken)
    await files.delete_objects([stored.id, "junk"])
    assert "deleting the bytes" in caplog.text
    monkeypatch.undo()
    # Kept as a tombstone: invisible, bytes still there, retried by the cleanup.
    assert (await row_of(storage_provider, stored.id)).status == "deleting"
    assert await member_view.storage.get_metadata(stored.id) is None
    assert stored_bytes(ws.id, stored.id)
    await set_row(storage_provider, stored.id, ticket_expires_at=datetime.now(UTC))
    await files.cleanup_orphans(timedelta(days=365))
    assert not stored_bytes(ws.id, stored.id)
    assert await row_of(storage_provider, stored.id) is None
    await files.delete_objects([])


async def test_orphan_cleanup(
    storage_provider: SelfHostProvider,
    member_view: SelfHostProvider,
    stored_bytes: Callable[[str, str], bool],
) -> None:
    files = files_of(storage_provider)
    ws = await new_workspace(member_view)
    channel = (await member_view.persistence.channel.get(ws.id))[0]
    old = datetime.now(UTC) - timedelta(days=30)
    unattached = await member_view.storage.upload(ws.id, PNG, content_type="image/png")
    attached = await member_view.storage.upload(ws.id, PNG, content_type="image/png")
    await member_view.persistence.message.create(
        ws.id, body="pic", channel_id=channel.id, image_id=attached.id
    )
    never_sent = await member_view.storage.generate_upload_url(
        ws.id, content_type="image/png", size=5
    )
    fresh = await member_view.storage.upload(ws.id, PNG, content_type="image/png")
    for storage_id in (unattached.id, attached.id, never_sent.storage_id):
        await set_row(storage_provider, storage_id, created_at=old)
    await set_row(storage_provider, never_sent.storage_id, ticket_expires_at=old)

    removed = await files.cleanup_orphans(timedelta(days=29))
    assert removed >= 2
    assert not stored_bytes(ws.id, unattached.id)
    assert await member_view.storage.get_metadata(unattached.id) is None
    assert await row_of(storage_provider, never_sent.storage_id) is None
    # The upload URL handed out for ``unattached`` is still valid: its row waits as a
    # tombstone until then, and a later run drops it.
    assert (await row_of(storage_provider, unattached.id)).status == "deleting"
    await set_row(storage_provider, unattached.id, ticket_expires_at=old)
    await files.cleanup_orphans(timedelta(days=29))
    assert await row_of(storage_provider, unattached.id) is None
    # Attached and recent objects stay.
    for kept in (attached, fresh):
        assert stored_bytes(ws.id, kept.id)
        assert await member_view.storage.get_url(kept.id) is not None


async def test_s3_uploads_are_verified_before_they_are_attached(
    s3_provider: SelfHostProvider,
    s3_owner: SelfHostProvider,
    http: httpx.AsyncClient,
) -> None:
    """Attaching checks the bytes against the ticket first: an uploaded object becomes
    ``ready`` there and then; a ticket whose bytes never arrived cannot be attached."""
    ws = await new_workspace(s3_owner)
    channel = (await s3_owner.persistence.channel.get(ws.id))[0]
    sent = await s3_owner.storage.generate_upload_url(ws.id, content_type="image/png", size=5)
    lost = await s3_owner.storage.generate_upload_url(ws.id, content_type="image/png", size=5)
    assert await put(http, sent, b"12345") == 200
    message = await s3_owner.persistence.message.create(
        ws.id, body="pic", channel_id=channel.id, image_id=sent.storage_id
    )
    assert message.image_id == sent.storage_id
    assert (await row_of(s3_provider, sent.storage_id)).status == "ready"
    with pytest.raises(NotFoundError, match="Image not found"):
        await s3_owner.persistence.message.create(
            ws.id, body="pic", channel_id=channel.id, image_id=lost.storage_id
        )
    assert (await row_of(s3_provider, lost.storage_id)).attached_at is None


async def test_cleanup_of_objects_whose_workspace_vanished(
    storage_provider: SelfHostProvider,
    member_view: SelfHostProvider,
    stored_bytes: Callable[[str, str], bool],
) -> None:
    """A crash between a workspace delete's commit and its file deletion leaves rows behind."""
    ws = await new_workspace(member_view)
    stored = await member_view.storage.upload(ws.id, PNG, content_type="image/png")
    async with storage_provider._runtime.db.write() as conn:
        await conn.execute(t.workspaces.delete().where(t.workspaces.c.id == ws.id))
    assert stored_bytes(ws.id, stored.id)
    assert await files_of(storage_provider).cleanup_orphans(timedelta(days=365)) >= 1
    assert not stored_bytes(ws.id, stored.id)


# --- cascades ---------------------------------------------------------------------------------


async def test_cascades_delete_stored_bytes(
    storage_provider: SelfHostProvider,
    member_view: SelfHostProvider,
    stored_bytes: Callable[[str, str], bool],
) -> None:
    owner = member_view
    ws = await new_workspace(owner)
    general = (await owner.persistence.channel.get(ws.id))[0]

    async def image() -> str:
        return (await owner.storage.upload(ws.id, PNG, content_type="image/png")).id

    # A message with an image, and a reply with one.
    top_image, reply_image = await image(), await image()
    top = await owner.persistence.message.create(
        ws.id, body="top", channel_id=general.id, image_id=top_image
    )
    await owner.persistence.message.create(
        ws.id, body="reply", parent_message_id=top.id, image_id=reply_image
    )
    await owner.persistence.message.remove(top.id)
    assert not stored_bytes(ws.id, top_image)
    assert not stored_bytes(ws.id, reply_image)

    # A doc's cover: replaced, then the doc deleted.
    first_cover, second_cover = await image(), await image()
    doc = await owner.persistence.doc.create(ws.id, title="Doc")
    await owner.persistence.doc.update(doc.id, cover_image_id=first_cover)
    await owner.persistence.doc.update(doc.id, cover_image_id=second_cover)
    assert not stored_bytes(ws.id, first_cover)
    assert stored_bytes(ws.id, second_cover)
    await owner.persistence.doc.remove(doc.id)
    assert not stored_bytes(ws.id, second_cover)

    # A board's thumbnail.
    thumbnail = await image()
    board = await owner.persistence.board.create(ws.id, title="Board")
    await owner.persistence.board.update(board.id, thumbnail_id=thumbnail)
    await owner.persistence.board.remove(board.id)
    assert not stored_bytes(ws.id, thumbnail)

    # A channel with an image message.
    channel = await owner.persistence.channel.create(ws.id, "pictures")
    in_channel = await image()
    await owner.persistence.message.create(
        ws.id, body="pic", channel_id=channel.id, image_id=in_channel
    )
    await owner.persistence.channel.remove(channel.id)
    assert not stored_bytes(ws.id, in_channel)

    # The whole workspace: attached and unattached files alike.
    kept_message_image, loose = await image(), await image()
    await owner.persistence.message.create(
        ws.id, body="pic", channel_id=general.id, image_id=kept_message_image
    )
    assert stored_bytes(ws.id, kept_message_image)
    await owner.persistence.workspace.remove(ws.id)
    assert not stored_bytes(ws.id, kept_message_image)
    assert not stored_bytes(ws.id, loose)


# --- surface and edge cases -------------------------------------------------------------------


def test_public_surface() -> None:
    import kiiaren_selfhost.storage as storage

    # Sorting is ruff's job (RUF022); here: unique, and every name resolves.
    assert len(set(storage.__all__)) == len(storage.__all__)
    for name in storage.__all__:
        assert getattr(storage, name) is not None
    assert {"SelfHostStorage", "ObjectStorage", "create_object_storage"} <= set(storage.__all__)


async def test_concurrent_first_reads_complete_once(
    s3_provider: SelfHostProvider, s3_owner: SelfHostProvider, http: httpx.AsyncClient
) -> None:
    ws = await new_workspace(s3_owner)
    ticket = await s3_owner.storage.generate_upload_url(ws.id, content_type="image/png", size=5)
    assert await put(http, ticket, b"12345") == 200
    urls: list[str | None] = []

    async def read() -> None:
        urls.append(await s3_owner.storage.get_url(ticket.storage_id))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(read)
    assert all(url is not None for url in urls)
    row = await row_of(s3_provider, ticket.storage_id)
    assert (row.status, row.size_bytes) == ("ready", 5)


async def test_upload_withdraws_the_ticket_when_the_store_fails(
    storage_provider: SelfHostProvider,
    member_view: SelfHostProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = await new_workspace(member_view)
    files = files_of(storage_provider)

    async def failing(key: str, data: bytes, content_type: str) -> None:
        raise BackendUnavailableError("store down")

    monkeypatch.setattr(files.backend, "put", failing)
    with pytest.raises(BackendUnavailableError):
        await member_view.storage.upload(ws.id, PNG, content_type="image/png")
    so = t.stored_objects
    async with storage_provider._runtime.db.read() as conn:
        statuses = (
            await conn.execute(sa.select(so.c.status).where(so.c.workspace_id == ws.id))
        ).scalars()
        assert list(statuses) == ["deleting"]


async def test_upload_needs_bytes(owner: SelfHostProvider) -> None:
    ws = await new_workspace(owner)
    for data in ("text", None, [1, 2]):
        with pytest.raises(InvalidInputError):
            await owner.storage.upload(ws.id, data, content_type="text/plain")  # type: ignore[arg-type]
    stored = await owner.storage.upload(ws.id, bytearray(b"ok"), content_type="text/plain")  # type: ignore[arg-type]
    assert stored.size_bytes == 2

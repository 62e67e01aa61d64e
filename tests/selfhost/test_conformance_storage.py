"""The storage conformance area on the self-host provider: local disk and S3 (moto on loopback).

Both classes run on SQLite and PostgreSQL (``selfhost_url``). The S3 store is moto's server
mode on 127.0.0.1, started once per session; an independent boto3 client creates the bucket
(and, in ``test_storage.py``, checks what was written).

Local-disk URLs point at the bundled server, which is not part of this package: the local
transport does what the server does with them (verify the signature, stream to disk,
complete the upload; verify, open, read).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config

from kiiaren_core.models import UploadTicket
from kiiaren_core.testing.storage import ObjectTransport, StorageConformance
from kiiaren_selfhost import SelfHostProvider
from kiiaren_selfhost.storage import (
    OBJECTS_PATH,
    LocalDiskBackend,
    SignedGrant,
    verify_download_signature,
    verify_upload_signature,
)
from tests.selfhost.conftest import TEST_OPTIONS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3_KEY_ID = "testing"
S3_SECRET = "testing-secret"


def make_s3_client(endpoint: str) -> S3Client:
    """A boto3 client of the moto server, independent of the provider's."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    wsgi_server = server._server
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        # stop() ends the serving loop but leaves the listening socket open.
        if wsgi_server is not None:
            wsgi_server.server_close()


@pytest.fixture(scope="session")
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh bucket, created by an independent client."""
    name = f"kiiaren-test-{secrets.token_hex(4)}"
    client = make_s3_client(moto_endpoint)
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


@pytest.fixture
def s3_client(moto_endpoint: str) -> Iterator[S3Client]:
    """An independent client to check what the provider wrote."""
    client = make_s3_client(moto_endpoint)
    yield client
    client.close()


@pytest.fixture
async def s3_provider(
    selfhost_url: str, moto_endpoint: str, s3_bucket: str
) -> AsyncIterator[SelfHostProvider]:
    """A self-host provider storing files in the moto bucket."""
    provider = SelfHostProvider(
        database_url=selfhost_url,
        storage_backend="s3",
        s3_endpoint_url=moto_endpoint,
        s3_bucket=s3_bucket,
        s3_access_key_id=S3_KEY_ID,
        s3_secret_access_key=S3_SECRET,
        **TEST_OPTIONS,
    )
    await provider.initialize()
    try:
        yield provider
    finally:
        await provider.aclose()


class LocalServerTransport:
    """The bundled server's handling of local-disk URLs, in-process."""

    def __init__(self, provider: SelfHostProvider) -> None:
        self.files = provider._runtime.files
        backend = self.files.backend
        assert isinstance(backend, LocalDiskBackend)
        self.backend = backend

    @staticmethod
    def split(url: str) -> tuple[str, dict[str, str]]:
        parts = urlsplit(url)
        assert parts.path.startswith(OBJECTS_PATH), url
        return parts.path.removeprefix(OBJECTS_PATH), dict(parse_qsl(parts.query))

    async def verify_upload(self, ticket: UploadTicket, content_type: str | None) -> SignedGrant:
        storage_id, query = self.split(ticket.url)
        return verify_upload_signature(
            await self.files.signing_key(),
            storage_id=storage_id,
            query=query,
            content_type=content_type,
        )

    async def send(self, ticket: UploadTicket, data: bytes, chunk: int = 1000) -> None:
        assert ticket.method == "PUT"
        grant = await self.verify_upload(ticket, ticket.headers.get("Content-Type"))
        assert grant.max_bytes is not None

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), chunk):
                yield data[start : start + chunk]

        await self.backend.write_stream(grant.object_key, chunks(), grant.max_bytes)
        await self.files.complete_upload(grant.storage_id)

    async def verify_download(self, url: str) -> SignedGrant:
        storage_id, query = self.split(url)
        return verify_download_signature(
            await self.files.signing_key(), storage_id=storage_id, query=query
        )

    async def fetch(self, url: str) -> bytes:
        grant = await self.verify_download(url)
        with await self.backend.open_for_read(grant.object_key) as file:
            return file.read()


class HttpTransport:
    """A plain HTTP client, as an application would use the URLs."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, ticket: UploadTicket, data: bytes) -> None:
        response = await self.client.request(
            ticket.method, ticket.url, content=data, headers=ticket.headers
        )
        response.raise_for_status()

    async def fetch(self, url: str) -> bytes:
        response = await self.client.get(url)
        response.raise_for_status()
        return response.content


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class TestLocalDiskStorage(StorageConformance):
    @pytest.fixture
    async def provider(self, selfhost_provider: SelfHostProvider) -> SelfHostProvider:
        return selfhost_provider

    @pytest.fixture
    def object_transport(self, provider: SelfHostProvider) -> ObjectTransport:
        return LocalServerTransport(provider)


class TestS3Storage(StorageConformance):
    @pytest.fixture
    async def provider(self, s3_provider: SelfHostProvider) -> SelfHostProvider:
        return s3_provider

    @pytest.fixture
    def object_transport(self, http_client: httpx.AsyncClient) -> ObjectTransport:
        return HttpTransport(http_client)

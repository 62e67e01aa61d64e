"""Local-disk storage end to end: the signed URLs the provider hands out work over HTTP.

The storage conformance area runs through a plain HTTP client against the live server; the
tests below check what only the server decides: headers of downloads, refusals of altered or
reused URLs, the upload limit replacing the API body limit, deleted files stopping at once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from kiiaren_core.testing.storage import ObjectTransport, StorageConformance
from kiiaren_selfhost import SelfHostProvider
from selfhost_server.settings import MIB
from tests.selfhost.test_conformance_storage import HttpTransport
from tests.server.conftest import Account, LiveServer

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class TestStorageOverHttp(StorageConformance):
    """The conformance area, moving bytes through the server's object endpoints."""

    @pytest.fixture
    async def provider(self, live_server: LiveServer) -> SelfHostProvider:
        return live_server.provider

    @pytest.fixture
    async def object_transport(self, client: httpx.AsyncClient) -> ObjectTransport:
        return HttpTransport(client)


async def ticket(
    client: httpx.AsyncClient,
    account: Account,
    workspace: dict[str, Any],
    *,
    size: int,
    content_type: str = "image/png",
    filename: str | None = None,
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/workspaces/{workspace['id']}/uploads",
        json={"content_type": content_type, "size": size, "filename": filename},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    return issued


async def download_url(client: httpx.AsyncClient, account: Account, storage_id: str) -> str:
    response = await client.get(f"/v1/files/{storage_id}/url", headers=account.headers)
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    return url


def altered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_upload_and_download(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    name = 'holiday "photo" été.png'
    issued = await ticket(client, account, workspace, size=len(PNG), filename=name)
    assert issued["url"].startswith(str(client.base_url))
    uploaded = await client.put(issued["url"], content=PNG, headers=issued["headers"])
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["size_bytes"] == len(PNG)
    metadata = await client.get(f"/v1/files/{issued['storage_id']}", headers=account.headers)
    assert metadata.json()["size_bytes"] == len(PNG)
    url = await download_url(client, account, issued["storage_id"])
    downloaded = await client.get(url)
    assert downloaded.status_code == 200
    assert downloaded.content == PNG
    assert downloaded.headers["content-type"] == "image/png"
    assert downloaded.headers["content-length"] == str(len(PNG))
    assert downloaded.headers["x-content-type-options"] == "nosniff"
    assert downloaded.headers["content-disposition"] == (
        'inline; filename="holiday _photo_ _t_.png"; '
        "filename*=UTF-8''holiday%20%22photo%22%20%C3%A9t%C3%A9.png"
    )
    assert "sandbox" in downloaded.headers["content-security-policy"]


async def test_text_files_download_as_attachments(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    body = b"<script>alert(1)</script>"
    issued = await ticket(
        client, account, workspace, size=len(body), content_type="text/plain", filename="a.txt"
    )
    await client.put(issued["url"], content=body, headers=issued["headers"])
    downloaded = await client.get(await download_url(client, account, issued["storage_id"]))
    assert downloaded.headers["content-type"] == "text/plain"
    assert downloaded.headers["content-disposition"].startswith("attachment;")


async def test_altered_or_reused_urls_are_refused(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    issued = await ticket(client, account, workspace, size=len(PNG))
    url, headers = issued["url"], issued["headers"]
    for forged in (altered(url, m="999999"), altered(url, s="x" * 43), altered(url, e="1")):
        refused = await client.put(forged, content=PNG, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "not_authenticated"
    wrong_type = await client.put(url, content=PNG, headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 422
    too_big = await client.put(url, content=PNG + b"!", headers=headers)
    assert too_big.status_code == 413
    assert (await client.put(url, content=PNG, headers=headers)).status_code == 200
    reused = await client.put(url, content=PNG, headers=headers)
    assert reused.status_code == 409
    download = await download_url(client, account, issued["storage_id"])
    assert (await client.get(altered(download, n="other.png"))).status_code == 401
    assert (await client.get(download.replace("/objects/", "/objects/x"))).status_code == 404


async def test_uploads_use_the_upload_limit_not_the_body_limit(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    big = PNG + bytes(2 * MIB)
    issued = await ticket(client, account, workspace, size=len(big))
    uploaded = await client.put(issued["url"], content=big, headers=issued["headers"])
    assert uploaded.status_code == 200, uploaded.text
    downloaded = await client.get(await download_url(client, account, issued["storage_id"]))
    assert downloaded.content == big


async def test_uploads_above_the_provider_limit_are_cut_off(
    live_server: LiveServer, client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    limit = live_server.provider.capabilities.limits.max_upload_bytes
    issued = await ticket(client, account, workspace, size=10)
    response = await client.put(issued["url"], content=bytes(limit + 1), headers=issued["headers"])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_deleted_files_stop_being_served(
    client: httpx.AsyncClient, account: Account, workspace: dict[str, Any]
) -> None:
    issued = await ticket(client, account, workspace, size=len(PNG))
    await client.put(issued["url"], content=PNG, headers=issued["headers"])
    url = await download_url(client, account, issued["storage_id"])
    assert (await client.get(url)).status_code == 200
    removed = await client.delete(f"/v1/files/{issued['storage_id']}", headers=account.headers)
    assert removed.status_code == 204
    gone = await client.get(url)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"

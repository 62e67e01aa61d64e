"""``provider.storage`` over the wire: upload tickets, the bytes, URLs, metadata, removal.

The ticket flow is the contract's: ``generate_upload_url`` asks the server for a ticket; the
bytes go with the ticket's ``method`` to its ``url`` with its ``headers`` (a signed URL on the
bundled server's local disk, or a presigned object-store URL), never with the session's
bearer token, which must not reach a third party; afterwards the ticket's ``storage_id``
names the file. :meth:`HostedStorage.upload` does all of it in one call.
"""

from __future__ import annotations

import httpx

from kiiaren_core.errors import NotFoundError
from kiiaren_core.models import StoredObject, UploadTicket
from kiiaren_hosted.auth import Caller
from kiiaren_hosted.transport import error_from_response

__all__ = ["HostedStorage"]


class HostedStorage:
    """``provider.storage`` of one hosted provider object."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    async def generate_upload_url(
        self,
        workspace_id: str,
        *,
        content_type: str,
        size: int,
        filename: str | None = None,
    ) -> UploadTicket:
        """A ticket to upload one object of ``size`` bytes (members only)."""
        ticket: UploadTicket = await self._caller.call(
            "storage.upload_ticket",
            workspace_id=workspace_id,
            content_type=content_type,
            size=size,
            filename=filename,
        )
        return ticket

    async def send(self, ticket: UploadTicket, data: bytes) -> None:
        """Upload ``data`` as ``ticket`` says (its method, URL and headers, nothing else).

        Retried like any idempotent request. A signed URL of the bundled server is single
        use: when a repeat of a request whose answer was lost meets ``409``, the object is
        checked, and an object holding bytes is the first attempt's success.

        Raises:
            KiiarenError: the class the server answered with (the bundled server's error
                envelope; an object store's refusal is mapped by its status).
        """
        self._caller.check_open()
        request = httpx.Request(ticket.method, ticket.url, content=data, headers=ticket.headers)
        response = await self._caller.transport.send(request)
        if response.is_success:
            return
        if response.status_code == 409 and response.extensions.get("kiiaren_attempts", 1) > 1:
            stored = await self.get_metadata(ticket.storage_id)
            if stored is not None and stored.size_bytes is not None:
                return
        raise error_from_response(response)

    async def upload(
        self,
        workspace_id: str,
        data: bytes,
        *,
        content_type: str,
        filename: str | None = None,
    ) -> StoredObject:
        """Ticket, bytes and metadata in one call; returns the stored object's metadata."""
        ticket = await self.generate_upload_url(
            workspace_id, content_type=content_type, size=len(data), filename=filename
        )
        await self.send(ticket, data)
        stored = await self.get_metadata(ticket.storage_id)
        if stored is None:
            # The ticket was ours a moment ago: only a concurrent removal explains this.
            raise NotFoundError("File not found.", details={"storage_id": ticket.storage_id})
        return stored

    async def get_url(self, storage_id: str) -> str | None:
        """A short-lived download URL, or ``None`` when missing, invisible or not uploaded."""
        url: str | None = await self._caller.call("storage.url", storage_id=storage_id)
        return url

    async def get_metadata(self, storage_id: str) -> StoredObject | None:
        """The object's metadata, or ``None`` when missing or invisible."""
        stored: StoredObject | None = await self._caller.call(
            "storage.metadata", storage_id=storage_id
        )
        return stored

    async def remove(self, storage_id: str) -> None:
        """Delete the object (its uploader or a workspace admin)."""
        await self._caller.call("storage.remove", storage_id=storage_id)

"""What a self-host provider and all its session views share: pools, keys and services.

One :class:`Runtime` per root provider. It is cheap to build (no I/O); :meth:`Runtime.start`
does the I/O once (schema check or migration, signing key) and :meth:`Runtime.aclose` releases
everything. Views created with ``with_session`` hold a reference to the same runtime.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Coroutine
from typing import Any, Literal, cast

import anyio
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from kiiaren_core import load_extension_hooks
from kiiaren_core.capabilities import Capabilities, Limits
from kiiaren_core.errors import ProviderClosedError
from kiiaren_core.events import EventEnvelope, parse_event
from kiiaren_core.extensions import (
    AuditEvent,
    ExtensionHooks,
    FeatureGate,
    SearchIndexEvent,
    create_oss_stubs,
)
from kiiaren_selfhost.auth.mailer import Mailer, create_mailer
from kiiaren_selfhost.auth.oauth import OAuthClient, create_oauth_client
from kiiaren_selfhost.auth.passwords import PasswordHasher
from kiiaren_selfhost.auth.tokens import TokenService
from kiiaren_selfhost.clock import utcnow
from kiiaren_selfhost.db import Database, check_schema, migrate
from kiiaren_selfhost.db import tables as t
from kiiaren_selfhost.events.broker import Broker
from kiiaren_selfhost.events.listener import PgNotifier
from kiiaren_selfhost.events.presence import PresenceTracker
from kiiaren_selfhost.maintenance import run_periodically
from kiiaren_selfhost.ratelimit import Limit, RateLimiter
from kiiaren_selfhost.session import SessionLiveness
from kiiaren_selfhost.settings import SelfHostSettings
from kiiaren_selfhost.storage import create_object_storage

__all__ = ["Runtime"]

logger = logging.getLogger("kiiaren.selfhost")


class Runtime:
    """Shared state of one self-host provider and its views."""

    def __init__(
        self,
        settings: SelfHostSettings,
        *,
        hooks: ExtensionHooks | None = None,
        mailer: Mailer | None = None,
    ) -> None:
        self.settings = settings
        self.db = Database.from_url(
            settings.database_url,
            pool_size=settings.pool_size,
            timeout=settings.db_timeout_seconds,
        )
        if hooks is None and settings.extensions:
            hooks = load_extension_hooks(
                settings.extensions, variable="KIIAREN_SELFHOST_EXTENSIONS"
            )
        self.hooks = hooks or create_oss_stubs()
        self.features = FeatureGate.self_hosted()
        self.mailer = mailer or create_mailer(settings)
        self.hasher = PasswordHasher.from_settings(settings)
        self.limiter = RateLimiter(self.db)
        self.files = create_object_storage(settings, self.db)
        self.broker = Broker(self.db)
        self.liveness = SessionLiveness(self.db)
        self.presence = PresenceTracker(
            self.db, self.publish_ephemeral, offline_after_seconds=settings.presence_offline_seconds
        )
        self.notifier: PgNotifier | None = (
            None
            if settings.is_sqlite
            else PgNotifier(
                settings.database_url,
                on_wake=self.broker.wake,
                on_ephemeral=self._remote_ephemeral,
                on_reconnect=self.broker.wake_all,
            )
        )
        self.capabilities = Capabilities(
            areas=frozenset({"auth", "persistence", "events", "storage", "extensions"}),
            resume=True,
            presence=True,
            cross_process_events=not settings.is_sqlite,
            presigned_storage=settings.storage_backend == "s3",
            email_verification=True,
            oauth_providers=tuple(
                cast(Literal["google", "github"], name)
                for name, client_id in (
                    ("google", settings.oauth_google_client_id),
                    ("github", settings.oauth_github_client_id),
                )
                if client_id
            ),
            limits=Limits(
                max_upload_bytes=settings.max_upload_bytes,
                upload_url_ttl_seconds=settings.upload_url_ttl_seconds,
            ),
        )
        self._tokens: TokenService | None = None
        self._refresh_key: bytes | None = None
        self._oauth_clients: dict[str, OAuthClient] = {}
        self._start_lock = anyio.Lock()
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Raise ProviderClosedError once :meth:`aclose` has run."""
        if self._closed:
            raise ProviderClosedError()

    async def start(self) -> None:
        """Check (or apply) migrations and load the signing key. Idempotent, concurrency-safe."""
        self.check_open()
        async with self._start_lock:
            if not self._started:
                await self._start()

    async def _start(self) -> None:
        if self.settings.should_auto_migrate:
            await migrate(self.db)
        await check_schema(self.db)
        secret = await self._signing_key()
        self._refresh_key = hmac.new(secret, b"kiiaren refresh successor", "sha256").digest()
        self._tokens = TokenService.from_settings(self.settings, secret)
        if self.notifier is not None:
            self.notifier.start()
        self.spawn(run_periodically(self), name="kiiaren-maintenance")
        self._started = True

    async def ready(self) -> None:
        """Start on first use (so ``SelfHostProvider()`` works without ``initialize``)."""
        self.check_open()
        if not self._started:
            await self.start()

    @property
    def tokens(self) -> TokenService:
        """The JWT service (available once started)."""
        if self._tokens is None:
            raise ProviderClosedError("The provider is not initialised.")
        return self._tokens

    async def _signing_key(self) -> bytes:
        """The configured JWT secret, or one generated once and kept in the database."""
        if self.settings.jwt_secret is not None:
            return self.settings.jwt_secret.get_secret_value().encode()
        insert = postgresql.insert if self.db.dialect_name == "postgresql" else sqlite.insert
        async with self.db.write() as conn:
            await conn.execute(
                insert(t.instance_secrets)
                .values(name="jwt_secret", value=secrets.token_urlsafe(48), created_at=utcnow())
                .on_conflict_do_nothing(index_elements=[t.instance_secrets.c.name])
            )
            value = (
                await conn.execute(
                    sa.select(t.instance_secrets.c.value).where(
                        t.instance_secrets.c.name == "jwt_secret"
                    )
                )
            ).scalar_one()
        return str(value).encode()

    @property
    def refresh_key(self) -> bytes:
        """Key that derives a refresh token's successor (separate from the JWT key's use)."""
        if self._refresh_key is None:
            raise ProviderClosedError("The provider is not initialised.")
        return self._refresh_key

    def oauth_client(self, provider: str) -> OAuthClient:
        """The OAuth client for ``provider`` (made on first use, closed with the runtime).

        Raises InvalidInputError when ``provider`` is unknown or not configured.
        """
        self.check_open()
        client = self._oauth_clients.get(provider)
        if client is None:
            client = self._oauth_clients[provider] = create_oauth_client(provider, self.settings)
        return client

    async def after_commit(
        self,
        events: list[EventEnvelope],
        audits: list[AuditEvent],
        indexes: list[SearchIndexEvent],
        removed_files: list[str],
    ) -> None:
        """Effects of a committed mutation: publish events, call hooks, delete files.

        Hook failures are logged and never reach the caller: the write already happened.
        """
        if events:
            # Other processes first: the NOTIFY is queued for the notifier's sender, which
            # gets the one turn it needs to put it on the wire before a long local fan-out.
            if self.notifier is not None and self.notifier.notify(events):
                await asyncio.sleep(0)
            await self.broker.published(events)
        for audit in audits:
            try:
                await self.hooks.audit.log(audit)
            except Exception:
                logger.exception("audit hook failed for %s", audit.action)
        for item in indexes:
            try:
                await self.hooks.search.index(item)
            except Exception:
                logger.exception("search hook failed for %s", item.document_type)
        if removed_files:
            await self.files.delete_objects(removed_files)

    async def publish_ephemeral(self, event: EventEnvelope) -> None:
        """Deliver an event without seq here and, through NOTIFY, in the other processes."""
        if self.notifier is not None and self.notifier.notify([event]):
            await asyncio.sleep(0)  # on the wire before the local fan-out (see after_commit)
        self.broker.deliver_ephemeral(event)

    async def _remote_ephemeral(self, data: dict[str, Any]) -> None:
        event = parse_event(data)
        self.broker.deliver_ephemeral(event)

    def limit(self, name: str) -> Limit:
        """The configured limit ``rate_limit_<name>``."""
        return Limit.parse(getattr(self.settings, f"rate_limit_{name}"))

    async def aclose(self) -> None:
        """Release the pools and background work. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.broker.aclose()
        await self.presence.aclose()
        if self.notifier is not None:
            await self.notifier.aclose()
        for client in self._oauth_clients.values():
            await client.aclose()
        await self.files.aclose()
        await self.db.aclose()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` when the runtime closes (subscription pumps and the like)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run ``coro`` in the background; failures are logged; cancelled on :meth:`aclose`.

        Used where the caller must not wait, e.g. sending a password-reset email, whose
        duration would otherwise tell an observer whether the account exists.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(_log_failure)
        self.track(task)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

"""``SelfHostProvider``: the KIIAREN domain in-process on SQLAlchemy (PostgreSQL or SQLite).

::

    async with SelfHostProvider() as provider:          # ./kiiaren.db + ./kiiaren-data
        await provider.auth.sign_up_with_password("ada@example.com", "…", name="Ada")
        bob = provider.with_session(None)                # another user, same pools
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa

from kiiaren_core.capabilities import Capabilities
from kiiaren_core.errors import BackendUnavailableError, ProviderClosedError
from kiiaren_core.extensions import ExtensionHooks, FeatureGate
from kiiaren_core.models import ClientContext, SessionTokens
from kiiaren_core.settings import load_settings
from kiiaren_selfhost.auth.mailer import Mailer
from kiiaren_selfhost.auth.service import SelfHostAuth
from kiiaren_selfhost.db import migrate as migrate_database
from kiiaren_selfhost.domain import SelfHostPersistence
from kiiaren_selfhost.events import SelfHostEvents
from kiiaren_selfhost.idempotency import SelfHostIdempotencyStore
from kiiaren_selfhost.runtime import Runtime
from kiiaren_selfhost.session import SessionState
from kiiaren_selfhost.settings import SelfHostSettings
from kiiaren_selfhost.storage import SelfHostStorage, object_key

__all__ = ["SelfHostProvider"]


class SelfHostProvider:
    """The self-host :class:`~kiiaren_core.protocols.BackendProvider`.

    Args:
        settings: a full settings object; otherwise built from ``KIIAREN_SELFHOST_*`` and
            ``options`` (keyword names are the settings' field names).
        hooks: extension hook implementations (default: the OSS stubs). Plugging real ones
            in never makes a managed feature "available": ``is_managed`` stays False.
        mailer: where verification and reset emails go (default from settings).
    """

    id = "selfhost"
    name = "Self-Hosted (Community)"
    is_managed = False

    def __init__(
        self,
        settings: SelfHostSettings | None = None,
        *,
        hooks: ExtensionHooks | None = None,
        mailer: Mailer | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = load_settings(SelfHostSettings, options)
        elif options:
            settings = settings.model_copy(update=options)
        self._root = True
        self._runtime = Runtime(settings, hooks=hooks, mailer=mailer)
        self._state = SessionState()
        self._build()

    @classmethod
    def _view(cls, runtime: Runtime, state: SessionState) -> SelfHostProvider:
        view = cls.__new__(cls)
        view._root = False
        view._runtime = runtime
        view._state = state
        view._build()
        return view

    def _build(self) -> None:
        self._auth = SelfHostAuth(self._runtime, self._state)
        self._persistence = SelfHostPersistence(self._runtime, self._auth)
        self._events = SelfHostEvents(self._runtime, self._auth)
        self._storage = SelfHostStorage(self._runtime, self._auth)
        self._idempotency = SelfHostIdempotencyStore(self._runtime.db)

    # --- BackendProvider ----------------------------------------------------------------------

    @property
    def settings(self) -> SelfHostSettings:
        """The settings this provider runs with."""
        return self._runtime.settings

    @property
    def capabilities(self) -> Capabilities:
        return self._runtime.capabilities

    @property
    def auth(self) -> SelfHostAuth:
        return self._auth

    @property
    def persistence(self) -> SelfHostPersistence:
        return self._persistence

    @property
    def events(self) -> SelfHostEvents:
        return self._events

    @property
    def storage(self) -> SelfHostStorage:
        return self._storage

    @property
    def extensions(self) -> ExtensionHooks:
        return self._runtime.hooks

    @property
    def features(self) -> FeatureGate:
        return self._runtime.features

    async def initialize(self) -> None:
        """Apply or check migrations and load keys. Idempotent."""
        self._check_open()
        await self._runtime.start()

    def _check_open(self) -> None:
        self._runtime.check_open()
        if self._state.closed:
            raise ProviderClosedError("This provider view has been closed.")

    async def aclose(self) -> None:
        """Close the provider (pools included) or, for a view, only the view. Idempotent."""
        self._state.closed = True
        if self._root:
            await self._runtime.aclose()

    async def destroy(self) -> None:
        """Alias of :meth:`aclose`."""
        await self.aclose()

    # --- OperableProvider (what the bundled server and its CLI run) -------------------------

    @property
    def idempotency(self) -> SelfHostIdempotencyStore:
        """``Idempotency-Key`` records in this provider's database (every process shares them)."""
        return self._idempotency

    async def migrate(self) -> None:
        """Bring the database schema to the current version (see ``kiiaren_selfhost.db``)."""
        self._check_open()
        await migrate_database(self._runtime.db)

    async def check_ready(self) -> None:
        """Raise BackendUnavailableError unless the database and the object store answer.

        Starts the provider if needed; the store is asked about an object that never exists
        (a stat on local disk, a HEAD on S3).
        """
        self._check_open()
        await self._runtime.ready()
        async with self._runtime.db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))
        nil = "00000000-0000-0000-0000-000000000000"
        try:
            await self._runtime.files.backend.head(object_key(nil, nil))
        except OSError:
            raise BackendUnavailableError("The file storage cannot be read.") from None

    def with_session(
        self,
        tokens: SessionTokens | str | None,
        *,
        context: ClientContext | None = None,
    ) -> SelfHostProvider:
        """A view acting for ``tokens`` (or signed out), sharing this provider's pools."""
        self._check_open()
        if isinstance(tokens, str):
            tokens = SessionTokens(access_token=tokens)
        return self._view(
            self._runtime, SessionState(tokens=tokens, context=context or ClientContext())
        )

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        kind = "provider" if self._root else "view"
        return f"<SelfHostProvider {kind} db={self._runtime.db.dialect_name}>"

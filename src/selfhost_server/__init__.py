"""The bundled KIIAREN server: any provider over the wire protocol (REST under ``/v1``).

::

    kiiaren-server serve            # the embedded default: ./kiiaren.db + ./kiiaren-data

or, embedded in your own ASGI deployment::

    from selfhost_server import create_app
    app = create_app(provider)

See ``docs/server.md`` for running, configuring and deploying it.
"""

from selfhost_server._errors import ErrorBody, ErrorEnvelope
from selfhost_server._idempotency import InProcessIdempotencyStore
from selfhost_server._logging import configure_logging
from selfhost_server.app import API_VERSION, create_app, create_app_from_env
from selfhost_server.settings import ServerSettings, load_server_settings

__all__ = [
    "API_VERSION",
    "ErrorBody",
    "ErrorEnvelope",
    "InProcessIdempotencyStore",
    "ServerSettings",
    "configure_logging",
    "create_app",
    "create_app_from_env",
    "load_server_settings",
]

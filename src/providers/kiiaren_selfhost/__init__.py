"""KIIAREN self-host provider: the domain in-process on PostgreSQL or SQLite.

Registered as the ``selfhost`` provider (entry point group ``kiiaren.providers``)::

    from kiiaren_core import open_provider

    async with open_provider("selfhost") as provider:   # ./kiiaren.db by default
        ...

``migrate(url)`` brings a database to the current schema (the embedded SQLite default does
this by itself on first start; PostgreSQL deployments run it explicitly).
"""

from kiiaren_selfhost.db import migrate
from kiiaren_selfhost.provider import SelfHostProvider
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = ["SelfHostProvider", "SelfHostSettings", "migrate"]

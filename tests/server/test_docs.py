"""docs/server.md says what the code says."""

from __future__ import annotations

from pathlib import Path

import selfhost_server
from selfhost_server import ServerSettings
from tests.core import _docgen

SERVER_DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def test_the_server_settings_table_matches_the_code() -> None:
    documented = _docgen.table_rows(SERVER_DOC.read_text(), "server-settings")
    generated = _docgen.settings_rows(ServerSettings)  # type: ignore[arg-type]
    assert [row[:-1] for row in documented] == generated, "docs/server.md settings table"
    assert all(row[-1] for row in documented), "a setting without a description"


def test_public_surface() -> None:
    assert sorted(selfhost_server.__all__) == [
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
    for name in selfhost_server.__all__:
        assert getattr(selfhost_server, name) is not None

"""Extension hooks are pluggable by configuration (``kiiaren.extensions`` entry points)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from kiiaren_core import _registry
from kiiaren_core.errors import ConfigurationError
from kiiaren_core.extensions import AuditEvent, ExtensionHooks, create_oss_stubs
from kiiaren_core.testing.base import unique_email
from kiiaren_selfhost import SelfHostProvider
from tests.selfhost.conftest import TEST_OPTIONS

pytestmark = pytest.mark.anyio

RECORDED: list[AuditEvent] = []


class RecordingAudit:
    """A real (if small) audit sink: keeps every event it is given."""

    async def log(self, event: AuditEvent) -> None:
        RECORDED.append(event)

    async def query(self, params: object) -> list[object]:
        return list(RECORDED)


def recording_hooks() -> ExtensionHooks:
    stubs = create_oss_stubs()
    return ExtensionHooks(
        audit=RecordingAudit(),  # type: ignore[arg-type]
        search=stubs.search,
        ai=stubs.ai,
        notification=stubs.notification,
        kms=stubs.kms,
    )


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(
        name="recording",
        value="tests.selfhost.test_extensions_plugin:recording_hooks",
        group=_registry.EXTENSIONS_GROUP,
    )
    monkeypatch.setattr(
        _registry,
        "entry_points",
        lambda group: [ep] if group == _registry.EXTENSIONS_GROUP else [],
    )


async def test_configured_hooks_receive_every_write(installed: None, selfhost_url: str) -> None:
    RECORDED.clear()
    async with SelfHostProvider(
        database_url=selfhost_url, extensions="recording", **TEST_OPTIONS
    ) as provider:
        view = provider.with_session(None)
        await view.auth.sign_up_with_password(unique_email(), "Plugin-password-1", name="P")
        workspace = await view.persistence.workspace.create("Audited")
        assert isinstance(provider.extensions.audit, RecordingAudit)
        assert provider.is_managed is False
        assert provider.features.list_available() == [], "plugging hooks unlocks nothing"
    actions = [event.action for event in RECORDED if event.workspace_id == workspace.id]
    assert "workspace.create" in actions
    assert "member.join" in actions


def test_unknown_extension_names_the_variable(installed: None, selfhost_url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SelfHostProvider(database_url=selfhost_url, extensions="nope", **TEST_OPTIONS)
    assert caught.value.details["variable"] == "KIIAREN_SELFHOST_EXTENSIONS"
    assert "recording" in caught.value.message

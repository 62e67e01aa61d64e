"""The events socket's configuration: read from the server settings, origins, uvicorn options,
and the frame models' JSON (the shapes ``docs/wire-protocol-events.md`` shows)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from selfhost_server import ServerSettings, ws
from selfhost_server.ws import WebSocketConfig
from selfhost_server.ws_protocol import (
    CLIENT_FRAME,
    ErrorFrame,
    PingFrame,
    SubscribeFrame,
    UnsubscribedFrame,
    event_frame_prefix,
)


def test_the_config_comes_from_ws_settings_with_defaults_for_missing_ones() -> None:
    settings = ServerSettings(ws_allowed_origins=("https://app.example.com",))
    config = WebSocketConfig.from_settings(settings)
    assert config.allowed_origins == ("https://app.example.com",)
    assert config == WebSocketConfig(allowed_origins=("https://app.example.com",))
    custom = WebSocketConfig.from_settings(
        SimpleNamespace(ws_max_frame_bytes=4096, ws_send_timeout_seconds=None)
    )
    assert custom.max_frame_bytes == 4096
    assert custom.send_timeout_seconds == WebSocketConfig().send_timeout_seconds
    assert WebSocketConfig.from_settings(None) == WebSocketConfig()
    with pytest.raises(ValidationError):
        WebSocketConfig.from_settings(SimpleNamespace(ws_max_frame_bytes=10))


@pytest.mark.parametrize(
    ("allowed", "origin", "ok"),
    [
        (("https://app.example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "HTTPS://App.Example.com/", True),
        (("https://app.example.com/",), "https://app.example.com", True),
        (("https://app.example.com",), "https://app.example.com:8443", False),
        (("https://app.example.com",), "http://app.example.com", False),
        (("https://app.example.com",), "null", False),
        ((), "https://app.example.com", False),
        (("*",), "https://anything.example", True),
        ("https://a.example, https://b.example", "https://b.example", True),
    ],
)
def test_origin_allow_list(allowed: tuple[str, ...] | str, origin: str, ok: bool) -> None:
    assert WebSocketConfig.model_validate({"allowed_origins": allowed}).origin_allowed(origin) is ok


def test_uvicorn_options_carry_the_heartbeat_and_bound_message_buffering() -> None:
    options = ws.uvicorn_options(
        SimpleNamespace(ws_heartbeat_interval_seconds=5.0, ws_heartbeat_timeout_seconds=7.0)
    )
    assert options == {
        "ws_ping_interval": 5.0,
        "ws_ping_timeout": 7.0,
        "ws_max_size": 1 << 20,
        "ws_per_message_deflate": False,
    }
    big = ws.uvicorn_options(SimpleNamespace(ws_max_frame_bytes=1 << 20))
    assert big["ws_max_size"] == 4 << 20


def test_client_frames_parse_and_ignore_unknown_fields() -> None:
    frame = CLIENT_FRAME.validate_json(
        '{"type": "subscribe", "id": "a", "workspace_id": "w", "since": 3, "future": 1}'
    )
    assert frame == SubscribeFrame(type="subscribe", id="a", workspace_id="w", since=3)
    assert CLIENT_FRAME.validate_json('{"type": "ping"}') == PingFrame(type="ping")
    for bad in ('{"type": "nope"}', '{"type": "ping", "id": ""}', "[]", '{"id": "x"}'):
        with pytest.raises(ValidationError):
            CLIENT_FRAME.validate_json(bad)


def test_server_frames_serialise_as_documented() -> None:
    assert json.loads(
        ErrorFrame(id=None, error={"code": "x", "message": "m", "details": {}}).model_dump_json()
    ) == {
        "type": "error",
        "id": None,
        "error": {"code": "x", "message": "m", "details": {}},
    }
    unsubscribed = UnsubscribedFrame(id="a", reason="slow_consumer", last_seq=9)
    assert json.loads(unsubscribed.model_dump_json()) == {
        "type": "unsubscribed",
        "id": "a",
        "reason": "slow_consumer",
        "last_seq": 9,
        "error": None,
    }
    text = event_frame_prefix('id "quoted"') + '{"seq": 1}' + "}"
    assert json.loads(text) == {"type": "event", "subscription": 'id "quoted"', "event": {"seq": 1}}


def test_ws_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from selfhost_server.settings import ServerSettings
    from selfhost_server.ws import WebSocketConfig

    monkeypatch.setenv("KIIAREN_SERVER_WS_MAX_SUBSCRIPTIONS", "5")
    monkeypatch.setenv("KIIAREN_SERVER_WS_AUTH_TIMEOUT_SECONDS", "2.5")
    config = WebSocketConfig.from_settings(ServerSettings())
    assert (config.max_subscriptions, config.auth_timeout_seconds) == (5, 2.5)
    assert config.max_frame_bytes == WebSocketConfig().max_frame_bytes, "unset keeps the default"

"""Typed settings: KIIAREN_PROVIDER, KIIAREN_<PROVIDER>_<FIELD>, and errors naming the variable."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr, ValidationError

from kiiaren_core.errors import ConfigurationError
from kiiaren_core.settings import KiiarenSettings, ProviderSettings, load_settings

if TYPE_CHECKING:
    from kiiaren_selfhost.settings import SelfHostSettings


@pytest.fixture(autouse=True)
def empty_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KIIAREN_* variable from the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("KIIAREN_"):
            monkeypatch.delenv(name)


def _configuration_error(
    cls: type[KiiarenSettings] | type[ProviderSettings], overrides: dict[str, object] | None = None
) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(cls, overrides)
    return caught.value


# --- KIIAREN_PROVIDER -----------------------------------------------------------------------------


def test_provider_defaults_to_selfhost() -> None:
    assert load_settings(KiiarenSettings).provider == "selfhost"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("hosted", "hosted"), ("  Self-Host ", "self-host"), ("SELFHOST", "selfhost")],
)
def test_kiiaren_provider_is_trimmed_and_lowercased(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: str
) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", raw)
    assert load_settings(KiiarenSettings).provider == expected


def test_an_empty_kiiaren_provider_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", "   ")
    error = _configuration_error(KiiarenSettings)
    assert error.message.startswith("Invalid configuration KIIAREN_PROVIDER:")
    assert "must not be empty" in error.message
    assert error.details == {"variable": "KIIAREN_PROVIDER"}


def test_a_provider_override_wins_and_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIIAREN_PROVIDER", "hosted")
    assert load_settings(KiiarenSettings, {"provider": " Custom "}).provider == "custom"


def test_a_bad_provider_override_names_the_option() -> None:
    error = _configuration_error(KiiarenSettings, {"provider": ""})
    assert error.message.startswith("Invalid configuration provider:")
    assert error.details == {"variable": "provider"}


def test_sdk_settings_ignore_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_POOL_SIZE", "not-a-number")
    monkeypatch.setenv("KIIAREN_SOMETHING_ELSE", "x")
    assert load_settings(KiiarenSettings).provider == "selfhost"


def test_sdk_settings_are_frozen() -> None:
    settings = load_settings(KiiarenSettings)
    with pytest.raises(ValidationError):
        settings.provider = "hosted"  # type: ignore[misc]


# --- provider settings: environment and overrides -------------------------------------------------


def test_selfhost_settings_work_with_an_empty_environment(selfhost: type[SelfHostSettings]) -> None:
    settings = load_settings(selfhost)
    assert settings.database_url == "sqlite+aiosqlite:///./kiiaren.db"
    assert settings.is_sqlite is True
    assert settings.should_auto_migrate is True
    assert settings.jwt_secret is None
    assert settings.pool_size == 10
    assert settings.storage_backend == "local"
    assert settings.storage_path == "./kiiaren-data"
    assert settings.mailer == "log"
    assert settings.dns_nameservers == ()
    assert settings.rate_limit_sign_in == "10/60"


def test_every_selfhost_field_has_a_default(selfhost: type[SelfHostSettings]) -> None:
    required = [name for name, field in selfhost.model_fields.items() if field.is_required()]
    assert required == []


def test_selfhost_reads_its_prefixed_variables(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_POOL_SIZE", "25")
    monkeypatch.setenv("KIIAREN_SELFHOST_DATABASE_URL", "postgresql+psycopg://db/kiiaren")
    monkeypatch.setenv("KIIAREN_SELFHOST_DNS_NAMESERVERS", '["127.0.0.1:5353", "10.0.0.1"]')
    settings = load_settings(selfhost)
    assert settings.pool_size == 25
    assert settings.is_sqlite is False
    assert settings.should_auto_migrate is False
    assert settings.dns_nameservers == ("127.0.0.1:5353", "10.0.0.1")


def test_unprefixed_variables_are_not_read(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("POOL_SIZE", "99")
    monkeypatch.setenv("KIIAREN_POOL_SIZE", "98")
    assert load_settings(selfhost).pool_size == 10


def test_explicit_auto_migrate_wins_over_the_database_kind(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_AUTO_MIGRATE", "false")
    assert load_settings(selfhost).should_auto_migrate is False
    postgres = load_settings(
        selfhost, {"database_url": "postgresql+psycopg://db/x", "auto_migrate": True}
    )
    assert postgres.should_auto_migrate is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KIIAREN_SELFHOST_POOL_SIZE", "abc"),
        ("KIIAREN_SELFHOST_POOL_SIZE", "0"),
        ("KIIAREN_SELFHOST_STORAGE_BACKEND", "ftp"),
        ("KIIAREN_SELFHOST_RATE_LIMIT_JOIN", "ten per minute"),
        ("KIIAREN_SELFHOST_SMTP_PORT", "70000"),
        ("KIIAREN_SELFHOST_DNS_NAMESERVERS", "127.0.0.1"),
    ],
)
def test_a_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv(variable, value)
    error = _configuration_error(selfhost)
    assert error.message.startswith(f"Invalid configuration {variable}:")
    assert error.details == {"variable": variable}


@pytest.mark.parametrize(
    ("option", "value"),
    [("pool_size", 0), ("pool_size", "many"), ("mailer", "pigeon"), ("rate_limit_join", "1/0")],
)
def test_a_bad_override_names_the_option(
    option: str, value: object, selfhost: type[SelfHostSettings]
) -> None:
    error = _configuration_error(selfhost, {option: value})
    assert error.message.startswith(f"Invalid configuration {option}:")
    assert "KIIAREN_SELFHOST_" not in error.message
    assert error.details == {"variable": option}


def test_overrides_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_POOL_SIZE", "5")
    assert load_settings(selfhost, {"pool_size": 7}).pool_size == 7


def test_an_override_replaces_a_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_POOL_SIZE", "abc")
    assert load_settings(selfhost, {"pool_size": 3}).pool_size == 3


def test_unknown_options_are_refused_naming_them(selfhost: type[SelfHostSettings]) -> None:
    error = _configuration_error(selfhost, {"pool_sise": 3, "databse_url": "x"})
    assert "'databse_url'" in error.message
    assert "'pool_sise'" in error.message
    assert "for SelfHostSettings" in error.message
    assert "Known options:" in error.message
    assert "pool_size" in error.message  # the known options are listed to spot the typo
    assert error.details == {"variable": "databse_url"}


def test_one_unknown_option_is_named() -> None:
    error = _configuration_error(KiiarenSettings, {"providr": "x"})
    assert error.message == "Unknown option 'providr' for KiiarenSettings. Known options: provider."


# --- secrets --------------------------------------------------------------------------------------

SHORT_SECRET = "short-but-secret-31-bytes-long!"
LONG_SECRET = "a-proper-secret-of-32-bytes-long"


def test_the_fixture_secrets_have_the_intended_lengths() -> None:
    assert len(SHORT_SECRET.encode()) == 31
    assert len(LONG_SECRET.encode()) == 32


def test_a_short_jwt_secret_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_JWT_SECRET", SHORT_SECRET)
    error = _configuration_error(selfhost)
    assert error.message.startswith("Invalid configuration KIIAREN_SELFHOST_JWT_SECRET:")
    assert "at least 32 bytes" in error.message
    assert SHORT_SECRET not in error.message
    assert SHORT_SECRET not in repr(error.details)


def test_a_short_jwt_secret_override_names_the_option(selfhost: type[SelfHostSettings]) -> None:
    error = _configuration_error(selfhost, {"jwt_secret": SHORT_SECRET})
    assert error.details == {"variable": "jwt_secret"}
    assert SHORT_SECRET not in error.message


def test_the_jwt_secret_length_counts_bytes(selfhost: type[SelfHostSettings]) -> None:
    # 16 two-byte characters are 32 bytes: accepted; 15 (30 bytes) are not.
    assert load_settings(selfhost, {"jwt_secret": "é" * 16}).jwt_secret is not None
    with pytest.raises(ConfigurationError):
        load_settings(selfhost, {"jwt_secret": "é" * 15})


def test_a_long_jwt_secret_is_kept_secret(
    monkeypatch: pytest.MonkeyPatch, selfhost: type[SelfHostSettings]
) -> None:
    monkeypatch.setenv("KIIAREN_SELFHOST_JWT_SECRET", LONG_SECRET)
    settings = load_settings(selfhost)
    assert isinstance(settings.jwt_secret, SecretStr)
    assert settings.jwt_secret.get_secret_value() == LONG_SECRET
    assert LONG_SECRET not in repr(settings)
    assert LONG_SECRET not in str(settings.model_dump())


def test_provider_settings_are_frozen_and_refuse_unknown_fields(
    selfhost: type[SelfHostSettings],
) -> None:
    settings = load_settings(selfhost)
    with pytest.raises(ValidationError):
        settings.pool_size = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        selfhost(not_a_field=1)  # type: ignore[call-arg]

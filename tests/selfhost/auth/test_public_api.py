"""The public surface of ``kiiaren_selfhost.auth``: exactly these names, all importable."""

from __future__ import annotations

import importlib

import pytest

import kiiaren_selfhost.auth as auth

EXPECTED = {
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_LENGTH",
    "AccessClaims",
    "GitHubOAuthClient",
    "GoogleOAuthClient",
    "LogMailer",
    "Mailer",
    "OAuthClient",
    "OAuthProfile",
    "OAuthProviderName",
    "OutgoingEmail",
    "PasswordHasher",
    "SmtpMailer",
    "TokenService",
    "check_password_policy",
    "create_mailer",
    "create_oauth_client",
    "hash_token",
    "is_common_password",
    "new_nonce",
    "new_opaque_token",
    "new_pkce_pair",
    "new_state",
    "password_reset_email",
    "verification_email",
}


def test_package_exports_exactly_the_building_blocks() -> None:
    assert set(auth.__all__) == EXPECTED
    assert len(auth.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(auth, name) is not None


@pytest.mark.parametrize("module", ["passwords", "tokens", "mailer", "oauth"])
def test_module_all_is_sorted_and_resolves(module: str) -> None:
    loaded = importlib.import_module(f"kiiaren_selfhost.auth.{module}")
    names = loaded.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(loaded, name), name
        assert not name.startswith("_")


def test_building_blocks_do_not_import_the_database() -> None:
    for module in ("passwords", "tokens", "mailer", "oauth"):
        source = importlib.import_module(f"kiiaren_selfhost.auth.{module}").__file__
        assert source is not None
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
        assert "sqlalchemy" not in text
        assert "kiiaren_selfhost.db" not in text

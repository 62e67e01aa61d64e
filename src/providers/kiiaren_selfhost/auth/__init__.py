"""I/O-free building blocks of self-host authentication.

Password hashing and policy (:mod:`.passwords`), access and opaque tokens (:mod:`.tokens`),
outgoing account email (:mod:`.mailer`) and OAuth sign-in with Google and GitHub
(:mod:`.oauth`). None of them touches the database; the auth service composes them.
"""

from __future__ import annotations

from kiiaren_selfhost.auth.mailer import (
    LogMailer,
    Mailer,
    OutgoingEmail,
    SmtpMailer,
    create_mailer,
    password_reset_email,
    verification_email,
)
from kiiaren_selfhost.auth.oauth import (
    GitHubOAuthClient,
    GoogleOAuthClient,
    OAuthClient,
    OAuthProfile,
    OAuthProviderName,
    create_oauth_client,
    new_nonce,
    new_pkce_pair,
    new_state,
)
from kiiaren_selfhost.auth.passwords import (
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_LENGTH,
    PasswordHasher,
    check_password_policy,
    is_common_password,
)
from kiiaren_selfhost.auth.tokens import (
    AccessClaims,
    TokenService,
    hash_token,
    new_opaque_token,
)

__all__ = [
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
]

"""Self-host provider settings: ``KIIAREN_SELFHOST_<FIELD>`` environment variables.

Every field has a working default, so the provider runs with no configuration at all on the
embedded default (SQLite file ``./kiiaren.db`` + local disk ``./kiiaren-data``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from kiiaren_core.settings import ProviderSettings

__all__ = ["RateLimit", "SelfHostSettings"]

RateLimit = str
"""A limit written ``"<count>/<seconds>"``, e.g. ``"10/60"``: at most 10 attempts a minute."""


def _check_rate(value: str) -> str:
    count, _, seconds = value.partition("/")
    if not (count.strip().isdigit() and seconds.strip().isdigit() and int(seconds) > 0):
        raise ValueError("must look like '<count>/<seconds>', for example '10/60'")
    return value


class SelfHostSettings(ProviderSettings):
    """Configuration of the self-host provider (all optional)."""

    model_config = SettingsConfigDict(env_prefix="KIIAREN_SELFHOST_")

    # --- database ---------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./kiiaren.db"
    """SQLAlchemy async URL: ``postgresql+psycopg://...`` in production, SQLite embedded."""
    auto_migrate: bool | None = None
    """Apply migrations on start. Default: yes for SQLite, no for PostgreSQL (run ``migrate``)."""
    pool_size: int = Field(default=10, ge=1, le=200)
    db_timeout_seconds: float = Field(default=10.0, gt=0)

    # --- tokens -----------------------------------------------------------------------------
    jwt_secret: SecretStr | None = None
    """HS256 signing key (>= 32 bytes). Unset: a random key is created once and kept in the
    database, so every process sharing the database agrees on it."""
    jwt_issuer: str = "kiiaren-selfhost"
    jwt_audience: str = "kiiaren"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    refresh_reuse_grace_seconds: float = Field(default=10.0, ge=0, le=300)

    # --- passwords --------------------------------------------------------------------------
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_memory_cost_kib: int = Field(default=19_456, ge=19_456)
    argon2_parallelism: int = Field(default=1, ge=1)
    max_concurrent_hashes: int = Field(default=4, ge=1, le=64)

    # --- rate limits ("count/seconds"; per client IP and per account) -----------------------
    rate_limit_sign_in: RateLimit = "10/60"
    rate_limit_sign_up: RateLimit = "5/60"
    rate_limit_refresh: RateLimit = "60/60"
    rate_limit_verification: RateLimit = "5/300"
    rate_limit_password_reset: RateLimit = "5/300"
    rate_limit_join: RateLimit = "20/60"
    rate_limit_domain_verify: RateLimit = "10/60"

    # --- email ------------------------------------------------------------------------------
    public_url: str = "http://127.0.0.1:8000"
    """Base URL used in links sent by email and in OAuth redirect URIs."""
    email_verification_link: str = "{public_url}/verify-email?token={token}"
    """Link emailed to confirm an address: a page of *your application* that posts the token
    to ``POST /v1/auth/verify-email`` (``auth.verify_email``). ``{public_url}`` and ``{token}``
    are filled in."""
    password_reset_link: str = "{public_url}/reset-password?token={token}"
    """Link emailed for a password reset: an application page that asks for the new password
    and posts both to ``POST /v1/auth/password-reset`` (``auth.reset_password``)."""
    mailer: Literal["log", "smtp"] = "log"
    mail_from: str = "KIIAREN <no-reply@localhost>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65_535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    """Bound on connecting to and talking with the SMTP server, per message."""
    email_token_ttl_seconds: int = Field(default=86_400, ge=60)
    password_reset_ttl_seconds: int = Field(default=3_600, ge=60)

    # --- OAuth ------------------------------------------------------------------------------
    oauth_google_client_id: str | None = None
    oauth_google_client_secret: SecretStr | None = None
    oauth_google_issuer: str = "https://accounts.google.com"
    oauth_google_authorize_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    oauth_google_token_url: str = "https://oauth2.googleapis.com/token"
    oauth_google_jwks_url: str = "https://www.googleapis.com/oauth2/v3/certs"
    oauth_github_client_id: str | None = None
    oauth_github_client_secret: SecretStr | None = None
    oauth_github_authorize_url: str = "https://github.com/login/oauth/authorize"
    oauth_github_token_url: str = "https://github.com/login/oauth/access_token"
    oauth_github_api_url: str = "https://api.github.com"
    oauth_state_ttl_seconds: int = Field(default=600, ge=60)
    oauth_timeout_seconds: float = Field(default=10.0, gt=0)
    """Bound on each request to an identity provider (token, JWKS, user info)."""

    # --- storage ----------------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    storage_path: str = "./kiiaren-data"
    storage_signing_key: SecretStr | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str = "kiiaren"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    upload_url_ttl_seconds: int = Field(default=300, ge=10, le=86_400)
    orphan_upload_ttl_seconds: int = Field(default=86_400, ge=60)

    # --- events -----------------------------------------------------------------------------
    event_retention_seconds: int = Field(default=7 * 86_400, ge=60)
    """How long the event log keeps events for resume; older ones are pruned."""
    maintenance_interval_seconds: float = Field(default=300.0, ge=1.0)
    """How often the background janitor prunes the event log, rate-limit windows, expired
    OAuth states and orphaned uploads (0 < value; every process runs it, it is idempotent)."""
    subscriber_queue_size: int = Field(default=1_000, ge=10)
    presence_away_seconds: int = Field(default=300, ge=5)
    presence_offline_seconds: int = Field(default=60, ge=1)

    # --- extensions ---------------------------------------------------------------------------
    extensions: str | None = None
    """Name of a ``kiiaren.extensions`` entry point whose hooks replace the OSS stubs (a real
    audit sink or search index); unset: the stubs. Managed features stay unavailable."""

    # --- domain verification ----------------------------------------------------------------
    dns_nameservers: tuple[str, ...] = ()
    """Resolvers for TXT lookups (``"127.0.0.1:5353"`` form allowed). Empty: the system's."""
    dns_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator(
        "rate_limit_sign_in",
        "rate_limit_sign_up",
        "rate_limit_refresh",
        "rate_limit_verification",
        "rate_limit_password_reset",
        "rate_limit_join",
        "rate_limit_domain_verify",
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        return _check_rate(value)

    @field_validator("email_verification_link", "password_reset_link")
    @classmethod
    def _link_template(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("must contain {token}")
        try:
            value.format(public_url="", token="")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may only use {public_url} and {token}") from None
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @property
    def is_sqlite(self) -> bool:
        """True when the database is SQLite (single process)."""
        return self.database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        """Whether ``initialize`` applies migrations."""
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

"""Outgoing email for account flows (verification and password-reset links).

Two mailers ship: :class:`LogMailer`, the development default, which writes each message to the
``kiiaren.mail`` logger (links included: on a laptop the log *is* the inbox), and
:class:`SmtpMailer`, which delivers through any SMTP server. Choose with the ``mailer`` setting.
"""

from __future__ import annotations

import email.message
import email.utils
import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Protocol, runtime_checkable

import anyio.to_thread

from kiiaren_core.errors import BackendUnavailableError, ConfigurationError, InvalidInputError
from kiiaren_selfhost.settings import SelfHostSettings

__all__ = [
    "LogMailer",
    "Mailer",
    "OutgoingEmail",
    "SmtpMailer",
    "create_mailer",
    "password_reset_email",
    "verification_email",
]

_log = logging.getLogger("kiiaren.mail")


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """A plain-text email to one recipient.

    Raises:
        InvalidInputError: ``to`` is not a single address, or ``to``/``subject`` hold a line
            break (which would let a value inject extra headers).
    """

    to: str
    subject: str
    text: str

    def __post_init__(self) -> None:
        for field, value in (("to", self.to), ("subject", self.subject)):
            if "\r" in value or "\n" in value:
                raise InvalidInputError(
                    f"Email {field} must be a single line.", details={"field": field}
                )
        addresses = email.utils.getaddresses([self.to])
        if len(addresses) != 1 or "@" not in addresses[0][1]:
            raise InvalidInputError(
                "Email recipient must be a single address.", details={"field": "to"}
            )


@runtime_checkable
class Mailer(Protocol):
    """Sends :class:`OutgoingEmail`.

    ``send`` returns once the message is accepted for delivery (by the log or the SMTP server)
    and raises :class:`BackendUnavailableError` when it could not be handed over.
    """

    async def send(self, message: OutgoingEmail) -> None:
        """Hand ``message`` over for delivery."""
        ...


class LogMailer:
    """Development mailer: logs each message, link and all, at INFO on ``kiiaren.mail``.

    The log line contains the secret link (that is the point: it is how a developer clicks
    it), so do not use this mailer where logs are shared or shipped elsewhere.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _log

    async def send(self, message: OutgoingEmail) -> None:
        """Log ``message``; never fails."""
        self._logger.info(
            "email to %s\nSubject: %s\n\n%s", message.to, message.subject, message.text
        )


class SmtpMailer:
    """Delivers through an SMTP server with :mod:`smtplib`, in a worker thread.

    One connection per message: account emails are rare, and a fresh connection never trips
    over a server that dropped an idle one.

    Args:
        host: SMTP server host.
        port: SMTP server port (25/587 for plain or STARTTLS, 465 for implicit TLS).
        sender: ``From`` header, e.g. ``"KIIAREN <no-reply@example.com>"``.
        username: Log in with this user (after TLS, when TLS is on); None: no login.
        password: Password for ``username``.
        starttls: Upgrade the connection with STARTTLS before anything else.
        use_ssl: Connect with implicit TLS (SMTPS).
        timeout: Seconds allowed for connecting and for each server reply.
        ssl_context: TLS settings; default: the system's trust store with hostname checks.

    Raises:
        ConfigurationError: both ``starttls`` and ``use_ssl``, or a password without a user.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_ssl: bool = False,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if starttls and use_ssl:
            raise ConfigurationError(
                "Choose either smtp_starttls or smtp_ssl, not both.",
                details={"variable": "smtp_ssl"},
            )
        if password is not None and username is None:
            raise ConfigurationError(
                "smtp_password is set but smtp_username is not.",
                details={"variable": "smtp_username"},
            )
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._use_ssl = use_ssl
        self._timeout = timeout
        self._ssl_context = ssl_context

    @classmethod
    def from_settings(
        cls, settings: SelfHostSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> SmtpMailer:
        """A mailer using the ``smtp_*`` and ``mail_from`` settings."""
        password = settings.smtp_password
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.mail_from,
            username=settings.smtp_username,
            password=password.get_secret_value() if password is not None else None,
            starttls=settings.smtp_starttls,
            use_ssl=settings.smtp_ssl,
            timeout=settings.smtp_timeout_seconds,
            ssl_context=ssl_context,
        )

    async def send(self, message: OutgoingEmail) -> None:
        """Deliver ``message``.

        Raises:
            BackendUnavailableError: the server could not be reached, refused the login, the
                sender or the recipient, or timed out (the cause is logged, not returned).
        """
        mime = self._build(message)
        try:
            await anyio.to_thread.run_sync(self._deliver, mime)
        except (smtplib.SMTPException, OSError) as exc:
            # OSError covers refused connections, timeouts and TLS failures (ssl.SSLError).
            _log.warning(
                "could not send email via %s:%s: %s", self._host, self._port, type(exc).__name__
            )
            raise BackendUnavailableError(
                "The email could not be sent. Try again later.", details={"reason": "smtp"}
            ) from exc

    def _build(self, message: OutgoingEmail) -> email.message.EmailMessage:
        mime = email.message.EmailMessage()
        mime["From"] = self._sender
        mime["To"] = message.to
        mime["Subject"] = message.subject
        mime["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        domain = email.utils.parseaddr(self._sender)[1].rpartition("@")[2] or None
        mime["Message-ID"] = email.utils.make_msgid(domain=domain)
        mime.set_content(message.text)
        return mime

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _deliver(self, mime: email.message.EmailMessage) -> None:
        client: smtplib.SMTP
        if self._use_ssl:
            client = smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout, context=self._context()
            )
        else:
            client = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        with client:
            if self._starttls:
                client.starttls(context=self._context())
            if self._username is not None:
                client.login(self._username, self._password or "")
            client.send_message(mime)


def create_mailer(settings: SelfHostSettings) -> Mailer:
    """The mailer the ``mailer`` setting names: ``"log"`` (default) or ``"smtp"``."""
    if settings.mailer == "smtp":
        return SmtpMailer.from_settings(settings)
    return LogMailer()


_PRODUCT: Final = "KIIAREN"


def _validity(valid_for: timedelta | None) -> str:
    if valid_for is None:
        return "The link can be used once."
    seconds = int(valid_for.total_seconds())
    unit, count = "minute", max(1, round(seconds / 60))
    for name, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            unit, count = name, seconds // size
            break
    return f"The link can be used once, within {count} {unit}{'s' if count != 1 else ''}."


def verification_email(to: str, link: str, *, valid_for: timedelta | None = None) -> OutgoingEmail:
    """The message asking ``to`` to confirm their address by opening ``link``.

    ``valid_for`` (the token's lifetime) is stated in the text when given.
    """
    return OutgoingEmail(
        to=to,
        subject=f"Confirm your {_PRODUCT} email address",
        text=(
            "Hello,\n\n"
            f"Please confirm that this is your email address for {_PRODUCT} by opening this "
            "link:\n\n"
            f"{link}\n\n"
            f"{_validity(valid_for)} If you did not create an account, ignore this email.\n"
        ),
    )


def password_reset_email(
    to: str, link: str, *, valid_for: timedelta | None = None
) -> OutgoingEmail:
    """The message that lets ``to`` choose a new password by opening ``link``.

    ``valid_for`` (the token's lifetime) is stated in the text when given.
    """
    return OutgoingEmail(
        to=to,
        subject=f"Reset your {_PRODUCT} password",
        text=(
            "Hello,\n\n"
            f"Someone asked to reset the password of the {_PRODUCT} account for this email "
            "address. To choose a new password, open this link:\n\n"
            f"{link}\n\n"
            f"{_validity(valid_for)} Resetting the password signs you out everywhere.\n"
            "If you did not ask for this, ignore this email: your password stays the same.\n"
        ),
    )

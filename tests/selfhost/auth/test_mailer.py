"""Mailers: the log mailer, and the SMTP mailer against a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import logging
import smtplib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from kiiaren_core.errors import BackendUnavailableError, ConfigurationError, InvalidInputError
from kiiaren_selfhost.auth.mailer import (
    LogMailer,
    Mailer,
    OutgoingEmail,
    SmtpMailer,
    create_mailer,
    password_reset_email,
    verification_email,
)
from kiiaren_selfhost.settings import SelfHostSettings

pytestmark = pytest.mark.anyio

SENDER = "KIIAREN <no-reply@kiiaren.test>"
LINK = "http://127.0.0.1:8000/v1/auth/verify-email?token=Zm9vYmFyLXNlY3JldC10b2tlbi0xMjM0NTY3"


@dataclass
class Received:
    envelope: Envelope
    tls: bool
    authenticated: bool

    @property
    def message(self) -> EmailMessage:
        raw = self.envelope.original_content or self.envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Inbox:
    """aiosmtpd handler that keeps every delivered message."""

    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # ``session.ssl`` is only set after STARTTLS; the transport knows about both forms.
        assert server.transport is not None
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.received.append(Received(envelope, tls=tls, authenticated=bool(session.authenticated)))
        return "250 Message accepted for delivery"


def free_port() -> int:
    # aiosmtpd's Controller needs a concrete port (it connects to it to check readiness).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpServer:
    def __init__(self, **kwargs: Any) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.controller.stop()


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"mailer",
        b"s3cret-pass",
    )
    # handled=False: let aiosmtpd answer the 535 itself (True means "I already replied").
    return AuthResult(success=ok, handled=False)


@dataclass
class Certificate:
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_file))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def mailer_for(server: SmtpServer, **kwargs: Any) -> SmtpMailer:
    return SmtpMailer(host="127.0.0.1", port=server.port, sender=SENDER, timeout=5, **kwargs)


# --- messages and templates --------------------------------------------------------------------


async def test_verification_template() -> None:
    message = verification_email("ada@example.com", LINK, valid_for=timedelta(days=1))
    assert message.to == "ada@example.com"
    assert message.subject == "Confirm your KIIAREN email address"
    assert f"\n{LINK}\n" in message.text  # on a line of its own, exactly as given
    assert "within 1 day." in message.text


async def test_password_reset_template() -> None:
    link = LINK.replace("verify-email", "reset-password")
    message = password_reset_email("ada@example.com", link, valid_for=timedelta(hours=1))
    assert message.subject == "Reset your KIIAREN password"
    assert f"\n{link}\n" in message.text
    assert "within 1 hour." in message.text
    assert "ignore this email" in message.text


@pytest.mark.parametrize(
    ("valid_for", "text"),
    [
        (None, "The link can be used once."),
        (timedelta(hours=2), "within 2 hours."),
        (timedelta(minutes=90), "within 90 minutes."),
        (timedelta(seconds=3_600 * 48), "within 2 days."),
        (timedelta(seconds=61), "within 1 minute."),
    ],
)
async def test_template_validity(valid_for: timedelta | None, text: str) -> None:
    assert text in verification_email("a@b.example", LINK, valid_for=valid_for).text


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("ada@example.com\r\nBcc: eve@evil.example", "Hello"),
        ("ada@example.com", "Hello\nBcc: eve@evil.example"),
        ("not-an-address", "Hello"),
        ("ada@example.com, eve@evil.example", "Hello"),
        ("", "Hello"),
    ],
)
async def test_header_injection_and_bad_recipients_are_refused(to: str, subject: str) -> None:
    with pytest.raises(InvalidInputError):
        OutgoingEmail(to=to, subject=subject, text="body")


# --- log mailer --------------------------------------------------------------------------------


async def test_log_mailer_logs_the_message(caplog: pytest.LogCaptureFixture) -> None:
    mailer = LogMailer()
    assert isinstance(mailer, Mailer)
    with caplog.at_level(logging.INFO, logger="kiiaren.mail"):
        await mailer.send(verification_email("ada@example.com", LINK))
    [record] = [r for r in caplog.records if r.name == "kiiaren.mail"]
    assert record.levelno == logging.INFO
    text = record.getMessage()
    assert "ada@example.com" in text
    assert "Confirm your KIIAREN email address" in text
    assert LINK in text  # the development inbox: the link must be clickable from the log


async def test_create_mailer() -> None:
    assert isinstance(create_mailer(SelfHostSettings()), LogMailer)
    smtp = create_mailer(SelfHostSettings(mailer="smtp", smtp_host="mail.example", smtp_port=2525))
    assert isinstance(smtp, SmtpMailer)
    assert isinstance(smtp, Mailer)


# --- SMTP mailer -------------------------------------------------------------------------------


async def test_smtp_delivers_the_message(smtp: SmtpServer) -> None:
    await mailer_for(smtp).send(verification_email("ada@example.com", LINK))
    [received] = smtp.inbox.received
    assert received.envelope.mail_from == "no-reply@kiiaren.test"
    assert received.envelope.rcpt_tos == ["ada@example.com"]
    message = received.message
    assert message["From"] == SENDER
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Confirm your KIIAREN email address"
    assert message["Message-ID"].endswith("@kiiaren.test>")
    assert message["Date"]
    assert message.get_content_type() == "text/plain"
    body = message.get_content()
    assert LINK in body  # not wrapped, not encoded away
    assert received.tls is False
    # SMTP carries CRLF line ends; the text is otherwise exactly the template's.
    assert body.replace("\r\n", "\n") == verification_email("ada@example.com", LINK).text


async def test_smtp_non_ascii_content(smtp: SmtpServer) -> None:
    await mailer_for(smtp).send(
        OutgoingEmail(to="zoë@example.com", subject="Grüße ✓", text="Hallo Zoë \u2013 你好\n")
    )
    [received] = smtp.inbox.received
    assert received.message["Subject"] == "Grüße ✓"
    assert received.message.get_content() == "Hallo Zoë \u2013 你好\r\n"


async def test_smtp_settings_round_trip(smtp: SmtpServer) -> None:
    settings = SelfHostSettings(
        mailer="smtp", smtp_host="127.0.0.1", smtp_port=smtp.port, mail_from=SENDER
    )
    mailer = create_mailer(settings)
    await mailer.send(password_reset_email("ada@example.com", LINK))
    assert smtp.inbox.received[0].message["Subject"] == "Reset your KIIAREN password"


async def test_smtp_login() -> None:
    # AUTH offered without TLS (aiosmtpd warns if it is also *required* without TLS).
    with SmtpServer(authenticator=authenticator, auth_require_tls=False) as server:
        await mailer_for(server, username="mailer", password="s3cret-pass").send(
            verification_email("ada@example.com", LINK)
        )
        assert server.inbox.received[0].authenticated
        with pytest.raises(BackendUnavailableError) as caught:
            await mailer_for(server, username="mailer", password="wrong").send(
                verification_email("ada@example.com", LINK)
            )
        assert isinstance(caught.value.__cause__, smtplib.SMTPAuthenticationError)
        assert len(server.inbox.received) == 1


async def test_smtp_starttls_with_login(certificate: Certificate) -> None:
    with SmtpServer(
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    ) as server:
        mailer = mailer_for(
            server,
            starttls=True,
            username="mailer",
            password="s3cret-pass",
            ssl_context=certificate.client_context(),
        )
        await mailer.send(verification_email("ada@example.com", LINK))
        [received] = server.inbox.received
        assert received.tls
        assert received.authenticated
        # Without STARTTLS the server refuses to go on: nothing is sent in clear.
        with pytest.raises(BackendUnavailableError):
            await mailer_for(server).send(verification_email("ada@example.com", LINK))


async def test_smtp_implicit_tls_with_login(certificate: Certificate) -> None:
    with SmtpServer(
        ssl_context=certificate.server_context(),
        authenticator=authenticator,
        auth_require_tls=False,  # aiosmtpd only counts STARTTLS as TLS; this one is SMTPS
    ) as server:
        mailer = mailer_for(
            server,
            use_ssl=True,
            username="mailer",
            password="s3cret-pass",
            ssl_context=certificate.client_context(),
        )
        await mailer.send(verification_email("ada@example.com", LINK))
        [received] = server.inbox.received
        assert received.tls
        assert received.authenticated


async def test_smtp_untrusted_certificate_is_refused(certificate: Certificate) -> None:
    # The default context checks the certificate: a self-signed one is not trusted.
    with SmtpServer(tls_context=certificate.server_context(), require_starttls=True) as server:
        with pytest.raises(BackendUnavailableError) as caught:
            await mailer_for(server, starttls=True).send(
                verification_email("ada@example.com", LINK)
            )
        assert isinstance(caught.value.__cause__, ssl.SSLError)
        assert server.inbox.received == []


async def test_smtp_server_down_is_unavailable() -> None:
    port = free_port()
    mailer = SmtpMailer(host="127.0.0.1", port=port, sender=SENDER, timeout=2)
    with pytest.raises(BackendUnavailableError) as caught:
        await mailer.send(verification_email("ada@example.com", LINK))
    assert caught.value.details == {"reason": "smtp"}


async def test_smtp_silent_server_times_out() -> None:
    # Accepts the TCP connection (backlog) but never greets: the timeout must end the wait.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        mailer = SmtpMailer(host="127.0.0.1", port=port, sender=SENDER, timeout=0.3)
        with pytest.raises(BackendUnavailableError) as caught:
            await mailer.send(verification_email("ada@example.com", LINK))
        # smtplib reports the timeout as a disconnect (or a raw timeout, depending on where).
        assert isinstance(caught.value.__cause__, smtplib.SMTPServerDisconnected | TimeoutError)


async def test_smtp_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        SmtpMailer(host="h", port=25, sender=SENDER, starttls=True, use_ssl=True)
    with pytest.raises(ConfigurationError):
        SmtpMailer(host="h", port=25, sender=SENDER, password="p")
    with pytest.raises(ConfigurationError):
        create_mailer(SelfHostSettings(mailer="smtp", smtp_starttls=True, smtp_ssl=True))


async def test_smtp_password_comes_from_the_secret_setting() -> None:
    with SmtpServer(authenticator=authenticator, auth_require_tls=False) as server:
        settings = SelfHostSettings(
            mailer="smtp",
            smtp_port=server.port,
            smtp_username="mailer",
            smtp_password=SecretStr("s3cret-pass"),
            smtp_timeout_seconds=5,
        )
        await SmtpMailer.from_settings(settings).send(verification_email("a@b.example", LINK))
        assert server.inbox.received[0].authenticated

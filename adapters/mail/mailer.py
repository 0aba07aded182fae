"""``mailer``: sends email acknowledgements from the outbox through a configured SMTP relay."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import msgspec

from gateway.errors import ConfigError, PermanentError, TransientError
from gateway.plugin import (
    AdapterBase,
    AdapterContext,
    Intake,
    OutgoingReply,
    is_loopback,
    resolve_secret,
)
from intake_adapters.mail.send import check_address, compose_ack, compose_reply
from intake_schemas import Acknowledgement

log = logging.getLogger("intake.mailer")


class MailerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.mailer]``: the relay acknowledgements are sent through."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int | None = None
    """Default 465 with ``tls``, else 25."""
    starttls: bool = False
    """Upgrade with STARTTLS before anything else; the relay must offer it."""
    tls: bool = False
    """Implicit TLS from the first byte (SMTPS, port 465)."""
    ca_file: str | None = None
    """PEM bundle to verify the relay with instead of the system's (a private CA)."""
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    from_address: str = "support@localhost"
    """The acknowledgement's From; replies come back to it, so it should be an address the
    ``smtp`` adapter accepts or an IMAP mailbox the ``imap`` adapter watches."""
    from_name: str | None = None
    return_path: str | None = None
    """Envelope sender (MAIL FROM). Default ``from_address``, so the bounce of an
    acknowledgement comes back and is linked to its ticket; ``""`` sends with the null
    sender RFC 3834 suggests for auto-replies (no bounces at all)."""
    message_id_domain: str | None = None
    """Right-hand side of our Message-IDs; default the domain of ``from_address``."""
    helo_name: str | None = None
    """Name given in EHLO; default this host's name."""
    timeout: float = 30.0
    """Seconds for connecting and for each SMTP command."""
    keepalive: float = 10.0
    """Seconds an idle relay connection is kept for the next acknowledgement; 0 opens a
    connection per acknowledgement."""
    max_per_connection: int = 100
    """Acknowledgements sent over one connection before it is renewed (relays limit this)."""


class MailerAdapter(AdapterBase):
    """Acknowledgements by email: composed by :mod:`adapters.mail.send`, sent with smtplib."""

    kind: ClassVar[str] = "mailer"
    Config: ClassVar[type[msgspec.Struct]] = MailerConfig
    ack_channels: ClassVar[tuple[str, ...]] = ("email",)
    reply_channels: ClassVar[tuple[str, ...]] = ("email",)
    ack_ids_unguessable: ClassVar[bool] = True
    """Our Message-IDs are 122 random bits (uuid4) that only the customer's mailbox sees."""
    receives: ClassVar[bool] = False

    def __init__(self, config: MailerConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        if config.tls and config.starttls:
            raise ConfigError("adapters.mailer: set either tls (port 465) or starttls, not both")
        try:
            check_address(config.from_address)
            if config.return_path:
                check_address(config.return_path)
        except ValueError:
            raise ConfigError("adapters.mailer.from_address and return_path must be plain "
                              "addresses like support@example.com") from None
        self.config: MailerConfig = config
        self.password = resolve_secret(config.password_env, config.password_file,
                                       key="adapters.mailer.password")
        if config.username and self.password is None:
            raise ConfigError("adapters.mailer.username is set: give password_env or "
                              "password_file too")
        encrypted = config.tls or config.starttls
        if config.username and not encrypted and not is_loopback(config.host):
            raise ConfigError("adapters.mailer: refusing to send the relay password in clear "
                              f"to {config.host}; set starttls = true or tls = true")
        self.port = config.port or (465 if config.tls else 25)
        self.return_path = (config.from_address if config.return_path is None
                            else config.return_path)
        # One thread owns the relay connection, kept open between acknowledgements that follow
        # each other closely (a burst of mail is a burst of acknowledgements).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailer")
        self._client: smtplib.SMTP | None = None
        self._sent = 0
        self._last_used = 0.0
        self._tls_context: ssl.SSLContext | None = None
        if encrypted:
            self._tls_context = ssl.create_default_context(cafile=config.ca_file)

    async def start(self) -> None:
        """Nothing to open yet: the relay connection is made on the first acknowledgement."""

    async def stop(self) -> None:
        """Say QUIT on the kept connection and release the sending thread."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._drop, True)
        self._thread.shutdown(wait=True)

    async def send_ack(self, ack: Acknowledgement, *, to: str, reply_to: str | None) -> str | None:
        """Compose and relay one acknowledgement; return its Message-ID (no angle brackets)."""
        try:
            mail = compose_ack(ack, to=to, sender=self.config.from_address,
                               sender_name=self.config.from_name, in_reply_to=reply_to,
                               domain=self.config.message_id_domain)
        except ValueError as exc:
            # The address or id came from a mail we received; sending can never work.
            raise PermanentError(f"cannot address the acknowledgement: {exc}") from exc
        # smtplib blocks; its one thread keeps the event loop free and owns the connection.
        await asyncio.get_running_loop().run_in_executor(
            self._thread, self._relay, to, mail.data, mail.needs_smtputf8)
        return mail.message_id

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """A downstream reply, threaded to the customer's mail; return its Message-ID."""
        try:
            mail = compose_reply(reply, to=to, sender=self.config.from_address,
                                 sender_name=self.config.from_name, in_reply_to=reply_to,
                                 domain=self.config.message_id_domain)
        except ValueError as exc:
            raise PermanentError(f"cannot address the reply: {exc}") from exc
        await asyncio.get_running_loop().run_in_executor(
            self._thread, self._relay, to, mail.data, mail.needs_smtputf8)
        return mail.message_id

    # -- in the sending thread ---------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        helo = cfg.helo_name or socket.gethostname()
        if cfg.tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, self.port, local_hostname=helo,
                                                    timeout=cfg.timeout,
                                                    context=self._tls_context)
        else:
            client = smtplib.SMTP(cfg.host, self.port, local_hostname=helo, timeout=cfg.timeout)
        try:
            client.ehlo()
            if cfg.starttls:
                client.starttls(context=self._tls_context)
                client.ehlo()
            if cfg.username and self.password is not None:
                client.login(cfg.username, self.password)
        except BaseException:
            client.close()
            raise
        return client

    def _drop(self, polite: bool = False) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if polite:
                client.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            client.close()

    def _session(self) -> tuple[smtplib.SMTP, bool]:
        """The kept connection if it is fresh enough, else a new one; (client, reused)."""
        cfg = self.config
        now = time.monotonic()
        if self._client is not None and (now - self._last_used > cfg.keepalive
                                         or self._sent >= cfg.max_per_connection):
            self._drop(polite=True)
        if self._client is not None:
            return self._client, True
        self._client, self._sent = self._connect(), 0
        return self._client, False

    def _relay(self, to: str, data: bytes, smtputf8: bool) -> None:
        cfg = self.config
        try:
            while True:
                client, reused = self._session()
                options: list[str] = []
                if smtputf8:
                    if not client.has_extn("smtputf8"):
                        raise PermanentError("the relay cannot send to an internationalised "
                                             "address (no SMTPUTF8)")
                    options.append("SMTPUTF8")
                try:
                    client.sendmail(self.return_path, [to], data, mail_options=options)
                except (smtplib.SMTPServerDisconnected, ConnectionError):
                    self._drop()
                    if reused:
                        continue  # the relay closed an idle connection: once more, afresh
                    raise
                self._sent += 1
                self._last_used = time.monotonic()
                if cfg.keepalive <= 0:
                    self._drop(polite=True)
                return
        except smtplib.SMTPRecipientsRefused as exc:
            code, _ = next(iter(exc.recipients.values()))
            raise _by_code(code, "the relay refused the recipient") from exc
        except smtplib.SMTPAuthenticationError as exc:
            self._drop()
            # Our credentials, not the customer's address: retry until the operator fixes them.
            log.error("the relay %s refused our credentials (%s)", cfg.host, exc.smtp_code)
            raise TransientError(f"the relay refused our credentials ({exc.smtp_code})") from exc
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, HELO...
            if exc.smtp_code == 421 or not 400 <= exc.smtp_code < 600:
                self._drop()  # the relay is closing this session
            raise _by_code(exc.smtp_code, "the relay refused the message") from exc
        except smtplib.SMTPNotSupportedError as exc:
            self._drop()
            raise TransientError(f"the relay does not support what we need: {exc}") from exc
        except UnicodeError as exc:
            raise PermanentError("the address cannot be written in this SMTP session") from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, TLS
            self._drop()
            raise TransientError(f"the relay {cfg.host}:{self.port} is unreachable: "
                                 f"{type(exc).__name__}") from exc


def _by_code(code: int, what: str) -> TransientError | PermanentError:
    """4xx: try again later; 5xx: it will never work (the dispatcher records ack.failed)."""
    if 400 <= code < 500:
        return TransientError(f"{what} for now ({code})")
    return PermanentError(f"{what} ({code})")

"""``smtp``: receives mail for configured addresses (aiosmtpd on the gateway's own event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import math
import socket
import ssl
import weakref
from typing import ClassVar

import msgspec
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax
from prometheus_client import Counter

from gateway.errors import ConfigError, RejectedInput, StorageFull, TransientError
from gateway.plugin import (
    INLINE_REPLY,
    AdapterBase,
    AdapterContext,
    ConnectionGate,
    Intake,
    Outbox,
    Reply,
    peer_key,
    split_listen,
)
from intake_adapters.mail.keep import keep_raw, store_mail_attachments
from intake_adapters.mail.loop_policy import bounced_message_ids, classify, should_acknowledge
from intake_adapters.mail.parse import MailLimits, parse_email, to_inbound
from intake_schemas import InboundMessage, Receipt

log = logging.getLogger("intake.smtp")

SMTP_MESSAGES = Counter("intake_smtp_messages_total",
                        "SMTP transactions after DATA, by result (accepted, refused, deferred)",
                        ["result"])
SMTP_RECIPIENTS_REFUSED = Counter("intake_smtp_recipients_refused_total",
                                  "RCPT commands refused because the address is not ours")
SMTP_SENDERS_DEFERRED = Counter("intake_smtp_senders_deferred_total",
                                "MAIL commands answered 450 because the sender or its client "
                                "address sent too many messages", ["limit"])

DEFAULT_LISTEN = "127.0.0.1:2525"
_PARSE_IN_THREAD = 256 * 1024
"""Larger mails are parsed in a worker thread so one big message does not stall the loop."""
_STOP_GRACE = 10.0

# Enhanced status codes (RFC 3463) for the reply codes RejectedInput carries.
_ENHANCED = {450: "4.7.1", 530: "5.7.0", 550: "5.6.0", 552: "5.3.4", 554: "5.6.0"}


class SmtpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.smtp]``."""

    enabled: bool = True
    listen: str | None = None
    """``HOST:PORT``. Default ``127.0.0.1:2525``; when that default is taken the gateway runs
    without SMTP and says so, while an explicit ``listen`` that cannot be bound stops the start.
    A gateway started on an ephemeral HTTP port (tests) gets an ephemeral SMTP port too."""
    hostname: str | None = None
    """The name in the greeting and EHLO reply; default this host's name."""
    accept: list[str] = []
    """Recipients taken: full addresses (``support@example.com``) or whole domains
    (``@example.com``). Everything else is refused at RCPT with 550 5.7.1: never a relay.
    Empty (the default) takes no mail at all."""
    max_message_bytes: int = 26_214_400
    """Advertised as SIZE; larger mail is refused with 552."""
    max_recipients: int = 50
    """RCPT commands accepted per transaction (452 beyond)."""
    timeout: float = 60.0
    """Seconds a session may wait between commands before it is closed."""
    data_timeout: float = 600.0
    """Seconds the DATA phase may take, from the DATA command to our answer (RFC 5321's
    10 minutes), so a large mail on a slow link is not cut by ``timeout``."""
    max_connections: int = 200
    """Sessions open at once; beyond it new ones get ``421 4.7.0`` and are closed (0: no limit)."""
    max_connections_per_peer: int = 20
    """Sessions open at once from one IPv4 address or IPv6 /64 (421 beyond; 0: no limit)."""
    per_peer_exempt: list[str] = msgspec.field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Addresses or networks held to neither the per-peer connection limit nor the per-client
    allowance: a relay on this host (Postfix handing mail on) carries every sender's mail.
    Per-sender allowances still apply to mail they relay."""
    max_messages_per_sender: int = 30
    """Mails accepted per envelope sender address per ``rate_window``; beyond it MAIL gets
    ``450 4.7.1`` and the sending server retries later (0: no limit). Bounces (``<>``) are
    counted only per client."""
    max_messages_per_client: int = 120
    """Mails accepted per client IPv4 address or IPv6 /64 per ``rate_window`` (0: no limit)."""
    rate_window: float = 600.0
    """Seconds over which the per-sender and per-client allowances refill."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) for STARTTLS; with ``tls_key_file`` it enables STARTTLS."""
    tls_key_file: str | None = None
    require_starttls: bool = False
    """Refuse MAIL until the client has upgraded with STARTTLS."""
    keep_raw: bool = True
    """Keep the received bytes (content-addressed, like attachments) for replay; the message's
    ``metadata.raw_sha256`` names them. Mail larger than the attachment limit is not kept."""


class _IntakeSMTP(SMTP):
    """aiosmtpd's session, liberal about line length.

    RFC 5321 caps lines at 1000 octets and aiosmtpd refuses the whole message above that. Real
    clients do send longer lines (a 24 KB base64 image on one line is in our corpus) and
    Postfix takes them; losing a customer's mail over it would be worse. The buffer is still
    bounded, and ``max_message_bytes`` bounds the message.
    """

    line_length_limit = 1024 * 1024

    def __init__(self, *args: object, gate: ConnectionGate, data_timeout: float,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._gate = gate
        self._data_timeout = data_timeout
        self._admitted: str | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again with the TLS transport after STARTTLS: count the session only once.
        if self._admitted is None and not self._refused:
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
            limit, key = self._gate.admit(host)
            if limit is not None:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                whose = "in all" if limit == "total" else "from your address"
                transport.write(f"421 4.7.0 too many connections {whose}, try again later"
                                "\r\n".encode())
                transport.close()
                return
            self._admitted = key
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd never started this session
        if self._admitted is not None:
            self._gate.release(self._admitted)
            self._admitted = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        return super().eof_received()

    @syntax("DATA")  # HELP lists only commands that carry their syntax
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's timer runs from the last command and is not re-armed while the message
        # streams in or while we store it: give the whole DATA phase its own, longer bound.
        self._reset_timeout(self._data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            if self.transport is not None:
                self._reset_timeout()


class _Hooks:
    """aiosmtpd's name-based ``handle_*`` hooks, wrapped once around typed adapter methods."""

    def __init__(self, adapter: SmtpAdapter) -> None:
        self.adapter = adapter

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        return await self.adapter.check_sender(session, envelope, address, mail_options)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        return self.adapter.check_recipient(envelope, address, rcpt_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self.adapter.take(envelope)


class SmtpAdapter(AdapterBase):
    """Mail in: ``250 2.0.0 OK: <ticket number> (<outcome>)`` only after the durable submit."""

    kind: ClassVar[str] = "smtp"
    Config: ClassVar[type[msgspec.Struct]] = SmtpConfig

    def __init__(self, config: SmtpConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        self.config: SmtpConfig = config
        self._addresses: set[str] = set()
        self._domains: set[str] = set()
        for entry in config.accept:
            item = entry.strip().lower()
            local, at, domain = item.rpartition("@")
            if not at or not domain or any(c.isspace() or c in "<>@,;:" for c in local + domain):
                raise ConfigError(f"adapters.smtp.accept: {entry!r} is neither an address "
                                  "(support@example.com) nor a domain (@example.com)")
            if local:
                self._addresses.add(item)
            else:
                self._domains.add(domain)
        self._explicit_listen = config.listen is not None
        listen = config.listen
        if listen is None:
            # A throwaway gateway (HTTP on port 0, as tests start it) must not grab 2525.
            listen = "127.0.0.1:0" if ctx.ephemeral_ports else DEFAULT_LISTEN
        self.host, self.port = split_listen(listen, key="adapters.smtp.listen")
        """``port`` is the bound port once started (useful with port 0)."""
        self._tls: ssl.SSLContext | None = None
        if config.tls_cert_file or config.tls_key_file:
            if not (config.tls_cert_file and config.tls_key_file):
                raise ConfigError("adapters.smtp: STARTTLS needs both tls_cert_file and "
                                  "tls_key_file")
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                self._tls.load_cert_chain(config.tls_cert_file, config.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"adapters.smtp: cannot load the TLS certificate or key: "
                                  f"{exc}") from exc
        elif config.require_starttls:
            raise ConfigError("adapters.smtp.require_starttls needs tls_cert_file and "
                              "tls_key_file")
        self.hostname = config.hostname or socket.gethostname()
        self.limits = MailLimits(max_attachment_bytes=intake.limits.max_attachment_bytes,
                                 max_attachments=intake.limits.max_attachments)
        self._hooks = _Hooks(self)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.gate = ConnectionGate("smtp", total=config.max_connections,
                                   per_peer=config.max_connections_per_peer,
                                   exempt=config.per_peer_exempt)
        # From the context: a sender's allowance is counted across replicas on a shared store.
        self._per_sender = (ctx.rate_limiter("smtp_sender", config.max_messages_per_sender,
                                             config.rate_window)
                            if config.max_messages_per_sender > 0 else None)
        self._per_client = (ctx.rate_limiter("smtp_client", config.max_messages_per_client,
                                             config.rate_window)
                            if config.max_messages_per_client > 0 else None)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    async def start(self) -> None:
        """Listen on the gateway's loop, so DATA can await the durable submit directly."""
        # aiosmtpd logs peers and envelope addresses at INFO; we never log customer data.
        aiosmtpd_log = logging.getLogger("mail.log")
        if aiosmtpd_log.level == logging.NOTSET:
            aiosmtpd_log.setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._new_session, self.host, self.port,
                                                    reuse_address=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and not self._explicit_listen:
                log.warning("SMTP is not listening: the default %s:%s is in use; set "
                            "adapters.smtp.listen (or enabled = false)", self.host, self.port)
                return
            raise ConfigError(f"adapters.smtp.listen: cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        if not (self._addresses or self._domains):
            log.warning("SMTP listens on %s:%s but takes no mail until adapters.smtp.accept "
                        "names addresses or domains", self.host, self.port)
        log.info("SMTP listening on %s:%s", self.host, self.port)

    def not_ready(self) -> str | None:
        """Why the listener is not taking mail although it was started, or None."""
        if self._server is not None and not self._closing and not self._server.is_serving():
            return "the SMTP listener stopped serving"
        return None

    async def stop(self) -> None:
        """Stop listening, let transactions in DATA finish their submit, close the sessions."""
        self._closing = True
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), _STOP_GRACE)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None

    def _new_session(self) -> SMTP:
        session = _IntakeSMTP(self._hooks, hostname=self.hostname, ident="intake-gateway",
                       data_size_limit=self.config.max_message_bytes, enable_SMTPUTF8=True,
                       tls_context=self._tls, require_starttls=self.config.require_starttls,
                       timeout=self.config.timeout,
                       gate=self.gate, data_timeout=self.config.data_timeout,
                       # No AUTH: this is a receiving MX, not a submission server.
                       auth_exclude_mechanism=["LOGIN", "PLAIN"])
        self._sessions.add(session)
        return session

    # -- MAIL ------------------------------------------------------------------------------

    async def check_sender(self, session: Session, envelope: Envelope, address: str,
                           options: list[str]) -> str:
        """The MAIL answer: 450 4.7.1 once the sender or its client used up its allowance.

        450 is temporary: a real server keeps the mail queued and retries later, so nothing is
        lost, while one client can no longer open hundreds of tickets in seconds.
        """
        peer = session.peer
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        wait = 0.0
        if self._per_client is not None and not self.gate.is_exempt(host):
            wait = await self._per_client.take(peer_key(host))
        limit = "client"
        sender = address.strip().lower()
        if not wait and sender and self._per_sender is not None:
            wait, limit = await self._per_sender.take(sender), "sender"
        if wait:
            SMTP_SENDERS_DEFERRED.labels(limit).inc()
            whom = "this sender" if limit == "sender" else "your address"
            return (f"450 4.7.1 too many messages from {whom}, try again in "
                    f"{max(1, math.ceil(wait))} seconds")
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    # -- RCPT ------------------------------------------------------------------------------

    def accepts(self, address: str) -> bool:
        """True when ``address`` is one of ours (configured address or domain)."""
        item = address.strip().lower()
        if any(c in item for c in ":,<>\"\\ ") or item.startswith("@"):
            return False  # source routes and quoted oddities are never ours
        local, at, domain = item.rpartition("@")
        return bool(at and local) and (item in self._addresses or domain in self._domains)

    def check_recipient(self, envelope: Envelope, address: str, options: list[str]) -> str:
        """The RCPT answer: ours → 250, anyone else's → 550 5.7.1 (never a relay)."""
        if not self.accepts(address):
            SMTP_RECIPIENTS_REFUSED.inc()
            return "550 5.7.1 relaying denied: this server only takes mail for its own addresses"
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 too many recipients in one transaction, send the rest again"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    # -- DATA ------------------------------------------------------------------------------

    async def take(self, envelope: Envelope) -> str:
        """The DATA answer; 250 only once every mailbox's delivery is durable."""
        if self._closing:
            return "421 4.3.2 shutting down, try again later"
        self._inflight += 1
        self._idle.clear()
        try:
            receipt = await self._submit(bytes(envelope.original_content or b""),
                                         envelope_from=envelope.mail_from or "",
                                         mailboxes=list(dict.fromkeys(
                                             r.strip().lower() for r in envelope.rcpt_tos)))
        except RejectedInput as exc:
            SMTP_MESSAGES.labels("refused").inc()
            code = exc.smtp_code
            return f"{code} {_ENHANCED.get(code, '5.6.0')} {_reply_text(exc.reason)}"
        except StorageFull:
            SMTP_MESSAGES.labels("deferred").inc()
            return "451 4.3.1 insufficient storage, try again later"
        except TransientError:
            SMTP_MESSAGES.labels("deferred").inc()
            return "451 4.3.0 temporarily unable to accept the message, try again later"
        except Exception:
            # Our defect, not the sender's: 451 keeps the mail in the sender's queue instead of
            # bouncing it, and the traceback (no message content) goes to the operator.
            log.exception("unexpected failure while taking a message")
            SMTP_MESSAGES.labels("deferred").inc()
            return "451 4.3.0 internal error, try again later"
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        SMTP_MESSAGES.labels("accepted").inc()
        if receipt.ticket_number is None:
            return f"250 2.0.0 OK: recorded ({receipt.outcome})"  # machine mail, no ticket
        return f"250 2.0.0 OK: {receipt.ticket_number} ({receipt.outcome})"

    async def _submit(self, raw: bytes, *, envelope_from: str, mailboxes: list[str]) -> Receipt:
        if len(raw) > _PARSE_IN_THREAD:
            parsed = await asyncio.to_thread(parse_email, raw, limits=self.limits)
        else:
            parsed = parse_email(raw, limits=self.limits)
        if parsed.refusal is not None:
            refusal = RejectedInput(parsed.refusal)
            refusal.smtp_code = 554
            raise refusal
        extra: dict[str, str] = {"envelope_from": envelope_from}
        attachments, not_kept = await store_mail_attachments(self.intake, parsed, extra)
        if self.config.keep_raw:
            await keep_raw(self.intake, raw, extra)
        mail_class = classify(parsed, envelope_from=envelope_from)
        human = should_acknowledge(mail_class)
        if not human:
            extra["mail_class"] = mail_class.kind
        # A bounce names the mail that bounced: if that was our acknowledgement, its id is in
        # ack_refs and the bounce joins the ticket instead of opening one.
        bounced = bounced_message_ids(parsed)
        received = self.ctx.clock()
        receipt: Receipt | None = None
        for index, mailbox in enumerate(mailboxes):
            message = _with_extras(
                to_inbound(parsed, channel=self.kind, mailbox=mailbox, received_at=received,
                           attachments=attachments, not_kept=not_kept),
                raw=raw, human=human, bounced=bounced, extra=extra)
            reply: Reply = INLINE_REPLY
            # One acknowledgement per mail, however many of our mailboxes it was sent to; on a
            # retry after 451 the first mailbox is replayed, its acknowledgement already queued.
            if index == 0 and human and message.contact.email \
                    and not self.accepts(message.contact.email):
                reply = Outbox(channel="email", to=message.contact.email,
                               reply_to=parsed.message_id)
            got = await self.intake.submit(message, reply=reply)
            receipt = receipt or got
        assert receipt is not None  # aiosmtpd calls DATA only after a RCPT was accepted
        return receipt


def _with_extras(message: InboundMessage, *, raw: bytes, human: bool, bounced: list[str],
                 extra: dict[str, str]) -> InboundMessage:
    """What ``to_inbound`` cannot know: the envelope's verdict, bounce links, a fallback id."""
    thread = message.thread
    if bounced:
        refs = list(dict.fromkeys([*thread.references, *bounced]))
        thread = msgspec.structs.replace(thread, references=refs)
    # Mail without a Message-ID still needs an idempotency key: the sending server retries the
    # very same bytes after a 451 or a lost 250.
    provider_id = message.provider_message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
    return msgspec.structs.replace(message, thread=thread, provider_message_id=provider_id,
                                   auto_submitted=not human,
                                   metadata={**message.metadata, **extra})


def _reply_text(reason: str) -> str:
    """One printable ASCII line: SMTP replies are not the place for raw UTF-8 or line breaks."""
    text = " ".join(reason.split())
    return text.encode("ascii", "replace").decode("ascii")[:400] or "refused"

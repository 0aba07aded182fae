"""The contract suite's drivers for the mail adapters: ``smtp`` and ``imap``.

``SmtpDriver`` is a customer's mail server speaking SMTP to the adapter. ``ImapDriver`` delivers
into a mailbox of a private Dovecot (one per test process, one mailbox per test) that the adapter
watches.

What the customer sees is the acknowledgement mail; the driver points the ``mailer`` adapter at a
process-wide :class:`~gateway.testing.smtp_capture.SmtpCapture` and reads the ticket number from
the acknowledgement answering its mail (``In-Reply-To``). Outcomes that send no acknowledgement
(``followup``, ``replayed``) are read from the SMTP reply, which names the number and the outcome
(``250 2.0.0 OK: CX-20250101-00001-3 (followup)``), as the sending server's log would show.

SMTP codes become the HTTP-like statuses the suite checks: 250 → 200, 4xx (try again) → 503,
5xx (refused with a reason) → 422. IMAP answers the sender nothing; the driver reports 200 once
the adapter flagged the message (taken) and 422 once it quarantined it (refused), read from the
gateway's ``/metrics``.

The relay and the Dovecot are shared by the whole test process (the suite builds each gateway's
config before any test coroutine runs, and their addresses must be in it); they stop at
interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import re
import smtplib
import threading
import time
import uuid
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import ClassVar

import aiohttp
import msgspec

from gateway.intake import now_utc
from gateway.testing.dovecot import PrivateDovecot
from gateway.testing.drivers import Customer, Delivery, first_number
from gateway.testing.services import free_port
from gateway.testing.smtp_capture import SmtpCapture

SUPPORT_ADDRESS = "help@support.example.com"
_REPLY = re.compile(r"OK: (\S+) \((created|followup|duplicate|replayed)\)")

_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")

_capture: SmtpCapture | None = None
_dovecot: PrivateDovecot | None = None
_shared_lock = threading.Lock()


def shared_capture() -> SmtpCapture:
    """One capture relay for the whole test process (started on first use, daemon thread)."""
    global _capture
    with _shared_lock:
        if _capture is None:
            _capture = SmtpCapture().start()
            atexit.register(_capture.stop)
        return _capture


def shared_dovecot() -> PrivateDovecot:
    """One Dovecot for the whole test process where any login name is a mailbox."""
    global _dovecot
    with _shared_lock:
        if _dovecot is None:
            _dovecot = PrivateDovecot(any_user_password=uuid.uuid4().hex).start()
            atexit.register(_dovecot.stop)
        return _dovecot


def customer_mail(*, sender: str, to: str = SUPPORT_ADDRESS, subject: str = "", text: str = "",
                  charset: str = "utf-8", message_id: str | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    """A plain-text mail as a customer's client writes it: subject (RFC 2047) and body (base64)
    in ``charset``, e.g. ``gb2312``, ``big5``, ``iso-2022-jp``; ``headers`` are added as given."""
    lines = [f"From: {sender}", f"To: {to}",
             f"Subject: {Header(subject, charset).encode()}",
             f"Date: {format_datetime(now_utc())}"]
    if message_id:
        lines.append(f"Message-ID: <{message_id}>")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += ["MIME-Version: 1.0", f"Content-Type: text/plain; charset={charset}",
              "Content-Transfer-Encoding: base64"]
    head = "\r\n".join(lines).encode("ascii")
    body = base64.encodebytes(text.encode(charset)).replace(b"\n", b"\r\n")
    return head + b"\r\n\r\n" + body


def _compose(customer: Customer, message_id: str, text: str, ticket_number: str | None) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = customer.email
    msg["To"] = SUPPORT_ADDRESS
    msg["Subject"] = f"Re: [{ticket_number}] my request" if ticket_number else "My request"
    msg["Date"] = format_datetime(now_utc())
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(text)
    return msg.as_bytes()


class SmtpReply(msgspec.Struct, frozen=True, kw_only=True):
    """How one SMTP transaction ended: the last reply, and each RCPT's code."""

    code: int
    text: str
    recipients: dict[str, int] = {}

    @property
    def ticket(self) -> tuple[str, str] | None:
        """(ticket number, outcome) named by a ``250`` after DATA."""
        found = _REPLY.search(self.text)
        return (found.group(1), found.group(2)) if found else None


def smtp_transaction(port: int, *, sender: str, recipients: list[str], data: bytes,
                     host: str = "127.0.0.1", timeout: float = 30.0) -> SmtpReply:
    """One blocking SMTP transaction (EHLO, MAIL, RCPT..., DATA) with smtplib.

    Stops at the first refused step; DATA is sent when at least one recipient was accepted.
    Call it with ``asyncio.to_thread`` from a test whose loop runs the gateway.
    """
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        client.ehlo()
        code, text = client.mail(sender)
        if code != 250:
            return SmtpReply(code=code, text=text.decode(errors="replace"))
        codes: dict[str, int] = {}
        last = (code, text)
        for rcpt in recipients:
            last = client.rcpt(rcpt)
            codes[rcpt] = last[0]
        if 250 not in codes.values():
            return SmtpReply(code=last[0], text=last[1].decode(errors="replace"),
                             recipients=codes)
        code, text = client.data(data)
        return SmtpReply(code=code, text=text.decode(errors="replace"), recipients=codes)


def smtp_status(code: int) -> int:
    """The HTTP-like status for an SMTP reply code (see the module docstring)."""
    if 200 <= code < 300:
        return 200
    if 400 <= code < 500:
        return 503
    return 422


class SmtpDriver:
    """Sends one mail per ``send`` with smtplib, as the customer's provider would."""

    kind: ClassVar[str] = "smtp"
    verified: ClassVar[bool] = True

    def __init__(self) -> None:
        self.capture = shared_capture()
        # The suite hands drivers only the HTTP URL, so the driver chooses the SMTP port.
        self.port = free_port()

    def config_toml(self) -> str:
        return (f'[adapters.smtp]\nlisten = "127.0.0.1:{self.port}"\n'
                f'accept = ["{SUPPORT_ADDRESS}"]\n'
                f'[adapters.mailer]\nhost = "127.0.0.1"\nport = {self.capture.port}\n'
                f'from_address = "{SUPPORT_ADDRESS}"\n')

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        message_id = f"{delivery_id}@customers.example.org"
        reply = await asyncio.to_thread(smtp_transaction, self.port, sender=customer.email,
                                        recipients=[SUPPORT_ADDRESS],
                                        data=_compose(customer, message_id, text, ticket_number))
        if reply.code != 250:
            return Delivery(status=smtp_status(reply.code), ticket_number=None)
        if reply.ticket is None:
            return Delivery(status=200, ticket_number=None)
        number, outcome = reply.ticket
        if outcome in ("created", "duplicate"):
            try:
                ack = await self.capture.wait_for(
                    lambda m: m.in_reply_to == message_id and customer.email in m.rcpt_tos,
                    timeout=15)
            except TimeoutError:
                return Delivery(status=200, ticket_number=None)
            number = first_number(ack.subject) or ""
        return Delivery(status=200, ticket_number=number or None)

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        # Header fields but no From and no body: nothing to answer and nothing to read.
        raw = b"X-Mailer: broken\r\nSubject:\r\n\r\n"
        reply = await asyncio.to_thread(smtp_transaction, self.port,
                                        sender="broken@customers.example.org",
                                        recipients=[SUPPORT_ADDRESS], data=raw)
        return smtp_status(reply.code)


class ImapDriver:
    """Appends the customer's mail to a watched Dovecot mailbox; the ack read from the relay."""

    kind: ClassVar[str] = "imap"
    verified: ClassVar[bool] = True
    ack_wait: ClassVar[float] = 2.0
    """Seconds to wait for an acknowledgement after the message was taken (none comes for a
    follow-up or a replay; the driver then reports the number this customer was told last)."""
    take_wait: ClassVar[float] = 20.0

    def __init__(self) -> None:
        self.capture = shared_capture()
        self.dovecot = shared_dovecot()
        self.user = f"contract-{uuid.uuid4().hex[:12]}"
        self._told: dict[str, str] = {}

    def config_toml(self) -> str:
        password_file = self.dovecot.root / f"{self.user}.password"
        password_file.write_text(self.dovecot.any_user_password or "")
        return ("[adapters.imap]\nbackoff_min = 0.2\n"
                "[[adapters.imap.mailboxes]]\n"
                f'name = "{self.user}"\nhost = "{self.dovecot.host}"\n'
                f"port = {self.dovecot.port}\nssl = false\n"
                f'username = "{self.user}"\npassword_file = "{password_file}"\n'
                "poll_interval = 60\n"
                f'[adapters.mailer]\nhost = "127.0.0.1"\nport = {self.capture.port}\n'
                f'from_address = "{SUPPORT_ADDRESS}"\n')

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        message_id = f"{delivery_id}@customers.example.org"
        raw = _compose(customer, message_id, text, ticket_number)
        status = await self._deliver(session, base_url, raw)
        if status != 200:
            return Delivery(status=status, ticket_number=None)
        number = None
        deadline = time.monotonic() + self.ack_wait
        while number is None and time.monotonic() < deadline:
            for mail in self.capture.to(customer.email):
                if mail.in_reply_to == message_id:
                    number = first_number(mail.subject)
                    break
            await asyncio.sleep(0.02)
        if number:
            self._told[customer.key] = number
        return Delivery(status=200, ticket_number=number or self._told.get(customer.key))

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        return await self._deliver(session, base_url, b"X-Mailer: broken\r\nSubject:\r\n\r\n")

    async def _deliver(self, session: aiohttp.ClientSession, base_url: str, raw: bytes) -> int:
        """Append, then wait until the adapter flagged it (200) or quarantined it (422)."""
        quarantined = await self._quarantined(session, base_url)
        uid = await asyncio.to_thread(self._append, raw)
        deadline = time.monotonic() + self.take_wait
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._is_seen, uid):
                return 200
            if await self._quarantined(session, base_url) > quarantined:
                return 422
            await asyncio.sleep(0.05)
        return 504

    async def _quarantined(self, session: aiohttp.ClientSession, base_url: str) -> float:
        async with session.get(f"{base_url}/metrics") as resp:
            text = await resp.text()
        found = re.search(rf'^intake_imap_quarantined_total{{mailbox="{self.user}"}} (\S+)$',
                          text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def _append(self, raw: bytes) -> int:
        with self.dovecot.client(self.user) as imap:
            answer = imap.append("INBOX", raw)
        found = _APPENDUID.search(answer)
        assert found is not None, "the server did not answer APPENDUID"
        return int(found.group(1))

    def _is_seen(self, uid: int) -> bool:
        with self.dovecot.client(self.user) as imap:
            imap.select_folder("INBOX", readonly=True)
            flags = imap.get_flags([uid]).get(uid, ())
        return b"\\Seen" in flags

"""A local SMTP relay for tests that records every mail it receives, and may pass it on.

Point the ``mailer`` adapter at it (``host = "127.0.0.1"``, ``port = capture.port``) and read
what the customer would have received::

    with SmtpCapture() as capture:
        ...  # a gateway whose [adapters.mailer] port = capture.port
        ack = await capture.wait_for(lambda m: m.rcpt_tos == ["c@example.org"])
        assert ack.message["Auto-Submitted"] == "auto-replied"

It runs aiosmtpd on its own thread and event loop, so it keeps working while a test's loop is
busy, and one instance can serve several tests. ``forward`` routes recipients' domains to
another SMTP server (two gateways mailing each other); ``rewrite`` changes the bytes before
they are forwarded (a peer that strips headers); ``reply`` makes it refuse mail with a given
SMTP reply (relay outages and refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import smtplib
import threading
import time
import weakref
from collections.abc import Callable
from email.message import EmailMessage
from types import TracebackType
from typing import Any

import msgspec
from aiosmtpd.smtp import SMTP, Envelope, Session


class CapturedMail(msgspec.Struct, frozen=True, kw_only=True):
    """One mail as the relay received it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    received_at: float

    @property
    def message(self) -> EmailMessage:
        """The mail parsed with the standard library's modern policy (decoded headers)."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def message_id(self) -> str | None:
        """The Message-ID without angle brackets."""
        value = self.message.get("Message-ID")
        return str(value).strip().strip("<>") if value else None

    @property
    def in_reply_to(self) -> str | None:
        value = self.message.get("In-Reply-To")
        return str(value).strip().strip("<>") if value else None

    def text(self) -> str:
        """The text/plain body, decoded."""
        part = self.message.get_body(("plain",))
        return "" if part is None else str(part.get_content())

    def html(self) -> str:
        """The text/html body, decoded."""
        part = self.message.get_body(("html",))
        return "" if part is None else str(part.get_content())


class _Recorder:
    """aiosmtpd's handler hooks, wrapped once (see STYLE.md, "small contracts")."""

    def __init__(self, capture: SmtpCapture) -> None:
        self.capture = capture

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self.capture._received(envelope)


class SmtpCapture:
    """Records mail on ``127.0.0.1:<port>``; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self.port = 0
        self.forward: dict[str, tuple[str, int]] = {}
        """Recipient domain → (host, port) to pass mail on to after recording it."""
        self.rewrite: Callable[[bytes], bytes] | None = None
        """Applied to the bytes before forwarding (not to what is recorded)."""
        self.reply: str | None = None
        """When set (e.g. ``"451 4.3.0 try later"``), mail is refused with it, not recorded."""
        self.forward_errors: list[str] = []
        self.sessions = 0
        """SMTP connections accepted so far."""
        self._mails: list[CapturedMail] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    # -- lifecycle ------------------------------------------------------------------------

    def _new_session(self) -> SMTP:
        session = SMTP(_Recorder(self), hostname="capture.local", enable_SMTPUTF8=True,
                       data_size_limit=None)
        self._sessions.add(session)
        self.sessions += 1
        return session

    def start(self) -> SmtpCapture:
        """Start the relay thread and return once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(loop.create_server(
                    self._new_session, self.host, self._requested_port))
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            self._server.close()
            # Drop open sessions too: a client waiting for our reply must not hang on a socket
            # nobody reads any more.
            for session in list(self._sessions):
                if isinstance(session.transport, asyncio.WriteTransport):
                    session.transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="smtp-capture", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop listening and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> SmtpCapture:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what was received ----------------------------------------------------------------

    @property
    def messages(self) -> list[CapturedMail]:
        """Everything recorded so far, oldest first (a copy)."""
        with self._lock:
            return list(self._mails)

    def to(self, address: str) -> list[CapturedMail]:
        """Mail recorded for one recipient (case-insensitive)."""
        address = address.lower()
        return [m for m in self.messages if address in (r.lower() for r in m.rcpt_tos)]

    def clear(self) -> None:
        with self._lock:
            self._mails.clear()

    async def wait_for(self, predicate: Callable[[CapturedMail], bool], *,
                       timeout: float = 10.0) -> CapturedMail:
        """The first recorded mail matching ``predicate``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for mail in self.messages:
                if predicate(mail):
                    return mail
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching mail within {timeout} s "
                                   f"({len(self.messages)} recorded)")
            await asyncio.sleep(0.02)

    # -- inside the relay's loop ----------------------------------------------------------

    async def _received(self, envelope: Envelope) -> str:
        if self.reply is not None:
            return self.reply
        data = envelope.original_content or b""
        mail = CapturedMail(mail_from=envelope.mail_from or "",
                            rcpt_tos=list(envelope.rcpt_tos), data=bytes(data),
                            received_at=time.time())
        with self._lock:
            self._mails.append(mail)
        for rcpt in mail.rcpt_tos:
            target = self.forward.get(rcpt.rpartition("@")[2].lower())
            if target is not None:
                # Like a real relay: answer now, deliver afterwards.
                payload = self.rewrite(mail.data) if self.rewrite else mail.data
                loop = asyncio.get_running_loop()
                task = loop.run_in_executor(None, self._deliver, target, mail.mail_from, rcpt,
                                            payload)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return "250 2.0.0 OK: recorded"

    def _deliver(self, target: tuple[str, int], mail_from: str, rcpt: str, data: bytes) -> None:
        try:
            with smtplib.SMTP(*target, timeout=10) as client:
                client.sendmail(mail_from, [rcpt], data)
        except (smtplib.SMTPException, OSError) as exc:
            with contextlib.suppress(Exception):
                self.forward_errors.append(f"{rcpt}: {exc}")


def strip_headers(*names: str) -> Callable[[bytes], bytes]:
    """A ``rewrite`` that drops the named header fields (a peer that ignores RFC 3834)."""
    lowered = {n.lower() for n in names}

    def rewrite(data: bytes) -> bytes:
        head, sep, body = data.partition(b"\r\n\r\n")
        kept: list[bytes] = []
        skipping = False
        for line in head.split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                if not skipping:
                    kept.append(line)
                continue
            name = line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
            skipping = name in lowered
            if not skipping:
                kept.append(line)
        return b"\r\n".join(kept) + sep + body

    return rewrite

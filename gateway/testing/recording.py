"""Fakes at the plug-in seam, for adapter tests that need no gateway: a recording Intake.

:class:`RecordingIntake` implements :class:`gateway.plugin.Intake`: it records every message
submitted (with its :data:`~gateway.plugin.Reply`) and answers with scripted receipts, so
parsing, signatures and reply rendering are tested in milliseconds without a store, a clock or
sleeps. :func:`context` builds an :class:`~gateway.plugin.AdapterContext` with an in-memory
:class:`MemoryState`. What crosses the seam (durability, outcomes) is the end-to-end suite's job::

    intake = RecordingIntake()
    adapter = MyAdapter(MyAdapter.Config(enabled=True), intake, context("mine"))
    ...  # drive adapter.routes() with aiohttp's test client, or call its handlers
    assert intake.submitted[0].message.text == "hello"
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from gateway.acks import render_ack
from gateway.numbering import NumberingConfig, TicketNumbering
from gateway.plugin import INLINE_REPLY, AdapterContext, IntakeLimits, Reply
from gateway.sla import BusinessCalendar, CalendarConfig, format_due
from intake_schemas import Acknowledgement, Attachment, InboundMessage, Outcome, Receipt

__all__ = ["Forwarded", "MemoryState", "RecordingIntake", "Submitted", "context"]


class MemoryState:
    """:class:`gateway.plugin.AdapterState` in a dict (lost when the process ends)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self.values[key] = bytes(value)

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self.values.items() if k.startswith(prefix))


def context(kind: str, *, public_url: str = "http://127.0.0.1:8080",
            listen_host: str = "127.0.0.1", default_locale: str = "zh-CN",
            data_dir: str = "/nonexistent") -> AdapterContext:
    """An AdapterContext for a test, with a fresh :class:`MemoryState`."""
    return AdapterContext(kind=kind, data_dir=data_dir, public_url=public_url,
                          listen_host=listen_host, default_locale=default_locale,
                          state=MemoryState(), log=logging.getLogger(f"intake.{kind}"),
                          ephemeral_ports=True)


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """One call of ``submit``: the message and how the adapter asked to answer."""

    message: InboundMessage
    reply: Reply


class Forwarded(msgspec.Struct, frozen=True, kw_only=True):
    """One reply an adapter forwarded to another channel (``forward_reply``)."""

    ticket_number: str
    text: str
    channel: str
    to: str
    key: str
    locale: str
    because: str


class RecordingIntake:
    """:class:`gateway.plugin.Intake` that records and answers from a script.

    ``answer`` maps each message to the outcome to return (default: ``created``, ``replayed``
    for a provider id seen before); ticket numbers are real ones of the default mask, so
    adapters that scan for them find them. Attachments are kept in memory.
    """

    def __init__(self, *, limits: IntakeLimits | None = None,
                 answer: Callable[[InboundMessage], Outcome] | None = None,
                 acknowledge: bool = True) -> None:
        self.limits = limits or IntakeLimits(
            max_text_chars=100_000, max_attachments=10, max_attachment_bytes=10_485_760,
            max_body_bytes=26_214_400, default_locale="zh-CN")
        self.answer = answer
        self.acknowledge = acknowledge
        self.submitted: list[Submitted] = []
        self.files: dict[str, bytes] = {}
        self.used: set[tuple[str, str]] = set()
        self._numbering = TicketNumbering(NumberingConfig())
        self._calendar = BusinessCalendar(CalendarConfig())
        self._numbers: dict[str, str] = {}
        self.deliveries: list[tuple[str, bool, str]] = []
        """``report_delivery`` calls: (provider id, delivered, detail)."""
        self.forwarded: list[Forwarded] = []
        """``forward_reply`` calls, one per key."""

    async def submit(self, message: InboundMessage, *, reply: Reply = INLINE_REPLY) -> Receipt:
        seen = message.provider_message_id in self._numbers
        outcome: Outcome = (self.answer(message) if self.answer is not None
                            else "replayed" if seen else "created")
        self.submitted.append(Submitted(message=message, reply=reply))
        key = message.provider_message_id or f"#{len(self.submitted)}"
        number = self._numbers.setdefault(key, self._numbering.format(
            message.received_at.date(), len(self._numbers) + 1))
        due = message.received_at + timedelta(hours=24)
        ack = (self.render_ack(number=number, outcome=outcome, due_at=due,
                               locale=message.locale or self.limits.default_locale)
               if self.acknowledge and outcome != "automated" else None)
        return Receipt(outcome=outcome, ticket_number=None if outcome == "automated" else number,
                       message_id=f"rec-{len(self.submitted)}", priority="medium", due_at=due,
                       acknowledgement=ack)

    async def store_attachment(self, data: bytes, *, name: str, content_type: str) -> Attachment:
        digest = hashlib.sha256(data).hexdigest()
        self.files[digest] = data
        return Attachment(name=name, content_type=content_type, size=len(data), sha256=digest)

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        if (scope, key) in self.used:
            return False
        self.used.add((scope, key))
        return True

    async def report_delivery(self, *, provider_id: str, delivered: bool,
                              detail: str = "") -> bool:
        """Recorded in :attr:`deliveries`; True (as if it named a reply)."""
        self.deliveries.append((provider_id, delivered, detail))
        return True

    async def forward_reply(self, *, ticket_number: str, text: str, channel: str, to: str,
                            key: str, locale: str, because: str) -> str:
        """Recorded in :attr:`forwarded` (once per ``key``); answers ``fwd-<n>``."""
        for n, earlier in enumerate(self.forwarded):
            if earlier.key == key:
                return f"fwd-{n + 1}"
        self.forwarded.append(Forwarded(ticket_number=ticket_number, text=text,
                                        channel=channel, to=to, key=key, locale=locale,
                                        because=because))
        return f"fwd-{len(self.forwarded)}"

    def parse_ticket_number(self, text: str) -> str | None:
        return self._numbering.parse(text)

    def find_ticket_numbers(self, text: str) -> list[str]:
        return self._numbering.find_in(text)

    def format_due(self, due_at: datetime, locale: str) -> str:
        return format_due(due_at.astimezone(UTC), locale, self._calendar)

    def render_ack(self, *, number: str, outcome: Outcome, due_at: datetime,
                   locale: str) -> Acknowledgement:
        return render_ack(number=number, outcome=outcome, due_at=due_at, locale=locale,
                          calendar=self._calendar)

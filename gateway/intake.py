"""The pipeline every channel shares: validate, plan, commit, answer.

:class:`IntakeService` implements :class:`gateway.plugin.Intake`. It computes everything that
needs no database (triage, fingerprint, response target, identities, ticket numbers named) in the
event loop, then hands one :class:`~gateway.decision.SubmissionPlan` to the store, whose single
transaction decides the outcome (:mod:`gateway.decision`). ``submit`` returns only after that
transaction is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Histogram

from gateway.acks import pick_locale, render_ack
from gateway.attachments import AttachmentStore
from gateway.config import Config, parse_duration
from gateway.correlation import bind, current_correlation_id, new_correlation_id, unbind
from gateway.decision import (
    OutboxAck,
    StoredReceipt,
    SubmissionPlan,
    decide_and_record,
)
from gateway.errors import RejectedInput, TooLarge
from gateway.fingerprint import content_fingerprint, normalize_for_dedup
from gateway.ids import new_id
from gateway.language import with_language
from gateway.numbering import TicketNumbering
from gateway.plugin.contract import (
    INLINE,
    InlineOnPhone,
    IntakeLimits,
    Nobody,
    Outbox,
    Reply,
)
from gateway.replies.routing import NoRoute
from gateway.replies.status import record_delivery
from gateway.replies.texts import parse_rating
from gateway.sla import BusinessCalendar, due_at, format_due
from gateway.triage import Triager
from intake_schemas import (
    Acknowledgement,
    Attachment,
    FileNotKept,
    InboundMessage,
    Outcome,
    Receipt,
)

log = logging.getLogger("intake.submit")

SUBMITTED = Counter("intake_messages_total", "Messages submitted, by channel and outcome",
                    ["channel", "outcome"])
REJECTED = Counter("intake_rejected_total", "Messages refused before the store, by channel",
                   ["channel"])
SUBMIT_SECONDS = Histogram("intake_submit_seconds", "Time from submit to durable receipt",
                           buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))


_T = TypeVar("_T")
_TEXT_NUMBER_SCAN = 4000
"""Characters of the text searched for a ticket number (quoted history comes further down)."""
_MAX_NAMED = 5
_MAX_BOUNCED = 10
"""Ids of one bounce looked up as replies (a sender can list thousands)."""


class RunsDecision(Protocol):
    """The part of a store the intake needs: the decision in one durable transaction, and the
    replay guard."""

    async def run(self, fn: Callable[[Any], _T]) -> _T:
        """Run ``fn(tx)`` in one transaction; return its result once durable."""
        ...

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """See :meth:`gateway.plugin.Intake.first_use`."""
        ...



_SUBMITTED_BY: dict[tuple[str, str], Any] = {}


def _submitted(channel: str, outcome: str) -> Any:
    """``SUBMITTED``'s child for one channel and outcome, looked up once (``labels`` takes a
    lock and builds a key on every call; channels and outcomes are a handful)."""
    child = _SUBMITTED_BY.get((channel, outcome))
    if child is None:
        child = _SUBMITTED_BY[(channel, outcome)] = SUBMITTED.labels(channel, outcome)
    return child

class IntakeService:
    """What adapters call: :meth:`submit` and :meth:`store_attachment`."""

    def __init__(self, config: Config, store: RunsDecision, attachments: AttachmentStore,
                 *, sms_ack_available: bool = False,
                 ack_channels: frozenset[str] | None = None, public_url: str = "") -> None:
        self.config = config
        self.store = store
        self.attachments = attachments
        self.numbering = TicketNumbering(config.numbering)
        self.calendar = BusinessCalendar(config.calendar)
        self.triager = Triager(config.triage)
        self.duplicate_window = parse_duration(config.intake.duplicate_window,
                                               key="intake.duplicate_window")
        self.chat_window = parse_duration(config.intake.chat_followup_window,
                                          key="intake.chat_followup_window")
        self.ack_channels = (ack_channels if ack_channels is not None
                             else frozenset({"sms"}) if sms_ack_available else frozenset())
        """Outbox channels some enabled adapter can send on (``email``, ``sms``...)."""
        self.sms_ack_available = "sms" in self.ack_channels
        self.public_url = public_url.rstrip("/")
        """Base of the ``body_url`` events carry; empty leaves them out."""

        self.limits = IntakeLimits(
            max_text_chars=config.intake.max_text_chars,
            max_attachments=config.intake.max_attachments,
            max_attachment_bytes=attachments.max_bytes,
            max_body_bytes=config.server.max_body_bytes,
            default_locale=pick_locale(config.intake.default_locale, "zh-CN"))
        """See :attr:`gateway.plugin.Intake.limits`."""
        self.reply_forwarder: Callable[..., Awaitable[str]] | None = None
        """The reply service's ``forward``, set by the runtime once it has built the replies
        (they need this service's numbering and calendar first)."""

    async def store_attachment(self, data: bytes, *, name: str, content_type: str) -> Attachment:
        return await self.attachments.put(data, name=name, content_type=content_type)

    def parse_ticket_number(self, text: str) -> str | None:
        """See :meth:`gateway.plugin.Intake.parse_ticket_number`."""
        return self.numbering.parse(text)

    def find_ticket_numbers(self, text: str) -> list[str]:
        """See :meth:`gateway.plugin.Intake.find_ticket_numbers`."""
        return self.numbering.find_in(text)

    def format_due(self, due_at: datetime, locale: str) -> str:
        """See :meth:`gateway.plugin.Intake.format_due`."""
        return format_due(due_at, pick_locale(locale, self.limits.default_locale), self.calendar)

    def render_ack(self, *, number: str, outcome: Outcome, due_at: datetime,
                   locale: str) -> Acknowledgement:
        """See :meth:`gateway.plugin.Intake.render_ack`."""
        return render_ack(number=number, outcome=outcome, due_at=due_at,
                          locale=pick_locale(locale, self.limits.default_locale),
                          calendar=self.calendar)

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """See :meth:`gateway.plugin.Intake.first_use`."""
        return await self.store.first_use(scope, key, ttl=ttl)

    async def report_delivery(self, *, provider_id: str, delivered: bool,
                              detail: str = "") -> bool:
        """See :meth:`gateway.plugin.Intake.report_delivery`."""
        source = self.config.intake.event_source
        return await self.store.run(lambda tx: record_delivery(
            tx, provider_id=provider_id, delivered=delivered, detail=detail,
            event_source=source))

    async def forward_reply(self, *, ticket_number: str, text: str, channel: str, to: str,
                            key: str, locale: str, because: str) -> str:
        """See :meth:`gateway.plugin.Intake.forward_reply`."""
        if self.reply_forwarder is None:  # no runtime wired the reply path (bare tests)
            raise NoRoute("this gateway sends no replies", field="channel")
        return await self.reply_forwarder(ticket_number=ticket_number, text=text,
                                          channel=channel, to=to, key=key, locale=locale,
                                          because=because)

    async def submit(self, message: InboundMessage, *, reply: Reply = INLINE) -> Receipt:
        """See :meth:`gateway.plugin.Intake.submit`."""
        if current_correlation_id() is None:
            # Work that did not come over HTTP (SMTP, IMAP): its own id, for its logs and event.
            token = bind(new_correlation_id())
            try:
                return await self.submit(message, reply=reply)
            finally:
                unbind(token)
        ack_via = reply if isinstance(reply, Outbox) else None
        inline_reaches_phone = isinstance(reply, InlineOnPhone)
        unreachable = isinstance(reply, Nobody)
        started = time.perf_counter()
        try:
            self._validate(message)
        except RejectedInput:
            REJECTED.labels(message.channel).inc()
            raise
        message = with_language(message)  # decided once: events and acks then agree
        plan = self._plan(message, ack_via, inline_reaches_phone, unreachable)
        stored: StoredReceipt = await self.store.run(
            lambda tx: decide_and_record(tx, plan, self.numbering))
        outcome = "replayed" if stored.message_uid != plan.message_uid else stored.outcome
        if outcome != "replayed" and message.metadata.get("mail_class") == "bounce":
            await self._bounced(message)
        _submitted(message.channel, outcome).inc()
        SUBMIT_SECONDS.observe(time.perf_counter() - started)
        # One line per message, with the correlation id (gateway/jsonlog.py); never who or what.
        log.info("submitted: channel=%s outcome=%s ticket=%s", message.channel, outcome,
                 stored.ticket_number or "-")
        return self.receipt(stored, outcome=outcome, locale=message.locale,
                            not_kept=message.files_not_kept)

    async def _bounced(self, message: InboundMessage) -> None:
        """A bounce names the mail that bounced (its references): a reply of ours among them
        becomes ``reply.failed`` (our Message-IDs are unguessable: only its mailbox saw one)."""
        refs = [r for r in (message.thread.in_reply_to, *message.thread.references) if r]
        for ref in dict.fromkeys(refs[:_MAX_BOUNCED]):
            await self.report_delivery(provider_id=ref, delivered=False, detail="bounced")

    def receipt(self, stored: StoredReceipt, *, outcome: str, locale: str | None,
                not_kept: Sequence[FileNotKept] = ()) -> Receipt:
        """Turn stored facts into the Receipt adapters answer with (ack rendered here)."""
        ack = None
        if stored.acknowledge:
            ack = render_ack(number=stored.ticket_number, outcome=outcome,  # type: ignore[arg-type]
                             due_at=stored.due_at,  # type: ignore[arg-type]
                             locale=pick_locale(locale, self.config.intake.default_locale),
                             calendar=self.calendar, not_kept=not_kept)
        return Receipt(outcome=outcome, ticket_number=stored.ticket_number,  # type: ignore[arg-type]
                       message_id=stored.message_uid, priority=stored.priority,
                       due_at=stored.due_at, acknowledgement=ack)

    def _validate(self, m: InboundMessage) -> None:
        limits = self.config.intake
        if not m.text.strip() and not m.attachments and not m.subject.strip():
            raise RejectedInput("the message is empty: write some text or attach a file",
                                field="text")
        if len(m.text) > limits.max_text_chars:
            raise TooLarge(f"the text has {len(m.text)} characters; the limit is "
                           f"{limits.max_text_chars}")
        if len(m.attachments) > limits.max_attachments:
            raise TooLarge(f"{len(m.attachments)} attachments; the limit is "
                           f"{limits.max_attachments}")
        if not identities_of(m):
            raise RejectedInput("the contact needs an email address, a phone number or a chat "
                                "id so that we can answer", field="contact")
        if m.received_at.tzinfo is None:
            raise RejectedInput("received_at must carry a time zone", field="received_at")

    def _plan(self, m: InboundMessage, ack_via: OutboxAck | None,
              inline_reaches_phone: bool, unreachable: bool = False) -> SubmissionPlan:
        received = m.received_at.astimezone(UTC)
        tri = self.triager.classify(m)
        named: list[str] = []
        if m.thread.ticket_number:
            typed = self.numbering.parse(m.thread.ticket_number)
            if typed:
                named.append(typed)
        for found in self.numbering.find_in(m.subject):
            if found not in named:
                named.append(found)
        if not named:
            # Chat, SMS and API messages have no subject: a customer quotes the number in the
            # text. Only when nothing else names one, so a mail's subject tag still wins over
            # numbers quoted further down, and only the start, where people write it.
            named = self.numbering.find_in(m.text[:_TEXT_NUMBER_SCAN])[:_MAX_NAMED]
        outbox: list[OutboxAck] = []
        if not m.auto_submitted:
            if ack_via is not None:
                outbox.append(ack_via)
            # High priority: the customer is also told by SMS where a number is known (DESIGN.md),
            # unless they wrote by SMS already or no SMS sender is configured.
            answered_on_phone = (inline_reaches_phone if ack_via is None
                                 else ack_via.channel in ("sms", "whatsapp"))
            if tri.escalated and m.contact.phone and self.sms_ack_available \
                    and not answered_on_phone and not unreachable:
                outbox.append(OutboxAck(channel="sms", to=m.contact.phone))
        identities = identities_of(m)
        verified = m.contact.verified_by is not None
        fingerprint = _fingerprint(m)
        delivery_key = None
        if m.provider_message_id:
            delivery_key = _delivery_key(m, identities, fingerprint, verified=verified)
        owner_routes: list[tuple[str, str, OutboxAck]] = []
        if not verified:
            # A claimed follow-up may join a ticket only if its owner is told at their address.
            for kind, value in identities:
                channel = {"email": "email", "phone": "sms"}.get(kind)
                if channel in self.ack_channels:
                    owner_routes.append((kind, value, OutboxAck(channel=channel, to=value)))
        local_day = received.astimezone(self.calendar.tz).date()
        return SubmissionPlan(
            correlation_id=current_correlation_id(),
            message=m,
            message_uid=new_id(),
            delivery_key=delivery_key,
            identities=identities,
            fingerprint=fingerprint,
            triage=tri,
            due_at=due_at(received, tri.priority, self.config.targets, self.calendar),
            number_day=local_day,
            numbers_named=named,
            duplicate_since=received - self.duplicate_window,
            chat_since=(received - self.chat_window) if m.conversational else None,
            outbox_acks=outbox,
            ack_on=("created", "duplicate"),
            inline_ack=ack_via is None and not unreachable,
            event_source=self.config.intake.event_source,
            verified=verified,
            owner_routes=owner_routes,
            rating=None if m.auto_submitted else parse_rating(m.text),
            rating_since=received - timedelta(seconds=self.config.replies.rating_window)
            if self.config.replies.satisfaction else None,
            inline_bytes=self.config.intake.event_inline_bytes,
            public_url=self.public_url,
        )


def _delivery_key(m: InboundMessage, identities: list[tuple[str, str]], fingerprint: str,
                  *, verified: bool) -> str:
    """``channel · scope · sender · provider id``: a delivery key belongs to its sender.

    Message-IDs and Idempotency-Keys are chosen by the sender, so another sender reusing one
    must make a new message, never learn the first one's receipt. A claim's sender is only
    what it typed, so its content is part of the key too: the same key with other words is a
    new message, not a silent replay.
    """
    sender = "\x1e".join(f"{k}={v}" for k, v in identities)
    if not verified:
        sender += f"\x1e#{fingerprint}"
    return f"{m.channel}\x1f{m.delivery_scope}\x1f{sender}\x1f{m.provider_message_id}"


def _fingerprint(m: InboundMessage) -> str:
    """The duplicate fingerprint; a message with no words is told apart by its files."""
    if m.attachments and not normalize_for_dedup(m.text):
        files = " ".join(sorted(a.sha256 for a in m.attachments))
        return content_fingerprint(m.subject, f"{m.text}\n{files}")
    return content_fingerprint(m.subject, m.text)


def identities_of(m: InboundMessage) -> list[tuple[str, str]]:
    """The identities a message carries, each as (kind, value), in a stable order."""
    ids: list[tuple[str, str]] = []
    if m.contact.email:
        ids.append(("email", m.contact.email.strip().lower()))
    if m.contact.phone:
        ids.append(("phone", m.contact.phone))
    for network, chat_id in sorted(m.contact.chat_ids.items()):
        ids.append((f"chat:{network}", chat_id))
    return ids


def now_utc() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.fromtimestamp(time.time(), tz=UTC)

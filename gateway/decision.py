"""The decision of one submission, inside one store transaction.

:func:`decide_and_record` runs in the store's transaction and decides ``replayed``, ``followup``,
``duplicate`` or ``created``, then writes every effect (message, ticket, acknowledgement outbox
row, event) through the :class:`Tx` protocol. Everything that does not need the database (triage,
fingerprint, response target, identities) is computed before, in :class:`SubmissionPlan`.
Keeping this one function the only place that decides makes the SQLite and PostgreSQL stores
agree by construction.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Protocol

import msgspec

from gateway.ids import new_id
from gateway.inline import fit_inline
from gateway.numbering import TicketNumbering
from gateway.plugin.contract import Outbox
from gateway.triage import TriageResult
from intake_schemas import (
    ContactView,
    DuplicateReceived,
    DuplicateReceivedData,
    FileNotKept,
    InboundMessage,
    MessageAdded,
    MessageAddedData,
    MessageAutomated,
    MessageAutomatedData,
    MessageView,
    Outcome,
    Priority,
    TicketCreated,
    TicketCreatedData,
    TicketRated,
    TicketRatedData,
    TicketView,
)

_encode = msgspec.json.Encoder().encode


OutboxAck = Outbox
"""An acknowledgement to send later through a channel's sender: the contract's ``Outbox``."""


class SubmissionPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything about a submission that could be computed without the database."""

    message: InboundMessage
    message_uid: str
    delivery_key: str | None
    identities: list[tuple[str, str]]
    fingerprint: str
    triage: TriageResult
    due_at: datetime
    number_day: date
    numbers_named: list[str]
    """Valid ticket numbers the message names (thread hint first, then the subject)."""
    duplicate_since: datetime
    chat_since: datetime | None
    outbox_acks: list[OutboxAck]
    """Acks for the dispatcher; empty when the adapter answers inline or loop policy says no."""
    ack_on: tuple[Outcome, ...]
    """Outcomes for which ``outbox_acks`` are written."""
    inline_ack: bool
    event_source: str
    verified: bool = True
    """The sender's identities are vouched for by the channel (``Contact.verified_by``); False
    for claims (web form, unsigned API), which never join another contact's ticket unseen."""
    inline_bytes: int = 65_536
    """Budget of the event's inline words (``intake.event_inline_bytes``, gateway/inline.py)."""
    public_url: str = ""
    """The gateway's public base URL, for the event's ``body_url``; empty for none."""
    correlation_id: str | None = None
    """The submission's correlation id (gateway/correlation.py), written into its event."""
    rating: int | None = None
    """The message is only a satisfaction rating (1 to 5, gateway/replies/texts.py)."""
    rating_since: datetime | None = None
    """Resolutions sent since then still take a rating (``replies.rating_window``)."""
    owner_routes: list[tuple[str, str, OutboxAck]] = []
    """For claims: ``(identity kind, value, ack)`` routes by which a ticket's owner can be told
    of a follow-up. A claimed follow-up joins a ticket only through a route to an identity that
    ticket's contact owns, and that acknowledgement is then always sent."""


class TicketRow(msgspec.Struct, frozen=True, kw_only=True):
    """A ticket as the decision needs it."""

    id: int
    number: str
    contact_id: int
    kind: str
    area: str
    priority: Priority
    escalated: bool
    channel: str
    created_at: datetime
    due_at: datetime


class StoredReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The facts of a receipt as stored with the message, so a replay can repeat them.

    ``ticket_number``, ``priority`` and ``due_at`` are None only for ``automated``."""

    outcome: Outcome
    ticket_number: str | None
    message_uid: str
    priority: Priority | None
    due_at: datetime | None
    acknowledge: bool


class Tx(Protocol):
    """What the decision needs from a store transaction. Times are aware UTC datetimes."""

    def find_receipt(self, delivery_key: str) -> StoredReceipt | None:
        """The receipt stored with an earlier delivery of the same key."""
        ...

    def resolve_contact(
        self, identities: list[tuple[str, str]], name: str | None, customer_type: str | None,
        *, verified: bool = True,
    ) -> tuple[int, ContactView]:
        """Find the contact owning any identity, create it if none; returns (key, view).

        Verified: the oldest contact owning one of the identities *verified* wins; its name and
        type may be updated; identities nobody owns are linked to it, and identities that only
        a claim linked are moved to it (proof beats a claim); verified identities of other
        contacts stay where they are. Claim: the oldest owner of any identity (verified first)
        wins and nothing of it changes; with no owner, a new contact is created whose identities
        are marked claimed, and ``customer_type = "vip"`` is ignored."""
        ...

    def owns_identity(self, contact_id: int, kind: str, value: str) -> bool:
        """True when the identity belongs to the contact."""
        ...

    def ticket_by_number(self, number: str) -> TicketRow | None: ...

    def ticket_by_reference(self, refs: list[str]) -> tuple[TicketRow, bool] | None:
        """The ticket one of our acknowledgements (its provider message id) belongs to, and
        whether that id is unguessable (our random email Message-IDs) rather than derived from
        public facts (a Telegram chat id and message counter)."""
        ...

    def recent_open_ticket(self, contact_id: int, since: datetime) -> TicketRow | None:
        """The contact's open ticket touched most recently, if at or after ``since``."""
        ...

    def duplicate_of(
        self, contact_id: int, fingerprint: str, since: datetime
    ) -> tuple[TicketRow, str] | None:
        """The ticket and message uid of the first message with this fingerprint since ``since``."""
        ...

    def next_sequence(self, scope: str) -> int: ...

    def insert_ticket(self, *, number: str, contact_id: int, plan: SubmissionPlan) -> TicketRow: ...

    def insert_message(
        self, *, plan: SubmissionPlan, ticket_id: int | None, contact_id: int,
        receipt: StoredReceipt,
    ) -> None:
        """Record the message with its receipt; ``ticket_id`` None for ``automated``."""
        ...

    def touch_ticket(self, ticket_id: int, at: datetime) -> None: ...

    def insert_ack(
        self, *, ticket_id: int, message_uid: str, ack: OutboxAck, payload: bytes
    ) -> None: ...

    def append_event(
        self, *, event_id: str, type_: str, subject: str, priority: str | None, body: bytes,
        escalated: bool = False,
    ) -> int:
        """Append to the event outbox; returns its sequence number. ``escalated`` is stored
        with the event and becomes ``OutboundEvent.escalated`` for the publishers."""
        ...

    def pending_rating(self, contact_id: int, since: datetime) -> tuple[str, str] | None:
        """The contact's latest resolution reply sent at or after ``since`` and not rated yet:
        (reply uid, ticket number); None if none."""
        ...

    def mark_rated(self, reply_uid: str, rating: int) -> None:
        """Record the rating the resolution ``reply_uid`` received."""
        ...


class AckFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the ack dispatcher needs to render an acknowledgement later."""

    ticket_number: str
    outcome: Outcome
    due_at: datetime
    locale: str | None
    subject: str
    not_kept: list[FileNotKept] = []
    """Files that did not reach us: the acknowledgement names them."""


def decide_and_record(tx: Tx, plan: SubmissionPlan, numbering: TicketNumbering) -> StoredReceipt:
    """Decide the outcome of ``plan`` and write its effects through ``tx``; see module docstring.

    Who may join what (docs/security.md): a reference joins its ticket when it is unguessable or
    comes from that ticket's own verified contact; a typed ticket number joins when it comes
    from that ticket's verified contact; a claim joins only through an acknowledgement to an
    address the ticket's contact owns, so the real owner is told. Everything else opens a new
    ticket that names what it pointed at in ``hinted_tickets``, for agents, never for the sender.
    """
    if plan.delivery_key is not None:
        earlier = tx.find_receipt(plan.delivery_key)
        if earlier is not None:
            return earlier

    msg = plan.message
    contact_id, contact = tx.resolve_contact(plan.identities, msg.contact.name,
                                             msg.customer_type, verified=plan.verified)
    if plan.rating is not None and plan.rating_since is not None and plan.verified:
        # The answer to a resolution's satisfaction question, on any channel of the contact:
        # a ticket.rated event, not a new ticket. Only a verified sender rates (a claim could
        # name anyone's address).
        pending = tx.pending_rating(contact_id, plan.rating_since)
        if pending is not None:
            rated = tx.ticket_by_number(pending[1])
            if rated is not None:
                return _rated(tx, plan, contact_id, rated, pending[0], plan.rating)

    ticket: TicketRow | None = None
    matched_by = ""
    owner_acks: list[OutboxAck] = []
    hints: list[str] = []
    if msg.thread.in_reply_to or msg.thread.references:
        refs = [r for r in (msg.thread.in_reply_to, *msg.thread.references) if r]
        found = tx.ticket_by_reference(refs)
        if found is not None:
            candidate, unguessable = found
            # Our email Message-IDs are random and were only ever sent to the ticket's address,
            # so whoever quotes one read that mailbox (a colleague, a forward, a bounce of the
            # acknowledgement). Any other id is only as good as the sender's own identity.
            if unguessable or (plan.verified and candidate.contact_id == contact_id):
                ticket, matched_by = candidate, "reply_header"
            elif candidate.contact_id == contact_id and (
                    routes := _owner_acks(tx, plan, candidate)):
                ticket, matched_by, owner_acks = candidate, "reply_header", routes
            else:
                hints.append(candidate.number)
    if ticket is None:
        for number in plan.numbers_named:
            named = tx.ticket_by_number(number)
            if named is None:
                continue
            # No hijacking: a number only joins a ticket when it comes from that ticket's
            # contact, and a claim to be that contact only when the contact is told.
            if named.contact_id == contact_id:
                if plan.verified:
                    ticket, matched_by = named, "ticket_number"
                    break
                if routes := _owner_acks(tx, plan, named):
                    ticket, matched_by, owner_acks = named, "ticket_number", routes
                    break
            if named.number not in hints:
                hints.append(named.number)
    view = _message_view(plan)
    now = msg.received_at
    if ticket is None and msg.auto_submitted:
        # Robots don't open tickets: an auto-reply, bounce or list mail that threads into none
        # is recorded and published, with no number, no target and no acknowledgement.
        return _automated(tx, plan, contact, contact_id, view)
    if ticket is None:
        # The same content again is a duplicate before it is a chat follow-up: the customer
        # is told "we already have it" rather than nothing.
        found_dup = tx.duplicate_of(contact_id, plan.fingerprint, plan.duplicate_since)
        if found_dup is not None:
            if plan.verified:
                return _duplicate(tx, plan, contact, contact_id, view, *found_dup)
            # A claim repeating a known request would learn that ticket's number: it gets a
            # ticket of its own, and agents see what it repeats.
            if found_dup[0].number not in hints:
                hints.append(found_dup[0].number)
    if ticket is None and plan.chat_since is not None and plan.verified:
        ticket = tx.recent_open_ticket(contact_id, plan.chat_since)
        matched_by = "chat_window"

    if ticket is not None:
        receipt = _receipt("followup", ticket, plan)
        tx.insert_message(plan=plan, ticket_id=ticket.id, contact_id=contact_id, receipt=receipt)
        tx.touch_ticket(ticket.id, now)
        event = MessageAdded(
            id=new_id(), source=plan.event_source, correlationid=plan.correlation_id,
            subject=ticket.number, time=now,
            priority=ticket.priority,
            data=MessageAddedData(ticket=_ticket_view(ticket), contact=contact, message=view,
                                  matched_by=matched_by),
        )
        _effects(tx, plan, ticket, receipt, event, owner_acks)
        return receipt

    seq = tx.next_sequence(numbering.scope(plan.number_day))
    number = numbering.format(plan.number_day, seq)
    ticket = tx.insert_ticket(number=number, contact_id=contact_id, plan=plan)
    receipt = _receipt("created", ticket, plan)
    tx.insert_message(plan=plan, ticket_id=ticket.id, contact_id=contact_id, receipt=receipt)
    created = TicketCreated(
        id=new_id(), source=plan.event_source, correlationid=plan.correlation_id,
        subject=number, time=now,
        priority=ticket.priority,
        data=TicketCreatedData(ticket=_ticket_view(ticket), contact=contact, message=view,
                               acknowledged_inline=plan.inline_ack and receipt.acknowledge,
                               hinted_tickets=hints),
    )
    _effects(tx, plan, ticket, receipt, created)
    return receipt


def _rated(tx: Tx, plan: SubmissionPlan, contact_id: int, ticket: TicketRow, reply_uid: str,
           rating: int) -> StoredReceipt:
    receipt = StoredReceipt(outcome="followup", ticket_number=ticket.number,
                            message_uid=plan.message_uid, priority=ticket.priority,
                            due_at=ticket.due_at, acknowledge=False)
    tx.insert_message(plan=plan, ticket_id=ticket.id, contact_id=contact_id, receipt=receipt)
    tx.mark_rated(reply_uid, rating)
    event = TicketRated(id=new_id(), source=plan.event_source, subject=ticket.number,
                        time=plan.message.received_at, priority=ticket.priority,
                        data=TicketRatedData(ticket_number=ticket.number, rating=rating,
                                             channel=plan.message.channel, reply_id=reply_uid,
                                             message_id=plan.message_uid))
    tx.append_event(event_id=event.id, type_="ticket.rated", subject=ticket.number,
                    priority=ticket.priority, body=_encode(event), escalated=ticket.escalated)
    return receipt


def _automated(tx: Tx, plan: SubmissionPlan, contact: ContactView, contact_id: int,
               view: MessageView) -> StoredReceipt:
    receipt = StoredReceipt(outcome="automated", ticket_number=None,
                            message_uid=plan.message_uid, priority=None, due_at=None,
                            acknowledge=False)
    tx.insert_message(plan=plan, ticket_id=None, contact_id=contact_id, receipt=receipt)
    event = MessageAutomated(
        id=new_id(), source=plan.event_source, correlationid=plan.correlation_id,
        subject=contact.id,
        time=plan.message.received_at,
        data=MessageAutomatedData(contact=contact, message=view,
                                  mail_class=plan.message.metadata.get("mail_class")))
    tx.append_event(event_id=event.id, type_=_type_of(event), subject=contact.id, priority=None,
                    body=_encode(event))
    return receipt


def _owner_acks(tx: Tx, plan: SubmissionPlan, ticket: TicketRow) -> list[OutboxAck]:
    """The claim's acknowledgement routes that reach an identity the ticket's contact owns."""
    return [ack for kind, value, ack in plan.owner_routes
            if tx.owns_identity(ticket.contact_id, kind, value)]


def _duplicate(tx: Tx, plan: SubmissionPlan, contact: ContactView, contact_id: int,
               view: MessageView, ticket: TicketRow, first_uid: str) -> StoredReceipt:
    receipt = _receipt("duplicate", ticket, plan)
    tx.insert_message(plan=plan, ticket_id=ticket.id, contact_id=contact_id, receipt=receipt)
    dup = DuplicateReceived(
        id=new_id(), source=plan.event_source, correlationid=plan.correlation_id,
        subject=ticket.number,
        time=plan.message.received_at, priority=ticket.priority,
        data=DuplicateReceivedData(ticket=_ticket_view(ticket), contact=contact, message=view,
                                   first_message_id=first_uid),
    )
    _effects(tx, plan, ticket, receipt, dup)
    return receipt


def _effects(
    tx: Tx, plan: SubmissionPlan, ticket: TicketRow, receipt: StoredReceipt,
    event: TicketCreated | MessageAdded | DuplicateReceived,
    owner_acks: list[OutboxAck] | None = None,
) -> None:
    tx.append_event(event_id=event.id, type_=_type_of(event), subject=ticket.number,
                    priority=ticket.priority, body=_encode(event), escalated=ticket.escalated)
    acks = list(plan.outbox_acks) if receipt.outcome in plan.ack_on else []
    # A claimed follow-up always tells the ticket's owner, loop policy's "no ack" included:
    # that notice is what makes letting the claim in safe.
    acks += [a for a in owner_acks or () if a not in acks]
    if not acks:
        return
    facts = _encode(AckFacts(ticket_number=ticket.number, outcome=receipt.outcome,
                             due_at=ticket.due_at, locale=plan.message.locale,
                             subject=plan.message.subject,
                             not_kept=plan.message.files_not_kept))
    for ack in acks:
        tx.insert_ack(ticket_id=ticket.id, message_uid=plan.message_uid, ack=ack, payload=facts)


def _type_of(event: TicketCreated | MessageAdded | DuplicateReceived | MessageAutomated) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def _receipt(outcome: Outcome, ticket: TicketRow, plan: SubmissionPlan) -> StoredReceipt:
    return StoredReceipt(outcome=outcome, ticket_number=ticket.number, message_uid=plan.message_uid,
                         priority=ticket.priority, due_at=ticket.due_at,
                         acknowledge=not plan.message.auto_submitted)


def _ticket_view(t: TicketRow) -> TicketView:
    return TicketView(number=t.number, kind=t.kind, area=t.area, priority=t.priority,  # type: ignore[arg-type]
                      created_at=t.created_at, due_at=t.due_at, channel=t.channel,
                      escalated=t.escalated)


def _message_view(plan: SubmissionPlan) -> MessageView:
    m = plan.message
    part = fit_inline(subject=m.subject, text=m.text, html=m.html, metadata=m.metadata,
                      budget=plan.inline_bytes)
    return MessageView(id=plan.message_uid, channel=m.channel, received_at=m.received_at,
                       subject=part.subject, text=part.text, html=part.html,
                       attachments=m.attachments, files_not_kept=m.files_not_kept,
                       locale=m.locale,
                       auto_submitted=m.auto_submitted, order_number=m.order_number,
                       device_model=m.device_model, metadata=part.metadata,
                       verified_by=m.contact.verified_by, truncated=part.truncated,
                       body_url=f"{plan.public_url}/v1/messages/{plan.message_uid}"
                       if plan.public_url else None)

"""Downstream events: CloudEvents 1.0, structured JSON mode.

Each event type is its own Struct, tagged by the CloudEvents ``type`` attribute, so
``msgspec.json.decode(raw, type=Event)`` yields the right class. ``id`` is stable across
re-deliveries: consumers deduplicate on it. ``subject`` is the ticket number.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from intake_schemas.message import (
    Area,
    Attachment,
    CustomerType,
    FileNotKept,
    Kind,
    Outcome,
    Priority,
)


class ContactView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The contact as downstream sees it: our stable id plus the identities we know.

    Identities here are those linked by verified messages, plus those of a contact that a claim
    created (see ``Contact.verified_by``); the message's own ``verified_by`` says which."""

    id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    chat_ids: dict[str, str] = {}
    customer_type: CustomerType | None = None


class MessageView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One stored message."""

    id: str
    channel: str
    received_at: datetime
    subject: str = ""
    text: str
    html: str | None = None
    attachments: list[Attachment] = []
    files_not_kept: list[FileNotKept] = []
    """Files that came with it but were not kept, and why; the acknowledgement said so."""
    locale: str | None = None
    auto_submitted: bool = False
    order_number: str | None = None
    device_model: str | None = None
    metadata: dict[str, str] = {}
    verified_by: str | None = None
    """Who vouched for the sender's identities (``Contact.verified_by``); None for a claim."""
    truncated: bool = False
    """True when subject, text, HTML or metadata were cut to fit the event
    (``intake.event_inline_bytes``): fetch the whole message at ``body_url``."""
    body_url: str | None = None
    """The whole stored message as JSON (``InboundMessage``), with the events token as bearer;
    each attachment at ``{body_url}/attachments/{sha256}``."""


class TicketView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ticket's triage and service target."""

    number: str
    kind: Kind
    area: Area
    priority: Priority
    created_at: datetime
    due_at: datetime
    channel: str
    escalated: bool = False
    """True when the priority asks for immediate escalation (high by default)."""


class TicketCreatedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ticket: TicketView
    contact: ContactView
    message: MessageView
    acknowledged_inline: bool = False
    """True when the acknowledgement went back in the provider's own response (form page,
    JSON answer, TwiML, WeChat passive reply), so no ``ack.sent`` follows."""
    hinted_tickets: list[str] = []
    """Tickets the message pointed at without proof that its sender owns them: a reference or
    a typed number of another contact's ticket, a claim's follow-up that could not be
    confirmed with the ticket's owner, a claim repeating a known request. The sender was not
    joined to them and was not told their numbers; agents may link them after checking."""


class MessageAddedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ticket: TicketView
    contact: ContactView
    message: MessageView
    matched_by: str
    """How the message was joined to the ticket: ``reply_header``, ``ticket_number``,
    ``chat_window``."""


class DuplicateReceivedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ticket: TicketView
    contact: ContactView
    message: MessageView
    first_message_id: str


class MessageAutomatedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    contact: ContactView
    message: MessageView
    mail_class: str | None = None
    """What the loop policy saw: ``auto_reply``, ``bounce``, ``list``, ``read_receipt``,
    ``feedback_report``..."""


class AckSentData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ticket_number: str
    channel: str
    outcome: Outcome
    provider_message_id: str | None = None


class AckFailedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ticket_number: str
    channel: str
    reason: str
    attempts: int


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """CloudEvents 1.0 context attributes shared by every event type.

    Not ``omit_defaults``: ``specversion`` and ``datacontenttype`` are required on the wire."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    subject: str
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    priority: Priority | None = None
    """Extension attribute: the ticket's priority, for routing (escalation subjects)."""
    correlationid: str | None = None
    """Extension attribute: the correlation id of the request or submission that wrote the
    event, the same as ``correlation_id`` in the gateway's log lines (``X-Request-Id``)."""


class TicketCreated(CloudEvent, frozen=True, kw_only=True, tag="ticket.created"):
    data: TicketCreatedData


class MessageAdded(CloudEvent, frozen=True, kw_only=True, tag="ticket.message_added"):
    data: MessageAddedData


class DuplicateReceived(CloudEvent, frozen=True, kw_only=True, tag="ticket.duplicate_received"):
    data: DuplicateReceivedData


class AckSent(CloudEvent, frozen=True, kw_only=True, tag="ack.sent"):
    data: AckSentData


class AckFailed(CloudEvent, frozen=True, kw_only=True, tag="ack.failed"):
    data: AckFailedData


class MessageAutomated(CloudEvent, frozen=True, kw_only=True, tag="message.automated"):
    """Machine mail that threads into no ticket. ``subject`` is the contact's id (no ticket)."""

    data: MessageAutomatedData




# -- replies out (issue 13): the downstream answers the customer through the gateway ---------


class ReplyQueuedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A reply was accepted and is durable in the outbox (the API answered 202)."""

    reply_id: str
    ticket_number: str
    channel: str
    """The channel it goes out on: ``email``, ``sms``, ``whatsapp``, ``telegram``, ``wechat``."""
    resolution: bool = False
    """The reply closes the ticket and asks the customer to rate it."""
    chosen_because: str = ""
    """Why this channel: ``latest_inbound``, ``requested``, ``window_closed_fallback``,
    ``voice_by_sms``..."""


class ReplySentData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    reply_id: str
    ticket_number: str
    channel: str
    provider_message_id: str | None = None
    """The provider's id (our email Message-ID, a Twilio SID, ``telegram:<chat>:<n>``...)."""
    attempts: int = 1
    template: bool = False
    """Sent as the channel's approved template (outside its customer-service window)."""


class ReplyDeliveredData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    reply_id: str
    ticket_number: str
    channel: str
    provider_message_id: str
    status: str
    """The provider's word for it (Twilio ``delivered``, ``read``)."""


class ReplyFailedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    reply_id: str
    ticket_number: str
    channel: str
    reason: str
    attempts: int = 0
    provider_message_id: str | None = None
    """Set when the provider took it and reported the failure later (a bounce, a status
    callback)."""


class TicketRatedData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ticket_number: str
    rating: int
    """1 (very unsatisfied) to 5 (very satisfied)."""
    channel: str
    """The channel the answer came on (it may differ from the resolution's)."""
    reply_id: str | None = None
    """The resolution reply that asked."""
    message_id: str | None = None
    """The stored message that carried the answer (none for the signed link)."""


class ReplyQueued(CloudEvent, frozen=True, kw_only=True, tag="reply.queued"):
    data: ReplyQueuedData


class ReplySent(CloudEvent, frozen=True, kw_only=True, tag="reply.sent"):
    data: ReplySentData


class ReplyDelivered(CloudEvent, frozen=True, kw_only=True, tag="reply.delivered"):
    data: ReplyDeliveredData


class ReplyFailed(CloudEvent, frozen=True, kw_only=True, tag="reply.failed"):
    data: ReplyFailedData


class TicketRated(CloudEvent, frozen=True, kw_only=True, tag="ticket.rated"):
    data: TicketRatedData


Event = (TicketCreated | MessageAdded | DuplicateReceived | MessageAutomated | AckSent
         | AckFailed | ReplyQueued | ReplySent | ReplyDelivered | ReplyFailed | TicketRated)
"""Every event type; decode with ``msgspec.json.decode(raw, type=Event)``."""

EVENT_TYPES: tuple[str, ...] = (
    "ticket.created",
    "ticket.message_added",
    "ticket.duplicate_received",
    "ack.sent",
    "ack.failed",
    "reply.queued",
    "reply.sent",
    "reply.delivered",
    "reply.failed",
    "ticket.rated",
)

"""The inbound message, its contact, attachments, and what the gateway answers.

All Structs are ``frozen`` and ``kw_only``: adapters build them once and nothing mutates them
afterwards. Times are timezone-aware UTC ``datetime`` values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Kind = Literal["consultation", "complaint", "fault", "suggestion"]
"""What the customer wants (咨询 / 投诉 / 故障 / 建议)."""

Area = Literal["product", "service", "billing", "technical", "other"]
"""What it is about (产品 / 服务 / 费用、账单 / 技术 / 其他)."""

Priority = Literal["high", "medium", "low"]
"""Urgency (紧急程度): high 2 h, medium 24 h, low 3 working days by default."""

CustomerType = Literal["new", "existing", "vip"]
"""Customer type (客户类型): 新客户 / 老客户 / VIP."""

Outcome = Literal["created", "followup", "duplicate", "replayed", "automated"]
"""What ``submit`` decided for one message; see DESIGN.md "The way of one message".

``automated``: machine mail (auto-reply, bounce, list, read receipt, feedback report) that threads
into no ticket: recorded and published (``message.automated``), no ticket, no acknowledgement."""

E164 = Annotated[
    str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164 phone number")
]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class Contact(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who wrote. Every identity present is linked to one contact across channels."""

    name: str | None = None
    """Name or nickname as the channel gave it."""
    email: str | None = None
    """Lower-cased address (the domain is case-insensitive; local parts are in practice)."""
    phone: E164 | None = None
    chat_ids: dict[str, str] = {}
    """Channel-scoped chat identities, e.g. ``{"telegram": "42", "wechat": "oXyz..."}``."""
    verified_by: str | None = None
    """Who vouches for these identities, or None when they are only claims.

    Set by the adapter, never by the sender: ``"smtp"``/``"imap"`` (the mail's sender, with the
    SPF/DKIM verdict recorded in ``metadata["mail_auth"]``), ``"twilio-signature"``,
    ``"telegram"``, ``"wechat-signature"``, ``"api-signature"`` (an authenticated API client).
    A claim (typed on the web form, sent through an unsigned API) may open a ticket, but never
    renames, upgrades or links identities to an existing contact, and never learns another
    ticket's number (docs/security.md)."""


class Attachment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A file the customer sent. The bytes live in the attachment store under ``sha256``."""

    name: str
    """A safe file name: no path, no control characters."""
    content_type: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Sha256Hex


class FileNotKept(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A file the customer sent that the channel received but did not keep, and why.

    The acknowledgement names it, so nobody believes it arrived; agents see it in the event.
    """

    name: str
    """A safe file name (or the channel's label for it, e.g. ``media0``)."""
    reason: Literal["too_large", "too_many", "type", "unavailable"]
    """``too_large``: over the size limit; ``too_many``: over the count limit; ``type``: a kind
    of file we do not take; ``unavailable``: the provider would not hand it over."""
    limit: int | None = None
    """Bytes for ``too_large``, files for ``too_many``."""


class ThreadHints(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the message says about the conversation it belongs to."""

    in_reply_to: str | None = None
    references: list[str] = []
    ticket_number: str | None = None
    """A ticket number the customer typed (form field, API field); subjects are scanned too."""


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One customer message from any channel, as the core receives it."""

    channel: str
    """The adapter kind that received it: ``webform``, ``api``, ``smtp``, ``twilio``..."""
    provider_message_id: str | None = None
    """The provider's id of this delivery (Message-ID, MessageSid, update_id, Idempotency-Key).
    Same channel + same ``delivery_scope`` + same id = the same delivery, answered ``replayed``."""
    delivery_scope: str = ""
    """Where the id is unique, e.g. the mailbox for email; empty for channel-wide ids."""
    received_at: datetime
    contact: Contact
    subject: str = ""
    text: str
    html: str | None = None
    """Sanitized HTML (no scripts, handlers or remote loads), if the channel had any."""
    attachments: list[Attachment] = []
    files_not_kept: list[FileNotKept] = []
    """Files that came with the message but were not kept (limits, types, provider errors)."""
    thread: ThreadHints = ThreadHints()
    locale: str | None = None
    """BCP 47 tag the customer wrote in or chose, e.g. ``zh-CN``, ``en``."""
    auto_submitted: bool = False
    """True for machine-generated mail (auto-replies, bounces): recorded, never acknowledged."""
    conversational: bool = False
    """True on chat channels, where a message from a contact with a recently touched open
    ticket joins that ticket even without a ticket number."""
    customer_type: CustomerType | None = None
    order_number: str | None = None
    device_model: str | None = None
    kind: Kind | None = None
    """The kind the customer chose, if the channel asks; triage decides otherwise."""
    metadata: dict[str, str] = {}
    """Channel-specific facts worth keeping (To address, provider account, client IP is NOT one)."""


class Acknowledgement(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the customer is told: the ticket number and when to expect an answer."""

    ticket_number: str
    outcome: Outcome
    due_at: datetime
    locale: str
    subject: str
    text: str


class Receipt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What ``submit`` returns, only after everything it decided is durable.

    A ``replayed`` receipt repeats the first one, except for ``outcome`` and ``replayed_at``.
    """

    outcome: Outcome
    ticket_number: str | None
    """The ticket the message was recorded on; None only for ``automated``."""
    message_id: str
    """Our id of the stored message (for ``replayed``: of the first delivery)."""
    priority: Priority | None = None
    """None only for ``automated`` (no ticket, no response target)."""
    due_at: datetime | None = None
    """None only for ``automated``."""
    acknowledgement: Acknowledgement | None = None
    """None when the loop policy forbids answering (auto-submitted mail and the like)."""

"""The request and answer of ``POST /v1/tickets/{number}/replies``: the downstream answers.

Exported as ``schemas/json/reply-request.json`` and ``reply-accepted.json`` (for the OpenAPI
document). Unknown fields are refused (HTTP 400 naming the field).
"""

from __future__ import annotations

from typing import Literal

import msgspec

ReplyChannel = Literal["email", "sms", "whatsapp", "telegram", "wechat", "webchat"]
"""A channel a reply may be asked to go out on (the contact must have that identity)."""


class ReplyAttachment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A file sent with the reply, inline (email only; other channels get its name)."""

    name: str
    content_type: str = "application/octet-stream"
    data: bytes
    """Base64 in JSON."""


class ReplyRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/tickets/{number}/replies``. Needs an ``Idempotency-Key``."""

    text: str
    """What the customer reads; every channel gets it (segmented or cut per its limits)."""
    html: str | None = None
    """Optional HTML for email; sanitized again by the gateway, never sent as given."""
    attachments: list[ReplyAttachment] = []
    channel: ReplyChannel | None = None
    """Another identity of the ticket's contact; default: the channel of the ticket's latest
    inbound message."""
    resolution: bool = False
    """This reply resolves the ticket: a satisfaction question is added in the customer's
    language, and the customer's answer (1 to 5) becomes a ``ticket.rated`` event."""


class ReplyAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer (HTTP 202): the reply is durable in the outbox; its outcome comes as events."""

    reply_id: str
    ticket_number: str
    channel: ReplyChannel
    status: Literal["queued", "sent", "failed", "delivered"] = "queued"
    """Its status now (a retried request may find it sent already)."""
    replayed: bool = False
    """True when this Idempotency-Key was seen before: nothing new was queued."""

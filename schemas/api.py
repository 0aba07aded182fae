"""The request body of ``POST /v1/messages``, the JSON API for integrators.

Exported as ``schemas/json/api-message.json`` next to the events, so a client can validate what
it sends. Unknown fields are refused (HTTP 400 naming the field).
"""

from __future__ import annotations

import msgspec

from intake_schemas.message import CustomerType, Kind


class ApiContact(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who wrote: at least one of email, phone or a chat id, so that they can be answered.

    Typed by the client: a claim unless the request is signed (docs/security.md)."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    chat_ids: dict[str, str] = {}


class ApiAttachment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A file, inline."""

    name: str
    content_type: str = "application/octet-stream"
    data: bytes
    """Base64 in JSON."""


class ApiMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The request body of ``POST /v1/messages``."""

    contact: ApiContact
    subject: str = ""
    text: str = ""
    locale: str | None = None
    customer_type: CustomerType | None = None
    """Ignored as ``vip`` from an unsigned client (a claim)."""
    order_number: str | None = None
    device_model: str | None = None
    kind: Kind | None = None
    """The kind the customer chose; triage decides when absent."""
    ticket_number: str | None = None
    """A ticket number the customer gave (typos are refused by the check digit). It joins that
    ticket when it comes from the ticket's own contact; a number in ``text`` counts too."""
    in_reply_to: str | None = None
    """The provider id of one of our acknowledgements this answers (e.g. an email Message-ID).
    It joins only when unguessable or from the ticket's own verified contact."""
    attachments: list[ApiAttachment] = []
    metadata: dict[str, str] = {}

"""JSON Schema export of the one schema; the committed copies are checked for drift by tests."""

from __future__ import annotations

from typing import Any

import msgspec

from intake_schemas.api import ApiMessage
from intake_schemas.asyncapi import asyncapi_document
from intake_schemas.events import (
    AckFailed,
    AckSent,
    DuplicateReceived,
    Event,
    MessageAdded,
    MessageAutomated,
    ReplyDelivered,
    ReplyFailed,
    ReplyQueued,
    ReplySent,
    TicketCreated,
    TicketRated,
)
from intake_schemas.message import InboundMessage, Receipt
from intake_schemas.replies import ReplyAccepted, ReplyRequest

SCHEMA_VERSION = "1.2.0"
"""The event contract's version: the minor part grows with every added field."""

SCHEMAS: dict[str, Any] = {
    "inbound-message": InboundMessage,
    "receipt": Receipt,
    "api-message": ApiMessage,
    "event": Event,
    "event.ticket.created": TicketCreated,
    "event.ticket.message_added": MessageAdded,
    "event.ticket.duplicate_received": DuplicateReceived,
    "event.message.automated": MessageAutomated,
    "event.ack.sent": AckSent,
    "event.ack.failed": AckFailed,
    "event.reply.queued": ReplyQueued,
    "event.reply.sent": ReplySent,
    "event.reply.delivered": ReplyDelivered,
    "event.reply.failed": ReplyFailed,
    "event.ticket.rated": TicketRated,
    "reply-request": ReplyRequest,
    "reply-accepted": ReplyAccepted,
}


def export_schemas() -> dict[str, dict[str, Any]]:
    """Every published schema by file stem, as JSON Schema 2020-12 documents."""
    out: dict[str, dict[str, Any]] = {}
    for name, type_ in SCHEMAS.items():
        doc = msgspec.json.schema(type_)
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                     "$id": f"urn:intake-gateway:schema:{name}", **doc}
    out["asyncapi"] = asyncapi_document(SCHEMA_VERSION)
    return out

"""The AsyncAPI 3.0 document of the downstream event stream, generated from the schema code."""

from __future__ import annotations

from typing import Any

import msgspec

from intake_schemas.events import (
    AckFailed,
    AckSent,
    DuplicateReceived,
    MessageAdded,
    MessageAutomated,
    ReplyDelivered,
    ReplyFailed,
    ReplyQueued,
    ReplySent,
    TicketCreated,
    TicketRated,
)

EVENT_CLASSES = (TicketCreated, MessageAdded, DuplicateReceived, MessageAutomated, AckSent,
                 AckFailed, ReplyQueued, ReplySent, ReplyDelivered, ReplyFailed, TicketRated)

_SUMMARIES = {
    "ticket.created": "A new ticket was opened, triaged, numbered and (maybe) acknowledged.",
    "ticket.message_added": "A follow-up joined an existing ticket.",
    "ticket.duplicate_received": "The same contact sent the same content again; linked, not new.",
    "message.automated": ("Machine mail (auto-reply, bounce, list, receipt, report) that "
                          "threads into no ticket: recorded, no ticket, no acknowledgement."),
    "ack.sent": "An acknowledgement went out through the outbox (email, SMS, chat).",
    "ack.failed": "An acknowledgement could not be sent and was given up, or was suppressed.",
    "reply.queued": ("A downstream reply (POST /v1/tickets/{number}/replies) is durable in the "
                     "outbox, on the channel named in the event."),
    "reply.sent": "The provider took a reply; its id is in the event.",
    "reply.delivered": "The provider reported a reply delivered (Twilio status callback).",
    "reply.failed": ("A reply could not be sent, was given up after retries, or the provider "
                     "reported it failed later (a bounce, a status callback)."),
    "ticket.rated": ("The customer answered a resolution's satisfaction question (1 to 5) "
                     "on any channel; no ticket was opened for it."),
}


def _tag(cls: type[msgspec.Struct]) -> str:
    return str(cls.__struct_config__.tag)


def asyncapi_document(version: str) -> dict[str, Any]:
    """AsyncAPI 3.0: one channel per broker address shape, one message per event type."""
    _, components = msgspec.json.schema_components(
        EVENT_CLASSES, ref_template="#/components/schemas/{name}")
    messages = {
        _tag(cls).replace(".", "_"): {
            "name": _tag(cls),
            "title": _tag(cls),
            "summary": _SUMMARIES[_tag(cls)],
            "contentType": "application/cloudevents+json",
            "correlationId": {"description": "The CloudEvents id: deduplicate on it.",
                              "location": "$message.payload#/id"},
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
        }
        for cls in EVENT_CLASSES
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "intake-gateway events",
            "version": version,
            "description": (
                "CloudEvents 1.0 in structured JSON mode, one per effect of an accepted "
                "customer message. Delivery is at least once and ordered per ticket "
                "(`subject`); consumers deduplicate on `id`. Fields are only ever added, with "
                "defaults. High-priority events are also published on the escalation route."),
        },
        "channels": {
            "events": {
                "address": "intake.events.{type}",
                "description": "NATS subject / RabbitMQ routing key prefix / Redis stream "
                               "`intake:events` / webhook POST body: every event.",
                "parameters": {"type": {"enum": [_tag(c) for c in EVENT_CLASSES]}},
                "messages": {name: {"$ref": f"#/components/messages/{name}"}
                             for name in messages},
            },
            "escalations": {
                "address": "intake.escalations.{type}",
                "description": "The same events again, for escalated tickets only "
                               "(see triage.escalate).",
                "parameters": {"type": {"enum": [_tag(c) for c in EVENT_CLASSES]}},
                "messages": {name: {"$ref": f"#/components/messages/{name}"}
                             for name in messages},
            },
        },
        "operations": {
            "receiveEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"},
                              "messages": [{"$ref": f"#/channels/events/messages/{n}"}
                                           for n in messages]},
            "receiveEscalations": {"action": "receive",
                                   "channel": {"$ref": "#/channels/escalations"},
                                   "messages": [{"$ref": f"#/channels/escalations/messages/{n}"}
                                                for n in messages]},
        },
        "components": {"messages": messages, "schemas": components},
    }

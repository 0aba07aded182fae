"""The one schema of the intake gateway.

Every channel's message becomes an :class:`InboundMessage`; every accepted message yields a
:class:`Receipt`; every effect downstream is a CloudEvents 1.0 envelope (:mod:`schemas.events`).

This package imports nothing of ours, so adapters, the core and downstream consumers can all
depend on it. Evolution rule: fields are only ever added, always with a default.
"""

from intake_schemas.events import (
    AckFailed,
    AckFailedData,
    AckSent,
    AckSentData,
    CloudEvent,
    ContactView,
    DuplicateReceived,
    DuplicateReceivedData,
    Event,
    MessageAdded,
    MessageAddedData,
    MessageAutomated,
    MessageAutomatedData,
    MessageView,
    TicketCreated,
    TicketCreatedData,
    TicketView,
)
from intake_schemas.message import (
    Acknowledgement,
    Area,
    Attachment,
    Contact,
    CustomerType,
    FileNotKept,
    InboundMessage,
    Kind,
    Outcome,
    Priority,
    Receipt,
    ThreadHints,
)

__all__ = [
    "AckFailed",
    "AckFailedData",
    "AckSent",
    "AckSentData",
    "Acknowledgement",
    "Area",
    "Attachment",
    "CloudEvent",
    "Contact",
    "ContactView",
    "CustomerType",
    "DuplicateReceived",
    "DuplicateReceivedData",
    "Event",
    "FileNotKept",
    "InboundMessage",
    "Kind",
    "MessageAdded",
    "MessageAddedData",
    "MessageAutomated",
    "MessageAutomatedData",
    "MessageView",
    "Outcome",
    "Priority",
    "Receipt",
    "ThreadHints",
    "TicketCreated",
    "TicketCreatedData",
    "TicketView",
]

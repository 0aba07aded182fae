"""A provider's later word on a sent reply (status callback, bounce) as an event, once."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from gateway.ids import new_id
from gateway.store.protocols import NewEvent, ReplyOutboxTx
from intake_schemas import ReplyDelivered, ReplyDeliveredData, ReplyFailed, ReplyFailedData

_encode = msgspec.json.Encoder().encode



def record_delivery(tx: ReplyOutboxTx, *, provider_id: str, delivered: bool, detail: str,
                    event_source: str, ticket_number: str | None = None) -> bool:
    """In the store's transaction: mark the reply the provider knows as ``provider_id``
    ``delivered`` or ``failed`` and append its event. A second report of a settled reply
    (``read`` after ``delivered``, a bounce after a failure) writes nothing. False when the id
    names no reply."""
    row = tx.reply_by_provider_id(provider_id)
    if row is None:
        return False
    if row.status in ("delivered", "failed"):
        return True
    number = ticket_number or tx.reply_ticket_number(row.uid)
    now = datetime.now(UTC)
    event: ReplyDelivered | ReplyFailed
    if delivered:
        event = ReplyDelivered(id=new_id(), source=event_source, subject=number, time=now,
                               data=ReplyDeliveredData(
                                   reply_id=row.uid, ticket_number=number, channel=row.channel,
                                   provider_message_id=provider_id, status=detail[:40]))
    else:
        event = ReplyFailed(id=new_id(), source=event_source, subject=number, time=now,
                            data=ReplyFailedData(
                                reply_id=row.uid, ticket_number=number, channel=row.channel,
                                reason=f"the provider reported it failed: {detail[:80]}",
                                provider_message_id=provider_id))
    tx.finish_reply(row.uid, "delivered" if delivered else "failed",
                    error=None if delivered else detail[:80],
                    event=NewEvent(id=event.id, type=str(type(event).__struct_config__.tag),
                                   subject=number, body=_encode(event)))
    return True

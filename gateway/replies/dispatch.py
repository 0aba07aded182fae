"""The reply dispatcher: sends queued replies through their channel's sender, as the ack
dispatcher sends acknowledgements (gateway/ack_dispatch.py): one recipient's replies oldest
first, transient failures retried with jittered backoff up to ``replies.max_attempts``, at most
``replies.per_recipient_limit`` per recipient per window, and the outcome (``reply.sent`` with
the provider id, or ``reply.failed``) written in the same transaction as the row's new status.

Sending is at least once towards the provider: a crash after the provider took a reply and
before its row was updated sends it again after restart. The row is updated right after each
send to keep that window small; senders whose provider takes an idempotency key pass the
reply id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import msgspec
from prometheus_client import Counter

from gateway.errors import PermanentError, TransientError
from gateway.ids import new_id
from gateway.plugin import OutgoingReply, ReplySender
from gateway.replies.config import ReplyConfig
from gateway.store.protocols import DueReply, NewEvent, ReplyOutbox, ReplyOutboxTx
from intake_schemas import ReplyFailed, ReplyFailedData, ReplySent, ReplySentData

T = TypeVar("T")

log = logging.getLogger("intake.replies")

REPLIES = Counter("intake_replies_total", "Downstream replies by channel and result",
                  ["channel", "result"])

_outgoing = msgspec.msgpack.Decoder(OutgoingReply)
_encode = msgspec.json.Encoder().encode
_BATCH = 50
_IDLE_POLL = 5.0
"""Seconds between looks at an outbox nothing woke us for: on PostgreSQL, a reply another
replica leased and never settled (it died mid-send) is ours once its lease runs out, and
nothing here is woken for that."""


class ReplyDispatchStore(ReplyOutbox, Protocol):
    async def run(self, fn: Callable[[ReplyOutboxTx], T]) -> T: ...


class ReplyDispatcher:
    """Drains the ``replies`` outbox; one task per gateway."""

    def __init__(self, store: ReplyDispatchStore, senders: Mapping[str, ReplySender], *,
                 config: ReplyConfig, event_source: str) -> None:
        self.store = store
        self.senders = senders
        self.config = config
        self.event_source = event_source
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A reply was queued: look now."""
        self._wake.set()

    async def start(self) -> None:
        # Woken by the endpoint when it queued a reply (``wake``), not on every commit: the
        # intake's commits must not each cost this dispatcher two reads.
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="reply-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._rounds()
            except TransientError as exc:
                # The store was away (PostgreSQL restarting): queued rows stay queued and are
                # taken again; a send whose record failed goes again (at least once).
                log.warning("replies: the store is unavailable (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _rounds(self) -> None:
        while True:
            rows = await self.store.due_replies(_BATCH, time.time())
            if not rows:
                self._wake.clear()
                next_at = await self.store.next_reply_attempt()
                timeout = _IDLE_POLL if next_at is None else min(
                    _IDLE_POLL, max(0.05, next_at - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            groups: dict[tuple[str, str], list[DueReply]] = {}
            for row in rows:
                groups.setdefault((row.channel, row.recipient), []).append(row)
            await asyncio.gather(*(self._in_order(group) for group in groups.values()))

    async def _in_order(self, rows: list[DueReply]) -> None:
        for row in rows:
            try:
                await self._dispatch(row)
            except Exception:  # one bad row must not stop the others
                log.exception("reply %s could not be dispatched", row.uid)
                await self.store.run(self._failure(row, "internal error", row.attempts))

    async def _dispatch(self, row: DueReply) -> None:
        sender = self.senders.get(row.channel)
        if sender is None:
            await self.store.run(self._failure(row, f"no sender for channel {row.channel!r}",
                                               row.attempts))
            return
        recent = await self.store.replies_sent_since(
            row.channel, row.recipient, time.time() - self.config.per_recipient_window)
        if recent >= self.config.per_recipient_limit:
            await self.store.run(self._failure(
                row, "suppressed: per-recipient limit reached", row.attempts))
            REPLIES.labels(row.channel, "suppressed").inc()
            return
        reply = _outgoing.decode(row.payload)
        attempts = row.attempts + 1
        try:
            provider_id = await sender.send_reply(reply, channel=row.channel, to=row.recipient,
                                                  reply_to=row.reply_to)
        except TransientError as exc:
            if attempts >= self.config.max_attempts:
                await self.store.run(self._failure(row, f"gave up: {exc}", attempts))
                REPLIES.labels(row.channel, "failed").inc()
                return
            delay = random.uniform(0.5, 1.0) * min(self.config.max_backoff, 2.0 ** attempts)
            REPLIES.labels(row.channel, "retry").inc()
            error, at, uid = str(exc), time.time() + delay, row.uid
            await self.store.run(lambda tx: tx.retry_reply(uid, attempts, at, error))
            return
        except PermanentError as exc:
            await self.store.run(self._failure(row, str(exc), attempts))
            REPLIES.labels(row.channel, "failed").inc()
            return
        event = ReplySent(id=new_id(), source=self.event_source, subject=row.ticket_number,
                          time=datetime.now(UTC),
                          data=ReplySentData(reply_id=row.uid, ticket_number=row.ticket_number,
                                             channel=row.channel, provider_message_id=provider_id,
                                             attempts=attempts, template=reply.template))
        REPLIES.labels(row.channel, "sent").inc()
        unguessable = sender.ack_ids_unguessable
        new = _new_event(event, row.ticket_number)
        def sent(tx: ReplyOutboxTx) -> None:
            tx.finish_reply(row.uid, "sent", provider_id=provider_id, event=new,
                            unguessable=unguessable, attempts=attempts)
            if row.resolution:
                tx.resolve_ticket(row.ticket_id)
        await self.store.run(sent)

    def _failure(self, row: DueReply, reason: str,
                 attempts: int) -> Callable[[ReplyOutboxTx], None]:
        event = ReplyFailed(id=new_id(), source=self.event_source, subject=row.ticket_number,
                            time=datetime.now(UTC),
                            data=ReplyFailedData(reply_id=row.uid,
                                                 ticket_number=row.ticket_number,
                                                 channel=row.channel, reason=reason,
                                                 attempts=attempts))
        new = _new_event(event, row.ticket_number)
        return lambda tx: tx.finish_reply(row.uid, "failed", error=reason, event=new,
                                          attempts=attempts)


def _new_event(event: ReplySent | ReplyFailed, subject: str) -> NewEvent:
    return NewEvent(id=event.id, type=str(type(event).__struct_config__.tag), subject=subject,
                    body=_encode(event))

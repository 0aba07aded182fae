"""The acknowledgement dispatcher: sends outbox acknowledgements through their channel's sender.

Rows in ``acks`` are written in the message's transaction for channels that cannot answer in
their own response (email, SMS via REST, Telegram). The dispatcher sends them in order, records
``ack.sent`` or ``ack.failed`` events in the same transaction as the row's new status, and keeps
the loop policy's last line of defence: at most ``per_recipient_limit`` acknowledgements per
recipient per window, whatever the channel's own policy let through.

Sending is at least once: a crash after the provider accepted an acknowledgement but before the
row was updated sends it again after restart. The row is updated right after each send to keep
that window small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import msgspec
from prometheus_client import Counter

from gateway.acks import pick_locale, render_ack
from gateway.config import AckPolicy
from gateway.decision import AckFacts
from gateway.errors import PermanentError, TransientError
from gateway.ids import new_id
from gateway.plugin import AckSender
from gateway.store.protocols import AckOutbox, AckOutboxTx, DueAck, EventLog, NewEvent
from intake_schemas import AckFailed, AckFailedData, AckSent, AckSentData

T = TypeVar("T")

log = logging.getLogger("intake.acks")

ACKS = Counter("intake_acks_total", "Outbox acknowledgements by channel and result",
               ["channel", "result"])

_facts = msgspec.json.Decoder(AckFacts)
_encode = msgspec.json.Encoder().encode
_BATCH = 50
"""Due rows read per round."""
_IDLE_POLL = 2.0
"""Seconds between looks at an outbox nothing woke us for (see ``_run``)."""


class AckStore(AckOutbox, EventLog, Protocol):
    """What the dispatcher needs of a store: the outbox, commit wake-ups, and its transaction."""

    async def run(self, fn: Callable[[AckOutboxTx], T]) -> T: ...


class AckDispatcher:
    """Drains the ``acks`` outbox; one task per gateway."""

    def __init__(self, store: AckStore, senders: Mapping[str, AckSender], *, policy: AckPolicy,
                 calendar: Any, default_locale: str, event_source: str) -> None:
        self.store = store
        self.senders = senders
        self.policy = policy
        self.calendar = calendar
        self.default_locale = default_locale
        self.event_source = event_source
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self.store.on_ack_queued(self._wake.set)
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="ack-dispatcher")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop after the batch being sent is recorded (up to ``grace`` seconds): a send
        cancelled between the provider's answer and its record would go out again, from
        this replica's next start or from another replica."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({self._task}, timeout=grace)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self._stopping = False

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._rounds()
            except TransientError as exc:
                # The store was away (PostgreSQL restarting): rows not settled stay pending
                # and are taken again; a send whose record failed goes again (at least once).
                log.warning("acks: the store is unavailable (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _rounds(self) -> None:
        while not self._stopping:
            rows = await self.store.due_acks(_BATCH, time.time())
            if self._stopping:
                return
            if not rows:
                self._wake.clear()
                if self._stopping:
                    return
                next_at = await self.store.next_ack_attempt()
                # Rows this process did not queue (another replica's, one replayed from the
                # shell) wake nobody: look again at least every _IDLE_POLL seconds.
                timeout = _IDLE_POLL if next_at is None else min(
                    _IDLE_POLL, max(0.05, next_at - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            groups: dict[tuple[str, str], list[DueAck]] = {}
            for row in rows:
                groups.setdefault((row.channel, row.recipient), []).append(row)
            slots = asyncio.Semaphore(max(1, self.policy.parallel_recipients))
            await asyncio.gather(*(self._dispatch_in_order(group, slots)
                                   for group in groups.values()))

    async def _dispatch_in_order(self, rows: list[DueAck],
                                 slots: asyncio.Semaphore) -> None:
        """One recipient's rows, oldest first, while holding one of the parallel slots."""
        async with slots:
            for row in rows:
                try:
                    await self._dispatch(*row)
                except Exception:  # one bad row must not stop the others
                    log.exception("acknowledgement %s could not be dispatched", row.id)
                    await self.store.run(_failed(row.id, "internal error"))

    async def _dispatch(self, ack_id: int, ticket_id: int, channel: str, recipient: str,
                        reply_to: str | None, payload: bytes, attempts: int) -> None:
        facts = _facts.decode(payload)
        sender = self.senders.get(channel)
        if sender is None:
            await self._fail(ack_id, facts, channel, f"no sender for channel {channel!r}",
                             attempts)
            return
        recent = await self.store.acks_sent_since(
            channel, recipient, time.time() - self.policy.per_recipient_window)
        if recent >= self.policy.per_recipient_limit:
            await self._fail(ack_id, facts, channel, "suppressed: per-recipient limit reached",
                             attempts, status="suppressed")
            return
        ack = render_ack(number=facts.ticket_number, outcome=facts.outcome, due_at=facts.due_at,
                         locale=pick_locale(facts.locale, self.default_locale),
                         calendar=self.calendar, not_kept=facts.not_kept)
        try:
            provider_id = await sender.send_ack(ack, to=recipient, reply_to=reply_to)
        except TransientError as exc:
            attempts += 1
            if attempts >= self.policy.max_attempts:
                await self._fail(ack_id, facts, channel, f"gave up: {exc}", attempts)
                return
            delay = random.uniform(0.5, 1.0) * min(self.policy.max_backoff, 2.0 ** attempts)
            ACKS.labels(channel, "retry").inc()
            error = str(exc)  # `exc` is unbound once the except block ends; the lambda runs later
            at = time.time() + delay
            await self.store.run(lambda tx: tx.retry_ack(ack_id, attempts, at, error))
            return
        except PermanentError as exc:
            await self._fail(ack_id, facts, channel, str(exc), attempts + 1)
            return
        event = AckSent(id=new_id(), source=self.event_source,
                        subject=facts.ticket_number, time=datetime.now(UTC),
                        data=AckSentData(ticket_number=facts.ticket_number, channel=channel,
                                         outcome=facts.outcome, provider_message_id=provider_id))
        ACKS.labels(channel, "sent").inc()
        unguessable = sender.ack_ids_unguessable
        await self.store.run(lambda tx: tx.finish_ack(
            ack_id, "sent", provider_id=provider_id, event=_new_event(event),
            ticket_id=ticket_id, unguessable=unguessable))

    async def _fail(self, ack_id: int, facts: AckFacts, channel: str, reason: str,
                    attempts: int, *, status: str = "failed") -> None:
        event = AckFailed(id=new_id(), source=self.event_source,
                          subject=facts.ticket_number, time=datetime.now(UTC),
                          data=AckFailedData(ticket_number=facts.ticket_number, channel=channel,
                                             reason=reason, attempts=attempts))
        ACKS.labels(channel, status).inc()
        await self.store.run(lambda tx: tx.finish_ack(ack_id, status, error=reason,
                                                      event=_new_event(event)))


def _failed(ack_id: int, reason: str) -> Callable[[AckOutboxTx], None]:
    """Mark ``ack_id`` failed, bound now (a lambda in a loop would see the loop's last row)."""
    return lambda tx: tx.finish_ack(ack_id, "failed", error=reason)


def _new_event(event: AckSent | AckFailed) -> NewEvent:
    return NewEvent(id=event.id, type=type(event).__struct_config__.tag,  # type: ignore[arg-type]
                    subject=event.subject, body=_encode(event))

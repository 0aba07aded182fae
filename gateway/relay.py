"""The event relay: carries the outbox to the configured publisher, at least once, in order.

The relay reads events after its stored position in sequence order and hands them to the
publisher in batches; the publisher returns only once the broker confirmed the whole batch, and
only then does the relay move its position (in the store, durably). A crash in between re-sends
the batch; the event ids make the re-send harmless. Publishing a batch in sequence order keeps
order per ticket, while one batch carries many tickets at once.

Failures:

- A :class:`TransientError` (broker down, timeout, a receiver answering 401 or 503) is retried
  with capped exponential backoff (``queue.max_backoff``, a few seconds, so delivery resumes
  soon after the broker returns) or the ``Retry-After`` the other side gave, for as long as it
  lasts: an hour's outage only delays delivery and dead-letters nothing.
- A :class:`PermanentError` (the broker or receiver refuses the event itself) is counted against
  that event alone; the event is retried alone, with its own backoff, and after
  ``queue.max_attempts`` refusals it goes to the dead-letter table.
- An event larger than ``queue.max_event_bytes`` is never handed to the broker: it is
  dead-lettered at once, "too large for the broker".

Order per ticket survives a dead letter: once an event of a ticket (its ``subject``) is
dead-lettered, the ticket's later events are not published but *held* in the dead-letter table
behind it (``attempts`` 0, ``last_error`` "held behind seq N"), while other tickets keep
flowing. ``intake-gateway replay`` (:func:`replay_dead_letters`) re-publishes them in sequence
order, a ticket's held events only after its first; once a ticket has no dead letter left, its
new events flow again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prometheus_client import Counter, Gauge

from gateway.errors import IntakeError, PermanentError, TransientError
from gateway.plugin import OutboundEvent, Publisher
from gateway.store.protocols import DeadLetters, EventLog, RelayTx

T = TypeVar("T")

log = logging.getLogger("intake.relay")

RELAY_LAG = Gauge("intake_relay_lag_events", "Events committed but not yet confirmed by the broker")
RELAY_PUBLISHED = Counter("intake_relay_published_total", "Events confirmed by the broker")
RELAY_FAILURES = Counter("intake_relay_failures_total", "Failed publish attempts", ["kind"])
RELAY_DEAD = Counter("intake_relay_dead_lettered_total",
                     "Events moved to the dead-letter table (held ones included)")

HELD_PREFIX = "held behind seq "
"""``last_error`` of an event held behind its ticket's dead letter: ``held behind seq N``."""
TOO_LARGE = "too large for the broker"
MAX_RETRY_AFTER = 300.0
"""Longest ``Retry-After`` honoured, in seconds: a receiver asking for a day is asked again."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with equal jitter: ``attempt`` n waits in [d/2, d], with
    ``d = min(cap, base * 2**(n-1))``.

    The lower half bounds how often one event is tried (a refusing receiver sees a handful of
    requests, never a storm); the random half spreads a fleet of gateways hitting one
    recovering broker.
    """

    base: float = 0.1
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` >= 1 failures so far)."""
        ceiling = min(self.cap, self.base * 2 ** min(max(attempt, 1) - 1, 30))
        return random.uniform(ceiling / 2, ceiling)


class RelayStore(EventLog, Protocol):
    """What the relay needs of a store: the event log and its transaction (:class:`RelayTx`)."""

    async def run(self, fn: Callable[[RelayTx], T]) -> T: ...


def too_large(event: OutboundEvent, max_event_bytes: int) -> str | None:
    """The dead-letter reason when ``event`` exceeds the cap (0: no cap), else None."""
    if max_event_bytes and len(event.body) > max_event_bytes:
        return (f"{TOO_LARGE}: {len(event.body)} bytes, over queue.max_event_bytes "
                f"({max_event_bytes})")
    return None


STUCK_AFTER = 60.0
"""Seconds without the loop going round, with events waiting, before readiness fails."""


class EventRelay:
    """Drains the outbox into one publisher; see the module docstring."""

    def __init__(self, store: RelayStore, publisher: Publisher, *, name: str, batch_size: int,
                 max_attempts: int, max_backoff: float = 5.0,
                 max_event_bytes: int = 0) -> None:
        self.store = store
        self.publisher = publisher
        self.name = name
        self.batch_size = batch_size
        self.max_attempts = max(1, max_attempts)
        self.backoff = Backoff(cap=max_backoff)
        self.max_event_bytes = max_event_bytes
        self.position = 0
        self.failures = 0
        """Publishes failed in a row because the broker was away (0 once it confirms again)."""
        self.refusals: dict[int, int] = {}
        """Permanent refusals so far, per event seq: each event's own count, not the loop's."""
        self.held: dict[str, int] = {}
        """Tickets held behind a dead letter: subject -> seq of its first dead letter."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.alive_at = time.monotonic()
        """When the loop last went round (read, published, or backed off)."""

    def stuck(self, *, after: float = STUCK_AFTER) -> str | None:
        """Why the relay is not moving events that wait for it, or None (readiness)."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            return f"the relay stopped: {type(exc).__name__ if exc else 'ended'}"
        idle = time.monotonic() - self.alive_at
        if self.store.last_seq > self.position and idle > after:
            # A broker that is down keeps the loop going round (backoff); a publish call that
            # never returns, or a loop that died, does not.
            return f"no progress for {idle:.0f} s with {self.store.last_seq - self.position} " \
                   "events waiting"
        return None

    async def start(self, *, connected: bool) -> None:
        """Load the position and held tickets, start draining (connecting first unless
        ``connected``)."""
        self._connected = connected
        name = self.name

        def load(tx: RelayTx) -> tuple[int, dict[str, int]]:
            return tx.relay_position(name), tx.held_tickets(name)
        self.position, self.held = await self.store.run(load)
        self.store.on_commit(lambda _seq: self._wake.set())
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.name}")

    async def stop(self) -> None:
        """Stop after the batch in flight (its position is saved only if it was confirmed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _connect(self) -> None:
        attempt = 0
        while True:
            try:
                await self.publisher.start()
                return
            except TransientError as exc:
                self.alive_at = time.monotonic()
                attempt += 1
                RELAY_FAILURES.labels("connect").inc()
                delay = self.backoff.delay(attempt)
                log.warning("relay %s: cannot connect (%s); retrying in %.1fs", self.name,
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        if not self._connected:
            await self._connect()
        while True:
            try:
                await self._drain()
            except TransientError as exc:
                # The store, not the broker, was away (PostgreSQL restarting): the position
                # moves only after a save, so starting again re-reads what was not confirmed.
                self.alive_at = time.monotonic()
                RELAY_FAILURES.labels("store").inc()
                log.warning("relay %s: the store is unavailable (%s); retrying", self.name,
                            type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _drain(self) -> None:
        while True:
            self.alive_at = time.monotonic()
            batch = await self.store.outbound_after(self.position, self.batch_size)
            RELAY_LAG.set(max(0, self.store.last_seq - self.position))
            if not batch:
                self._wake.clear()
                # Re-check after clearing: a commit between the read and the clear must not sleep.
                if self.store.last_seq > self.position:
                    continue
                await self._wake.wait()
                self.alive_at = time.monotonic()
                continue
            sendable = await self._screen(batch)
            if not sendable:
                await self._advance(batch[-1].seq, 0)
                continue
            head, end = sendable[0], batch[-1].seq
            if head.seq in self.refusals:
                # A known refusal goes alone, after its own backoff, so that it cannot take the
                # events behind it down with it and its count stays its own.
                await asyncio.sleep(self.backoff.delay(self.refusals[head.seq]))
                sendable, end = [head], head.seq
            try:
                await self.publisher.publish(sendable)
            except TransientError as exc:
                self.alive_at = time.monotonic()
                RELAY_FAILURES.labels("transient").inc()
                self.failures += 1
                retry_after = getattr(exc, "retry_after", None)
                delay = (min(float(retry_after), MAX_RETRY_AFTER) if retry_after
                         else self.backoff.delay(self.failures))
                log.warning("relay %s: broker unavailable (%s); retrying in %.1fs", self.name,
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            except PermanentError as exc:
                RELAY_FAILURES.labels("permanent").inc()
                if len(sendable) > 1:
                    await self._publish_one_by_one(sendable)
                else:
                    await self._refused(head, exc)
                continue
            self.failures = 0
            self.refusals.pop(head.seq, None)
            # The batch's held and dead events were recorded by _screen: move past them too.
            await self._advance(end, len(sendable))

    async def _screen(self, batch: list[OutboundEvent]) -> list[OutboundEvent]:
        """The events of ``batch`` to publish; the rest is recorded as dead or held, in order.

        A ticket is held while the dead-letter table has an event of it; the table is checked
        (in the writer's transaction) for every ticket we believe held, because a replay run
        meanwhile may have emptied it.
        """
        suspect = sorted({e.subject for e in batch if e.subject in self.held})
        if not suspect and not any(too_large(e, self.max_event_bytes) for e in batch):
            return batch
        name, cap = self.name, self.max_event_bytes

        def record(tx: RelayTx) -> tuple[dict[str, int], list[OutboundEvent], list[int], int]:
            held = tx.held_tickets(name, suspect)
            sendable: list[OutboundEvent] = []
            dead: list[int] = []
            new_rows = 0
            for event in batch:
                if event.subject in held:
                    new_rows += int(tx.add_dead_letter(event.seq, name, 0,
                                                       f"{HELD_PREFIX}{held[event.subject]}"))
                elif reason := too_large(event, cap):
                    if tx.add_dead_letter(event.seq, name, 0, reason):
                        dead.append(event.seq)
                    held[event.subject] = event.seq
                else:
                    sendable.append(event)
            return held, sendable, dead, new_rows
        held, sendable, dead, new_held = await self.store.run(record)
        for subject in suspect:
            if subject not in held:
                log.info("relay %s: ticket %s has no dead letter left; its events flow again",
                         self.name, subject)
        for subject in suspect:
            self.held.pop(subject, None)
        self.held.update(held)
        for seq in dead:
            log.error("relay %s: event seq %d dead-lettered, never sent: %s (its ticket's later"
                      " events are held behind it)", self.name, seq, TOO_LARGE)
        RELAY_DEAD.inc(len(dead) + new_held)
        return sendable

    async def _publish_one_by_one(self, events: list[OutboundEvent]) -> None:
        """Find the refused event of a batch: publish in order until one fails."""
        for event in events:
            try:
                await self.publisher.publish([event])
            except TransientError:
                return  # the main loop retries from here and backs off
            except PermanentError as exc:
                await self._refused(event, exc)
                return
            self.refusals.pop(event.seq, None)
            await self._advance(event.seq, 1)

    async def _refused(self, event: OutboundEvent, exc: PermanentError) -> None:
        """Count one refusal against ``event``; dead-letter it once it has had its attempts."""
        count = self.refusals.get(event.seq, 0) + 1
        if count < self.max_attempts:
            self.refusals[event.seq] = count
            log.warning("relay %s: event seq %d refused (%d of %d): %s", self.name, event.seq,
                        count, self.max_attempts, exc)
            return
        self.refusals.pop(event.seq, None)
        await self._dead_letter(event, count, str(exc))

    async def _advance(self, seq: int, count: int) -> None:
        name = self.name
        await self.store.run(lambda tx: tx.save_relay_position(name, seq))
        self.position = seq
        RELAY_PUBLISHED.inc(count)

    async def _dead_letter(self, event: OutboundEvent, attempts: int, error: str) -> None:
        name = self.name

        def save(tx: RelayTx) -> None:
            tx.add_dead_letter(event.seq, name, attempts, error)
            tx.save_relay_position(name, event.seq)
        await self.store.run(save)
        self.position = event.seq
        self.held.setdefault(event.subject, event.seq)
        RELAY_DEAD.inc()
        log.error("relay %s: event seq %d dead-lettered after %d attempts; later events of "
                  "ticket %s are held behind it", name, event.seq, attempts, event.subject)


async def replay_dead_letters(store: DeadLetters, publisher: Publisher, backend: str, *,
                              max_event_bytes: int = 0,
                              report: Callable[[str], None] = print) -> tuple[int, int]:
    """Re-publish ``backend``'s dead letters in sequence order; (re-published, left).

    A ticket's held events go only after its first dead letter went, so a ticket whose first
    is still refused (or still too large) keeps the rest held, in order, for the next replay.
    Each event is removed from the table once the broker confirmed it. Events held by a running
    relay while this ran are picked up by a further pass.
    """
    done = 0
    seen: set[int] = set()
    while True:
        letters = [(e, a, r) for e, a, r in await store.dead_letters(backend)
                   if e.seq not in seen]
        if not letters:
            break
        blocked: set[str] = set()
        for event, _attempts, _error in letters:
            seen.add(event.seq)
            if event.subject in blocked:
                continue
            reason = too_large(event, max_event_bytes)
            try:
                if reason:
                    raise PermanentError(reason)
                await publisher.publish([event])
            except IntakeError as exc:
                report(f"seq {event.seq}: still refused: {exc}")
                blocked.add(event.subject)
                continue
            await store.remove_dead_letter(backend, event.seq)
            done += 1
    left = len(await store.dead_letters(backend))
    return done, left

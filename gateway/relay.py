"""The event relay: carries the outbox to the configured publisher, at least once, in order.

The relay reads events after its stored position in sequence order and hands them to the
publisher in batches; the publisher returns only once the broker confirmed the whole batch, and
only then does the relay move its position (in the store, durably). A crash in between re-sends
the batch; the event ids make the re-send harmless. Publishing a batch in sequence order keeps
order per ticket, while one batch carries many tickets at once.

Failures: a :class:`TransientError` (broker down, timeout) is retried with capped exponential
backoff for as long as it lasts, so an hour's outage only delays delivery. A
:class:`PermanentError` (the broker refuses the event itself) counts an attempt against the batch's
first event; after ``max_attempts`` that event goes to the dead-letter table and the relay moves
on. ``intake-gateway replay`` re-publishes dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time

from prometheus_client import Counter, Gauge

from gateway.contracts import OutboundEvent, Publisher
from gateway.errors import PermanentError, TransientError
from gateway.store.sqlite import SqliteStore, SqliteTx

log = logging.getLogger("intake.relay")

RELAY_LAG = Gauge("intake_relay_lag_events", "Events committed but not yet confirmed by the broker")
RELAY_PUBLISHED = Counter("intake_relay_published_total", "Events confirmed by the broker")
RELAY_FAILURES = Counter("intake_relay_failures_total", "Failed publish attempts", ["kind"])
RELAY_DEAD = Counter("intake_relay_dead_lettered_total", "Events moved to the dead-letter table")



def read_outbound(conn: sqlite3.Connection, after: int, limit: int) -> list[OutboundEvent]:
    """Outbox events with ``seq > after`` as publishers receive them, oldest first."""
    return [OutboundEvent(seq=s, id=i, type=t, subject=subj, priority=p, body=bytes(b))
            for s, i, t, subj, p, b in conn.execute(
                "SELECT seq, id, type, subject, priority, body FROM events WHERE seq > ?"
                " ORDER BY seq LIMIT ?", (after, limit))]


def read_dead_letters(conn: sqlite3.Connection,
                      publisher: str) -> list[tuple[OutboundEvent, int, str]]:
    """Dead letters of ``publisher`` with their event, attempts and last error, oldest first."""
    rows = conn.execute(
        "SELECT e.seq, e.id, e.type, e.subject, e.priority, e.body, d.attempts, d.last_error"
        " FROM dead_letters d JOIN events e ON e.seq = d.seq WHERE d.publisher = ?"
        " ORDER BY d.seq", (publisher,)).fetchall()
    return [(OutboundEvent(seq=r[0], id=r[1], type=r[2], subject=r[3], priority=r[4],
                           body=bytes(r[5])), int(r[6]), str(r[7])) for r in rows]


class EventRelay:
    """Drains the outbox into one publisher; see the module docstring."""

    def __init__(self, store: SqliteStore, publisher: Publisher, *, name: str, batch_size: int,
                 max_attempts: int, max_backoff: float = 30.0) -> None:
        self.store = store
        self.publisher = publisher
        self.name = name
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self.position = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, connected: bool) -> None:
        """Load the position and start draining (connecting first unless ``connected``)."""
        self._connected = connected
        def load(tx: SqliteTx) -> int:
            row = tx.conn.execute("SELECT position FROM relay_positions WHERE name = ?",
                                  (self.name,)).fetchone()
            return int(row[0]) if row else 0
        self.position = await self.store.run(load)
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
                attempt += 1
                RELAY_FAILURES.labels("connect").inc()
                delay = self._backoff(attempt)
                log.warning("relay %s: cannot connect (%s); retrying in %.1fs", self.name,
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        if not self._connected:
            await self._connect()
        failures = 0
        head_attempts = 0
        while True:
            batch = await self.store.read(
                lambda c: read_outbound(c, self.position, self.batch_size))
            RELAY_LAG.set(max(0, self.store.last_seq - self.position))
            if not batch:
                self._wake.clear()
                # Re-check after clearing: a commit between the read and the clear must not sleep.
                if self.store.last_seq > self.position:
                    continue
                await self._wake.wait()
                continue
            try:
                await self.publisher.publish(batch)
            except TransientError as exc:
                RELAY_FAILURES.labels("transient").inc()
                failures += 1
                delay = getattr(exc, "retry_after", None) or self._backoff(failures)
                log.warning("relay %s: broker unavailable (%s); retrying in %.1fs", self.name,
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            except PermanentError as exc:
                RELAY_FAILURES.labels("permanent").inc()
                head_attempts += 1
                if head_attempts >= self.max_attempts:
                    await self._dead_letter(batch[0], head_attempts, str(exc))
                    head_attempts = 0
                    continue
                if len(batch) > 1:
                    # Find the refused event: publish the head alone before the rest.
                    await self._publish_one_by_one(batch)
                else:
                    await asyncio.sleep(self._backoff(head_attempts))
                continue
            failures = head_attempts = 0
            await self._advance(batch[-1].seq, len(batch))

    async def _publish_one_by_one(self, batch: list[OutboundEvent]) -> None:
        for event in batch:
            try:
                await self.publisher.publish([event])
            except (TransientError, PermanentError):
                return  # the main loop retries from here and counts the attempts
            await self._advance(event.seq, 1)

    async def _advance(self, seq: int, count: int) -> None:
        name = self.name

        def save(tx: SqliteTx) -> None:
            tx.conn.execute("INSERT INTO relay_positions(name, position) VALUES (?, ?)"
                            " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                            (name, seq))
        await self.store.run(save)
        self.position = seq
        RELAY_PUBLISHED.inc(count)

    async def _dead_letter(self, event: OutboundEvent, attempts: int, error: str) -> None:
        name = self.name

        def save(tx: SqliteTx) -> None:
            tx.conn.execute(
                "INSERT OR REPLACE INTO dead_letters(seq, publisher, attempts, last_error,"
                " failed_at) VALUES (?, ?, ?, ?, ?)",
                (event.seq, name, attempts, error[:500], time.time_ns() // 1000))
            tx.conn.execute("INSERT INTO relay_positions(name, position) VALUES (?, ?)"
                            " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                            (name, event.seq))
        await self.store.run(save)
        self.position = event.seq
        RELAY_DEAD.inc()
        log.error("relay %s: event seq %d dead-lettered after %d attempts", name, event.seq,
                  attempts)

    def _backoff(self, n: int) -> float:
        # Full jitter: spreads the retries of many gateways hitting one recovering broker.
        return random.uniform(0, min(self.max_backoff, 0.1 * 2 ** min(n, 16)))

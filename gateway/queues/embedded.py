"""The embedded queue: the store's event outbox *is* the durable log consumers read.

Events are appended to the outbox in the same transaction as the ticket, so with the embedded
backend there is nothing to carry anywhere: ``publish`` confirms at once, and consumers read the
log with ``intake-gateway tail`` or ``GET /v1/events`` (long-poll), resuming from a sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

import msgspec

from gateway.plugin import OutboundEvent, PublisherBase


class EmbeddedConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The embedded queue has no options; the table exists so unknown keys are refused."""


class EmbeddedPublisher(PublisherBase):
    """Publisher for ``[queue] backend = "embedded"`` (the default)."""

    kind: ClassVar[str] = "embedded"
    Config: ClassVar[type[msgspec.Struct]] = EmbeddedConfig
    relay_needed: ClassVar[bool] = False
    """The outbox is the log, so the relay does not run for this backend."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config

    async def start(self) -> None:
        """Nothing to connect to."""

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Already durable in the outbox log, which is what consumers read."""

    async def close(self) -> None:
        """Nothing to disconnect."""


class EventWaiters:
    """Wakes long-polling readers when a commit appends events."""

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self._changed = asyncio.Event()

    def committed(self, seq: int) -> None:
        """Called on the event loop after a commit that appended events up to ``seq``."""
        if seq > self.last_seq:
            self.last_seq = seq
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_beyond(self, after: int, timeout: float) -> bool:
        """Wait until an event with ``seq > after`` is committed; False on timeout."""
        if self.last_seq > after:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return self.last_seq > after
        return self.last_seq > after


def frame_events(rows: list[tuple[int, bytes]], after: int) -> bytes:
    """``{"next": N, "events": [{"seq": n, "event": {...}}, ...]}`` without re-encoding events."""
    nxt = rows[-1][0] if rows else after
    items = b",".join(b'{"seq":%d,"event":%b}' % (seq, body) for seq, body in rows)
    return b'{"next":%d,"events":[%b]}' % (nxt, items)

"""Singletons across replicas: work that one replica at a time does, taken over when it dies.

A lease is a row (``leases``: name, holder, expiry) in the shared store. The holder renews it
every third of its time to live; another replica takes it only once it has expired. A holder
that cannot renew (the database is away, or another replica holds the row) cancels its work
*before* the lease can run out, so two replicas never work the same mailbox knowingly; the
work itself is idempotent (it commits before it confirms), so a holder frozen past its expiry
costs a repeat the store absorbs, never a loss.

:class:`LeasedExclusive` implements :class:`gateway.plugin.Exclusive` for adapters (IMAP
mailboxes, Telegram long polling); :func:`hold_while_leader` runs the core's own singletons
(the event relay) the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import TransientError

log = logging.getLogger("intake.leases")

__all__ = ["LeaseStore", "LeasedExclusive", "hold_while_leader"]


class LeaseStore(Protocol):
    """What leases need of a store (:class:`gateway.store.postgres.PostgresStore`)."""

    owner: str

    async def take_lease(self, name: str, ttl: float) -> bool:
        """Hold (or renew) ``name`` for ``ttl`` seconds; False while another holder's runs."""
        ...

    async def release_lease(self, name: str) -> None: ...


class LeasedExclusive:
    """:class:`gateway.plugin.Exclusive` on store leases; ``ttl`` bounds the takeover time."""

    def __init__(self, store: LeaseStore, *, ttl: float = 10.0) -> None:
        self.store = store
        self.ttl = ttl
        self.held: set[str] = set()
        """Names this replica holds right now (metrics, tests)."""

    async def _take(self, name: str) -> bool | None:
        """True: held (taken or renewed); False: another replica holds it; None: unknown (the
        database did not answer in time)."""
        try:
            return await asyncio.wait_for(self.store.take_lease(name, self.ttl), self.ttl / 3)
        except (TransientError, TimeoutError):
            return None

    async def run(self, name: str, work: Callable[[], Awaitable[None]], *,
                  stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            asked = time.monotonic()
            if await self._take(name) is not True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.ttl / 3)
                continue
            log.info("lease %s taken by %s", name, self.store.owner)
            self.held.add(name)
            task = asyncio.ensure_future(work())
            try:
                finished = await self._renew_until_done(name, task, asked)
            except asyncio.CancelledError:
                # Shutting down: hand the lease over now rather than after its expiry.
                with contextlib.suppress(TransientError, TimeoutError):
                    await asyncio.wait_for(self.store.release_lease(name), self.ttl / 3)
                raise
            finally:
                self.held.discard(name)
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if finished:
                with contextlib.suppress(TransientError):
                    await self.store.release_lease(name)
                task.result()  # the work's own failure is the caller's to see
                return
            log.warning("lease %s lost by %s; waiting to take it again", name, self.store.owner)

    async def _renew_until_done(self, name: str, task: asyncio.Future[None],
                                renewed: float) -> bool:
        """True when ``task`` ended; False when the lease could not be renewed in time.
        ``renewed``: when the last successful take was asked for (its lease runs from then at
        the latest)."""
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.ttl / 3)
            if done:
                return True
            asked = time.monotonic()
            held = await self._take(name)
            if held is True:
                renewed = asked
            elif held is False or time.monotonic() - renewed > self.ttl * 2 / 3:
                # Another replica has it, or we could not renew for long: stop well before
                # the lease expires and another replica may take it.
                return False


async def hold_while_leader(exclusive: LeasedExclusive, name: str, *,
                            start: Callable[[], Awaitable[None]],
                            stop: Callable[[], Awaitable[None]]) -> None:
    """Keep a core singleton (started by ``start``, stopped by ``stop``) running on whichever
    replica holds ``name``, until cancelled."""
    async def work() -> None:
        await start()
        try:
            await asyncio.Event().wait()  # until the lease is lost or we are cancelled
        finally:
            await stop()
    await exclusive.run(name, work)

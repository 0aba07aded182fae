"""Replies and acknowledgements on PostgreSQL with two replicas (two stores on one database).

The store contract suite holds each store to the protocols alone; these hold replicas to what
they promise together: a queued reply is taken by one replica's dispatcher at a time (a lease
with ``FOR UPDATE SKIP LOCKED``), a replica that stops hands its leased rows back at once, and
an acknowledgement queued on one replica wakes the other's dispatcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.store.postgres import PostgresStore
from gateway.store.protocols import NewEvent
from gateway.testing.postgres import postgres_database, postgres_dsn
from gateway.testing.store_contract import _new_reply, _ticket_with_acks

__all__ = ["postgres_database", "postgres_dsn"]

Open = Callable[[], Awaitable[PostgresStore]]


@pytest.fixture
async def replica(postgres_dsn: str) -> AsyncIterator[Open]:
    opened: list[PostgresStore] = []

    async def open_one() -> PostgresStore:
        store = PostgresStore(postgres_dsn, auto_migrate=True, ack_lease=60.0)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def test_a_queued_reply_is_leased_to_one_replica_until_it_stops(replica: Open) -> None:
    a, b = await replica(), await replica()
    ticket = await _ticket_with_acks(a, "T-L", ["l@example.org"])
    await a.run(lambda tx: tx.insert_reply(_new_reply(ticket.id, "r-l", "k"), NewEvent(
        id="ev-l", type="reply.queued", subject="T-L", body=b"{}")))
    now = time.time()
    taken = await asyncio.gather(a.due_replies(10, now), b.due_replies(10, now))
    assert sorted(len(rows) for rows in taken) == [0, 1], "one replica takes the reply"
    holder, other = (a, b) if taken[0] else (b, a)
    assert await other.due_replies(10, now) == [], "leased: the other replica leaves it"
    assert [r.uid for r in await holder.due_replies(10, now)] == ["r-l"], "its holder again"
    lease_end = await other.next_reply_attempt()
    assert lease_end is not None and lease_end > now + 30, "the other waits for the lease"
    assert [r.uid for r in await other.due_replies(10, now + 61)] == ["r-l"], \
        "a lease run out (its holder died mid-send) goes to the next replica"
    await other.run(lambda tx: tx.retry_reply("r-l", 1, now, "451"))
    await holder.due_replies(10, now)
    await holder.close()
    assert [r.uid for r in await other.due_replies(10, now)] == ["r-l"], \
        "a replica that stops hands its leased replies back at once"
    await other.run(lambda tx: tx.finish_reply("r-l", "sent", provider_id="<p@gw>"))
    assert await other.due_replies(10, now + 120) == []
    assert await other.next_reply_attempt() is None


async def test_an_ack_queued_on_one_replica_wakes_the_others_dispatcher(replica: Open) -> None:
    a, b = await replica(), await replica()
    woken_a: list[None] = []
    woken_b: list[None] = []
    seen_b: list[int] = []
    b.on_commit(seen_b.append)
    deadline = asyncio.get_running_loop().time() + 10
    await a.run(lambda tx: tx.append_event(event_id="ev-0", type_="t", subject="T-W",
                                           priority=None, body=b"{}"))
    while not seen_b:  # b is listening now (a NOTIFY before its LISTEN reaches nobody)
        assert asyncio.get_running_loop().time() < deadline, "b never listened"
        await asyncio.sleep(0.02)
    a.on_ack_queued(lambda: woken_a.append(None))
    b.on_ack_queued(lambda: woken_b.append(None))
    await _ticket_with_acks(a, "T-W", ["w@example.org"])
    while not woken_b:
        assert asyncio.get_running_loop().time() < deadline, "no NOTIFY reached replica b"
        await asyncio.sleep(0.02)
    seen_a: list[int] = []
    a.on_commit(seen_a.append)
    seq = await b.run(lambda tx: tx.append_event(event_id="ev-x", type_="t", subject="T-W",
                                                 priority=None, body=b"{}"))
    # b's NOTIFY reaches a's listener after a's own earlier ones (commit order), and its
    # callbacks run in the order they were queued: a has seen all its own NOTIFYs now.
    while seq not in seen_a:
        assert asyncio.get_running_loop().time() < deadline, "b's commit never reached a"
        await asyncio.sleep(0.02)
    assert woken_a == [None], "its own commit woke a once (not again by its own NOTIFY)"

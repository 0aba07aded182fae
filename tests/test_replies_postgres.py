"""Replies and acknowledgements on PostgreSQL with two replicas (two stores on one database).

The store contract suite holds each store to the protocols alone; these hold replicas to what
they promise together: a queued reply is taken by one replica's dispatcher at a time (a lease
with ``FOR UPDATE SKIP LOCKED``), a replica that stops hands its leased rows back at once, and
an acknowledgement queued on one replica wakes the other's dispatcher.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.store.postgres import PostgresStore, migrate
from gateway.store.protocols import NewEvent
from gateway.testing.postgres import postgres_database, postgres_dsn
from gateway.testing.smtp_capture import SmtpCapture
from gateway.testing.store_contract import _new_reply, _ticket_with_acks
from tests.conftest import MakeGateway
from tests.test_replies import (
    capture,
    customer,
    events,
    mail_config,
    mail_in,
    post_reply,
    replies_settled,
    wait_event,
)

__all__ = ["capture", "postgres_database", "postgres_dsn"]

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


# -- the whole way, on two replicas ----------------------------------------------------------


@pytest.fixture
def replica_toml(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    migrate(postgres_dsn)
    monkeypatch.setenv("INTAKE_TEST_REPLIES_PG_DSN", postgres_dsn)
    return '[store]\nbackend = "postgres"\ndsn_env = "INTAKE_TEST_REPLIES_PG_DSN"\n'


async def test_a_reply_posted_to_two_replicas_goes_out_once_and_its_answer_follows_up(
        make_gateway: MakeGateway, capture: SmtpCapture, replica_toml: str) -> None:
    a = await make_gateway(replica_toml + mail_config(capture))
    b = await make_gateway(replica_toml + mail_config(capture))
    who = customer()
    number = await mail_in(a, sender=who, subject="Router", text="My router is broken.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)  # the acknowledgement
    capture.clear()
    reply = {"text": "A new router is on its way."}
    # The caller's retry lands on the other replica: the same key is the same reply.
    first, second = await asyncio.gather(post_reply(b, number, reply, key="rma-1"),
                                         post_reply(a, number, reply, key="rma-1"))
    assert first[0] == second[0] == 202, (first, second)
    assert first[1]["reply_id"] == second[1]["reply_id"]
    sent = await wait_event(a, "reply.sent", reply_id=first[1]["reply_id"])
    await replies_settled(a)
    await replies_settled(b)
    assert len(capture.to(who)) == 1, "one mail, though two replicas dispatch replies"
    kinds = [e["type"] for e in await events(b)]
    assert kinds.count("reply.queued") == 1 and kinds.count("reply.sent") == 1
    # The customer answers the reply (quoting its Message-ID) through the other replica.
    mail_id = sent["data"]["provider_message_id"]
    answer = await mail_in(b, sender=who, subject="Re: Router", text="Thanks, it arrived.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn",
                           headers={"In-Reply-To": mail_id})
    assert answer == number, "the answer to the reply joins the ticket"


async def test_replies_go_out_again_after_postgresql_was_away(
        make_gateway: MakeGateway, capture: SmtpCapture,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.testing.private_postgres import PrivatePostgres

    with PrivatePostgres() as pg:
        migrate(pg.dsn)
        monkeypatch.setenv("INTAKE_TEST_REPLIES_PRIVATE_DSN", pg.dsn)
        gw = await make_gateway('[store]\nbackend = "postgres"\n'
                                'dsn_env = "INTAKE_TEST_REPLIES_PRIVATE_DSN"\n'
                                + mail_config(capture))
        who = customer()
        number = await mail_in(gw, sender=who, subject="Away", text="Is anyone there?",
                               message_id=f"{uuid.uuid4().hex}@customers.example.cn")
        await capture.wait_for(lambda m: who in m.rcpt_tos)
        capture.clear()
        await asyncio.to_thread(pg.stop, "fast")
        task = gw.replies.dispatcher._task
        assert task is not None
        try:
            gw.replies.dispatcher.wake()  # it looks while the database is down
            deadline = asyncio.get_running_loop().time() + 10
            while not task.done() and not any(
                    "replies: the store is unavailable" in r.getMessage()
                    for r in caplog.records):
                assert asyncio.get_running_loop().time() < deadline, "it never looked"
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(pg.start)
        status = 0
        for _ in range(20):  # the writer reconnects on its next batch at the latest
            status, _body = await post_reply(gw, number, {"text": "Yes, we are."}, key="back")
            if status == 202:
                break
            await asyncio.sleep(0.1)
        assert status == 202
        await capture.wait_for(lambda m: who in m.rcpt_tos)
        assert not task.done(), "the dispatcher outlived the outage"

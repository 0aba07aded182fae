"""The store contract suite: what every store (SQLite, and PostgreSQL for replicas) must do.

Written once against the store's protocols and parametrized over store factories, so a second
store runs it unchanged: add an entry to ``STORES`` (the fixture that places one test's data,
and a factory that opens stores there), or override the ``store_factory`` fixture, and import
the tests. SQLite runs on a temporary directory, PostgreSQL on a schema of the test's own in a
database of the session's own (gateway/testing/postgres.py)::

    from gateway.testing.store_contract import *  # noqa: F403

Each test opens a store, uses it through its public methods, and for durability closes it and
opens a new one on the same data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.decision import OutboxAck, SubmissionPlan, TicketRow
from gateway.store.postgres import PostgresStore
from gateway.store.protocols import NewEvent, NewReply, StoreTx
from gateway.store.sqlite import SqliteStore
from gateway.testing.postgres import postgres_database, postgres_dsn
from gateway.triage import TriageResult
from intake_schemas import Contact, InboundMessage

__all__ = [
    "STORES",
    "postgres_database",
    "postgres_dsn",
    "store_factory",
    "test_a_failed_transaction_settles_no_ack_and_appends_no_event",
    "test_a_probe_write_commits",
    "test_a_write_while_the_store_closes_fails_and_never_hangs",
    "test_ack_outbox_due_retry_and_finish",
    "test_adapter_state_is_durable_and_scoped_per_adapter",
    "test_adapter_state_lists_by_prefix",
    "test_dead_letters_hold_their_ticket_until_removed",
    "test_event_log_is_in_commit_order_and_wakes_listeners",
    "test_event_reader_keeps_named_consumer_positions",
    "test_only_a_commit_that_queues_an_ack_wakes_the_ack_listeners",
    "test_relay_positions_are_durable_per_relay",
    "test_replay_guard_refuses_a_key_until_it_expires",
    "test_replay_guard_survives_a_restart",
    "test_reply_outbox_records_once_per_key_and_settles",
    "test_reply_target_names_the_contact_and_its_latest_messages",
    "test_sending_without_a_ticket_writes_no_ack_reference",
]

StoreFactory = Callable[[], Awaitable[Any]]
"""Opens a store on this test's data (the same data each call): reopening it is a restart."""


def _sqlite(tmp: Path) -> StoreFactory:
    async def open_store() -> SqliteStore:
        store = SqliteStore(tmp / "intake.sqlite3")
        await store.open()
        return store
    return open_store


def _postgres(dsn: str) -> StoreFactory:
    async def open_store() -> PostgresStore:
        store = PostgresStore(dsn, auto_migrate=True)
        await store.open()
        return store
    return open_store


STORES: dict[str, tuple[str, Callable[[Any], StoreFactory]]] = {
    "sqlite": ("tmp_path", _sqlite),
    "postgres": ("postgres_dsn", _postgres),
}
"""Store kinds the suite runs on, by name: the fixture that places one test's data (a
temporary directory, a DSN on a schema of the test's own) and the factory that opens stores
there."""


@pytest.fixture(params=sorted(STORES))
async def store_factory(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Opens stores of one kind on one test's data; closes every one it opened."""
    opened: list[Any] = []
    place_fixture, factory = STORES[request.param]
    place = request.getfixturevalue(place_fixture)

    async def open_store() -> Any:
        store = await factory(place)()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def test_adapter_state_is_durable_and_scoped_per_adapter(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    twilio, imap = store.adapter_state("twilio"), store.adapter_state("imap")
    await twilio.put("optout:sms:+8613800000000", b"1")
    await imap.put("optout:sms:+8613800000000", b"other adapter")
    await twilio.put("gone", b"x")
    await twilio.delete("gone")
    await twilio.delete("never-there")
    await store.close()
    again = (await store_factory()).adapter_state("twilio")
    assert await again.get("optout:sms:+8613800000000") == b"1"
    assert await again.get("gone") is None
    assert await (await store_factory()).adapter_state("imap").get(
        "optout:sms:+8613800000000") == b"other adapter"
    with pytest.raises(ValueError):
        await again.put("", b"keys are not empty")


async def test_adapter_state_lists_by_prefix(store_factory: StoreFactory) -> None:
    state = (await store_factory()).adapter_state("imap")
    for key in ("box:b", "box:a", "boxer", "other"):
        await state.put(key, key.encode())
    await state.put("box:a", b"replaced")
    assert await state.items("box:") == [("box:a", b"replaced"), ("box:b", b"box:b")]
    assert [k for k, _ in await state.items()] == ["box:a", "box:b", "boxer", "other"]


async def test_replay_guard_refuses_a_key_until_it_expires(store_factory: StoreFactory) -> None:
    store = await store_factory()
    assert await store.first_use("api:signature", "sig-1", ttl=300)
    assert not await store.first_use("api:signature", "sig-1", ttl=300)
    assert await store.first_use("wechat:nonce", "sig-1", ttl=300), "scopes are separate"
    assert await store.first_use("api:signature", "short", ttl=0.05)
    deadline = asyncio.get_running_loop().time() + 5
    while not await store.first_use("api:signature", "short", ttl=0.05):
        assert asyncio.get_running_loop().time() < deadline, "an expired key is usable again"
        await asyncio.sleep(0.02)


async def test_replay_guard_survives_a_restart(store_factory: StoreFactory) -> None:
    store = await store_factory()
    assert await store.first_use("api:signature", "captured", ttl=300)
    await store.close()
    assert not await (await store_factory()).first_use("api:signature", "captured", ttl=300)


async def test_a_probe_write_commits(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.probe_write()
    await store.probe_write()


# -- helpers: everything through the store's protocols (gateway/store/protocols.py) ----------


def _plan(number: str, email: str) -> SubmissionPlan:
    now = datetime.now(UTC)
    message = InboundMessage(channel="email", received_at=now, contact=Contact(email=email),
                             subject=f"about {number}", text="hello")
    return SubmissionPlan(
        message=message, message_uid=f"uid-{number}", delivery_key=None,
        identities=[("email", email)], fingerprint=f"fp-{number}",
        triage=TriageResult(kind="consultation", area="other", priority="low", escalated=False,
                            matched=()),
        due_at=now + timedelta(days=1), number_day=date.today(), numbers_named=[],
        duplicate_since=now, chat_since=None, outbox_acks=[], ack_on=(), inline_ack=False,
        event_source="urn:test")


async def _ticket_with_acks(store: Any, number: str, recipients: list[str]) -> TicketRow:
    """A ticket of a new contact with one pending acknowledgement per recipient, in order."""
    plan = _plan(number, recipients[0])

    def write(tx: StoreTx) -> TicketRow:
        contact_id, _view = tx.resolve_contact(plan.identities, None, None)
        ticket = tx.insert_ticket(number=number, contact_id=contact_id, plan=plan)
        for to in recipients:
            tx.insert_ack(ticket_id=ticket.id, message_uid=plan.message_uid,
                          ack=OutboxAck(channel="email", to=to, reply_to="<m@customer>"),
                          payload=b'{"facts":"' + to.encode() + b'"}')
        return ticket
    return await store.run(write)


def _event(n: int, subject: str, *, escalated: bool = False) -> NewEvent:
    return NewEvent(id=f"ev-{n}", type="ticket.updated", subject=subject,
                    body=b'{"n":%d}' % n, priority="low", escalated=escalated)


async def _append(store: Any, *events: NewEvent) -> list[int]:
    def write(tx: StoreTx) -> list[int]:
        return [tx.append_event(event_id=e.id, type_=e.type, subject=e.subject,
                                priority=e.priority, body=e.body, escalated=e.escalated)
                for e in events]
    return await store.run(write)


# -- the acknowledgement outbox ----------------------------------------------------------------


async def test_ack_outbox_due_retry_and_finish(store_factory: StoreFactory) -> None:
    store = await store_factory()
    ticket = await _ticket_with_acks(store, "T-1", ["a@example.org", "b@example.org"])
    now = time.time()
    first, second = await store.due_acks(50, now)
    assert (first.ticket_id, first.channel, first.recipient, first.reply_to, first.attempts) \
        == (ticket.id, "email", "a@example.org", "<m@customer>", 0)
    assert first.payload == b'{"facts":"a@example.org"}'
    assert second.recipient == "b@example.org" and second.id > first.id, "oldest first"
    assert len(await store.due_acks(1, now)) == 1, "at most limit rows"
    assert await store.next_ack_attempt() is not None

    later = now + 3600
    await store.run(lambda tx: tx.retry_ack(first.id, 1, later, "451 try later"))
    assert [a.id for a in await store.due_acks(50, now)] == [second.id], "not due before `at`"
    [retried] = [a for a in await store.due_acks(50, later + 1) if a.id == first.id]
    assert retried.attempts == 1

    sent = NewEvent(id="ev-ack-sent", type="ack.sent", subject="T-1", body=b'{"sent":1}')
    before = store.last_seq
    await store.run(lambda tx: tx.finish_ack(second.id, "sent", provider_id="<ack-1@gw>",
                                             event=sent, ticket_id=ticket.id,
                                             unguessable=True))
    assert store.last_seq > before
    assert (await store.events_after(before, 10))[-1][1] == b'{"sent":1}', "appended with it"
    assert await store.acks_sent_since("email", "b@example.org", now - 60) == 1
    assert await store.acks_sent_since("email", "a@example.org", now - 60) == 0
    assert await store.acks_sent_since("sms", "b@example.org", now - 60) == 0
    assert await store.acks_sent_since("email", "b@example.org", time.time() + 60) == 0
    found = await store.run(lambda tx: tx.ticket_by_reference(["<unknown>", "<ack-1@gw>"]))
    assert found is not None and found[0].number == "T-1" and found[1] is True

    next_at = await store.next_ack_attempt()
    assert next_at is not None and abs(next_at - later) < 1, "only the retried row is pending"
    await store.run(lambda tx: tx.finish_ack(first.id, "failed", error="gave up"))
    assert await store.next_ack_attempt() is None
    assert await store.due_acks(50, later + 1) == []
    await store.close()

    again = await store_factory()
    assert await again.due_acks(50, later + 1) == [], "settled rows stay settled"
    assert await again.acks_sent_since("email", "b@example.org", now - 60) == 1


async def test_only_a_commit_that_queues_an_ack_wakes_the_ack_listeners(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    acks: list[None] = []
    events: list[int] = []
    store.on_ack_queued(lambda: acks.append(None))
    store.on_commit(events.append)
    await _append(store, _event(1, "T-1"))
    await _ticket_with_acks(store, "T-2", ["a@example.org"])
    await _append(store, _event(2, "T-1"))
    deadline = asyncio.get_running_loop().time() + 5
    while len(events) < 2:  # commit listeners run in commit order: ours ran before the last
        assert asyncio.get_running_loop().time() < deadline, events
        await asyncio.sleep(0.01)
    await store.run(lambda tx: None)  # one more round-trip: every callback queued has run
    assert acks == [None], "woken once, by the commit that queued an acknowledgement"
    await store.close()


async def test_sending_without_a_ticket_writes_no_ack_reference(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    await _ticket_with_acks(store, "T-2", ["c@example.org", "d@example.org"])
    c, d = await store.due_acks(50, time.time())
    await store.run(lambda tx: tx.finish_ack(c.id, "sent", provider_id="<no-ticket@gw>"))
    await store.run(lambda tx: tx.finish_ack(d.id, "sent", provider_id="<guessable>",
                                             ticket_id=d.ticket_id))
    assert await store.run(lambda tx: tx.ticket_by_reference(["<no-ticket@gw>"])) is None
    found = await store.run(lambda tx: tx.ticket_by_reference(["<guessable>"]))
    assert found is not None and found[1] is False, "not unguessable unless the sender says so"


async def test_a_failed_transaction_settles_no_ack_and_appends_no_event(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    await _ticket_with_acks(store, "T-3", ["e@example.org"])
    [ack] = await store.due_acks(50, time.time())
    before = store.last_seq

    def half(tx: StoreTx) -> None:
        tx.finish_ack(ack.id, "sent", provider_id="<x@gw>", ticket_id=ack.ticket_id,
                      event=NewEvent(id="ev-lost", type="ack.sent", subject="T-3", body=b"{}"))
        raise RuntimeError("the sender's bookkeeping failed")
    with pytest.raises(RuntimeError):
        await store.run(half)
    assert [a.id for a in await store.due_acks(50, time.time())] == [ack.id]
    assert await store.events_after(before, 10) == []
    assert await store.run(lambda tx: tx.ticket_by_reference(["<x@gw>"])) is None


# -- the event log and its consumers ----------------------------------------------------------


async def test_event_log_is_in_commit_order_and_wakes_listeners(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    woken: list[int] = []
    store.on_commit(woken.append)
    seqs = await _append(store, _event(1, "T-1"), _event(2, "T-2", escalated=True),
                         _event(3, "T-1"))
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert store.last_seq == seqs[-1]
    assert await store.events_after(0, 10) == [(s, b'{"n":%d}' % n)
                                               for s, n in zip(seqs, (1, 2, 3), strict=True)]
    assert [s for s, _ in await store.events_after(seqs[0], 1)] == [seqs[1]]
    outbound = await store.outbound_after(seqs[0], 10)
    assert [(e.seq, e.id, e.type, e.subject, e.priority, e.escalated) for e in outbound] == [
        (seqs[1], "ev-2", "ticket.updated", "T-2", "low", True),
        (seqs[2], "ev-3", "ticket.updated", "T-1", "low", False)]
    assert outbound[0].body == b'{"n":2}'
    deadline = asyncio.get_running_loop().time() + 5
    while not woken or woken[-1] != seqs[-1]:
        assert asyncio.get_running_loop().time() < deadline, woken
        await asyncio.sleep(0.01)
    await store.close()
    again = await store_factory()
    assert again.last_seq == seqs[-1], "known again after a restart"
    assert [s for s, _ in await again.events_after(0, 10)] == seqs


async def test_event_reader_keeps_named_consumer_positions(store_factory: StoreFactory) -> None:
    store = await store_factory()
    seqs = await _append(store, _event(1, "T-1"), _event(2, "T-1"))
    # Beside the open store, as ``tail`` runs beside a gateway; blocking calls, like the CLI.
    reader = store.event_reader()
    try:
        assert [s for s, _ in reader.events_after(0, 10)] == seqs
        offsets = reader.consumer_offsets()
        assert offsets.position("crm") is None
        offsets.save("crm", seqs[0])
        offsets.save("audit", seqs[1])
        offsets.save("crm", seqs[1])
        offsets.close()
    finally:
        reader.close()
    await store.close()
    reader = (await store_factory()).event_reader()
    try:
        offsets = reader.consumer_offsets()
        assert (offsets.position("crm"), offsets.position("audit")) == (seqs[1], seqs[1])
        assert offsets.position("new") is None
        assert reader.events_after(seqs[1], 10) == []
        offsets.close()
    finally:
        reader.close()


# -- the relay: positions, dead letters, held tickets ------------------------------------------


async def test_relay_positions_are_durable_per_relay(store_factory: StoreFactory) -> None:
    store = await store_factory()
    assert await store.run(lambda tx: tx.relay_position("nats")) == 0
    await store.run(lambda tx: tx.save_relay_position("nats", 7))
    await store.run(lambda tx: tx.save_relay_position("nats", 9))
    await store.run(lambda tx: tx.save_relay_position("webhook", 3))
    await store.close()
    again = await store_factory()
    assert await again.run(lambda tx: (tx.relay_position("nats"),
                                       tx.relay_position("webhook"))) == (9, 3)


async def test_dead_letters_hold_their_ticket_until_removed(store_factory: StoreFactory) -> None:
    store = await store_factory()
    a1, b1, a2 = await _append(store, _event(1, "T-A"), _event(2, "T-B", escalated=True),
                               _event(3, "T-A"))

    def dead(tx: StoreTx) -> tuple[bool, bool, bool]:
        first = tx.add_dead_letter(a1, "webhook", 3, "refused: 422")
        repeat = tx.add_dead_letter(a1, "webhook", 0, "again")
        held = tx.add_dead_letter(a2, "webhook", 0, f"held behind seq {a1}")
        # The dead letter and the position past it, in one transaction (the relay's way).
        tx.save_relay_position("webhook", a2)
        return first, repeat, held
    assert await store.run(dead) == (True, False, True)
    assert await store.run(lambda tx: tx.add_dead_letter(b1, "nats", 1, "x" * 2_000))

    assert await store.run(lambda tx: tx.held_tickets("webhook")) == {"T-A": a1}
    assert await store.run(lambda tx: tx.held_tickets("webhook", ["T-B"])) == {}
    assert await store.run(lambda tx: tx.held_tickets("webhook", [])) == {}
    assert await store.run(lambda tx: tx.held_tickets("nats", ["T-A", "T-B"])) == {"T-B": b1}
    letters = await store.dead_letters("webhook")
    assert [(d.event.seq, d.event.id, d.attempts, d.error) for d in letters] == [
        (a1, "ev-1", 3, "refused: 422"), (a2, "ev-3", 0, f"held behind seq {a1}")]
    assert letters[0].event.body == b'{"n":1}' and letters[0].event.subject == "T-A"
    [(nats_event, _attempts, error)] = await store.dead_letters("nats")
    assert nats_event.escalated and 0 < len(error) < 2_000, "errors are kept short"
    await store.close()

    store = await store_factory()
    assert await store.run(lambda tx: tx.relay_position("webhook")) == a2
    await store.remove_dead_letter("webhook", a1)
    assert await store.run(lambda tx: tx.held_tickets("webhook")) == {"T-A": a2}
    await store.remove_dead_letter("webhook", a2)
    await store.remove_dead_letter("webhook", a2)  # already gone: nothing happens
    assert await store.dead_letters("webhook") == []
    assert await store.run(lambda tx: tx.held_tickets("webhook")) == {}
    assert len(await store.dead_letters("nats")) == 1, "publishers are separate"


async def test_a_write_while_the_store_closes_fails_and_never_hangs(
        store_factory: StoreFactory) -> None:
    from gateway.errors import TransientError

    store = await store_factory()
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close has begun: the writer is being stopped
    with pytest.raises(TransientError):
        await asyncio.wait_for(store.probe_write(), 5)
    await asyncio.wait_for(closing, 10)


# -- replies out -------------------------------------------------------------------------------


def _new_reply(ticket_id: int, uid: str, key: str, *, to: str = "a@example.org",
               not_before: float = 0.0) -> NewReply:
    return NewReply(uid=uid, ticket_id=ticket_id, idempotency_key=key, request_hash=f"h-{key}",
                    channel="email", recipient=to, reply_to="m@customer",
                    payload=b"reply-" + uid.encode(), not_before=not_before, resolution=True)


async def test_reply_outbox_records_once_per_key_and_settles(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    ticket = await _ticket_with_acks(store, "T-R", ["a@example.org"])
    queued = NewEvent(id="ev-q1", type="reply.queued", subject="T-R", body=b'{"q":1}')
    before = store.last_seq
    row = await store.run(lambda tx: tx.insert_reply(_new_reply(ticket.id, "r-1", "k"), queued))
    assert (row.uid, row.status, row.channel, row.resolution) == ("r-1", "queued", "email", True)
    assert (await store.events_after(before, 10))[-1][1] == b'{"q":1}', "event with the row"
    again = await store.run(lambda tx: tx.insert_reply(
        _new_reply(ticket.id, "r-2", "k"), NewEvent(id="ev-q2", type="reply.queued",
                                                    subject="T-R", body=b"{}")))
    assert again.uid == "r-1" and again.request_hash == "h-k", "the key's first reply"
    assert len(await store.events_after(before, 10)) == 1, "nothing written for the repeat"
    assert (await store.reply_by_key(ticket.id, "k")).uid == "r-1"
    assert await store.reply_by_key(ticket.id, "other") is None
    later = time.time() + 3600
    await store.run(lambda tx: tx.insert_reply(
        _new_reply(ticket.id, "r-3", "k3", not_before=later),
        NewEvent(id="ev-q3", type="reply.queued", subject="T-R", body=b"{}")))

    now = time.time()
    [due] = await store.due_replies(50, now)
    assert (due.uid, due.ticket_number, due.recipient, due.reply_to, due.payload,
            due.attempts, due.resolution) == ("r-1", "T-R", "a@example.org", "m@customer",
                                              b"reply-r-1", 0, True)
    assert [d.uid for d in await store.due_replies(50, later + 1)] == ["r-1", "r-3"]
    await store.run(lambda tx: tx.retry_reply("r-1", 1, now + 60, "451 later"))
    assert await store.due_replies(50, now) == []
    next_at = await store.next_reply_attempt()
    assert next_at is not None and abs(next_at - (now + 60)) < 1

    sent = NewEvent(id="ev-s1", type="reply.sent", subject="T-R", body=b'{"s":1}')
    await store.run(lambda tx: tx.finish_reply("r-1", "sent", provider_id="<reply-1@gw>",
                                               event=sent, unguessable=True, attempts=2))
    assert (await store.events_after(before, 10))[-1][1] == b'{"s":1}'
    assert await store.replies_sent_since("email", "a@example.org", now - 60) == 1
    assert await store.replies_sent_since("sms", "a@example.org", now - 60) == 0
    found = await store.run(lambda tx: tx.ticket_by_reference(["<reply-1@gw>"]))
    assert found is not None and found[0].number == "T-R" and found[1] is True, \
        "the customer's answer to the reply finds the ticket"
    by_id = await store.run(lambda tx: tx.reply_by_provider_id("<reply-1@gw>"))
    assert by_id is not None and (by_id.uid, by_id.status) == ("r-1", "sent")
    assert await store.run(lambda tx: tx.reply_ticket_number("r-1")) == "T-R"
    since = datetime.now(UTC) - timedelta(minutes=5)
    contact = ticket.contact_id
    assert await store.run(lambda tx: tx.pending_rating(contact, since)) == ("r-1", "T-R"), \
        "a sent resolution waits for its rating"
    assert await store.run(lambda tx: tx.pending_rating(
        contact, datetime.now(UTC) + timedelta(minutes=5))) is None, "only since `since`"
    assert await store.run(lambda tx: tx.pending_rating(contact + 1, since)) is None
    assert await store.run(lambda tx: tx.ratable_reply("r-1")) == ("T-R", "low")
    assert await store.run(lambda tx: tx.ratable_reply("r-3")) is None, "not sent yet"
    await store.run(lambda tx: tx.mark_rated("r-1", 4))
    assert await store.run(lambda tx: tx.ratable_reply("r-1")) is None, "rated once"
    assert await store.run(lambda tx: tx.pending_rating(contact, since)) is None, "rated once"
    await store.run(lambda tx: tx.resolve_ticket(ticket.id))
    assert await store.run(lambda tx: tx.recent_open_ticket(contact, since)) is None, \
        "a resolved ticket takes no chat follow-ups"
    await store.run(lambda tx: tx.finish_reply("r-1", "delivered"))
    await store.run(lambda tx: tx.finish_reply("r-3", "failed", error="refused"))
    assert await store.next_reply_attempt() is None
    await store.close()

    again_store = await store_factory()
    assert await again_store.due_replies(50, later + 1) == [], "settled rows stay settled"
    row_after = await again_store.reply_by_key(ticket.id, "k")
    assert row_after is not None and (row_after.status, row_after.provider_id) == (
        "delivered", "<reply-1@gw>"), "a later status keeps the provider id"
    assert await again_store.replies_sent_since("email", "a@example.org", now - 60) == 1


async def test_reply_target_names_the_contact_and_its_latest_messages(
        store_factory: StoreFactory) -> None:
    import msgspec

    from gateway.decision import StoredReceipt

    store = await store_factory()
    assert await store.reply_target("T-NONE") is None
    plan = _plan("T-M", "m@example.org")

    def write(tx: StoreTx) -> int:
        contact_id, _ = tx.resolve_contact([*plan.identities, ("phone", "+8613800000000")],
                                           None, None)
        ticket = tx.insert_ticket(number="T-M", contact_id=contact_id, plan=plan)
        for i, text in enumerate(("first", "second")):
            p = msgspec.structs.replace(
                plan, message_uid=f"u-{i}", message=msgspec.structs.replace(
                    plan.message, text=text,
                    received_at=plan.message.received_at + timedelta(seconds=i)))
            tx.insert_message(plan=p, ticket_id=ticket.id, contact_id=contact_id,
                              receipt=StoredReceipt(outcome="created", ticket_number="T-M",
                                                    message_uid=p.message_uid, priority="low",
                                                    due_at=plan.due_at, acknowledge=True))
        return ticket.id
    ticket_id = await store.run(write)
    target = await store.reply_target("T-M", recent_limit=1)
    assert target is not None and (target.ticket_id, target.number, target.priority) == (
        ticket_id, "T-M", "low")
    assert sorted(target.identities) == [("email", "m@example.org"), ("phone", "+8613800000000")]
    # Another contact's message on the ticket (a colleague, a bounce) is not the latest.
    other = msgspec.structs.replace(plan, message_uid="u-other", identities=[
        ("email", "colleague@example.org")], message=msgspec.structs.replace(
            plan.message, text="a colleague", contact=Contact(email="colleague@example.org"),
            received_at=plan.message.received_at + timedelta(seconds=5)))

    def colleague(tx: StoreTx) -> None:
        cid, _ = tx.resolve_contact(other.identities, None, None)
        tx.insert_message(plan=other, ticket_id=ticket_id, contact_id=cid,
                          receipt=StoredReceipt(outcome="followup", ticket_number="T-M",
                                                message_uid="u-other", priority="low",
                                                due_at=plan.due_at, acknowledge=False))
    await store.run(colleague)
    target = await store.reply_target("T-M", recent_limit=1)
    assert target is not None
    latest = msgspec.msgpack.decode(target.latest, type=InboundMessage)
    assert latest.text == "second"
    assert [msgspec.msgpack.decode(b, type=InboundMessage).text for b in target.recent] == [
        "second"], "newest first, at most recent_limit"

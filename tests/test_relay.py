"""The relay end to end: gateway → outbox → real brokers (NATS JetStream, RabbitMQ, Redis) and the
local webhook receiver, through outages, refusals and oversize events, and escalation by
``[triage] escalate``."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.plugin import OutboundEvent
from gateway.queues.rabbitmq import LEGACY_ESCALATIONS_BINDING
from gateway.runtime import Gateway
from gateway.testing.harness import read_events
from gateway.testing.publisher_contract import TRIAGE_RULES, Delivered
from gateway.testing.publisher_harnesses import (
    NatsHarness,
    RabbitMqHarness,
    RedisHarness,
    WebhookHarness,
)
from gateway.testing.servers import PrivateServer
from tests.conftest import MakeGateway
from tests.test_publisher_outages import nats_server, redis_server  # noqa: F401  (fixtures)


async def post_many(gw: Gateway, start: int, count: int) -> list[str]:
    """Post ``count`` messages: a new ticket, then a follow-up to it, alternately."""
    numbers: list[str] = []
    async with aiohttp.ClientSession() as s:
        for i in range(start, start + count):
            contact = {"email": f"relay{i // 2}@example.org"}
            body: dict[str, object] = {"contact": contact, "text": f"message {i}"}
            if i % 2 and numbers:
                body["ticket_number"] = numbers[-1]
            async with s.post(f"{gw.url}/v1/messages", json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
                numbers.append((await resp.json())["ticket_number"])
    return numbers


async def drained(gw: Gateway, timeout: float = 60) -> None:
    assert gw.relay is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while gw.relay.position < gw.store.last_seq:
        assert asyncio.get_running_loop().time() < deadline, "relay did not drain"
        await asyncio.sleep(0.05)


async def test_broker_outage_delays_but_loses_and_reorders_nothing(
        make_gateway: MakeGateway, nats_server: PrivateServer, tmp_path: Path) -> None:  # noqa: F811
    harness = NatsHarness(url=f"nats://127.0.0.1:{nats_server.port}")
    gw = await make_gateway(
        f'[queue]\nbackend = "nats"\nbatch_size = 16\n'
        f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
        f'subject_prefix = "{harness.prefix}"\nconnect_timeout = 1.0\nack_timeout = 1.0\n'
        f'reconnect_wait = 0.2\n')
    await post_many(gw, 0, 40)
    await drained(gw)

    nats_server.kill()
    # Customers keep writing while the broker is down; every one is answered.
    await post_many(gw, 40, 40)
    assert gw.relay is not None and gw.relay.position < gw.store.last_seq
    nats_server.start()
    await drained(gw)

    async with aiohttp.ClientSession() as s:
        log = await read_events(s, gw.url)
    delivered = await harness.received(len(log), timeout=10)
    events = [d for d in delivered if not d.escalation]
    unique_ids = list(dict.fromkeys(d.id for d in events))
    assert unique_ids and sorted(unique_ids) == sorted(e["id"] for e in log)
    # Order per ticket: each ticket's events arrive in the order the outbox holds them.
    want: dict[str, list[str]] = defaultdict(list)
    for e in log:
        want[str(e["subject"])].append(str(e["id"]))
    got: dict[str, list[str]] = defaultdict(list)
    by_id = {str(e["id"]): str(e["subject"]) for e in log}
    for event_id in unique_ids:
        got[by_id[event_id]].append(event_id)
    assert got == want


async def test_gateway_starts_and_accepts_with_the_broker_down(
        make_gateway: MakeGateway, nats_server: PrivateServer) -> None:  # noqa: F811
    harness = NatsHarness(url=f"nats://127.0.0.1:{nats_server.port}")
    nats_server.kill()
    gw = await make_gateway(
        f'[queue]\nbackend = "nats"\n'
        f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
        f'subject_prefix = "{harness.prefix}"\nconnect_timeout = 1.0\nack_timeout = 1.0\n')
    numbers = await post_many(gw, 0, 6)
    assert len(numbers) == 6
    nats_server.start()
    await drained(gw)
    delivered = await harness.received(6, timeout=10)
    assert len({d.id for d in delivered}) == 6


# --- order per ticket across a dead letter, per-event backoff, size cap (issue 9) --------------


@pytest.mark.parametrize("line", ["max_event_bytes = -1", "max_backoff = 0", "max_attempts = 0"])
def test_queue_limits_are_checked_at_start(line: str) -> None:
    with pytest.raises(ConfigError, match="queue"):
        parse_config(f"[queue]\n{line}\n")


def webhook_toml(harness: WebhookHarness, **queue: object) -> str:
    """A gateway config publishing to ``harness``'s receiver (``queue`` adds [queue] keys)."""
    extra = "".join(f"{key} = {value}\n" for key, value in queue.items())
    return (f'[queue]\nbackend = "webhook"\n{extra}'
            f'[queue.settings]\nurl = "{harness.receiver.url()}"\n'
            f'secret_file = "{harness.secret_file}"\ntimeout = 2.0\nattempts = 3\n'
            f'backoff = 0.05\n')


async def post(s: aiohttp.ClientSession, gw: Gateway, email: str, text: str,
               ticket: str | None = None) -> str:
    body: dict[str, object] = {"contact": {"email": email}, "text": text}
    if ticket:
        body["ticket_number"] = ticket
    async with s.post(f"{gw.url}/v1/messages", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        number = str((await resp.json())["ticket_number"])
    assert ticket is None or number == ticket, "the follow-up did not join its ticket"
    return number


async def outbox(gw: Gateway) -> list[OutboundEvent]:
    return await gw.store.outbound_after(0, 10_000)


async def dead_letters(gw: Gateway) -> list[tuple[OutboundEvent, int, str]]:
    return list(await gw.store.dead_letters("webhook"))


def ids_of(events: list[OutboundEvent], subject: str) -> list[str]:
    return [e.id for e in events if e.subject == subject]


def delivered_ids(harness: WebhookHarness) -> list[str]:
    """Accepted deliveries, deduplicated by id, in arrival order."""
    return list(dict.fromkeys(d.event_id for d in harness.receiver.deliveries))


async def until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def run_replay(config_file: Path, gw: Gateway) -> tuple[int, str]:
    """``intake-gateway replay`` through its real entry point, in its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "replay", "--config", str(config_file),
        "--data-dir", str(gw.data_dir), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode()


async def test_a_refused_event_holds_its_ticket_and_replay_delivers_it_in_order(
        make_gateway: MakeGateway, tmp_path: Path) -> None:
    async with WebhookHarness() as harness:
        receiver = harness.receiver
        # A receiver that can never take this one payload (422), and takes everything else.
        receiver.refuse_where(lambda _id, body: b"REFUSE-ME" in body, status=422)
        toml = webhook_toml(harness, max_attempts=2)
        config_file = tmp_path / "gateway.toml"
        config_file.write_text(toml, encoding="utf-8")
        gw = await make_gateway(toml)
        async with aiohttp.ClientSession() as s:
            a = await post(s, gw, "a@example.org", "REFUSE-ME: the router is down")
            b = await post(s, gw, "b@example.org", "billing question")
            await post(s, gw, "a@example.org", "still down, any news?", a)
            await post(s, gw, "b@example.org", "and the invoice for May", b)
            await drained(gw)
            log = await outbox(gw)
            a_ids, b_ids = ids_of(log, a), ids_of(log, b)
            assert len(a_ids) == 2 and len(b_ids) == 2
            await until(lambda: set(b_ids) <= set(delivered_ids(harness)), timeout=20,
                        what="ticket B's events")
            # A's first was refused twice (max_attempts), then dead-lettered; A's follow-up is
            # held behind it and never overtakes it.
            letters = await dead_letters(gw)
            assert [(e.id, n) for e, n, _ in letters] == [(a_ids[0], 2), (a_ids[1], 0)]
            assert "422" in letters[0][2]
            assert letters[1][2] == f"held behind seq {letters[0][0].seq}"
            assert receiver.requests_by_id[a_ids[0]] == 2
            assert receiver.requests_by_id[a_ids[1]] == 0

            # A ticket held stays held for new events; other tickets keep flowing.
            await post(s, gw, "a@example.org", "third message", a)
            await post(s, gw, "b@example.org", "third for B", b)
            await drained(gw)
            log = await outbox(gw)
            a_ids, b_ids = ids_of(log, a), ids_of(log, b)
            await until(lambda: set(b_ids) <= set(delivered_ids(harness)), timeout=20,
                        what="ticket B's third event")
            assert not set(a_ids) & set(delivered_ids(harness))
            assert [e.id for e, _, _ in await dead_letters(gw)] == a_ids

            # The receiver is fixed; the operator replays: A's events arrive, in order.
            receiver.clear_faults()
            code, out = await run_replay(config_file, gw)
            assert code == 0, out
            assert [i for i in delivered_ids(harness) if i in a_ids] == a_ids
            assert await dead_letters(gw) == []
            # With no dead letter left the ticket flows again, after its replayed events.
            await post(s, gw, "a@example.org", "fourth message", a)
            await drained(gw)
            a_ids = ids_of(await outbox(gw), a)
            await until(lambda: set(a_ids) <= set(delivered_ids(harness)), timeout=20,
                        what="ticket A's new event")
            assert [i for i in delivered_ids(harness) if i in a_ids] == a_ids
            assert delivered_ids(harness)[-1] == a_ids[-1]


async def test_an_event_over_the_size_cap_is_never_sent_and_holds_its_ticket(
        make_gateway: MakeGateway, tmp_path: Path) -> None:
    async with WebhookHarness() as harness:
        toml = webhook_toml(harness, max_event_bytes=4096)
        config_file = tmp_path / "gateway.toml"
        config_file.write_text(toml, encoding="utf-8")
        gw = await make_gateway(toml)
        async with aiohttp.ClientSession() as s:
            a = await post(s, gw, "a@example.org", "HTML mail " + "x" * 6000)
            b = await post(s, gw, "b@example.org", "short question")
            await post(s, gw, "a@example.org", "did you get my mail?", a)
            await drained(gw)
            log = await outbox(gw)
            a_ids, b_ids = ids_of(log, a), ids_of(log, b)
            await until(lambda: set(b_ids) <= set(delivered_ids(harness)), timeout=20,
                        what="ticket B's event")
            letters = await dead_letters(gw)
            assert [(e.id, n) for e, n, _ in letters] == [(a_ids[0], 0), (a_ids[1], 0)]
            assert letters[0][2].startswith("too large for the broker")
            assert letters[1][2] == f"held behind seq {letters[0][0].seq}"
            # Checked before publish: the receiver never saw a request for either.
            assert receiver_saw(harness, a_ids) == 0
            # Replay cannot send it either, and keeps the follow-up behind it.
            code, out = await run_replay(config_file, gw)
            assert code == 1 and "too large for the broker" in out, out
            assert receiver_saw(harness, a_ids) == 0
            assert [e.id for e, _, _ in await dead_letters(gw)] == a_ids


def receiver_saw(harness: WebhookHarness, ids: list[str]) -> int:
    return sum(harness.receiver.requests_by_id[i] for i in ids)


async def test_a_receiver_answering_401_for_a_while_loses_nothing(
        make_gateway: MakeGateway) -> None:
    async with WebhookHarness() as harness:
        receiver = harness.receiver
        window = 3.0
        receiver.fail_for(window, status=401)
        gw = await make_gateway(webhook_toml(harness))
        numbers = await post_many(gw, 0, 12)
        await drained(gw, timeout=60)
        log = await outbox(gw)
        await until(lambda: len(delivered_ids(harness)) >= len(log), timeout=30,
                    what="every event after the 401 window")
        assert await dead_letters(gw) == [], "a 401 is not the payload's fault"
        for number in set(numbers):
            got = [i for i in delivered_ids(harness) if i in ids_of(log, number)]
            assert got == ids_of(log, number), f"ticket {number} out of order"
        per_event = [receiver.requests_by_id[e.id] for e in log]
        print(f"401 for {window}s: {receiver.requests} requests for {len(log)} events, "
              f"at most {max(per_event)} for one event")
        assert max(per_event) >= 2, "the window did not refuse anything"
        # One try per relay retry, the retries spaced by the backoff: a handful, not hundreds.
        assert max(per_event) <= 12
        assert receiver.requests <= len(log) + 12


# --- resume soon after an outage ---------------------------------------------------------------

RESUME_BOUND = 10.0
"""Seconds from the broker's return to every waiting event delivered: the backoff cap (5 s),
the client's reconnection and room for a loaded machine (measured: 2.8 to 5 s)."""
FAILURES_BEFORE_RETURN = 9
"""Failed publishes before the broker comes back: past them an uncapped (or 30 s) backoff waits
longer than RESUME_BOUND, a capped one does not."""


async def outage_then_return(gw: Gateway, stop: Callable[[], Awaitable[None]],
                             start: Callable[[], Awaitable[None]],
                             delivered: Callable[[int], Awaitable[int]]) -> float:
    """Posts during an outage; seconds from the broker's return until all arrived."""
    assert gw.relay is not None
    await post_many(gw, 0, 4)
    await drained(gw)
    await stop()
    numbers = await post_many(gw, 4, 6)
    assert len(numbers) == 6
    relay = gw.relay
    await until(lambda: relay.failures >= FAILURES_BEFORE_RETURN, timeout=60,
                what="the relay to back off")
    await start()
    returned = time.monotonic()
    total = gw.store.last_seq
    deadline = returned + 60
    while await delivered(total) < total:
        assert time.monotonic() < deadline, "delivery did not resume"
        await asyncio.sleep(0.05)
    return time.monotonic() - returned


async def test_nats_outage_delivery_resumes_within_seconds(
        make_gateway: MakeGateway, nats_server: PrivateServer) -> None:  # noqa: F811
    harness = NatsHarness(url=f"nats://127.0.0.1:{nats_server.port}")
    gw = await make_gateway(
        f'[queue]\nbackend = "nats"\n'
        f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
        f'subject_prefix = "{harness.prefix}"\nconnect_timeout = 1.0\nack_timeout = 1.0\n')

    async def stop() -> None:
        nats_server.kill()

    async def start() -> None:
        nats_server.start()

    async def delivered(total: int) -> int:
        assert gw.relay is not None
        return gw.relay.position  # moves only once JetStream acknowledged

    took = await outage_then_return(gw, stop, start, delivered)
    print(f"NATS: delivery resumed {took:.2f}s after the server returned")
    assert took < RESUME_BOUND
    log = await outbox(gw)
    got = await harness.received(len(log), timeout=10)
    assert {d.id for d in got if not d.escalation} == {e.id for e in log}


async def test_redis_outage_delivery_resumes_within_seconds(
        make_gateway: MakeGateway, redis_server: PrivateServer) -> None:  # noqa: F811
    harness = RedisHarness(f"redis://127.0.0.1:{redis_server.port}/0")
    gw = await make_gateway(
        f'[queue]\nbackend = "redis"\n'
        f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
        f'escalation_stream = "{harness.escalation_stream}"\nconnect_timeout = 1.0\n'
        f'timeout = 1.0\n')

    async def stop() -> None:
        redis_server.kill()

    async def start() -> None:
        redis_server.start()

    async def delivered(total: int) -> int:
        assert gw.relay is not None
        return gw.relay.position

    took = await outage_then_return(gw, stop, start, delivered)
    print(f"Redis: delivery resumed {took:.2f}s after the server returned")
    assert took < RESUME_BOUND
    # The restarted Redis keeps nothing on disk: what waited in the outbox is all there.
    got = await harness.received(6, timeout=10)
    log = await outbox(gw)
    assert {d.id for d in got if not d.escalation} >= {e.id for e in log[-6:]}


async def test_webhook_outage_delivery_resumes_within_seconds(
        make_gateway: MakeGateway) -> None:
    async with WebhookHarness() as harness:
        gw = await make_gateway(webhook_toml(harness))

        async def delivered(total: int) -> int:
            return len(delivered_ids(harness))

        took = await outage_then_return(gw, harness.receiver.stop, harness.receiver.start,
                                        delivered)
        print(f"webhook: delivery resumed {took:.2f}s after the receiver returned")
        assert took < RESUME_BOUND
        log = await outbox(gw)
        assert delivered_ids(harness) == [e.id for e in log]


# --- escalation follows [triage] escalate, through the relay (issue 10) ------------------------



async def post_by_priority(gw: Gateway) -> dict[str, str]:
    """A high, a medium and a low ticket, each followed up once: priority -> ticket number."""
    texts = {"high": "Total outage since this morning", "medium": "How do I change my address?",
             "low": "An idea: a dark mode"}
    numbers: dict[str, str] = {}
    async with aiohttp.ClientSession() as s:
        for priority, text in texts.items():
            numbers[priority] = await post(s, gw, f"{priority}@example.org", text)
            await post(s, gw, f"{priority}@example.org", "Any news?", numbers[priority])
    return numbers


def escalated_tickets(events: list[OutboundEvent], delivered: list[Delivered]) -> set[str]:
    """The tickets whose events arrived on the escalation route."""
    on_route = {d.id for d in delivered if d.escalation}
    return {e.subject for e in events if e.id in on_route}


async def test_rabbitmq_escalation_queue_follows_escalate_not_its_old_binding(
        make_gateway: MakeGateway) -> None:
    # escalate = ["medium"]: the high ticket is not escalated, so an escalation queue still
    # bound by priority (#.high, as an earlier version declared it) would show it.
    async with RabbitMqHarness() as harness:
        assert harness.url is not None
        connection = await aio_pika.connect(harness.url, timeout=5)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(harness.exchange,
                                                      aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.get_queue(harness.escalation_queue)
            await queue.bind(exchange, routing_key=LEGACY_ESCALATIONS_BINDING)
        finally:
            await connection.close()
        gw = await make_gateway(
            f'[triage]\nescalate = ["medium"]\n{TRIAGE_RULES}'
            f'[queue]\nbackend = "rabbitmq"\n'
            f'[queue.settings]\nurl = "{harness.url}"\nexchange = "{harness.exchange}"\n'
            f'queue = "{harness.queue}"\nescalation_queue = "{harness.escalation_queue}"\n')
        numbers = await post_by_priority(gw)
        await drained(gw)
        log = await outbox(gw)
        medium = [e for e in log if e.subject == numbers["medium"] and e.type.startswith("ticket.")]
        got = await harness.received(len(log) + len(medium), timeout=10)
    assert sorted(d.id for d in got if not d.escalation) == sorted(e.id for e in log)
    assert sorted(d.id for d in got if d.escalation) == sorted(e.id for e in medium)
    assert escalated_tickets(log, got) == {numbers["medium"]}


async def test_an_outbox_from_before_the_flag_escalates_as_its_tickets_do(
        make_gateway: MakeGateway, tmp_path: Path) -> None:
    # Events written by an earlier version have no escalated column: opening the store adds it
    # and takes each event's value from its ticket, so the backlog escalates as it should.
    data = tmp_path / "old"
    gw = await make_gateway(f'[triage]\nescalate = ["medium"]\n{TRIAGE_RULES}', data_dir=data)
    numbers = await post_by_priority(gw)
    await gw.stop()
    conn = sqlite3.connect(gw.store.path)
    try:
        conn.execute("ALTER TABLE events DROP COLUMN escalated")
    finally:
        conn.close()
    async with RedisHarness() as harness:
        gw = await make_gateway(
            f'[triage]\nescalate = ["medium"]\n{TRIAGE_RULES}'
            f'[queue]\nbackend = "redis"\n'
            f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
            f'escalation_stream = "{harness.escalation_stream}"\n', data_dir=data)
        await drained(gw)
        log = await outbox(gw)
        assert [e.type for e in log if e.escalated] == ["ticket.created", "ticket.message_added"]
        got = await harness.received(len(log) + 2, timeout=10)
    assert escalated_tickets(log, got) == {numbers["medium"]}

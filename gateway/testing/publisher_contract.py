"""The publisher contract suite: every publisher, built-in or third-party, must pass it.

Each test is written once against :class:`PublisherHarness`, which gives the suite a publisher
bound to a fresh, isolated destination on a real broker (its own stream, exchange, queues, keys or
URL) and reads back what arrived there. The ``publisher_harness`` fixture runs every test for
every kind registered under ``intake_gateway.publishers`` (except relay-less ones such as
``embedded``) and for every built-in harness. An integrator registers a harness class for a kind
under ``intake_gateway.publisher_harnesses`` (same name as the publisher) and runs::

    # tests/test_my_publisher_contract.py
    from gateway.testing.publisher_contract import *  # noqa: F403

What it checks: a batch arrives once, in order per ticket, bodies byte-identical; a batch
published again (a relay retry) deduplicates by event id on the consumer side, and on brokers that
deduplicate themselves nothing arrives twice while publish still succeeds; escalated events
(:attr:`~gateway.plugin.OutboundEvent.escalated`), and only those, also arrive on the
escalation route, whatever their priority, and a real gateway configured with
``[triage] escalate = ["medium", "high"]`` escalates its medium tickets there (a low one never);
a publisher closed and started again (or a new one) publishes; 1,000 events of 1 KB arrive
complete and in order; events as large as the relay lets through by default
(``queue.max_event_bytes``) arrive; an unreachable broker gives
:class:`~gateway.errors.TransientError` within a bounded time instead of a hang.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, cast

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from gateway.config import QueueConfig
from gateway.errors import TransientError
from gateway.plugin import PUBLISHER_GROUP, OutboundEvent, Publisher
from gateway.testing.harness import running_gateway
from intake_schemas.events import (
    AckSent,
    AckSentData,
    ContactView,
    MessageAdded,
    MessageAddedData,
    MessageView,
    TicketCreated,
    TicketCreatedData,
    TicketView,
)
from intake_schemas.message import Priority

__all__ = [
    "BUILTIN_HARNESSES",
    "HARNESS_GROUP",
    "Delivered",
    "PublisherHarness",
    "make_events",
    "publisher_harness",
    "test_batch_arrives_once_in_order",
    "test_closed_publisher_starts_again",
    "test_empty_batch_is_a_no_op",
    "test_escalation_follows_the_triage_escalate_setting",
    "test_escalation_route_carries_escalated_events_only",
    "test_event_at_the_size_cap_arrives",
    "test_large_batch_arrives_complete_and_ordered",
    "test_republished_batch_deduplicates_by_id",
    "test_unreachable_broker_is_transient_and_bounded",
]

HARNESS_GROUP = "intake_gateway.publisher_harnesses"
"""Entry-point group of harness classes, named like the publisher kind they test."""

ARRIVAL_TIMEOUT = 20.0
"""Longest wait for published events to arrive at the consumer side."""
UNREACHABLE_BOUND = 15.0
"""Longest an unreachable broker may take to produce a TransientError."""


class Delivered(NamedTuple):
    """One message as a consumer of the destination received it."""

    id: str
    """The event id the broker carried (``Nats-Msg-Id``, ``message_id``, the ``id`` field, the
    ``Webhook-Id``), with any ``:escalation`` suffix removed."""
    body: bytes
    escalation: bool
    """True when it arrived on the escalation route rather than the main one."""


class PublisherHarness(Protocol):
    """How the suite drives one publisher kind against one isolated destination.

    An instance is an async context manager: entering creates the destination's consumer side
    (skipping the test, or failing it when ``INTAKE_REQUIRE_SERVICES=1``, if the broker is
    unreachable), leaving deletes the destination.
    """

    kind: str
    broker_dedup: bool
    """True when the broker drops an event id it already stored (NATS JetStream)."""
    total_order: bool
    """True when a batch arrives in publish order as a whole, not only per ticket."""

    async def __aenter__(self) -> Self:
        """Create the isolated destination and its consumer side."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete the destination and disconnect."""
        ...

    def publisher(self, **settings: Any) -> Publisher:
        """A new, not yet started publisher for this destination; ``settings`` override its
        Config fields (timeouts in fault tests)."""
        ...

    def unreachable_publisher(self) -> Publisher:
        """A new publisher pointed at an address where nothing answers, with short timeouts."""
        ...

    async def received(self, count: int, *, timeout: float) -> list[Delivered]:
        """Everything that arrived since entering, in arrival order within each route.

        Waits until at least ``count`` messages arrived or ``timeout`` passed, then a little
        longer so that unexpected extra messages (duplicates) are seen too.
        """
        ...

    def reported_duplicates(self, publisher: Publisher) -> int | None:
        """How many duplicates the broker reported to ``publisher``; None if it cannot tell."""
        ...


# --- events ------------------------------------------------------------------------------------

_TYPES = ("ticket.created", "ticket.message_added", "ack.sent")
# Real customer text: multi-byte UTF-8 must arrive byte-identical.
_TEXT = "您好，路由器从昨晚开始无法连接，指示灯一直闪红。订单号 SO-2024-88123。"


def make_events(
    count: int, *, tickets: int = 4, body_size: int | None = None, tag: str | None = None,
    escalate: Collection[str] = ("high",),
) -> list[OutboundEvent]:
    """``count`` real CloudEvents over ``tickets`` ticket numbers, ids unique to this call.

    Types cycle through ``ticket.created``, ``ticket.message_added`` and ``ack.sent``; the ticket
    events of every other ticket are high priority, the others medium (``ack.sent`` has none).
    A ticket event is escalated when its priority is in ``escalate``, as ``[triage] escalate``
    decides it. ``body_size`` pads each body to that many bytes.
    """
    tag = tag or uuid.uuid4().hex[:12]
    base = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    events = []
    for i in range(count):
        event_type = _TYPES[i % len(_TYPES)]
        ticket_no = f"CS{20240501:08d}{i % tickets:04d}"
        priority = None if event_type == "ack.sent" else ("high", "medium")[(i % tickets) % 2]
        escalated = priority in escalate
        event_id = f"{tag}-{i:06d}"
        when = base + timedelta(seconds=i)
        body = _body(event_id, event_type, ticket_no, priority, escalated, when, "")
        if body_size is not None and len(body) < body_size:
            pad = "x" * (body_size - len(body))
            body = _body(event_id, event_type, ticket_no, priority, escalated, when, pad)
        events.append(
            OutboundEvent(seq=i + 1, id=event_id, type=event_type, subject=ticket_no,
                          priority=priority, body=body, escalated=escalated)
        )
    return events


def _body(event_id: str, event_type: str, ticket_no: str, priority: str | None,
          escalated: bool, when: datetime, pad: str) -> bytes:
    """One CloudEvent in structured JSON, as the core encodes it."""
    common: dict[str, Any] = {
        "id": event_id, "source": "urn:intake-gateway:test", "subject": ticket_no, "time": when,
        "priority": priority,
    }
    if event_type == "ack.sent":
        data = AckSentData(ticket_number=ticket_no, channel="email", outcome="created",
                           provider_message_id=f"<{event_id}@mail.example>{pad}")
        return msgspec.json.encode(AckSent(**common, data=data))
    ticket = TicketView(number=ticket_no, kind="fault", area="technical",
                        priority=cast(Priority, priority or "medium"), created_at=when,
                        due_at=when + timedelta(hours=2), channel="email",
                        escalated=escalated)
    contact = ContactView(id="c-1", name="王小明", email="wang@example.cn")
    message = MessageView(id=f"m-{event_id}", channel="email", received_at=when,
                          subject="路由器故障", text=_TEXT + pad)
    if event_type == "ticket.created":
        return msgspec.json.encode(
            TicketCreated(**common, data=TicketCreatedData(ticket=ticket, contact=contact,
                                                           message=message))
        )
    return msgspec.json.encode(
        MessageAdded(**common, data=MessageAddedData(ticket=ticket, contact=contact,
                                                     message=message, matched_by="reply_header"))
    )


# --- fixture -----------------------------------------------------------------------------------


BUILTIN_HARNESSES: dict[str, str] = {
    "nats": "gateway.testing.publisher_harnesses:NatsHarness",
    "rabbitmq": "gateway.testing.publisher_harnesses:RabbitMqHarness",
    "redis": "gateway.testing.publisher_harnesses:RedisHarness",
    "webhook": "gateway.testing.publisher_harnesses:WebhookHarness",
}
"""Harnesses of the built-in publishers, named like entry points (loaded only when used)."""


def harness_factories() -> dict[str, Callable[[], PublisherHarness]]:
    """Harness classes by kind: the built-ins, then any registered under HARNESS_GROUP."""
    factories: dict[str, Callable[[], PublisherHarness]] = {}
    for kind, target in BUILTIN_HARNESSES.items():
        module, _, attr = target.partition(":")
        factories[kind] = getattr(importlib.import_module(module), attr)
    factories.update({ep.name: ep.load() for ep in entry_points(group=HARNESS_GROUP)})
    return factories


def _publisher_kinds() -> list[str]:
    """Kinds that deliver through the relay (registered), plus those with a built-in harness."""
    kinds = set(BUILTIN_HARNESSES)
    for ep in entry_points(group=PUBLISHER_GROUP):
        # A relay-less publisher (embedded) has nothing downstream for a harness to read.
        if ep.load().relay_needed:
            kinds.add(ep.name)
    return sorted(kinds)


@pytest_asyncio.fixture(params=_publisher_kinds())
async def publisher_harness(request: pytest.FixtureRequest) -> AsyncIterator[PublisherHarness]:
    """A harness with a fresh destination, for each publisher kind in turn."""
    factory = harness_factories().get(request.param)
    if factory is None:
        pytest.fail(f"publisher {request.param!r} has no harness in {HARNESS_GROUP}")
    async with factory() as harness:
        yield harness


# --- checks ------------------------------------------------------------------------------------


def _route(delivered: Sequence[Delivered], *, escalation: bool) -> list[Delivered]:
    return [d for d in delivered if d.escalation == escalation]


def _dedup(delivered: Sequence[Delivered]) -> list[Delivered]:
    """What a consumer keeps after deduplicating by id: first occurrences, in arrival order."""
    seen: set[str] = set()
    kept = []
    for d in delivered:
        if d.id not in seen:
            seen.add(d.id)
            kept.append(d)
    return kept


def _assert_route(delivered: Sequence[Delivered], expected: Sequence[OutboundEvent]) -> None:
    """Exactly the expected events, each body byte-identical, in order per ticket."""
    by_id = {e.id: e for e in expected}
    got_ids = [d.id for d in delivered]
    assert sorted(got_ids) == sorted(by_id), (
        f"missing {sorted(set(by_id) - set(got_ids))[:5]}, "
        f"unexpected {sorted(set(got_ids) - set(by_id))[:5]}, "
        f"{len(got_ids)} arrived for {len(by_id)} published"
    )
    for d in delivered:
        assert d.body == by_id[d.id].body, f"body of {d.id} changed on the way"
    for subject in {e.subject for e in expected}:
        want = [e.id for e in expected if e.subject == subject]
        got = [d.id for d in delivered if by_id[d.id].subject == subject]
        assert got == want, f"ticket {subject}: out of order"


def _escalated(events: Sequence[OutboundEvent]) -> list[OutboundEvent]:
    return [e for e in events if e.escalated]


async def _started(harness: PublisherHarness, **settings: Any) -> Publisher:
    publisher = harness.publisher(**settings)
    await asyncio.wait_for(publisher.start(), ARRIVAL_TIMEOUT)
    return publisher


# --- the contract ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_batch_arrives_once_in_order(publisher_harness: PublisherHarness) -> None:
    events = make_events(24)
    publisher = await _started(publisher_harness)
    try:
        await asyncio.wait_for(publisher.publish(events), ARRIVAL_TIMEOUT)
    finally:
        await publisher.close()
    expected = len(events) + len(_escalated(events))
    got = await publisher_harness.received(expected, timeout=ARRIVAL_TIMEOUT)
    _assert_route(_route(got, escalation=False), events)
    assert len(got) == expected, f"{len(got)} messages for {expected} expected: duplicates"


@pytest.mark.asyncio
async def test_republished_batch_deduplicates_by_id(publisher_harness: PublisherHarness) -> None:
    events = make_events(12)
    publisher = await _started(publisher_harness)
    try:
        await asyncio.wait_for(publisher.publish(events), ARRIVAL_TIMEOUT)
        # The relay retries a whole batch when a confirm was lost: same events, same ids.
        await asyncio.wait_for(publisher.publish(events), ARRIVAL_TIMEOUT)
        duplicates = publisher_harness.reported_duplicates(publisher)
    finally:
        await publisher.close()
    once = len(events) + len(_escalated(events))
    if publisher_harness.broker_dedup:
        got = await publisher_harness.received(once, timeout=ARRIVAL_TIMEOUT)
        assert len(got) == once, "the broker let a re-published id through"
        assert duplicates == once, f"the broker reported {duplicates} duplicates, not {once}"
    else:
        got = await publisher_harness.received(2 * once, timeout=ARRIVAL_TIMEOUT)
    _assert_route(_dedup(_route(got, escalation=False)), events)
    _assert_route(_dedup(_route(got, escalation=True)), _escalated(events))


@pytest.mark.asyncio
async def test_escalation_route_carries_escalated_events_only(
    publisher_harness: PublisherHarness,
) -> None:
    # Medium tickets escalated and high ones not: a route decided by priority fails both ways.
    events = make_events(30, tickets=5, escalate=("medium",))
    assert 0 < len(_escalated(events)) < len(events)
    assert any(e.priority == "high" and not e.escalated for e in events)
    publisher = await _started(publisher_harness)
    try:
        await asyncio.wait_for(publisher.publish(events), ARRIVAL_TIMEOUT)
    finally:
        await publisher.close()
    got = await publisher_harness.received(len(events) + len(_escalated(events)),
                                           timeout=ARRIVAL_TIMEOUT)
    _assert_route(_route(got, escalation=True), _escalated(events))
    _assert_route(_route(got, escalation=False), events)


TRIAGE_RULES = """
[[triage.rules]]
name = "outage"
keywords = ["outage"]
set_kind = "complaint"
[[triage.rules]]
name = "idea"
keywords = ["idea"]
set_kind = "suggestion"
"""
# Complaints are high, consultations (the default kind) medium, suggestions low.
_TICKETS = {
    "high": "Total outage of the service since this morning",
    "medium": "How do I change the delivery address of my order?",
    "low": "An idea: a dark mode for the app",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("escalate", [None, ["medium", "high"]],
                         ids=["escalate-default", "escalate-medium-high"])
async def test_escalation_follows_the_triage_escalate_setting(
    publisher_harness: PublisherHarness, escalate: list[str] | None, tmp_path: Path,
) -> None:
    # A real gateway triages, stores and reads back the events as its relay does; the publisher
    # under test carries them. ``escalate`` is the operator's, not the publisher's, decision.
    setting = "" if escalate is None else f"escalate = {msgspec.json.encode(escalate).decode()}"
    numbers: dict[str, str] = {}
    async with running_gateway(f"[triage]\n{setting}\n{TRIAGE_RULES}", tmp_path) as gw:
        async with aiohttp.ClientSession() as session:
            for priority, text in _TICKETS.items():
                body: dict[str, Any] = {"contact": {"email": f"{priority}@example.org"},
                                        "text": text}
                async with session.post(f"{gw.url}/v1/messages", json=body) as resp:
                    assert resp.status in (200, 201), await resp.text()
                    numbers[priority] = (await resp.json())["ticket_number"]
            # A follow-up is an event of the same ticket and escalates with it.
            body = {"contact": {"email": "medium@example.org"}, "text": "Any news?",
                    "ticket_number": numbers["medium"]}
            async with session.post(f"{gw.url}/v1/messages", json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
        # The response comes after the commit, so every event is in the outbox by now.
        events = await gw.store.outbound_after(0, 1000)
    triaged = {str(e.subject): msgspec.json.decode(e.body)["data"]["ticket"]["priority"]
               for e in events if e.type == "ticket.created"}
    assert triaged == {numbers[p]: p for p in _TICKETS}, "triage did not give the test's priorities"
    assert len([e for e in events if e.subject == numbers["medium"]
                and e.type.startswith("ticket.")]) == 2

    publisher = await _started(publisher_harness)
    try:
        await asyncio.wait_for(publisher.publish(events), ARRIVAL_TIMEOUT)
    finally:
        await publisher.close()
    escalating = {numbers[p] for p in (escalate or ["high"])}
    expected = [e for e in events if e.type.startswith("ticket.") and e.subject in escalating]
    got = await publisher_harness.received(len(events) + len(expected), timeout=ARRIVAL_TIMEOUT)
    _assert_route(_route(got, escalation=False), events)
    _assert_route(_route(got, escalation=True), expected)
    on_route = {d.id for d in _route(got, escalation=True)}
    escalated = {e.subject for e in events if e.id in on_route}
    assert (numbers["medium"] in escalated) == (escalate is not None), (
        f"medium ticket {'not ' if escalate else ''}on the escalation route with escalate = "
        f"{escalate or 'the default'}")
    assert numbers["low"] not in escalated
    assert numbers["high"] in escalated


@pytest.mark.asyncio
async def test_closed_publisher_starts_again(publisher_harness: PublisherHarness) -> None:
    first, second, third = make_events(5), make_events(5), make_events(5)
    publisher = await _started(publisher_harness)
    await asyncio.wait_for(publisher.publish(first), ARRIVAL_TIMEOUT)
    await publisher.close()
    await publisher.close()  # closing twice is harmless
    await asyncio.wait_for(publisher.start(), ARRIVAL_TIMEOUT)
    await asyncio.wait_for(publisher.publish(second), ARRIVAL_TIMEOUT)
    await publisher.close()
    # A process restart: a new publisher on the same, already existing destination.
    again = await _started(publisher_harness)
    try:
        await asyncio.wait_for(again.publish(third), ARRIVAL_TIMEOUT)
    finally:
        await again.close()
    events = first + second + third
    got = await publisher_harness.received(len(events) + len(_escalated(events)),
                                           timeout=ARRIVAL_TIMEOUT)
    _assert_route(_route(got, escalation=False), events)


@pytest.mark.asyncio
async def test_large_batch_arrives_complete_and_ordered(
    publisher_harness: PublisherHarness,
) -> None:
    events = make_events(1000, body_size=1024)
    assert all(len(e.body) == 1024 for e in events)
    publisher = await _started(publisher_harness)
    try:
        started = time.perf_counter()
        await asyncio.wait_for(publisher.publish(events), 60)
        elapsed = time.perf_counter() - started
    finally:
        await publisher.close()
    got = await publisher_harness.received(len(events) + len(_escalated(events)), timeout=60)
    main = _route(got, escalation=False)
    _assert_route(main, events)
    if publisher_harness.total_order:
        assert [d.id for d in main] == [e.id for e in events]
    print(f"{publisher_harness.kind}: 1000 x 1 KB confirmed in {elapsed:.3f}s")


@pytest.mark.asyncio
async def test_unreachable_broker_is_transient_and_bounded(
    publisher_harness: PublisherHarness,
) -> None:
    publisher = publisher_harness.unreachable_publisher()
    started = time.monotonic()
    with pytest.raises(TransientError):
        async with asyncio.timeout(UNREACHABLE_BOUND):
            # Either start (which connects) or the first publish must say "later".
            await publisher.start()
            await publisher.publish(make_events(3))
    assert time.monotonic() - started < UNREACHABLE_BOUND
    # Still unreachable: publish (which reconnects by itself) says so again.
    with pytest.raises(TransientError):
        async with asyncio.timeout(UNREACHABLE_BOUND):
            await publisher.publish(make_events(3))
    await asyncio.wait_for(publisher.close(), 5)


@pytest.mark.asyncio
async def test_empty_batch_is_a_no_op(publisher_harness: PublisherHarness) -> None:
    publisher = await _started(publisher_harness)
    try:
        await asyncio.wait_for(publisher.publish([]), 5)
    finally:
        await publisher.close()
    assert await publisher_harness.received(0, timeout=0.1) == []


@pytest.mark.asyncio
async def test_event_at_the_size_cap_arrives(publisher_harness: PublisherHarness) -> None:
    # The relay refuses larger events before publishing, so the default cap must fit every
    # broker with its default limits (NATS: max_payload 1 MiB).
    cap = QueueConfig().max_event_bytes
    events = make_events(3, body_size=cap)
    assert all(len(e.body) == cap for e in events)
    publisher = await _started(publisher_harness)
    try:
        await asyncio.wait_for(publisher.publish(events), ARRIVAL_TIMEOUT)
    finally:
        await publisher.close()
    got = await publisher_harness.received(len(events) + len(_escalated(events)),
                                           timeout=ARRIVAL_TIMEOUT)
    _assert_route(_route(got, escalation=False), events)

"""Relay throughput: events/s from the SQLite outbox to each broker, against its own client.

    .venv/bin/python bench/relay_throughput.py [--events 20000]
        [--brokers nats,rabbitmq,redis,webhook] [--batch-size 256] [--rounds 1] [--breakdown]

For each broker, in the same run, with the same N bodies (realistic ``ticket.created``
CloudEvents of 1 KB, unique ids, priority ``medium`` so nothing is escalated):

1. **direct**: the broker's own client publishes the N bodies with the guarantees our publisher
   gives, in batches of the relay's batch size:

   - NATS: ``js.publish_async`` with ``Nats-Msg-Id`` (and the expected-stream header the
     publisher sends), every ack of a batch awaited before the next batch;
   - RabbitMQ: aio-pika, publisher confirms, persistent, ``mandatory``, ``message_id``; the
     batch's publishes pipelined and their confirms awaited together;
   - Redis: one pipeline of ``XADD ... MAXLEN ~ 1000000`` per batch, the same five fields;
   - webhook: one aiohttp session, one signed POST after the other (Standard Webhooks headers),
     each 2xx awaited before the next.

2. **relay**: a fresh :class:`~gateway.store.sqlite.SqliteStore` in a temp directory, filled
   with the same N events before the clock starts; then :class:`~gateway.relay.EventRelay` with
   the real publisher (already connected, as the direct client is), timed from ``relay.start``
   until its durable position reaches the last ``seq``.

Each phase gets its own isolated destination (NATS stream + subject prefix, RabbitMQ exchange
and queues, Redis stream keys), deleted afterwards; the broker must hold exactly N events. The
webhook receiver (:class:`gateway.testing.webhook_receiver.WebhookReceiver`, which checks every
signature) runs in a child process, so its CPU is not taken from the loop being measured.

Prints events/s of both, the relay/direct ratio and the target of issue 5 (ratio >= 0.7), and
this process's CPU time per event in each phase (every thread: the loop, SQLite's writer and
readers). The brokers share the machine (and its cores) with this process, so events/s swings
from run to run; CPU per event swings less. Use ``--rounds`` for a median ratio, and look at the
load average printed with each round: another job on the machine invalidates the comparison.
``--breakdown`` also times where the relay's loop waits (outbox reads, the publisher, position
commits); ``--rounds`` repeats everything, alternating which phase goes first. Exits 1 when a
broker did not hold exactly N events (and N distinct ids on Redis and the webhook, which do not
deduplicate) or the relay logged a failed batch: a run that measured something else. A ratio
below target is reported, not an error. ``--seconds``/``--connections`` (what ``run_all.py``
passes to every script) are accepted and ignored.

Broker addresses: ``INTAKE_TEST_NATS_URL``, ``INTAKE_TEST_RABBITMQ_URL``, ``INTAKE_TEST_REDIS_URL``
with the test suite's defaults (127.0.0.1, guest/guest for RabbitMQ).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import logging
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aio_pika
import aio_pika.abc
import aiohttp
import msgspec
import nats
import nats.js.errors
import redis.asyncio
from nats.js.api import StorageType, StreamConfig

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's gateway
    sys.path.insert(0, str(ROOT))

from gateway.config import QueueConfig  # noqa: E402
from gateway.plugin import OutboundEvent, Publisher  # noqa: E402
from gateway.queues.nats import NatsConfig, NatsPublisher  # noqa: E402
from gateway.queues.rabbitmq import RabbitMqConfig, RabbitMqPublisher  # noqa: E402
from gateway.queues.redis import RedisStreamsConfig, RedisStreamsPublisher  # noqa: E402
from gateway.queues.webhook import WebhookConfig, WebhookPublisher  # noqa: E402
from gateway.relay import EventRelay  # noqa: E402
from gateway.store.sqlite import SqliteStore, SqliteTx  # noqa: E402
from intake_schemas import (  # noqa: E402
    ContactView,
    MessageView,
    TicketCreated,
    TicketCreatedData,
    TicketView,
)

T = TypeVar("T")

TARGET_RATIO = 0.7
EVENT_BYTES = 1024
CONTENT_TYPE = "application/cloudevents+json"
REDIS_MAXLEN = RedisStreamsConfig().maxlen
NATS_DUP_WINDOW = NatsConfig().duplicate_window
FILL_CHUNK = 2000
"""Events appended per writer op while filling the outbox (before the clock starts)."""

URLS = {
    "nats": os.environ.get("INTAKE_TEST_NATS_URL", "nats://127.0.0.1:4222"),
    "rabbitmq": os.environ.get("INTAKE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "redis": os.environ.get("INTAKE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}


# -- the events ---------------------------------------------------------------------------------


def make_events(n: int, size: int = EVENT_BYTES) -> list[OutboundEvent]:
    """``n`` ``ticket.created`` CloudEvents of exactly ``size`` bytes, unique ids and tickets.

    Built with the gateway's own schema types and encoder, the text padded to the size: what
    the outbox holds after ``n`` web-form submissions of a few sentences each.
    """
    encode = msgspec.json.Encoder().encode
    day = datetime.now(UTC).replace(microsecond=0)
    sentence = ("My order arrived with a cracked screen and the replacement I was promised "
                "last week never shipped. Please call me back. ")
    out: list[OutboundEvent] = []
    for i in range(n):
        number = f"CX-{day:%Y%m%d}-{i + 1:05}-{i % 10}"
        event_id = str(uuid.uuid4())

        def build(text: str, i: int = i, number: str = number,
                  event_id: str = event_id) -> TicketCreated:
            return TicketCreated(
                id=event_id, source="urn:intake-gateway", subject=number, time=day,
                priority="medium",
                data=TicketCreatedData(
                    ticket=TicketView(number=number, kind="complaint", area="product",
                                      priority="medium", created_at=day,
                                      due_at=day + timedelta(hours=24), channel="web"),
                    contact=ContactView(id=str(uuid.uuid4()), name="Li Wei",
                                        email=f"customer{i}@example.com", customer_type="existing"),
                    message=MessageView(id=str(uuid.uuid4()), channel="web", received_at=day,
                                        subject="Cracked screen, replacement not shipped",
                                        text=text, locale="en",
                                        order_number=f"SO-{7_000_000 + i}"),
                ),
            )

        missing = size - len(encode(build("")))
        if missing < 0:
            raise ValueError(f"an event is {size - missing} bytes without text; size {size}")
        body = encode(build((sentence * (missing // len(sentence) + 1))[:missing]))
        assert len(body) == size, len(body)
        out.append(OutboundEvent(seq=i + 1, id=event_id, type="ticket.created", subject=number,
                                 priority="medium", body=body))
    return out


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def tag() -> str:
    """A short random name part for isolated destinations."""
    return uuid.uuid4().hex[:10]


# -- brokers: a direct client, the gateway's publisher, counting, cleaning up ------------------


@dataclass
class Clock:
    """Wall time and this process's CPU time (every thread: the loop, SQLite's) of a phase."""

    wall: float = 0.0
    cpu: float = 0.0

    @classmethod
    def start(cls) -> Clock:
        """A clock running from now; :meth:`stop` turns it into durations."""
        return cls(time.perf_counter(), time.process_time())

    def stop(self) -> None:
        """Replace the start readings with the time elapsed since."""
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


@dataclass
class Count:
    """What a destination holds after a phase."""

    received: int
    distinct: int | None = None
    """Distinct event ids, where the broker does not deduplicate itself (None: not checked)."""


class Broker:
    """One broker: a direct-client phase and a gateway-publisher phase, each on its own
    destination (created by the phase, deleted by :meth:`cleanup`)."""

    kind: ClassVar[str] = ""

    async def setup(self) -> None:
        """Anything shared by the phases (the webhook receiver)."""

    async def direct(self, events: Sequence[OutboundEvent], batch: int) -> tuple[Clock, Count]:
        """Publish ``events`` with the broker's own client; (its clock, what the broker holds)."""
        raise NotImplementedError

    def publisher(self) -> Publisher:
        """The gateway's publisher on a fresh destination."""
        raise NotImplementedError

    async def count_published(self, publisher: Publisher) -> Count:
        """What the destination of :meth:`publisher` holds."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Delete every destination created."""


class NatsBroker(Broker):
    """Streams ``BENCH_<tag>`` capturing ``b<tag>.events.>`` and ``b<tag>.escalations.>``."""

    kind = "nats"

    def __init__(self) -> None:
        self.url = URLS["nats"]
        self.streams: list[str] = []

    def _dest(self) -> tuple[str, str]:
        t = tag()
        self.streams.append(f"BENCH_{t}")
        return f"BENCH_{t}", f"b{t}"

    async def direct(self, events: Sequence[OutboundEvent], batch: int) -> tuple[Clock, Count]:
        stream, prefix = self._dest()
        nc = await nats.connect(self.url, name="bench-direct")
        try:
            js = nc.jetstream(timeout=5.0)
            # The stream the publisher creates: same subjects, file storage, duplicate window.
            await js.add_stream(StreamConfig(
                name=stream, subjects=[f"{prefix}.events.>", f"{prefix}.escalations.>"],
                storage=StorageType.FILE, num_replicas=1, duplicate_window=NATS_DUP_WINDOW))
            subject = f"{prefix}.events"
            clock = Clock.start()
            for part in chunks(events, batch):
                futures = [await js.publish_async(
                    f"{subject}.{e.type}", e.body, stream=stream,
                    headers={"Nats-Msg-Id": e.id, "Content-Type": CONTENT_TYPE}) for e in part]
                for ack in await asyncio.gather(*futures):
                    assert not ack.duplicate
            clock.stop()
            info = await js.stream_info(stream)
            return clock, Count(int(info.state.messages))
        finally:
            await nc.close()

    def publisher(self) -> NatsPublisher:
        stream, prefix = self._dest()
        return NatsPublisher(NatsConfig(url=self.url, stream=stream, subject_prefix=prefix))

    async def count_published(self, publisher: Publisher) -> Count:
        assert isinstance(publisher, NatsPublisher)
        nc = await nats.connect(self.url)
        try:
            info = await nc.jetstream().stream_info(publisher.config.stream)
        finally:
            await nc.close()
        # JetStream dropped re-sent msg ids itself; any it reported must be zero here.
        assert publisher.duplicates == 0, publisher.duplicates
        return Count(int(info.state.messages))

    async def cleanup(self) -> None:
        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            for stream in self.streams:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)
        finally:
            await nc.close()


class RabbitMqBroker(Broker):
    """Durable topic exchanges ``bench.<tag>`` with queues ``.events`` (``#``) and
    ``.escalations`` (``#.high``), declared as the publisher declares them."""

    kind = "rabbitmq"

    def __init__(self) -> None:
        self.url = URLS["rabbitmq"]
        self.exchanges: list[str] = []

    def _dest(self) -> tuple[str, str, str]:
        name = f"bench.{tag()}"
        self.exchanges.append(name)
        return name, f"{name}.events", f"{name}.escalations"

    async def direct(self, events: Sequence[OutboundEvent], batch: int) -> tuple[Clock, Count]:
        name, queue, escalations = self._dest()
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC,
                                                      durable=True)
            for qname, binding in ((queue, "#"), (escalations, "#.high")):
                q = await channel.declare_queue(qname, durable=True,
                                                arguments={"x-queue-type": "classic"})
                await q.bind(exchange, routing_key=binding)
            clock = Clock.start()
            for part in chunks(events, batch):
                await asyncio.gather(*(exchange.publish(
                    aio_pika.Message(e.body, message_id=e.id, content_type=CONTENT_TYPE,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     type=e.type, app_id="bench-direct"),
                    routing_key=f"{e.type}.{e.priority or 'none'}", mandatory=True)
                    for e in part))
            clock.stop()
            return clock, await self._count(channel, queue)
        finally:
            await connection.close()

    @staticmethod
    async def _count(channel: aio_pika.abc.AbstractChannel, queue: str) -> Count:
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return Count(int(result.message_count or 0))

    def publisher(self) -> RabbitMqPublisher:
        name, queue, escalations = self._dest()
        return RabbitMqPublisher(RabbitMqConfig(url=self.url, exchange=name, queue=queue,
                                                escalation_queue=escalations))

    async def count_published(self, publisher: Publisher) -> Count:
        assert isinstance(publisher, RabbitMqPublisher)
        assert publisher.config.queue is not None
        connection = await aio_pika.connect(self.url)
        try:
            return await self._count(await connection.channel(), publisher.config.queue)
        finally:
            await connection.close()

    async def cleanup(self) -> None:
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            for name in self.exchanges:
                for queue in (f"{name}.events", f"{name}.escalations"):
                    await channel.queue_delete(queue)
                await channel.exchange_delete(name)
        finally:
            await connection.close()


class RedisBroker(Broker):
    """Stream keys ``bench:<tag>:events`` and ``bench:<tag>:escalations``."""

    kind = "redis"

    def __init__(self) -> None:
        self.url = URLS["redis"]
        self.keys: list[str] = []

    def _dest(self) -> tuple[str, str]:
        t = tag()
        self.keys += [f"bench:{t}:events", f"bench:{t}:escalations"]
        return f"bench:{t}:events", f"bench:{t}:escalations"

    async def direct(self, events: Sequence[OutboundEvent], batch: int) -> tuple[Clock, Count]:
        stream, _ = self._dest()
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            await client.ping()
            clock = Clock.start()
            for part in chunks(events, batch):
                pipe = client.pipeline(transaction=False)
                for e in part:
                    pipe.xadd(stream, {"id": e.id, "type": e.type, "subject": e.subject,
                                       "priority": e.priority or "", "data": e.body},
                              maxlen=REDIS_MAXLEN, approximate=True)
                await pipe.execute()
            clock.stop()
            return clock, await self._count(client, stream)
        finally:
            await client.aclose()

    @staticmethod
    async def _count(client: redis.asyncio.Redis, stream: str) -> Count:
        ids: set[bytes] = set()
        received = 0
        start = "-"
        while True:
            entries = await client.xrange(stream, min=start, max="+", count=5000)
            if not entries:
                break
            for _entry_id, fields in entries:
                ids.add(fields[b"id"])
            received += len(entries)
            start = "(" + entries[-1][0].decode()
        return Count(received, len(ids))

    def publisher(self) -> RedisStreamsPublisher:
        stream, escalations = self._dest()
        return RedisStreamsPublisher(RedisStreamsConfig(url=self.url, stream=stream,
                                                        escalation_stream=escalations))

    async def count_published(self, publisher: Publisher) -> Count:
        assert isinstance(publisher, RedisStreamsPublisher)
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            return await self._count(client, publisher.config.stream)
        finally:
            await client.aclose()

    async def cleanup(self) -> None:
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            if self.keys:
                await client.delete(*self.keys)
        finally:
            await client.aclose()


class WebhookBroker(Broker):
    """A :class:`WebhookReceiver` in a child process (this script with ``--webhook-receiver``);
    asked over its stdin for its counts and to forget deliveries between phases."""

    kind = "webhook"

    def __init__(self) -> None:
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.key = base64.b64decode(self.secret.removeprefix("whsec_"))
        self._dir = tempfile.TemporaryDirectory(prefix="intake-bench-webhook-")
        self.secret_file = Path(self._dir.name) / "secret"
        self.secret_file.write_text(self.secret + "\n", encoding="utf-8")
        self._child: asyncio.subprocess.Process | None = None
        self.port = 0

    async def setup(self) -> None:
        self._child = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--webhook-receiver",
            str(self.secret_file), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.port = int(await self._ask(None))

    async def _ask(self, command: str | None) -> str:
        child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None
        if command is not None:
            child.stdin.write(command.encode() + b"\n")
            await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"the webhook receiver exited ({child.returncode})")
        return line.decode().strip()

    async def _counts(self) -> Count:
        received, distinct, rejected = map(int, (await self._ask("count")).split())
        if rejected:
            raise RuntimeError(f"the receiver refused {rejected} signatures")
        await self._ask("reset")
        return Count(received, distinct)

    def url(self, path: str = "/events") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def direct(self, events: Sequence[OutboundEvent], batch: int) -> tuple[Clock, Count]:
        url = self.url()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0),
                                         headers={"User-Agent": "bench-direct"}) as session:
            await self._post(session, url, events[0])  # connect outside the clock ...
            await self._counts()  # ... and forget that delivery
            clock = Clock.start()
            for e in events:
                await self._post(session, url, e)
            clock.stop()
        return clock, await self._counts()

    async def _post(self, session: aiohttp.ClientSession, url: str, e: OutboundEvent) -> None:
        timestamp = int(time.time())
        mac = hmac.new(self.key, f"{e.id}.{timestamp}.".encode() + e.body, hashlib.sha256)
        headers = {"Content-Type": CONTENT_TYPE, "Webhook-Id": e.id,
                   "Webhook-Timestamp": str(timestamp),
                   "Webhook-Signature": "v1," + base64.b64encode(mac.digest()).decode()}
        async with session.post(url, data=e.body, headers=headers,
                                allow_redirects=False) as response:
            if not 200 <= response.status < 300:
                raise RuntimeError(f"webhook answered {response.status}")

    def publisher(self) -> WebhookPublisher:
        return WebhookPublisher(WebhookConfig(url=self.url(),
                                              escalation_url=self.url("/escalations"),
                                              secret_file=str(self.secret_file)))

    async def count_published(self, publisher: Publisher) -> Count:
        return await self._counts()

    async def cleanup(self) -> None:
        child = self._child
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
        self._dir.cleanup()


BROKERS: dict[str, Callable[[], Broker]] = {
    "nats": NatsBroker, "rabbitmq": RabbitMqBroker, "redis": RedisBroker,
    "webhook": WebhookBroker,
}


async def serve_webhook_receiver(secret_file: str) -> None:
    """Child-process mode: run the receiver; answer ``count`` and ``reset`` lines on stdin."""
    from gateway.testing.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver(Path(secret_file).read_text(encoding="utf-8").strip())
    await receiver.start()
    print(receiver.port, flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "count":
                ids = {d.event_id for d in receiver.deliveries}
                print(len(receiver.deliveries), len(ids), receiver.rejected, flush=True)
            elif line.strip() == "reset":
                receiver.deliveries.clear()
                receiver.rejected = receiver.requests = 0
                print("ok", flush=True)
    finally:
        await receiver.stop()


# -- the relay phase ----------------------------------------------------------------------------


@dataclass
class Breakdown:
    """Wall time the relay's loop spent awaiting each step (``--breakdown``)."""

    read: float = 0.0
    publish: float = 0.0
    advance: float = 0.0
    batches: int = 0

    def line(self, total: float) -> str:
        rest = max(0.0, total - self.read - self.publish - self.advance)
        per = 1000 / max(1, self.batches)
        return (f"{self.batches} batches; per batch: read {self.read * per:.2f} ms, publish "
                f"{self.publish * per:.2f} ms, position commit {self.advance * per:.2f} ms, "
                f"other {rest * per:.2f} ms  (shares {self.read / total:.0%} / "
                f"{self.publish / total:.0%} / {self.advance / total:.0%} / {rest / total:.0%})")


class TimedStore(SqliteStore):
    """The store, timing the relay's reads and writer round trips when ``timing`` is set, and
    telling :func:`relay_phase` when a writer round trip (a position commit) returned."""

    timing: Breakdown | None = None
    committed: asyncio.Event | None = None

    async def read(self, fn: Callable[[Any], T]) -> T:
        timing = self.timing
        if timing is None:
            return await super().read(fn)
        started = time.perf_counter()
        try:
            return await super().read(fn)
        finally:
            timing.read += time.perf_counter() - started

    async def run(self, fn: Callable[[SqliteTx], T]) -> T:
        timing = self.timing
        started = time.perf_counter()
        try:
            return await super().run(fn)
        finally:
            if timing is not None:
                timing.advance += time.perf_counter() - started
            if self.committed is not None:
                # The relay sets its position right after this returns, in the same step; the
                # waiter, woken later in the loop, sees it.
                self.committed.set()


class TimedPublisher:
    """A publisher wrapper adding the time spent in ``publish`` to a :class:`Breakdown`."""

    def __init__(self, inner: Publisher, timing: Breakdown) -> None:
        self.inner = inner
        self.timing = timing
        self.kind = inner.kind
        self.Config = inner.Config

    async def start(self) -> None:
        await self.inner.start()

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        started = time.perf_counter()
        try:
            await self.inner.publish(events)
        finally:
            self.timing.publish += time.perf_counter() - started
            self.timing.batches += 1

    async def close(self) -> None:
        await self.inner.close()


class FailureCount(logging.Handler):
    """Counts the relay's warnings and errors (a retried batch measured something else)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def relay_phase(broker: Broker, events: Sequence[OutboundEvent], batch: int, work: Path,
                      breakdown: bool) -> tuple[Clock, Count, Breakdown | None, int]:
    """Fill a fresh outbox, then time the relay draining it into the broker.

    Returns (its clock, what the broker holds, the breakdown if asked, relay warnings)."""
    folder = Path(tempfile.mkdtemp(prefix=f"relay-{broker.kind}-", dir=work))
    store = TimedStore(folder / "intake.sqlite3")
    await store.open()
    relay: EventRelay | None = None
    publisher = broker.publisher()
    failures = FailureCount()
    logging.getLogger("intake.relay").addHandler(failures)
    try:
        for part in chunks(events, FILL_CHUNK):
            def fill(tx: SqliteTx, part: Sequence[OutboundEvent] = part) -> None:
                for e in part:
                    tx.append_event(event_id=e.id, type_=e.type, subject=e.subject,
                                    priority=e.priority, body=e.body)
            await store.run(fill)
        target = store.last_seq
        assert target == len(events), (target, len(events))
        await publisher.start()
        timing = Breakdown() if breakdown else None
        used: Publisher = TimedPublisher(publisher, timing) if timing else publisher
        store.timing = timing
        relay = EventRelay(store, used, name=broker.kind, batch_size=batch,
                           max_attempts=QueueConfig().max_attempts)
        committed = store.committed = asyncio.Event()
        gc.collect()
        deadline = time.monotonic() + max(120.0, len(events) / 50)
        clock = Clock.start()
        await relay.start(connected=True)
        while relay.position < target:
            # Woken after each position commit rather than polling: no timer in the loop
            # being measured, and the clock stops at the commit that reached the target.
            try:
                await asyncio.wait_for(committed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RuntimeError(f"relay stuck at {relay.position} of {target}") from None
            committed.clear()
        clock.stop()
        store.timing = None
        await relay.stop()
        relay = None
        count = await broker.count_published(publisher)
        return clock, count, timing, failures.count
    finally:
        logging.getLogger("intake.relay").removeHandler(failures)
        if relay is not None:
            await relay.stop()
        await publisher.close()
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)


# -- running and reporting ----------------------------------------------------------------------


@dataclass
class Result:
    """One broker in one round."""

    broker: str
    events: int
    direct: Clock = field(default_factory=Clock)
    relay: Clock = field(default_factory=Clock)
    direct_count: Count = field(default_factory=lambda: Count(0))
    relay_count: Count = field(default_factory=lambda: Count(0))
    relay_warnings: int = 0
    breakdown: Breakdown | None = None

    @property
    def direct_eps(self) -> float:
        return self.events / self.direct.wall

    @property
    def relay_eps(self) -> float:
        return self.events / self.relay.wall

    def cpu_us(self, clock: Clock) -> float:
        """This process's CPU time per event in a phase, in microseconds."""
        return clock.cpu / self.events * 1e6

    @property
    def ratio(self) -> float:
        return self.relay_eps / self.direct_eps

    def problems(self) -> list[str]:
        """Why this result measured something else than N events delivered once each."""
        out = []
        for label, c in (("direct", self.direct_count), ("relay", self.relay_count)):
            if c.received != self.events or c.distinct not in (None, self.events):
                out.append(f"{self.broker} {label}: the broker holds {c.received} events"
                           + (f" ({c.distinct} distinct ids)" if c.distinct is not None else "")
                           + f", expected {self.events}")
        if self.relay_warnings:
            out.append(f"{self.broker} relay: {self.relay_warnings} warnings (failed batches)")
        return out


async def bench_broker(kind: str, events: Sequence[OutboundEvent], args: argparse.Namespace,
                       work: Path, relay_first: bool) -> Result:
    """Both phases for one broker, in the order asked; destinations deleted afterwards."""
    broker = BROKERS[kind]()
    result = Result(kind, len(events))
    await broker.setup()
    try:
        async def direct() -> None:
            gc.collect()
            result.direct, result.direct_count = await broker.direct(events, args.batch_size)

        async def relay() -> None:
            result.relay, result.relay_count, result.breakdown, result.relay_warnings = (
                await relay_phase(broker, events, args.batch_size, work, args.breakdown))

        phases: list[Callable[[], Awaitable[None]]] = [direct, relay]
        for phase in reversed(phases) if relay_first else phases:
            await phase()
    finally:
        await broker.cleanup()
    return result


def print_table(results: Sequence[Result]) -> None:
    """broker, events/s of both, ratio, target, verdict; then CPU per event of both."""
    head = (f"{'broker':<9} {'events':>6} {'direct ev/s':>11} {'relay ev/s':>10} {'ratio':>5} "
            f"{'target':>6}  {'verdict':<7} {'cpu us/ev direct':>16} {'relay':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        verdict = "INVALID" if r.problems() else ("met" if r.ratio >= TARGET_RATIO else "MISSED")
        print(f"{r.broker:<9} {r.events:>6} {r.direct_eps:>11.0f} {r.relay_eps:>10.0f} "
              f"{r.ratio:>5.2f} {TARGET_RATIO:>6}  {verdict:<7} {r.cpu_us(r.direct):>16.0f} "
              f"{r.cpu_us(r.relay):>6.0f}")
    for r in results:
        if r.breakdown is not None:
            print(f"  {r.broker} relay: {r.breakdown.line(r.relay.wall)}")
    for r in results:
        for problem in r.problems():
            print(f"  INVALID: {problem}")


def describe_machine(work: Path) -> str:
    """Python, clients, CPUs and the file system the outbox lives on (its fsync cost)."""
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(work)],
                        capture_output=True, text=True, check=False).stdout.strip()
    libs = ", ".join(f"{name} {version(name)}"
                     for name in ("nats-py", "aio-pika", "redis", "aiohttp"))
    return (f"{platform.python_implementation()} {platform.python_version()}, {libs}, "
            f"{os.cpu_count()} CPUs, outbox on {fs or '?'} ({work})")


async def run(args: argparse.Namespace) -> int:
    """Every round of every broker; the tables; exit status 1 on an invalid result."""
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BROKERS]
    if unknown:
        sys.exit(f"unknown broker(s) {unknown}; choose from {', '.join(BROKERS)}")
    work = Path(tempfile.mkdtemp(prefix="intake-bench-relay-", dir=args.tmpdir))
    print(f"relay_throughput: {describe_machine(work)}")
    print(f"{args.events} events of {EVENT_BYTES} bytes per phase, batch size {args.batch_size}, "
          f"{args.rounds} round(s); webhook receiver in a child process; 1-min load average "
          f"{os.getloadavg()[0]:.2f} before starting", flush=True)
    events = make_events(args.events)
    every: list[list[Result]] = []
    try:
        for round_no in range(args.rounds):
            relay_first = round_no % 2 == 1
            results = []
            for kind in kinds:
                results.append(await bench_broker(kind, events, args, work, relay_first))
            every.append(results)
            print(f"\nround {round_no + 1} ({'relay' if relay_first else 'direct'} first; "
                  f"1-min load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
            print_table(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.rounds > 1:
        print(f"\nmedian ratio over {args.rounds} rounds: " + ", ".join(
            f"{k} {statistics.median(rs[i].ratio for rs in every):.2f}"
            for i, k in enumerate(kinds)))
    return 1 if any(r.problems() for rs in every for r in rs) else 0


def main() -> int:
    """Parse the arguments and run (or, with ``--webhook-receiver``, be the receiver)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="events per phase")
    p.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated subset")
    p.add_argument("--batch-size", type=int, default=QueueConfig().batch_size,
                   help="the relay's batch size, and the direct clients' (default: the "
                   "gateway's [queue] batch_size)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat everything, alternating which phase goes first")
    p.add_argument("--breakdown", action="store_true",
                   help="time the relay's reads, publishes and position commits")
    p.add_argument("--tmpdir", help="where the outbox goes (default: the system's temp dir)")
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # run_all.py passes these
    p.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    p.add_argument("--webhook-receiver", metavar="SECRET_FILE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.webhook_receiver:
        asyncio.run(serve_webhook_receiver(args.webhook_receiver))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

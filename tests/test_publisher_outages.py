"""Broker outages, per publisher, without touching the shared servers.

NATS and Redis: a private server on a spare port with its own directory, killed (or frozen with
SIGSTOP) mid-run and started again on the same port and directory. RabbitMQ is slow to start,
so its connection goes through a TCP proxy the test cuts, stalls and restores. Webhooks: the
local receiver answers 500, 429 with Retry-After, or hangs. Every time: publishing while the
broker is away fails with TransientError within a bound, and once it is back the *same*
publisher object publishes again by itself; after consumer-side dedup by id every event is there
once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.errors import PermanentError, TransientError
from gateway.plugin import OutboundEvent, Publisher
from gateway.queues.webhook import WebhookConfig, WebhookPublisher, WebhookUnavailable
from gateway.testing.publisher_contract import Delivered, PublisherHarness, make_events
from gateway.testing.publisher_harnesses import (
    NatsHarness,
    RabbitMqHarness,
    RedisHarness,
    WebhookHarness,
)
from gateway.testing.servers import PrivateServer
from gateway.testing.services import free_port, require_executable, service_url

pytestmark = pytest.mark.asyncio

DOWN_BOUND = 6.0
"""A publish against a dead or frozen broker must fail within this many seconds."""
RECOVERY_BOUND = 30.0
"""After the broker is back, the same publisher must succeed within this many seconds."""


# --- private servers and a proxy ---------------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[PrivateServer]:
    exe = require_executable("nats-server", hint="apt-get install nats-server")
    port = free_port()
    server = PrivateServer(
        [exe, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        port, tmp_path / "nats.log",
    )
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateServer]:
    exe = require_executable("redis-server", hint="apt-get install redis-server")
    port = free_port()
    server = PrivateServer(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no"],
        port, tmp_path / "redis.log",
    )
    server.start()
    yield server
    server.kill()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; the test can cut, stall and restore the link."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Listen (again, on the same port after a cut)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_links()

    def stall(self) -> None:
        """Keep connections open but stop forwarding bytes (a silent network)."""
        self._flowing.clear()

    async def restore(self) -> None:
        """Drop stalled connections, forward again and accept new connections."""
        if not self._flowing.is_set():
            self._drop_links()
            self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _drop_links(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        link = (client_w, up_w)
        self._links.add(link)
        for reader, writer in ((client_r, up_w), (up_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest_asyncio.fixture
async def rabbitmq_proxy() -> AsyncIterator[TcpProxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(service_url("INTAKE_TEST_RABBITMQ_URL"))
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.close()


# --- shared steps ------------------------------------------------------------------------------


async def expect_transient(publisher: Publisher, events: Sequence[OutboundEvent]) -> float:
    """Publishing must fail with TransientError within DOWN_BOUND; returns the seconds taken."""
    started = time.monotonic()
    with pytest.raises(TransientError):
        async with asyncio.timeout(DOWN_BOUND):
            await publisher.publish(events)
    return time.monotonic() - started


async def publish_until_accepted(publisher: Publisher, events: Sequence[OutboundEvent]) -> int:
    """What the relay does after an outage: retry the same batch until it is confirmed."""
    attempts = 0
    async with asyncio.timeout(RECOVERY_BOUND):
        while True:
            attempts += 1
            try:
                await publisher.publish(events)
                return attempts
            except TransientError:
                await asyncio.sleep(0.2)


async def received_all(harness: PublisherHarness, events: Sequence[OutboundEvent], *,
                       timeout: float = 30.0) -> list[Delivered]:
    """What arrived, once every event did (or ``timeout``); duplicates make counts unreliable."""
    wanted = {e.id for e in events}
    deadline = time.monotonic() + timeout
    while True:
        got = await harness.received(len(events), timeout=1.0)
        if wanted <= {d.id for d in got} or time.monotonic() > deadline:
            return got


def assert_complete_in_order(delivered: Sequence[Delivered],
                             events: Sequence[OutboundEvent]) -> None:
    """After dedup by id, the main route holds every event once, in publish order."""
    seen: set[str] = set()
    kept = []
    for d in delivered:
        if not d.escalation and d.id not in seen:
            seen.add(d.id)
            kept.append(d)
    assert [d.id for d in kept] == [e.id for e in events]
    bodies = {e.id: e.body for e in events}
    assert all(d.body == bodies[d.id] for d in kept)


# --- NATS --------------------------------------------------------------------------------------


def nats_publisher(harness: NatsHarness) -> Publisher:
    return harness.publisher(connect_timeout=1.0, reconnect_wait=0.2, ack_timeout=2.0)


async def test_nats_killed_mid_batch_then_restarted(nats_server: PrivateServer) -> None:
    async with NatsHarness(f"nats://127.0.0.1:{nats_server.port}") as harness:
        publisher = nats_publisher(harness)
        before, batch, during = make_events(10), make_events(5000, body_size=1024), make_events(10)
        await publisher.start()
        await publisher.publish(before)

        # Killed while a large batch is in flight.
        in_flight = asyncio.create_task(publisher.publish(batch))
        await asyncio.sleep(0.01)
        nats_server.kill()
        with pytest.raises(TransientError):
            await asyncio.wait_for(in_flight, DOWN_BOUND)
        down = await expect_transient(publisher, during)

        nats_server.start()
        await publish_until_accepted(publisher, batch)  # the relay retries the failed batch
        await publish_until_accepted(publisher, during)

        everything = before + batch + during
        got = await received_all(harness, everything)
        assert_complete_in_order(got, everything)
        # The part of the batch stored before the kill was not stored again on the retry.
        assert len([d for d in got if not d.escalation]) == len(everything)
        assert down < DOWN_BOUND
        await publisher.close()


async def test_nats_frozen_server_times_out_then_recovers(nats_server: PrivateServer) -> None:
    async with NatsHarness(f"nats://127.0.0.1:{nats_server.port}") as harness:
        publisher = nats_publisher(harness)
        events = make_events(20)
        await publisher.start()
        nats_server.freeze()
        try:
            took = await expect_transient(publisher, events)
        finally:
            nats_server.thaw()
        assert took < 2.0 + 1.0  # the ack timeout, not a hang
        await publish_until_accepted(publisher, events)
        got = await received_all(harness, events)
        assert_complete_in_order(got, events)
        await publisher.close()


async def test_nats_down_at_start_then_up(tmp_path: Path) -> None:
    exe = require_executable("nats-server", hint="apt-get install nats-server")
    port = free_port()
    server = PrivateServer([exe, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                            str(tmp_path / "js")], port, tmp_path / "nats.log")
    try:
        async with NatsHarness(f"nats://127.0.0.1:{port}") as harness:
            publisher = nats_publisher(harness)
            with pytest.raises(TransientError):
                await asyncio.wait_for(publisher.start(), DOWN_BOUND)
            events = make_events(5)
            await expect_transient(publisher, events)
            server.start()
            # No second start: publish connects (and creates the stream) by itself.
            await publish_until_accepted(publisher, events)
            assert_complete_in_order(await received_all(harness, events), events)
            await publisher.close()
    finally:
        server.kill()


# --- Redis -------------------------------------------------------------------------------------


def redis_publisher(harness: RedisHarness) -> Publisher:
    return harness.publisher(connect_timeout=1.0, timeout=1.0)


async def test_redis_killed_then_restarted(redis_server: PrivateServer) -> None:
    async with RedisHarness(f"redis://127.0.0.1:{redis_server.port}/0") as harness:
        publisher = redis_publisher(harness)
        await publisher.start()
        await publisher.publish(make_events(10))
        redis_server.kill()
        events = make_events(200)
        await expect_transient(publisher, events)
        redis_server.start()
        attempts = await publish_until_accepted(publisher, events)
        # This Redis keeps nothing on disk (--save "" --appendonly no): what was added before the
        # kill is gone, which is the server's durability setting, not the publisher's doing.
        assert_complete_in_order(await received_all(harness, events), events)
        assert attempts <= 2, "the pooled connection should be replaced on the first try"
        await publisher.close()


async def test_redis_frozen_server_times_out_then_recovers(redis_server: PrivateServer) -> None:
    async with RedisHarness(f"redis://127.0.0.1:{redis_server.port}/0") as harness:
        publisher = redis_publisher(harness)
        events = make_events(50)
        await publisher.start()
        redis_server.freeze()
        try:
            took = await expect_transient(publisher, events)
        finally:
            redis_server.thaw()
        assert took < 1.0 + 1.0 + 1.0
        await publish_until_accepted(publisher, events)
        # The frozen server still executes what it had buffered when thawed: duplicates, which
        # consumers drop by id.
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


# --- RabbitMQ ----------------------------------------------------------------------------------


def rabbitmq_harness(proxy: TcpProxy) -> RabbitMqHarness:
    return RabbitMqHarness(publish_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")


def rabbitmq_publisher(harness: RabbitMqHarness) -> Publisher:
    return harness.publisher(connect_timeout=2.0, reconnect_wait=0.2, confirm_timeout=2.0)


async def test_rabbitmq_connection_cut_mid_batch_then_restored(rabbitmq_proxy: TcpProxy) -> None:
    async with rabbitmq_harness(rabbitmq_proxy) as harness:
        publisher = rabbitmq_publisher(harness)
        before, batch, during = make_events(10), make_events(3000, body_size=1024), make_events(10)
        await publisher.start()
        await publisher.publish(before)

        in_flight = asyncio.create_task(publisher.publish(batch))
        await asyncio.sleep(0.02)
        await rabbitmq_proxy.cut()
        with pytest.raises(TransientError):
            await asyncio.wait_for(in_flight, DOWN_BOUND)
        await expect_transient(publisher, during)

        await rabbitmq_proxy.restore()
        await publish_until_accepted(publisher, batch)
        await publish_until_accepted(publisher, during)
        everything = before + batch + during
        got = await received_all(harness, everything)
        assert_complete_in_order(got, everything)
        await publisher.close()


async def test_rabbitmq_stalled_link_times_out_then_recovers(rabbitmq_proxy: TcpProxy) -> None:
    async with rabbitmq_harness(rabbitmq_proxy) as harness:
        publisher = rabbitmq_publisher(harness)
        events = make_events(20)
        await publisher.start()
        rabbitmq_proxy.stall()
        took = await expect_transient(publisher, events)
        assert took < 2.0 + 1.0  # the confirm timeout, not a hang
        await rabbitmq_proxy.restore()
        await publish_until_accepted(publisher, events)
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


async def test_rabbitmq_down_at_start_then_up(rabbitmq_proxy: TcpProxy) -> None:
    async with rabbitmq_harness(rabbitmq_proxy) as harness:
        await rabbitmq_proxy.cut()
        publisher = rabbitmq_publisher(harness)
        with pytest.raises(TransientError):
            await asyncio.wait_for(publisher.start(), DOWN_BOUND)
        events = make_events(5)
        await expect_transient(publisher, events)
        await rabbitmq_proxy.restore()
        await publish_until_accepted(publisher, events)
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


# --- webhook -----------------------------------------------------------------------------------


def webhook_publisher(harness: WebhookHarness, **settings: object) -> WebhookPublisher:
    base: dict[str, object] = {"timeout": 0.5, "attempts": 3, "backoff": 0.05}
    publisher = harness.publisher(**{**base, **settings})
    assert isinstance(publisher, WebhookPublisher)
    return publisher


async def test_webhook_500s_are_retried_then_transient() -> None:
    async with WebhookHarness() as harness:
        receiver = harness.receiver
        publisher = webhook_publisher(harness)
        events = make_events(6)
        await publisher.start()
        receiver.fail_next(2, status=500)
        await publisher.publish(events)  # two failures fit in three tries
        assert receiver.requests >= 2 + 1

        receiver.fail_next(100, status=503)
        took = await expect_transient(publisher, events)
        assert took < 1.0
        receiver.clear_faults()
        await publish_until_accepted(publisher, events)
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


async def test_webhook_429_retry_after_is_honoured() -> None:
    async with WebhookHarness() as harness:
        receiver = harness.receiver
        publisher = webhook_publisher(harness, max_retry_after=5.0)
        events = make_events(3)
        await publisher.start()

        receiver.fail_next(1, status=429, retry_after=1)
        started = time.monotonic()
        await asyncio.wait_for(publisher.publish(events), DOWN_BOUND)
        assert time.monotonic() - started >= 1.0, "Retry-After was not waited out"

        # Longer than we wait inside publish: fail at once, telling the relay when to come back.
        receiver.fail_next(1, status=429, retry_after=120)
        started = time.monotonic()
        with pytest.raises(WebhookUnavailable) as failure:
            await asyncio.wait_for(publisher.publish(events), DOWN_BOUND)
        assert failure.value.retry_after == 120
        assert time.monotonic() - started < 1.0
        await publisher.close()


async def test_webhook_hanging_receiver_times_out_then_recovers() -> None:
    async with WebhookHarness() as harness:
        publisher = webhook_publisher(harness, attempts=2)
        events = make_events(4)
        await publisher.start()
        harness.receiver.hang_next(2)
        took = await expect_transient(publisher, events)
        assert took < 2 * 0.5 + 0.5
        await publish_until_accepted(publisher, events)
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


async def test_webhook_receiver_down_then_back_on_the_same_port() -> None:
    async with WebhookHarness() as harness:
        publisher = webhook_publisher(harness)
        events = make_events(4)
        await publisher.start()
        await harness.receiver.stop()
        await expect_transient(publisher, events)
        await harness.receiver.start()
        await publish_until_accepted(publisher, events)
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


@pytest.mark.parametrize("status", [400, 413, 414, 415, 422])
async def test_webhook_payload_refusals_are_permanent(status: int) -> None:
    async with WebhookHarness() as harness:
        publisher = webhook_publisher(harness)
        await publisher.start()
        harness.receiver.fail_next(1, status=status)
        with pytest.raises(PermanentError):
            await asyncio.wait_for(publisher.publish(make_events(1)), DOWN_BOUND)
        assert harness.receiver.requests == 1, "a refused payload is not retried inside publish"
        await publisher.close()


@pytest.mark.parametrize("status", [401, 403, 404, 409, 410, 425, 301])
async def test_webhook_receiver_that_may_recover_is_transient_at_once(status: int) -> None:
    async with WebhookHarness() as harness:
        publisher = webhook_publisher(harness)
        await publisher.start()
        harness.receiver.fail_next(1, status=status, retry_after=7)
        with pytest.raises(WebhookUnavailable) as failure:
            await asyncio.wait_for(publisher.publish(make_events(1)), DOWN_BOUND)
        assert failure.value.retry_after == 7, "Retry-After is handed to the relay"
        # No burst of quick tries: the relay's capped backoff paces the next one.
        assert harness.receiver.requests == 1
        events = make_events(2)
        await publisher.publish(events)  # recovered: delivered as usual
        assert_complete_in_order(await received_all(harness, events), events)
        await publisher.close()


async def test_webhook_wrong_secret_is_refused_by_the_receiver(tmp_path: Path) -> None:
    async with WebhookHarness() as harness:
        wrong = tmp_path / "wrong-secret"
        wrong.write_text("not-the-secret", encoding="utf-8")
        publisher = WebhookPublisher(WebhookConfig(url=harness.receiver.url(),
                                                   secret_file=str(wrong)))
        await publisher.start()
        # 401: the receiver may be given the new secret any minute; the relay retries later.
        with pytest.raises(WebhookUnavailable):
            await asyncio.wait_for(publisher.publish(make_events(1)), DOWN_BOUND)
        assert harness.receiver.rejected == 1 and harness.receiver.deliveries == []
        await publisher.close()

"""Harnesses of the built-in publishers for :mod:`gateway.testing.publisher_contract`.

Each one gives every test its own destination on the real server (a stream and subject prefix
on NATS, an exchange and two queues on RabbitMQ, two stream keys on Redis, a local receiver for
webhooks) and deletes it afterwards, so tests never see each other's events. Server addresses
come from :func:`gateway.testing.services.service_url`; fault tests pass their own (a private
server, a proxy) to the constructor.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aio_pika
import aio_pika.abc
import nats
import nats.aio.client
import nats.errors
import nats.js.errors
import redis.asyncio
import redis.exceptions

from gateway.queues.nats import NatsConfig, NatsPublisher
from gateway.queues.rabbitmq import RabbitMqConfig, RabbitMqPublisher
from gateway.queues.redis import RedisStreamsConfig, RedisStreamsPublisher
from gateway.queues.webhook import WebhookConfig, WebhookPublisher
from gateway.testing.publisher_contract import Delivered
from gateway.testing.services import free_port, service_url
from gateway.testing.webhook_receiver import ESCALATION_PATH, WebhookReceiver

SETTLE = 0.3
"""Seconds to keep listening after the expected count arrived, to catch extra messages."""


def _tag() -> str:
    return uuid.uuid4().hex[:12]


async def _poll(snapshot: Callable[[], Any], count: int, timeout: float) -> list[Delivered]:
    """Call ``snapshot`` (sync or async) until it holds ``count`` items or time is up, settle."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = snapshot()
        if asyncio.iscoroutine(got):
            got = await got
        now = asyncio.get_running_loop().time()
        if len(got) >= count or now >= deadline:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(SETTLE)
    got = snapshot()
    return list(await got if asyncio.iscoroutine(got) else got)


class _Harness:
    """Context-manager plumbing shared by the built-in harnesses."""

    kind = ""
    broker_dedup = False
    total_order = True

    async def __aenter__(self) -> Self:
        await self.setup()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.teardown()

    async def setup(self) -> None:
        """Create the destination's consumer side."""

    async def teardown(self) -> None:
        """Delete the destination."""

    def reported_duplicates(self, publisher: Any) -> int | None:
        """Only NATS reports duplicates."""
        return None


async def _nats_connect(url: str | None) -> nats.aio.client.Client:
    """One bounded connection attempt (nats-py's default retries a dead server for minutes)."""
    return await asyncio.wait_for(
        nats.connect(url or "", connect_timeout=2, allow_reconnect=False,
                     max_reconnect_attempts=1, reconnect_time_wait=0.1),
        5,
    )


class NatsHarness(_Harness):
    """A stream ``T_<tag>`` capturing ``t<tag>.events.>`` and ``t<tag>.escalations.>``."""

    kind = "nats"
    broker_dedup = True

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        tag = _tag()
        self.stream = f"T_{tag}"
        self.prefix = f"t{tag}"

    async def setup(self) -> None:
        self.url = self.url or service_url("INTAKE_TEST_NATS_URL")

    async def teardown(self) -> None:
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            nc = await _nats_connect(self.url)
            try:
                await nc.jetstream().delete_stream(self.stream)
            finally:
                await nc.close()

    def publisher(self, **settings: Any) -> NatsPublisher:
        assert self.url is not None
        config = NatsConfig(url=self.url, stream=self.stream, subject_prefix=self.prefix,
                            **settings)
        return NatsPublisher(config)

    def unreachable_publisher(self) -> NatsPublisher:
        return NatsPublisher(NatsConfig(url=f"nats://127.0.0.1:{free_port()}",
                                        stream=self.stream, subject_prefix=self.prefix,
                                        connect_timeout=1.0, ack_timeout=1.0))

    def reported_duplicates(self, publisher: Any) -> int | None:
        return int(publisher.duplicates)

    async def received(self, count: int, *, timeout: float) -> list[Delivered]:
        """Replay the stream from its start through an ordered consumer."""
        got: list[Delivered] = []
        nc = await _nats_connect(self.url)
        try:
            js = nc.jetstream()
            try:
                sub = await js.subscribe(f"{self.prefix}.>", stream=self.stream,
                                         ordered_consumer=True)
            except nats.js.errors.NotFoundError:
                return got  # nothing was ever published: the stream does not exist
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                # Until the count is reached wait up to the deadline; then only settle.
                left = deadline - asyncio.get_running_loop().time()
                wait = SETTLE if len(got) >= count or left <= 0 else left
                try:
                    msg = await sub.next_msg(timeout=wait)
                except nats.errors.TimeoutError:
                    break
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                got.append(Delivered(msg_id.removesuffix(":escalation"), msg.data,
                                     msg.subject.startswith(f"{self.prefix}.escalations.")))
            await sub.unsubscribe()
        finally:
            await nc.close()
        return got


class RabbitMqHarness(_Harness):
    """An exchange ``t.<tag>`` with queues ``t.<tag>.events`` and ``t.<tag>.escalations``.

    ``publish_url`` lets a fault test route the publisher through a proxy while this harness
    keeps consuming from the broker directly.
    """

    kind = "rabbitmq"

    def __init__(self, url: str | None = None, *, publish_url: str | None = None) -> None:
        self.url = url
        self.publish_url = publish_url
        tag = _tag()
        self.exchange = f"t.{tag}"
        self.queue = f"t.{tag}.events"
        self.escalation_queue = f"t.{tag}.escalations"
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._got: list[Delivered] = []

    async def setup(self) -> None:
        self.url = self.url or service_url("INTAKE_TEST_RABBITMQ_URL")
        self._connection = await aio_pika.connect(self.url, timeout=5)
        channel = await self._connection.channel()
        # Declared exactly as the publisher declares them, so its declarations agree.
        for name, escalation in ((self.queue, False), (self.escalation_queue, True)):
            queue = await channel.declare_queue(
                name, durable=True, arguments={"x-queue-type": "classic"}
            )
            await queue.consume(self._collector(escalation), no_ack=True)

    def _collector(self, escalation: bool) -> Callable[[aio_pika.abc.AbstractIncomingMessage],
                                                        Any]:
        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self._got.append(Delivered(message.message_id or "", message.body, escalation))

        return collect

    async def teardown(self) -> None:
        if self._connection is None:
            return
        try:
            channel = await self._connection.channel()
            for name in (self.queue, self.escalation_queue):
                await channel.queue_delete(name)
            await channel.exchange_delete(self.exchange)
        finally:
            await self._connection.close()

    def publisher(self, **settings: Any) -> RabbitMqPublisher:
        url = self.publish_url or self.url
        assert url is not None
        return RabbitMqPublisher(RabbitMqConfig(
            url=url, exchange=self.exchange, queue=self.queue,
            escalation_queue=self.escalation_queue, **settings,
        ))

    def unreachable_publisher(self) -> RabbitMqPublisher:
        return RabbitMqPublisher(RabbitMqConfig(
            url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", exchange=self.exchange,
            queue=self.queue, escalation_queue=self.escalation_queue,
            connect_timeout=1.0, confirm_timeout=1.0,
        ))

    async def received(self, count: int, *, timeout: float) -> list[Delivered]:
        return await _poll(lambda: list(self._got), count, timeout)


class RedisHarness(_Harness):
    """Streams ``t:<tag>:events`` and ``t:<tag>:escalations``."""

    kind = "redis"

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        tag = _tag()
        self.stream = f"t:{tag}:events"
        self.escalation_stream = f"t:{tag}:escalations"

    async def setup(self) -> None:
        self.url = self.url or service_url("INTAKE_TEST_REDIS_URL")

    async def teardown(self) -> None:
        client = redis.asyncio.Redis.from_url(self.url or "", socket_connect_timeout=2)
        try:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await client.delete(self.stream, self.escalation_stream)
        finally:
            await client.aclose()

    def publisher(self, **settings: Any) -> RedisStreamsPublisher:
        assert self.url is not None
        return RedisStreamsPublisher(RedisStreamsConfig(
            url=self.url, stream=self.stream, escalation_stream=self.escalation_stream,
            **settings,
        ))

    def unreachable_publisher(self) -> RedisStreamsPublisher:
        return RedisStreamsPublisher(RedisStreamsConfig(
            url=f"redis://127.0.0.1:{free_port()}/0", stream=self.stream,
            escalation_stream=self.escalation_stream, connect_timeout=1.0, timeout=1.0,
        ))

    async def received(self, count: int, *, timeout: float) -> list[Delivered]:
        """``XRANGE`` both streams from the start."""
        client = redis.asyncio.Redis.from_url(self.url or "", socket_connect_timeout=2)

        async def snapshot() -> list[Delivered]:
            got = []
            for key, escalation in ((self.stream, False), (self.escalation_stream, True)):
                for _entry_id, fields in await client.xrange(key) or []:
                    assert fields is not None
                    data = fields[b"data"]
                    ident = fields[b"id"]
                    got.append(Delivered(ident.decode() if isinstance(ident, bytes) else ident,
                                         data if isinstance(data, bytes) else data.encode(),
                                         escalation))
            return got

        try:
            return await _poll(snapshot, count, timeout)
        finally:
            await client.aclose()


class WebhookHarness(_Harness):
    """A local :class:`WebhookReceiver`: ``/events`` and ``/escalations``, a random secret."""

    kind = "webhook"

    def __init__(self) -> None:
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.receiver = WebhookReceiver(self.secret)
        self._dir = tempfile.TemporaryDirectory(prefix="intake-webhook-")
        self.secret_file = Path(self._dir.name) / "secret"
        self.secret_file.write_text(self.secret + "\n", encoding="utf-8")

    async def setup(self) -> None:
        await self.receiver.start()

    async def teardown(self) -> None:
        await self.receiver.stop()
        self._dir.cleanup()

    def publisher(self, **settings: Any) -> WebhookPublisher:
        return WebhookPublisher(WebhookConfig(
            url=self.receiver.url(), escalation_url=self.receiver.url(ESCALATION_PATH),
            secret_file=str(self.secret_file), **settings,
        ))

    def unreachable_publisher(self) -> WebhookPublisher:
        port = free_port()
        return WebhookPublisher(WebhookConfig(
            url=f"http://127.0.0.1:{port}/events", secret_file=str(self.secret_file),
            timeout=1.0, attempts=2, backoff=0.05,
        ))

    async def received(self, count: int, *, timeout: float) -> list[Delivered]:
        return await _poll(
            lambda: [Delivered(d.event_id, d.body, d.escalation) for d in
                     self.receiver.deliveries],
            count, timeout,
        )

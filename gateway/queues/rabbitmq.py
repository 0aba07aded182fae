"""RabbitMQ publisher (aio-pika): a durable topic exchange, publisher confirms, persistent messages.

Routing key: ``<type>.<priority>``, the priority being ``high``, ``medium``, ``low`` or ``none``,
e.g. ``ticket.created.high`` or ``ack.sent.none``. An escalated event
(:attr:`~gateway.plugin.OutboundEvent.escalated`: its ticket's priority is one of
``[triage] escalate``, ``["high"]`` by default) carries a second routing key,
``escalation.<type>.<priority>``, in the ``BCC`` header (RabbitMQ's sender-selected
distribution): the broker routes the one message by both keys, puts at most one copy into each
queue, and strips the header before delivery. So:

- the default queue (``intake.events``) is bound with ``#`` and receives every event, once;
- the escalation queue (``intake.escalations``) is bound with ``escalation.#`` and receives
  exactly the escalated events, whatever their priority, so an on-call system consumes that
  queue alone;
- a consumer wanting one type binds its own queue with e.g. ``ticket.created.*`` (every one) or
  ``escalation.ticket.created.*`` (escalated ones only); ``#.high`` still selects by priority.

The routing key keeps its shape, so existing bindings keep working; only the escalation queue's
binding changed (it was ``#.high``, which followed the priority and ignored ``escalate``): at
connect the publisher binds ``escalation.#`` and removes ``#.high`` from that queue.
``message_id`` is the CloudEvents id: RabbitMQ does not deduplicate, consumers do, on that id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
import msgspec
from yarl import URL

from gateway.errors import ConfigError, TransientError
from gateway.plugin import OutboundEvent, PublisherBase, resolve_secret

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
EVENTS_BINDING = "#"
ESCALATIONS_BINDING = "escalation.#"
LEGACY_ESCALATIONS_BINDING = "#.high"
"""The escalation queue's binding before escalation followed ``escalate``; removed at connect."""


class RabbitMqConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[queue.settings]`` for ``backend = "rabbitmq"``."""

    url: str = "amqp://127.0.0.1:5672/"
    """AMQP URL; may name the user (``amqp://intake@host/vhost``) but never the password."""
    password_env: str | None = None
    """Environment variable holding the password of the URL's user."""
    password_file: str | None = None
    exchange: str = "intake.events"
    """Durable topic exchange every event is published to."""
    queue: str | None = "intake.events"
    """Durable queue bound with ``#`` (every event); none declared when unset."""
    escalation_queue: str | None = "intake.escalations"
    """Durable queue bound with ``escalation.#`` (escalated events only); none declared when
    unset."""
    queue_type: Literal["classic", "quorum"] = "classic"
    """``x-queue-type`` of the queues we declare (quorum: replicated, for clusters)."""
    mandatory: bool = True
    """Refuse (TransientError) an event no queue is bound to receive, instead of losing it."""
    connect_timeout: float = 5.0
    """Seconds for a connection attempt (at start; later the client reconnects by itself)."""
    reconnect_wait: float = 1.0
    """Seconds between reconnection attempts while the broker is away."""
    confirm_timeout: float = 10.0
    """Seconds without any confirm after which a batch counts as failed (a large batch may take
    longer in total, as long as confirms keep coming)."""


class RabbitMqPublisher(PublisherBase):
    """Publisher for ``[queue] backend = "rabbitmq"``."""

    kind: ClassVar[str] = "rabbitmq"
    Config: ClassVar[type[msgspec.Struct]] = RabbitMqConfig

    def __init__(self, config: RabbitMqConfig) -> None:
        if not config.exchange:
            raise ConfigError("queue.settings.exchange: the default exchange cannot route topics")
        self.config = config
        # The secret is read once, here, so a missing one stops the start even if AMQP is away.
        self._url = URL(config.url)
        password = resolve_secret(config.password_env, config.password_file, key="password")
        if password is not None:
            if not self._url.user:
                raise ConfigError("queue.settings.url: name the user for password_env/_file")
            self._url = self._url.with_password(password)
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Connect and declare the exchange and queues; TransientError if the broker is away."""
        async with self._lock:
            if self._exchange is None:
                await self._connect()

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Send the whole batch on one channel, then await every confirm."""
        if not events:
            return
        connection, exchange = await self._ready()
        # Tasks start in creation order and aiormq serialises frames with a FIFO lock, so the
        # broker receives the batch in order while the confirms are awaited together.
        tasks = [
            asyncio.ensure_future(
                exchange.publish(
                    _message(event),
                    routing_key=routing_key(event),
                    mandatory=self.config.mandatory,
                )
            )
            for event in events
        ]
        try:
            await _confirms(tasks, idle=self.config.confirm_timeout)
        except TimeoutError as exc:
            # A connection that went silent without closing (a half-open TCP link) would only be
            # noticed at the next missed heartbeat; the next publish connects afresh instead.
            await self._discard(connection)
            raise TransientError(
                f"RabbitMQ: no confirm for {self.config.confirm_timeout}s; "
                f"{len(events)} events unconfirmed"
            ) from exc
        except aio_pika.exceptions.PublishError as exc:
            raise TransientError(
                f"RabbitMQ: exchange {self.config.exchange} routed an event to no queue"
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise TransientError("RabbitMQ: the broker refused (nack) an event") from exc
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError) as exc:
            # RuntimeError: aiormq's ChannelInvalidStateError while the connection recovers.
            raise TransientError(f"RabbitMQ: publish failed: {exc!r}") from exc
        finally:
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as forgotten
                task.cancel()

    async def close(self) -> None:
        """Close the connection; ``start`` may be called again."""
        async with self._lock:
            connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            await self._close_connection(connection)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _ready(
        self,
    ) -> tuple[aio_pika.abc.AbstractRobustConnection, aio_pika.abc.AbstractExchange]:
        """The connection and exchange, connecting first if needed (failed start, close)."""
        async with self._lock:
            if self._exchange is None or self._connection is None or self._connection.is_closed:
                await self._connect()
            assert self._connection is not None and self._exchange is not None
            return self._connection, self._exchange

    async def _discard(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        """Drop ``connection``; the next publish connects afresh."""
        async with self._lock:
            if self._connection is connection:
                self._connection, self._exchange = None, None
        # Closing politely may wait for a broker that stopped answering: not the caller's wait.
        task = asyncio.ensure_future(self._close_connection(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_connection(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        """Close without hanging on a broker that stopped reading."""
        if connection.is_closed:
            return
        try:
            await asyncio.wait_for(connection.close(), self.config.connect_timeout)
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as exc:
            log.warning("RabbitMQ: close did not finish cleanly: %r", exc)

    async def _connect(self) -> None:
        """Open a robust connection and declare the topology; caller holds the lock."""
        config = self.config
        url = self._url
        connection: aio_pika.abc.AbstractRobustConnection | None = None
        try:
            # The robust connection reconnects by itself and re-declares the topology; the first
            # attempt fails fast so start (and the relay) learn the broker is away.
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(
                    url,
                    timeout=config.connect_timeout,
                    reconnect_interval=config.reconnect_wait,
                    client_properties={"connection_name": "intake-gateway"},
                ),
                config.connect_timeout + 1,
            )
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.declare_exchange(
                config.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            arguments: dict[str, Any] = {"x-queue-type": config.queue_type}
            for name, binding in (
                (config.queue, EVENTS_BINDING),
                (config.escalation_queue, ESCALATIONS_BINDING),
            ):
                if name:
                    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
                    await queue.bind(exchange, routing_key=binding)
                if name and binding == ESCALATIONS_BINDING:
                    # A queue declared by an earlier version still follows the priority:
                    # unbinding a binding that is not there is a no-op, so this runs each time.
                    await queue.unbind(exchange, routing_key=LEGACY_ESCALATIONS_BINDING)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            await _close_quietly(connection)
            raise ConfigError(
                f"RabbitMQ: {config.exchange} or its queues exist with other settings: {exc}"
            ) from exc
        except (
            aiormq.exceptions.ProbableAuthenticationError,
            aiormq.exceptions.ChannelAccessRefused,
        ) as exc:
            await _close_quietly(connection)
            raise ConfigError(f"RabbitMQ: {url.with_password(None)} refused us: {exc}") from exc
        except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, OSError) as exc:
            await _close_quietly(connection)
            raise TransientError(
                f"RabbitMQ: cannot connect to {url.with_password(None)}: {exc!r}"
            ) from exc
        except BaseException:
            await _close_quietly(connection)
            raise
        self._connection, self._exchange = connection, exchange


async def _confirms(tasks: Sequence[asyncio.Future[Any]], *, idle: float) -> None:
    """Wait for every confirm; TimeoutError once ``idle`` seconds pass without a new one."""
    pending: set[asyncio.Future[Any]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(
            pending, timeout=idle, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            raise TimeoutError
        for task in done:
            task.result()  # the first nack, return or lost connection fails the batch


def routing_key(event: OutboundEvent) -> str:
    """``<type>.<priority or none>``: the priority is the last word (``#.high`` selects it)."""
    return f"{event.type}.{event.priority or 'none'}"


def escalation_key(event: OutboundEvent) -> str:
    """``escalation.<type>.<priority or none>``: the extra key of an escalated event."""
    return f"escalation.{routing_key(event)}"


def _message(event: OutboundEvent) -> aio_pika.Message:
    """The AMQP message: structured CloudEvent, persistent, ``message_id`` = event id."""
    return aio_pika.Message(
        event.body,
        message_id=event.id,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        type=event.type,
        app_id="intake-gateway",
        # BCC rather than a second publish: one message, one confirm, at most one copy per
        # queue (a queue bound with "#" matches both keys), and no header left for consumers.
        headers={"BCC": [escalation_key(event)]} if event.escalated else None,
    )


async def _close_quietly(connection: aio_pika.abc.AbstractRobustConnection | None) -> None:
    """Close a half-set-up connection without masking the error that stopped the set-up."""
    if connection is not None:
        try:
            await connection.close()
        except Exception as exc:
            log.debug("RabbitMQ: closing a failed connection: %r", exc)

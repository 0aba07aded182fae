"""NATS JetStream publisher.

Every event goes to ``<prefix>.events.<type>`` (``intake.events.ticket.created``) with the header
``Nats-Msg-Id: <event id>``, so JetStream drops a relay's retry inside the stream's duplicate
window and says so in the ack (``duplicate: true``), which counts as delivered. Escalated
events (:attr:`~gateway.plugin.OutboundEvent.escalated`: their ticket's priority is one of
``[triage] escalate``, ``["high"]`` by default) are published a second time on
``<prefix>.escalations.<type>`` with the msg id ``<event id>:escalation``; the one stream
captures both subject trees, and an on-call consumer filters on ``<prefix>.escalations.>`` to
see escalations alone. The priority itself never decides the route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig

from gateway.errors import ConfigError, PermanentError, TransientError
from gateway.plugin import OutboundEvent, PublisherBase, resolve_secret

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
_MAX_PAYLOAD_EXCEEDED = 10054  # JetStream API error code: message larger than the stream allows


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[queue.settings]`` for ``backend = "nats"``."""

    url: str = "nats://127.0.0.1:4222"
    """Server URL; several, comma-separated, for a cluster. No password here: see ``*_env``."""
    stream: str = "INTAKE"
    """JetStream stream that captures ``<subject_prefix>.events.>`` and ``.escalations.>``."""
    subject_prefix: str = "intake"
    """First subject token; change it to run several gateways (or tests) on one server."""
    manage_stream: bool = True
    """Create the stream when missing and add our subjects when it lacks them. When false the
    stream is only checked, and a missing stream or subject stops the start (``ConfigError``)."""
    storage: Literal["file", "memory"] = "file"
    """Storage of a stream we create (``file`` survives a server restart)."""
    replicas: int = 1
    """Replicas of a stream we create (1, 3 or 5 in a cluster)."""
    duplicate_window: float = 120.0
    """Seconds within which JetStream drops a message whose ``Nats-Msg-Id`` it has already
    stored (stream we create). Retries after longer outages are caught by consumers' dedup."""
    max_age: float = 0.0
    """Seconds an event is kept in a stream we create; 0 keeps it until removed."""
    user: str | None = None
    password_env: str | None = None
    """Environment variable holding the password for ``user``."""
    password_file: str | None = None
    token_env: str | None = None
    """Environment variable holding an auth token (instead of user and password)."""
    token_file: str | None = None
    creds_file: str | None = None
    """A ``.creds`` file (JWT + nkey seed) for decentralised auth."""
    connect_timeout: float = 2.0
    """Seconds to open a connection: at start, and at the next publish after a failed batch
    (a fresh connection then; otherwise the client reconnects by itself)."""
    reconnect_wait: float = 1.0
    """Seconds between reconnection attempts while the server is away."""
    ack_timeout: float = 5.0
    """Seconds without any ack after which a batch counts as failed (a large batch may take
    longer in total, as long as acks keep coming)."""


class NatsPublisher(PublisherBase):
    """Publisher for ``[queue] backend = "nats"``."""

    kind: ClassVar[str] = "nats"
    Config: ClassVar[type[msgspec.Struct]] = NatsConfig

    def __init__(self, config: NatsConfig) -> None:
        # Secrets are read once, here, so a missing one stops the start even if NATS is away.
        self._password = resolve_secret(config.password_env, config.password_file, key="password")
        self._token = resolve_secret(config.token_env, config.token_file, key="token")
        if self._password is not None and config.user is None:
            raise ConfigError("queue.settings.password_env: a password needs `user` as well")
        self.config = config
        self.duplicates = 0
        """Acks in which the server reported a duplicate (a retry it had already stored)."""
        self._events_subject = f"{config.subject_prefix}.events"
        self._escalations_subject = f"{config.subject_prefix}.escalations"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Connect and create or check the stream; TransientError if the server is away."""
        async with self._lock:
            if self._js is None:
                await self._connect()

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Send the whole batch, then await every ack in order."""
        if not events:
            return
        nc, js = await self._ready()
        try:
            acks = await self._publish_batch(js, events)
        except BaseException:
            # The client replays unflushed messages after a reconnect, which would put the tail
            # of a failed batch ahead of the relay's retry of its lost middle: out of order. A
            # fresh connection for the retry forgets them.
            await self._discard(nc)
            raise
        self.duplicates += sum(1 for ack in acks if ack.duplicate)

    async def close(self) -> None:
        """Flush what was written and disconnect; ``start`` may be called again."""
        async with self._lock:
            nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await self._close_client(nc)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _publish_batch(
        self, js: JetStreamContext, events: Sequence[OutboundEvent]
    ) -> list[PubAck]:
        """Pipeline the batch (write all, then gather the acks), translating failures."""
        futures: list[asyncio.Future[PubAck]] = []
        idle = self.config.ack_timeout
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(idle) as writing:
                for event in events:
                    # Writing blocks when the socket is full; bound each step, not the batch.
                    if writing.expired():
                        raise TimeoutError  # nats-py swallowed the cancellation; stop anyway
                    writing.reschedule(loop.time() + idle)
                    futures.append(await self._send(js, self._events_subject, event, event.id))
                    if event.escalated:
                        futures.append(
                            await self._send(
                                js, self._escalations_subject, event, f"{event.id}:escalation"
                            )
                        )
            return await _acks_in_order(futures, idle=idle)
        except TimeoutError as exc:
            raise TransientError(
                f"NATS: no ack for {self.config.ack_timeout}s; {len(events)} events unconfirmed"
            ) from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == _MAX_PAYLOAD_EXCEEDED:
                raise PermanentError(f"NATS: stream {self.config.stream} refused: {exc}") from exc
            raise TransientError(f"NATS: stream {self.config.stream} refused: {exc}") from exc
        except nats.errors.MaxPayloadError as exc:
            raise PermanentError("NATS: an event exceeds the server's max_payload") from exc
        except (nats.errors.Error, OSError) as exc:
            raise TransientError(f"NATS: publish failed: {exc!r}") from exc
        finally:
            # Cancelling releases the client's in-flight slots for acks that will never come.
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved, so asyncio does not log it as forgotten
                future.cancel()

    async def _discard(self, nc: Client) -> None:
        """Drop ``nc`` after a failed batch; the next publish connects afresh."""
        async with self._lock:
            if self._nc is nc:
                self._nc, self._js = None, None
        # Closing flushes first, which may wait for a server that stopped reading: not the
        # caller's wait.
        task = asyncio.ensure_future(self._close_client(nc))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_client(self, nc: Client) -> None:
        """Close without hanging on a server that stopped reading."""
        if nc.is_closed:
            return
        try:
            await asyncio.wait_for(nc.close(), self.config.connect_timeout)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("NATS: close did not finish cleanly: %r", exc)

    async def _ready(self) -> tuple[Client, JetStreamContext]:
        """The connection, made first if start failed, close was called or a batch failed."""
        async with self._lock:
            if self._js is None or self._nc is None or self._nc.is_closed:
                await self._connect()
            assert self._nc is not None and self._js is not None
            # While the client reconnects it would buffer publishes; fail fast so the relay backs
            # off instead of waiting out the ack timeout on every batch.
            if not self._nc.is_connected:
                raise TransientError("NATS: not connected (reconnecting)")
            return self._nc, self._js

    async def _send(
        self, js: JetStreamContext, prefix: str, event: OutboundEvent, msg_id: str
    ) -> asyncio.Future[PubAck]:
        """Write one message and return the future of its ack."""
        return await js.publish_async(
            f"{prefix}.{event.type}",
            event.body,
            stream=self.config.stream,
            headers={"Nats-Msg-Id": msg_id, "Content-Type": CONTENT_TYPE},
        )

    async def _connect(self) -> None:
        """Open the connection and set up the stream; caller holds the lock."""
        config = self.config
        nc = Client()
        disconnected, reconnected = self._watch(nc)
        try:
            # The first connection is bounded here; once connected, the client reconnects forever
            # (max_reconnect_attempts=-1) and publish fails fast while it does.
            await asyncio.wait_for(
                nc.connect(
                    servers=[url.strip() for url in config.url.split(",")],
                    name="intake-gateway",
                    user=config.user,
                    password=self._password,
                    token=self._token,
                    user_credentials=config.creds_file,
                    connect_timeout=max(1, round(config.connect_timeout)),
                    reconnect_time_wait=config.reconnect_wait,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                ),
                config.connect_timeout,
            )
            js = nc.jetstream(timeout=config.ack_timeout)
            await self._ensure_stream(js)
        except TimeoutError as exc:
            await nc.close()
            raise TransientError(
                f"NATS: cannot connect to {config.url} within {config.connect_timeout}s"
            ) from exc
        except nats.errors.AuthorizationError as exc:
            await nc.close()
            raise ConfigError(f"NATS: {config.url} refused our credentials") from exc
        except (nats.errors.Error, OSError) as exc:
            await nc.close()
            raise TransientError(f"NATS: cannot set up {config.url}: {exc!r}") from exc
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream, or check (and, if managed, extend) the subjects it captures."""
        config = self.config
        wanted = [f"{self._events_subject}.>", f"{self._escalations_subject}.>"]
        try:
            info = await js.stream_info(config.stream)
        except nats.js.errors.NotFoundError:
            if not config.manage_stream:
                raise ConfigError(
                    f"NATS: stream {config.stream} does not exist and manage_stream is false"
                ) from None
            stream = StreamConfig(
                name=config.stream,
                subjects=wanted,
                storage=StorageType(config.storage),
                num_replicas=config.replicas,
                duplicate_window=config.duplicate_window,
                max_age=config.max_age or None,
            )
            try:
                await js.add_stream(stream)
                log.info("NATS: created stream %s for %s", config.stream, wanted)
                return
            except nats.js.errors.BadRequestError:
                # Another replica created it between our look-up and our add: check theirs.
                info = await js.stream_info(config.stream)
        current = list(info.config.subjects or [])
        missing = [s for s in wanted if not any(_covers(p, s) for p in current)]
        if not missing:
            return
        if not config.manage_stream:
            raise ConfigError(f"NATS: stream {config.stream} does not capture {missing}")
        stream = info.config
        stream.subjects = current + missing
        await js.update_stream(stream)
        log.info("NATS: added %s to stream %s", missing, config.stream)

    async def _on_error(self, exc: Exception) -> None:
        # Every failed reconnection attempt lands here; the disconnect itself is logged once.
        log.debug("NATS: %r", exc)

    def _watch(
        self, nc: Client
    ) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
        """Connection callbacks that stay quiet when we closed ``nc`` ourselves."""

        async def disconnected() -> None:
            if self._nc is nc:
                log.warning("NATS: disconnected from %s; reconnecting", self.config.url)

        async def reconnected() -> None:
            if self._nc is nc:
                log.warning("NATS: reconnected to %s", self.config.url)

        return disconnected, reconnected


def _covers(pattern: str, subject: str) -> bool:
    """True when the NATS subject filter ``pattern`` matches every subject ``subject`` does."""
    want = subject.split(".")
    for i, token in enumerate(pattern.split(".")):
        if token == ">":
            return i < len(want)
        if i >= len(want) or want[i] == ">" or token not in ("*", want[i]):
            return False
    return len(pattern.split(".")) == len(want)


async def _acks_in_order(futures: list[asyncio.Future[PubAck]], *, idle: float) -> list[PubAck]:
    """The acks in publish order; TimeoutError once ``idle`` seconds pass without a new one."""
    pending: set[asyncio.Future[PubAck]] = set(futures)
    while pending:
        done, pending = await asyncio.wait(
            pending, timeout=idle, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            raise TimeoutError
        for future in done:
            future.result()  # the first refusal fails the batch
    return [future.result() for future in futures]

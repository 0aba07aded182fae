"""Redis Streams publisher: one ``XADD`` per event, the batch pipelined in one round trip.

Each entry has the fields ``id`` (CloudEvents id), ``type``, ``subject`` (ticket number),
``priority`` (``high``/``medium``/``low``, empty when none) and ``data`` (the CloudEvent JSON).
Escalated events (:attr:`~gateway.plugin.OutboundEvent.escalated`: their ticket's priority is
one of ``[triage] escalate``, ``["high"]`` by default) are added to a second stream
(``intake:escalations``) as well; the priority itself never decides that.

Consumers read with consumer groups (``XGROUP CREATE intake:events helpdesk 0 MKSTREAM`` once,
then ``XREADGROUP GROUP helpdesk worker-1 COUNT 100 BLOCK 5000 STREAMS intake:events >`` and
``XACK`` after handling); see ``docs/consumers.md``. ``XADD`` does not deduplicate and a
retried batch may be added twice, so consumers deduplicate on the ``id`` field. The stream is
trimmed with ``MAXLEN ~`` (approximate, cheap); entries beyond it are dropped even if a group
has not read them, so size it for the longest consumer outage. Redis keeps the stream in
memory: durability across a Redis restart needs ``appendonly yes`` on the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import ClassVar

import msgspec
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.typing import EncodableT, FieldT

from gateway.errors import ConfigError, TransientError
from gateway.plugin import OutboundEvent, PublisherBase, resolve_secret

log = logging.getLogger(__name__)


class RedisStreamsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[queue.settings]`` for ``backend = "redis"``."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://`` or ``rediss://`` (TLS) URL; never a password here, see ``password_env``."""
    username: str | None = None
    """ACL user (Redis 6+); the password alone authenticates the ``default`` user."""
    password_env: str | None = None
    """Environment variable holding the password."""
    password_file: str | None = None
    stream: str = "intake:events"
    """Stream every event is added to."""
    escalation_stream: str | None = "intake:escalations"
    """Stream escalated events are also added to; unset to not escalate."""
    maxlen: int | None = 1_000_000
    """Approximate bound on each stream's length (``MAXLEN ~``); unset for no bound."""
    connect_timeout: float = 2.0
    """Seconds to open a connection."""
    timeout: float = 5.0
    """Seconds for one pipelined batch to be answered."""


class RedisStreamsPublisher(PublisherBase):
    """Publisher for ``[queue] backend = "redis"``."""

    kind: ClassVar[str] = "redis"
    Config: ClassVar[type[msgspec.Struct]] = RedisStreamsConfig

    def __init__(self, config: RedisStreamsConfig) -> None:
        if config.maxlen is not None and config.maxlen <= 0:
            raise ConfigError("queue.settings.maxlen: must be positive (or unset for no bound)")
        self.config = config
        # The secret is read once, here, so a missing one stops the start even if Redis is away.
        self._password = resolve_secret(config.password_env, config.password_file, key="password")
        self._client: redis.asyncio.Redis | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and check the streams' keys; TransientError if Redis is away."""
        async with self._lock:
            if self._client is None:
                await self._connect()

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """``XADD`` the batch in one pipeline (no transaction: order is kept either way)."""
        if not events:
            return
        client = await self._ready()
        config = self.config
        pipe = client.pipeline(transaction=False)
        for event in events:
            fields: dict[FieldT, EncodableT] = {
                "id": event.id,
                "type": event.type,
                "subject": event.subject,
                "priority": event.priority or "",
                "data": event.body,
            }
            pipe.xadd(config.stream, fields, maxlen=config.maxlen, approximate=True)
            if config.escalation_stream and event.escalated:
                pipe.xadd(config.escalation_stream, fields, maxlen=config.maxlen, approximate=True)
        try:
            async with asyncio.timeout(config.timeout + config.connect_timeout):
                await pipe.execute()
        except TimeoutError as exc:
            raise TransientError(
                f"Redis: {len(events)} events not all added within {config.timeout}s"
            ) from exc
        except redis.exceptions.RedisError as exc:
            # Even an error reply (OOM, READONLY, WRONGTYPE after start) concerns the server or
            # its configuration, never the event itself: the relay retries, then dead-letters.
            raise TransientError(f"Redis: XADD failed: {exc!r}") from exc

    async def close(self) -> None:
        """Close the connection pool; ``start`` may be called again."""
        async with self._lock:
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()

    async def _ready(self) -> redis.asyncio.Redis:
        """The client, connecting first if start failed or close was called."""
        async with self._lock:
            if self._client is None:
                await self._connect()
            assert self._client is not None
            return self._client

    async def _connect(self) -> None:
        """Create the client, check it answers and that our keys are streams; lock held."""
        config = self.config
        client = redis.asyncio.Redis.from_url(
            config.url,
            username=config.username,
            password=self._password,
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.timeout,
            # One quick retry on a fresh connection absorbs a pooled socket that died while
            # Redis restarted; anything longer is the relay's backoff, not ours.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), retries=1),
            client_name="intake-gateway",
        )
        try:
            async with asyncio.timeout(config.connect_timeout + config.timeout):
                for key in (config.stream, config.escalation_stream):
                    if key and (kind := await client.type(key)) not in (b"stream", b"none"):
                        raise ConfigError(
                            f"Redis: key {key!r} holds a {_text(kind)}, not a stream"
                        )
        except redis.exceptions.AuthenticationError as exc:
            await client.aclose()
            raise ConfigError(f"Redis: {config.url} refused our credentials") from exc
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            await client.aclose()
            raise TransientError(f"Redis: cannot reach {config.url}: {exc!r}") from exc
        except BaseException:
            await client.aclose()
            raise
        self._client = client


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client answers bytes unless it decodes responses)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value

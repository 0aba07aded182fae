"""Signed webhook publisher: one POST per event, in order, signed the Standard Webhooks way.

Headers: ``Content-Type: application/cloudevents+json``, ``Webhook-Id`` (the event id: the
delivery id, identical on every retry), ``Webhook-Timestamp`` (unix seconds) and
``Webhook-Signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. A secret written
``whsec_<base64>`` is used as the Standard Webhooks libraries use it (the decoded bytes); any
other secret is used as its UTF-8 bytes. Escalated events
(:attr:`~gateway.plugin.OutboundEvent.escalated`: their ticket's priority is one of
``[triage] escalate``, ``["high"]`` by default) are also POSTed to ``escalation_url`` when one is
set, with ``Webhook-Id: <event id>:escalation``; the priority itself never decides that.

2xx means delivered. Only an answer saying the receiver can never take this payload
(:data:`PAYLOAD_REFUSED`: 400, 413, 414, 415, 422) is a :class:`~gateway.errors.PermanentError`.
Every other answer is a receiver that may recover and is raised as :class:`WebhookUnavailable`
(transient), so the relay backs off and tries again, honouring ``Retry-After``: 408, 429, 5xx,
timeouts and connection errors after a few quick tries inside one publish (they are often
momentary); 401, 403, 404, 409, 425, redirects and the like at once (a rotated secret or a
redeployed route is not fixed in milliseconds: the relay's backoff is the right pace).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar

import aiohttp
import msgspec
from yarl import URL

from gateway.errors import ConfigError, PermanentError, TransientError
from gateway.plugin import OutboundEvent, PublisherBase, resolve_secret

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
PAYLOAD_REFUSED = frozenset({400, 413, 414, 415, 422})
"""Statuses saying this payload will never be taken: permanent (the event is dead-lettered)."""
QUICK_RETRY = frozenset({408, 429})
"""4xx statuses retried inside one publish, like 5xx, before the relay's backoff takes over."""


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[queue.settings]`` for ``backend = "webhook"``."""

    url: str
    """``https://`` (or ``http://``) endpoint every event is POSTed to."""
    escalation_url: str | None = None
    """Endpoint escalated events are also POSTed to (an on-call system); unset for none."""
    secret_env: str | None = None
    """Environment variable holding the signing secret (``secret_env`` or ``secret_file`` is
    required)."""
    secret_file: str | None = None
    timeout: float = 10.0
    """Seconds for one request, from connecting to the end of the response."""
    attempts: int = 3
    """Tries per event inside one publish for 408, 429, 5xx, timeouts and connection errors
    before it fails with TransientError (then the relay retries, after its backoff)."""
    backoff: float = 0.2
    """Base of the exponential backoff between tries, in seconds (full jitter)."""
    max_retry_after: float = 10.0
    """Longest ``Retry-After`` waited out inside publish; a longer one fails the publish at once
    (the relay reads it from the error's ``retry_after``)."""


class WebhookUnavailable(TransientError):
    """The receiver is down, busy or slow; ``retry_after`` is its ``Retry-After`` in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WebhookPublisher(PublisherBase):
    """Publisher for ``[queue] backend = "webhook"``."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[msgspec.Struct]] = WebhookConfig

    def __init__(self, config: WebhookConfig) -> None:
        for key, value in (("url", config.url), ("escalation_url", config.escalation_url)):
            if value is not None and not _is_http_url(value):
                raise ConfigError(f"queue.settings.{key}: expected an http(s) URL, got {value!r}")
        if config.attempts < 1:
            raise ConfigError("queue.settings.attempts: at least 1")
        secret = resolve_secret(config.secret_env, config.secret_file, key="secret")
        if secret is None:
            raise ConfigError("queue.settings: the webhook needs secret_env or secret_file")
        self.config = config
        self._key = signing_key(secret)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session (the receiver is first contacted by publish)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                headers={"User-Agent": "intake-gateway"},
            )

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """POST the events one by one, in order; the first that cannot be delivered stops."""
        if not events:
            return
        await self.start()
        for event in events:
            await self._deliver(self.config.url, event, event.id)
            if self.config.escalation_url and event.escalated:
                await self._deliver(self.config.escalation_url, event, f"{event.id}:escalation")

    async def close(self) -> None:
        """Close the HTTP session; ``start`` may be called again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _deliver(self, url: str, event: OutboundEvent, delivery_id: str) -> None:
        """One event to one URL, with bounded retries."""
        config = self.config
        for attempt in range(1, config.attempts + 1):
            cause: Exception | None = None
            try:
                status, retry_after = await self._post(url, event.body, delivery_id)
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause = exc
                failure = WebhookUnavailable(
                    f"webhook: {URL(url).host}: {type(exc).__name__}: {exc}"
                )
            else:
                if 200 <= status < 300:
                    return
                if status in PAYLOAD_REFUSED:
                    raise PermanentError(f"webhook: {URL(url).host} refused the event: {status}")
                failure = WebhookUnavailable(
                    f"webhook: {URL(url).host} answered {status}", retry_after=retry_after
                )
                if status < 500 and status not in QUICK_RETRY:
                    raise failure  # the relay's backoff, not a burst of quick tries
            wait = failure.retry_after
            if attempt == config.attempts or (wait is not None and wait > config.max_retry_after):
                raise failure from cause
            if wait is None:
                # Full jitter: a fleet of gateways does not retry in lockstep.
                wait = random.uniform(0, config.backoff * 2 ** (attempt - 1))
            log.info("webhook: %s try %d failed; next in %.2fs", delivery_id, attempt, wait)
            await asyncio.sleep(wait)

    async def _post(self, url: str, body: bytes, delivery_id: str) -> tuple[int, float | None]:
        """POST once, signed with a fresh timestamp; (status, Retry-After seconds)."""
        assert self._session is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Webhook-Id": delivery_id,
            "Webhook-Timestamp": str(timestamp),
            "Webhook-Signature": sign(self._key, delivery_id, timestamp, body),
        }
        async with self._session.post(
            url, data=body, headers=headers, allow_redirects=False
        ) as response:
            return response.status, parse_retry_after(response.headers.get("Retry-After"))


def signing_key(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` decoded as Standard Webhooks does, else the UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ConfigError("queue.settings.secret: whsec_ secret is not base64") from exc
    return secret.encode()


def sign(key: bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    mac = hmac.new(key, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _is_http_url(value: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    url = URL(value)
    return url.scheme in ("http", "https") and bool(url.host)

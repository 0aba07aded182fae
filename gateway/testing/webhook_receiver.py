"""A local webhook receiver for tests: verifies Standard Webhooks signatures, records deliveries.

It is an aiohttp application on a free loopback port, so the real :class:`WebhookPublisher`
(or an integrator's own sender) talks real HTTP to it::

    async with WebhookReceiver(secret="s3cret") as receiver:
        publisher = WebhookPublisher(WebhookConfig(url=receiver.url(), secret_env=...))
        ...
        assert [d.id for d in receiver.deliveries] == [...]

Every path is accepted; :meth:`url` gives ``/events`` by default and ``/escalations`` is the
conventional second route. Faults are scripted for the next N requests: :meth:`fail_next` (500,
or 429 with ``Retry-After``) and :meth:`hang_next` (never answers until the receiver stops); for
a stretch of time: :meth:`fail_for` (every request answered e.g. 401 for 3 s); or for chosen
events until cleared: :meth:`refuse_where` (e.g. 422 for one event, a payload it never takes).
:attr:`requests_by_id` counts every request per ``Webhook-Id``, faults included.
A request whose signature does not verify is answered 401 and not recorded. The signature is
checked here independently of the publisher's code, as any receiver would check it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Literal, Self

import msgspec
from aiohttp import web

ESCALATION_PATH = "/escalations"


class WebhookDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One verified, accepted request."""

    webhook_id: str
    """The ``Webhook-Id`` header: the delivery id (event id, ``:escalation`` on that route)."""
    path: str
    timestamp: int
    body: bytes
    content_type: str

    @property
    def event_id(self) -> str:
        """The event id the delivery carries, whichever route it came on."""
        return self.webhook_id.removesuffix(":escalation")

    @property
    def escalation(self) -> bool:
        """True when it arrived on the escalation route."""
        return self.path == ESCALATION_PATH


class _Fault(msgspec.Struct, frozen=True):
    action: Literal["status", "hang"]
    status: int = 500
    retry_after: str | None = None


class WebhookReceiver:
    """Signature-checking receiver on ``127.0.0.1:<free port>``; use as an async context."""

    def __init__(self, secret: str, *, tolerance: float = 300.0) -> None:
        self.key = _signing_key(secret)
        self.tolerance = tolerance
        self.deliveries: list[WebhookDelivery] = []
        """Accepted requests, in arrival order (duplicates included: dedup is the consumer's)."""
        self.requests = 0
        """Every request seen, faults and rejected signatures included."""
        self.rejected = 0
        """Requests refused for a missing, stale or wrong signature."""
        self.requests_by_id: Counter[str] = Counter()
        """Every request per ``Webhook-Id`` header, faults and refusals included."""
        self._faults: deque[_Fault] = deque()
        self._window: tuple[float, _Fault] | None = None
        self._refusals: list[tuple[Callable[[str, bytes], bool], _Fault]] = []
        self._released = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._released.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Release hanging requests and stop listening (the port is kept for a restart)."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/events") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, count: int, *, status: int = 500, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After`` if given)."""
        header = None if retry_after is None else str(round(retry_after))
        self._faults.extend(_Fault("status", status, header) for _ in range(count))

    def hang_next(self, count: int) -> None:
        """Never answer the next ``count`` requests (until :meth:`stop`)."""
        self._faults.extend(_Fault("hang") for _ in range(count))

    def fail_for(self, seconds: float, *, status: int = 401,
                 retry_after: float | None = None) -> None:
        """Answer every request with ``status`` for the next ``seconds`` (an outage window)."""
        header = None if retry_after is None else str(round(retry_after))
        self._window = (time.monotonic() + seconds, _Fault("status", status, header))

    @property
    def failing(self) -> bool:
        """True while a :meth:`fail_for` window is open."""
        return self._window is not None and time.monotonic() < self._window[0]

    def refuse_where(self, match: Callable[[str, bytes], bool], *, status: int = 422) -> None:
        """Answer ``status`` to every request for which ``match(webhook_id, body)`` holds, until
        :meth:`clear_faults` (a receiver that can never take those payloads)."""
        self._refusals.append((match, _Fault("status", status)))

    def clear_faults(self) -> None:
        """Answer normally from the next request on."""
        self._faults.clear()
        self._window = None
        self._refusals.clear()

    async def wait_for(self, count: int, *, timeout: float) -> list[WebhookDelivery]:
        """Wait until at least ``count`` deliveries were accepted (or ``timeout``); all of them."""
        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: len(self.deliveries) >= count), timeout
                )
        return list(self.deliveries)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        webhook_id = request.headers.get("Webhook-Id", "")
        self.requests_by_id[webhook_id] += 1
        fault = self._fault_for(webhook_id, body)
        if fault is not None:
            if fault.action == "hang":
                await self._released.wait()
                return web.Response(status=503)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return web.Response(status=fault.status, headers=headers)
        timestamp = request.headers.get("Webhook-Timestamp", "")
        if not self._verified(webhook_id, timestamp, body, request.headers):
            self.rejected += 1
            return web.Response(status=401, text="bad signature")
        async with self._arrived:
            self.deliveries.append(
                WebhookDelivery(
                    webhook_id=webhook_id,
                    path=request.path,
                    timestamp=int(timestamp),
                    body=body,
                    content_type=request.headers.get("Content-Type", ""),
                )
            )
            self._arrived.notify_all()
        return web.Response(status=204)

    def _fault_for(self, webhook_id: str, body: bytes) -> _Fault | None:
        """The scripted answer for this request, if any: next-N faults first, then the window,
        then per-event refusals."""
        if self._faults:
            return self._faults.popleft()
        if self._window is not None:
            if time.monotonic() < self._window[0]:
                return self._window[1]
            self._window = None
        for match, fault in self._refusals:
            if match(webhook_id, body):
                return fault
        return None

    def _verified(
        self, webhook_id: str, timestamp: str, body: bytes, headers: Mapping[str, str]
    ) -> bool:
        """Standard Webhooks verification: fresh timestamp, one matching ``v1`` signature."""
        if not webhook_id or not timestamp.isdigit():
            return False
        if abs(time.time() - int(timestamp)) > self.tolerance:
            return False
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        offered = headers.get("Webhook-Signature", "")
        for candidate in offered.split():
            version, _, signature = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(signature, expected):
                return True
        return False


def _signing_key(secret: str) -> bytes:
    """``whsec_<base64>`` → its bytes (Standard Webhooks); any other secret → its UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ValueError("whsec_ secret is not base64") from exc
    return secret.encode()

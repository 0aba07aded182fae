"""The one aiohttp application: health, metrics, the embedded event feed, and adapters' routes."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

from gateway.attachments import AttachmentStore
from gateway.correlation import HEADER as CORRELATION_HEADER
from gateway.correlation import accepted, bind, unbind
from gateway.errors import (
    RateLimited,
    RejectedInput,
    StorageFull,
    TransientError,
    Unauthorized,
)
from gateway.message_fetch import message_routes
from gateway.plugin.limits import ConnectionGate
from gateway.queues.embedded import EventWaiters, frame_events

log = logging.getLogger("intake.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LAST_EVENT_SEQ = Gauge("intake_outbox_last_seq", "Sequence of the newest committed event")
SLOW_BODIES = Counter("intake_http_slow_bodies_total",
                      "Connections closed because the request body did not arrive in time")

_BUSY_BODY = b'{"error": "too many connections, please retry shortly"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
         + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)
_LINGER = 1.0
"""Seconds a refused connection is kept open to read the client's request, so the client reads
our 503 instead of a reset (closing with unread input makes the kernel send RST)."""
_MAX_LINGERING = 256
"""Beyond this many refused connections lingering at once, new refusals close at once."""


def error_response(exc: RejectedInput) -> web.Response:
    """The JSON answer for input the sender must fix."""
    body: dict[str, object] = {"error": exc.reason}
    if exc.field:
        body["field"] = exc.field
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    return web.json_response(body, status=exc.status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map the error tree to HTTP once, so no adapter answers a 500 with a traceback."""
    try:
        return await handler(request)
    except Exception as exc:
        return _error_answer(request, exc)


def _error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to ``exc`` raised by a handler; re-raises what aiohttp answers itself."""
    if isinstance(exc, RejectedInput):
        return error_response(exc)
    if isinstance(exc, StorageFull):
        log.warning("no room left to store a message (%s %s)", request.method, request.path)
        return web.json_response({"error": "insufficient storage on our side, please retry "
                                           "later"}, status=503, headers={"Retry-After": "30"})
    if isinstance(exc, TransientError):
        log.warning("transient failure on %s %s", request.method, request.path, exc_info=exc)
        return web.json_response({"error": "temporarily unavailable, please retry"}, status=503,
                                 headers={"Retry-After": "5"})
    if isinstance(exc, web.HTTPException):
        raise exc
    if isinstance(exc, ConnectionError):
        # The client went away (or was cut off for a slow body): nobody reads the answer,
        # and a traceback per dropped client would flood the log.
        return web.Response(status=408)
    # Never echo internals or customer data; the traceback goes to the operator's log.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return web.json_response({"error": "internal error"}, status=500)


def request_middleware(body_timeout: float) -> Any:
    """The application's one middleware: correlation id, body deadline, errors to HTTP.

    In that order, as three nested middlewares would do it, but in one coroutine per request
    (each middleware layer costs aiohttp a wrapper call and a coroutine on the hot path):

    1. bind the request's correlation id (``X-Request-Id`` when it is a safe token, else a new
       one, :mod:`gateway.correlation`) and echo it on every answer, errors included;
    2. cut a request whose body has not fully arrived ``body_timeout`` s after its head
       (headers are bounded by aiohttp's keep-alive timer, ``server.idle_timeout``);
    3. map the error tree to HTTP (:func:`errors_middleware`).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        cid = accepted(request.headers.get(CORRELATION_HEADER))
        token = bind(cid)
        cut = None
        if body_timeout > 0 and request.body_exists and not request.content.is_eof():
            cut = asyncio.get_running_loop().call_later(body_timeout, _cut_slow_body, request)
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                response = _error_answer(request, exc)
        except web.HTTPException as exc:
            exc.headers[CORRELATION_HEADER] = cid
            raise
        finally:
            if cut is not None:
                cut.cancel()
            unbind(token)
        if not response.prepared:
            response.headers[CORRELATION_HEADER] = cid
        return response

    return middleware


class CoreRoutes(msgspec.Struct, frozen=True, kw_only=True):
    """What the core's own routes need, handed over explicitly (not the whole Gateway)."""

    events: EventFeed
    """Where ``/v1/events`` and ``/metrics`` read the event log."""
    waiters: EventWaiters
    attachments: AttachmentStore
    events_token: str | None
    """The bearer token ``/v1/events`` and the by-reference routes take; None on loopback."""
    readiness: Callable[[], Awaitable[dict[str, str]]]
    """The replica's readiness checks, by name (``/readyz``)."""
    body_timeout: float
    max_body_bytes: int
    before_metrics: Callable[[], Awaitable[None]] | None = None
    """Refreshes the gauges read from the store (gateway/observability.py) before a scrape."""


class EventFeed(Protocol):
    """The part of the store the HTTP routes read."""

    last_seq: int

    async def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Committed events after ``after``, oldest first."""
        ...

    async def message_body(self, uid: str) -> bytes | None:
        """The stored message (msgpack ``InboundMessage``) of ``uid``, or None."""
        ...


CORE = web.AppKey("core", CoreRoutes)
MAX_SEQ = 2**63 - 1
"""The largest event sequence number there can be (a signed 64-bit SQL integer)."""


def create_app(core: CoreRoutes,
               adapter_routes: Iterable[web.AbstractRouteDef]) -> web.Application:
    """The one application: health, readiness, metrics, the event feed, the by-reference
    message routes, and the routes of every enabled adapter."""
    app = web.Application(middlewares=[request_middleware(core.body_timeout)],
                          client_max_size=core.max_body_bytes)
    app[CORE] = core
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/events", events)
    app.router.add_routes(message_routes(core.events, core.attachments,
                                         lambda r: check_events_token(r, core.events_token)))
    app.router.add_routes(list(adapter_routes))
    return app


def _cut_slow_body(request: web.Request) -> None:
    if not request.content.is_eof() and request.transport is not None:
        SLOW_BODIES.inc()
        request.transport.close()


class GatedConnection(asyncio.Protocol):
    """One accepted HTTP connection: admitted by the gate and handed to aiohttp, or answered 503.

    aiohttp's handler sees the transport as if it had accepted it itself; this object stays the
    transport's protocol only to count the connection and forward the transport's callbacks.
    """

    lingering = 0

    def __init__(self, make_handler: Callable[[], asyncio.Protocol], gate: ConnectionGate
                 ) -> None:
        self._make_handler = make_handler
        self._gate = gate
        self._inner: asyncio.Protocol | None = None
        self._key = ""
        self._transport: asyncio.Transport | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        limit, self._key = self._gate.admit(host)
        if limit is None:
            self._inner = self._make_handler()
            self._inner.connection_made(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(_BUSY)
        if GatedConnection.lingering >= _MAX_LINGERING:
            transport.close()
            return
        GatedConnection.lingering += 1
        self._linger = asyncio.get_running_loop().call_later(_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif b"\r\n\r\n" in data and self._transport is not None:
            self._transport.close()  # the request head is read; the 503 is on its way

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._gate.release(self._key)
            self._inner.connection_lost(exc)
            self._inner = None
        elif self._linger is not None:
            self._linger.cancel()
            self._linger = None
            GatedConnection.lingering -= 1


class GatedSite(web.BaseSite):
    """A TCP site whose connections pass a :class:`ConnectionGate` before aiohttp sees them."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, gate: ConnectionGate,
                 reuse_address: bool = True) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._gate = gate
        self._reuse_address = reuse_address

    @property
    def name(self) -> str:
        host = self._host if ":" not in self._host else f"[{self._host}]"
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        gate = self._gate
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GatedConnection(server, gate), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: a real write to the store and the disk, no stuck relay, no listener down.

    Answers ``{"status": "ready"}`` or 503 with ``{"status": "not ready", "problems": {...}}``
    naming each failed check (``store``, ``disk``, ``relay``, an adapter's kind).
    """
    problems = await request.app[CORE].readiness()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    core = request.app[CORE]
    LAST_EVENT_SEQ.set(core.events.last_seq)
    if core.before_metrics is not None:
        await core.before_metrics()
    resp = web.Response(body=generate_latest(REGISTRY))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def check_events_token(request: web.Request, token: str | None) -> None:
    """Refuse with 401 unless ``Authorization: Bearer <token>`` (when a token is configured)."""
    if token is None:
        return
    # Undecodable header bytes arrive as surrogates; compare them as the bytes they were.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise Unauthorized("a valid bearer token is required")


async def events(request: web.Request) -> web.Response:
    """``GET /v1/events?after=SEQ&limit=N&wait=S``: the embedded log, long-polled.

    Answers ``{"next": SEQ, "events": [{"seq": n, "event": <CloudEvent>}]}``; pass ``next`` as
    ``after`` to continue. With ``wait`` (seconds, ≤ 60) it holds the request until an event
    arrives. Requires ``Authorization: Bearer <token>`` when an events token is configured.
    """
    core = request.app[CORE]
    check_events_token(request, core.events_token)
    try:
        after = int(request.query.get("after", "0"))
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
        wait = min(max(float(request.query.get("wait", "0")), 0.0), 60.0)
    except ValueError:
        raise RejectedInput("after and limit must be integers, wait a number of seconds") from None
    if not 0 <= after <= MAX_SEQ:
        # Beyond SQL's 64-bit integers a query would fail: a sender's number, a 400.
        raise RejectedInput("after must be 0 or a sequence number from an earlier answer")
    if wait != wait:
        raise RejectedInput("wait must be a number of seconds")
    if wait:
        await core.waiters.wait_beyond(after, wait)
    rows = await core.events.events_after(after, limit)
    return web.Response(body=frame_events(rows, after), content_type="application/json")

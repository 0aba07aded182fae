"""The one aiohttp application: health, metrics, the embedded event feed, and adapters' routes."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from gateway.errors import RateLimited, RejectedInput, TransientError
from gateway.queues.embedded import frame_events

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("intake.http")

RUNTIME = web.AppKey("runtime", object)

LAST_EVENT_SEQ = Gauge("intake_outbox_last_seq", "Sequence of the newest committed event")


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
async def errors_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Map the error tree to HTTP once, so no adapter answers a 500 with a traceback."""
    try:
        return await handler(request)
    except RejectedInput as exc:
        return error_response(exc)
    except TransientError:
        log.warning("transient failure on %s %s", request.method, request.path, exc_info=True)
        return web.json_response({"error": "temporarily unavailable, please retry"}, status=503,
                                 headers={"Retry-After": "5"})
    except web.HTTPException:
        raise
    except Exception:
        # Never echo internals or customer data; the traceback goes to the operator's log.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


def create_app(gw: Gateway) -> web.Application:
    """Build the application with the core routes and every enabled adapter's routes."""
    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=gw.config.server.max_body_bytes)
    app[RUNTIME] = gw
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/events", events)
    for adapter in gw.adapters:
        app.router.add_routes(list(adapter.routes()))
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store accepts a write round-trip."""
    gw: Gateway = request.app[RUNTIME]  # type: ignore[assignment]
    try:
        await gw.store.run(lambda tx: None)
    except TransientError:
        return web.json_response({"status": "store unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    gw: Gateway = request.app[RUNTIME]  # type: ignore[assignment]
    LAST_EVENT_SEQ.set(gw.store.last_seq)
    resp = web.Response(body=generate_latest(REGISTRY))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def events(request: web.Request) -> web.Response:
    """``GET /v1/events?after=SEQ&limit=N&wait=S``: the embedded log, long-polled.

    Answers ``{"next": SEQ, "events": [{"seq": n, "event": <CloudEvent>}]}``; pass ``next`` as
    ``after`` to continue. With ``wait`` (seconds, ≤ 60) it holds the request until an event
    arrives. Requires ``Authorization: Bearer <token>`` when an events token is configured.
    """
    gw: Gateway = request.app[RUNTIME]  # type: ignore[assignment]
    if gw.events_token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {gw.events_token}".encode()):
            return web.json_response({"error": "a valid bearer token is required"}, status=401)
    try:
        after = int(request.query.get("after", "0"))
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
        wait = min(max(float(request.query.get("wait", "0")), 0.0), 60.0)
    except ValueError:
        raise RejectedInput("after and limit must be integers, wait a number of seconds") from None
    if after < 0:
        raise RejectedInput("after must be 0 or a sequence number from an earlier answer")
    if wait:
        await gw.waiters.wait_beyond(after, wait)
    rows = await gw.store.events_after(after, limit)
    return web.Response(body=frame_events(rows, after), content_type="application/json")

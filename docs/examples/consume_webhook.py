"""Receive intake events as signed webhooks: verify the signature, dedup by id, answer 2xx.

    WEBHOOK_SECRET=whsec_... python consume_webhook.py --port 9000 --path /events

Point the gateway's ``url`` (every event) or ``escalation_url`` (escalated events only) at it.
Prints one JSON line per new event. Needs ``pip install aiohttp``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping

from aiohttp import web

TOLERANCE = 300  # seconds: refuse stale timestamps, so a captured request cannot be replayed


def handle(event: dict) -> None:
    """Your processing goes here; this example prints a summary line."""
    summary = {k: event.get(k) for k in ("id", "type", "subject", "priority")}
    print(json.dumps(summary, ensure_ascii=False), flush=True)


def signing_key(secret: str) -> bytes:
    """Standard Webhooks: a ``whsec_`` secret is base64; any other is used as its bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def verified(key: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    msg_id = headers.get("Webhook-Id", "")
    timestamp = headers.get("Webhook-Timestamp", "")
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return False
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    # The header may list several signatures (during a secret rotation): any one may match.
    for candidate in headers.get("Webhook-Signature", "").split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


async def consume(args: argparse.Namespace) -> None:
    key = signing_key(os.environ[args.secret_env])
    # Delivery is at least once (the gateway retries until it gets a 2xx): keep the ids you have
    # processed (in production, in your own database, with the effect of the event).
    seen: set[str] = set()
    enough = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(key, request.headers, body):
            return web.Response(status=401)
        event = json.loads(body)
        if event["id"] not in seen and len(seen) < args.max:
            handle(event)
            seen.add(event["id"])
        if len(seen) >= args.max:
            enough.set()
        return web.Response(status=204)  # 2xx only once handled: anything else is retried

    app = web.Application()
    app.router.add_post(args.path, receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"listening on http://{args.host}:{args.port}{args.path}", file=sys.stderr, flush=True)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), args.timeout)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--path", default="/events")
    parser.add_argument("--secret-env", default="WEBHOOK_SECRET", help="variable with the secret")
    parser.add_argument("--max", type=int, default=2**63, help="stop after N events")
    parser.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()

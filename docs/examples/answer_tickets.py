"""Answer new tickets through the gateway: consume ``ticket.created`` from your broker and POST
a reply to ``/v1/tickets/{number}/replies``, signed, with the event id as Idempotency-Key.

    REPLIES_SECRET=... python answer_tickets.py nats --durable answers
    REPLIES_SECRET=... python answer_tickets.py rabbitmq --queue intake.events
    REPLIES_SECRET=... python answer_tickets.py redis --group answers
    REPLIES_SECRET=... WEBHOOK_SECRET=whsec_... python answer_tickets.py webhook --port 9001

The gateway sends each reply on the customer's own channel; its outcome comes back as
``reply.sent`` / ``reply.failed`` events. Prints one JSON line per reply accepted. Needs the
broker's client (``nats-py``, ``aio-pika``, ``redis``) or ``aiohttp`` for webhooks.
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
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping


def reply_for(event: dict) -> dict | None:
    """Your helpdesk's answer to an event, or None to leave it; this one thanks new tickets."""
    if event["type"] != "ticket.created":
        return None
    return {"text": f"Thank you. We are looking into your request {event['subject']} and will "
                    "write again when we know more."}


def post_reply(gateway: str, secret: str | None, event: dict, reply: dict) -> dict:
    """POST the reply; the event id as Idempotency-Key, so a redelivered event sends nothing
    twice. Returns the gateway's answer; raises for answers worth retrying later (5xx, 429)."""
    body = json.dumps(reply, ensure_ascii=False).encode()
    url = f"{gateway}/v1/tickets/{event['subject']}/replies"
    for attempt in range(2):
        headers = {"Content-Type": "application/json", "Idempotency-Key": event["id"]}
        if secret is not None:
            ts = str(int(time.time()))
            mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256)
            headers |= {"X-Intake-Timestamp": ts, "X-Intake-Signature": f"sha256={mac.hexdigest()}"}
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 409 and attempt == 0:
                # This exact signature was used (the same body in the same second): each is
                # taken once, so sign afresh in the next second, with the same key.
                time.sleep(1.05 - time.time() % 1)
                continue
            if exc.code >= 500 or exc.code == 429:
                raise  # not handled: the broker redelivers, the same key makes that safe
            # Any other 4xx can never succeed (no channel reaches the customer...): say so.
            return {"refused": exc.code, "error": json.loads(exc.read() or b"{}").get("error")}
    raise RuntimeError("unreachable")


async def answer(args: argparse.Namespace, event: dict) -> None:
    """Handle one event: answer it if your helpdesk wants to. Raises to leave it unacked."""
    reply = reply_for(event)
    if reply is None:
        return
    secret = os.environ.get(args.secret_env)
    got = await asyncio.to_thread(post_reply, args.gateway, secret, event, reply)
    print(json.dumps({"event": event["id"], "ticket": event["subject"], **got}), flush=True)


async def from_nats(args: argparse.Namespace) -> None:
    import nats
    import nats.errors

    nc = await nats.connect(args.url)
    sub = await nc.jetstream().pull_subscribe(f"{args.prefix}.events.ticket.created",
                                              durable=args.durable, stream=args.stream)
    done = 0
    deadline = asyncio.get_running_loop().time() + args.timeout
    try:
        while done < args.max and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(batch=10, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await answer(args, json.loads(msg.data))
                await msg.ack()  # after the gateway took the reply
                done += 1
    finally:
        await nc.close()


async def from_rabbitmq(args: argparse.Namespace) -> None:
    import aio_pika

    connection = await aio_pika.connect_robust(args.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(args.queue, ensure=True)
        done = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout), queue.iterator() as messages:
                async for message in messages:
                    async with message.process(requeue=True):  # acked once answered
                        await answer(args, json.loads(message.body))
                    done += 1
                    if done >= args.max:
                        break


async def from_redis(args: argparse.Namespace) -> None:
    import redis.asyncio
    import redis.exceptions

    r = redis.asyncio.Redis.from_url(args.url)
    with contextlib.suppress(redis.exceptions.ResponseError):  # BUSYGROUP: it exists
        await r.xgroup_create(args.stream, args.group, id="0", mkstream=True)
    done, cursor = 0, "0"  # first our own pending entries, then new ones
    deadline = asyncio.get_running_loop().time() + args.timeout
    try:
        while done < args.max and asyncio.get_running_loop().time() < deadline:
            got = await r.xreadgroup(args.group, args.consumer, {args.stream: cursor},
                                     count=10, block=1000)
            entries = got[0][1] if got else []
            if cursor == "0" and not entries:
                cursor = ">"
                continue
            for entry_id, fields in entries:
                await answer(args, json.loads(fields[b"data"]))
                await r.xack(args.stream, args.group, entry_id)
                done += 1
    finally:
        await r.aclose()


def _webhook_verified(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Standard Webhooks, as in consume_webhook.py."""
    key = (base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_")
           else secret.encode())
    msg_id, stamp = headers.get("Webhook-Id", ""), headers.get("Webhook-Timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(c.partition(",")[0] == "v1" and hmac.compare_digest(c.partition(",")[2],
                                                                     expected)
               for c in headers.get("Webhook-Signature", "").split())


async def from_webhook(args: argparse.Namespace) -> None:
    from aiohttp import web

    secret = os.environ[args.webhook_secret_env]
    done = asyncio.Event()
    count = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal count
        body = await request.read()
        if not _webhook_verified(secret, request.headers, body):
            return web.Response(status=401)
        await answer(args, json.loads(body))  # an error answers 500: the gateway retries
        count += 1
        if count >= args.max:
            done.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(args.path, receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"listening on http://127.0.0.1:{args.port}{args.path}", file=sys.stderr, flush=True)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.timeout)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--secret-env", default="REPLIES_SECRET",
                        help="variable with the replies (or signed API) secret")
    parser.add_argument("--max", type=int, default=2**63, help="stop after N events")
    parser.add_argument("--timeout", type=float, default=float("inf"), help="stop after S s")
    brokers = parser.add_subparsers(dest="broker", required=True)
    n = brokers.add_parser("nats")
    n.add_argument("--url", default="nats://127.0.0.1:4222")
    n.add_argument("--stream", default="INTAKE")
    n.add_argument("--prefix", default="intake")
    n.add_argument("--durable", default="answers")
    q = brokers.add_parser("rabbitmq")
    q.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    q.add_argument("--queue", default="intake.events")
    r = brokers.add_parser("redis")
    r.add_argument("--url", default="redis://127.0.0.1:6379/0")
    r.add_argument("--stream", default="intake:events")
    r.add_argument("--group", default="answers")
    r.add_argument("--consumer", default=socket.gethostname())
    w = brokers.add_parser("webhook")
    w.add_argument("--port", type=int, default=9001)
    w.add_argument("--path", default="/events")
    w.add_argument("--webhook-secret-env", default="WEBHOOK_SECRET")
    args = parser.parse_args()
    run = {"nats": from_nats, "rabbitmq": from_rabbitmq, "redis": from_redis,
           "webhook": from_webhook}[args.broker]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

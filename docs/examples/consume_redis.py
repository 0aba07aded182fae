"""Consume intake events from Redis Streams: a consumer group, dedup by id, XACK.

    python consume_redis.py --stream intake:events --group helpdesk         # every event
    python consume_redis.py --stream intake:escalations --group oncall      # escalated events only

Prints one JSON line per new event. Needs ``pip install redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import redis.asyncio
import redis.exceptions


def handle(event: dict) -> None:
    """Your processing goes here; this example prints a summary line."""
    summary = {k: event.get(k) for k in ("id", "type", "subject", "priority")}
    print(json.dumps(summary, ensure_ascii=False), flush=True)


async def consume(args: argparse.Namespace) -> None:
    r = redis.asyncio.Redis.from_url(args.url)
    try:
        # "0": a new group starts at the oldest entry still in the stream ("$": only new ones).
        await r.xgroup_create(args.stream, args.group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # the group exists: resume where it was
            raise
    # Delivery is at least once, and XADD does not deduplicate: keep the ids you have processed
    # (in production, in your own database, in the same transaction as the event's effect).
    seen: set[str] = set()
    # First this consumer's own pending entries (read before a crash, never acked), then new.
    cursor = "0"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    try:
        while len(seen) < args.max and loop.time() < deadline:
            block = max(1, int(min(1.0, deadline - loop.time()) * 1000))
            reply = await r.xreadgroup(args.group, args.consumer, {args.stream: cursor},
                                       count=100, block=block)
            entries = reply[0][1] if reply else []
            if cursor == "0" and not entries:
                cursor = ">"  # backlog done: from now on, entries never delivered to the group
                continue
            for entry_id, fields in entries:
                event_id = fields[b"id"].decode()  # the CloudEvents id, without parsing data
                if event_id not in seen and len(seen) < args.max:
                    handle(json.loads(fields[b"data"]))
                    seen.add(event_id)
                if event_id in seen:
                    await r.xack(args.stream, args.group, entry_id)
    finally:
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--stream", default="intake:events")
    parser.add_argument("--group", default="helpdesk", help="consumer group")
    parser.add_argument("--consumer", default=socket.gethostname(), help="name in the group")
    parser.add_argument("--max", type=int, default=2**63, help="stop after N events")
    parser.add_argument("--timeout", type=float, default=float("inf"), help="stop after S s")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()

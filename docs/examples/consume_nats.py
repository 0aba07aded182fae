"""Consume intake events from NATS JetStream: durable pull consumer, dedup by id, explicit ack.

    python consume_nats.py --durable helpdesk                 # every event
    python consume_nats.py --durable oncall --escalations     # escalated events only

Prints one JSON line per new event. Needs ``pip install nats-py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import nats
import nats.errors


def handle(event: dict) -> None:
    """Your processing goes here; this example prints a summary line."""
    summary = {k: event.get(k) for k in ("id", "type", "subject", "priority")}
    print(json.dumps(summary, ensure_ascii=False), flush=True)


async def consume(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    # Escalations are a second copy of each escalated event on their own subject tree.
    route = "escalations" if args.escalations else "events"
    # A durable consumer remembers what was acked: a restarted consumer resumes where it was.
    sub = await js.pull_subscribe(f"{args.prefix}.{route}.>", durable=args.durable,
                                  stream=args.stream)
    # Delivery is at least once: keep the ids you have processed (in production, in your own
    # database, written in the same transaction as the effect of the event).
    seen: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    try:
        while len(seen) < args.max and loop.time() < deadline:
            try:
                msgs = await sub.fetch(batch=100, timeout=min(1.0, deadline - loop.time()))
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                event = json.loads(msg.data)
                if event["id"] not in seen and len(seen) < args.max:
                    handle(event)
                    seen.add(event["id"])
                if event["id"] in seen:
                    await msg.ack()  # after handling: a crash before this means redelivery
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="INTAKE")
    parser.add_argument("--prefix", default="intake", help="the gateway's subject_prefix")
    parser.add_argument("--durable", default="helpdesk", help="durable consumer name")
    parser.add_argument("--escalations", action="store_true", help="escalated events only")
    parser.add_argument("--max", type=int, default=2**63, help="stop after N events")
    parser.add_argument("--timeout", type=float, default=float("inf"), help="stop after S s")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Consume intake events from RabbitMQ: the gateway's durable queue, dedup by id, ack.

    python consume_rabbitmq.py --queue intake.events          # every event
    python consume_rabbitmq.py --queue intake.escalations     # escalated events only

Prints one JSON line per new event. Needs ``pip install aio-pika``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

import aio_pika


def handle(event: dict) -> None:
    """Your processing goes here; this example prints a summary line."""
    summary = {k: event.get(k) for k in ("id", "type", "subject", "priority")}
    print(json.dumps(summary, ensure_ascii=False), flush=True)


async def consume(args: argparse.Namespace) -> None:
    connection = await aio_pika.connect_robust(args.url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        # The gateway declares its queues (events bound "#", escalations "escalation.#");
        # ensure=True only checks that the queue exists. Your own queue can bind the exchange
        # "intake.events" with a routing key pattern such as "ticket.created.*".
        queue = await channel.get_queue(args.queue, ensure=True)
        # Delivery is at least once: keep the ids you have processed (in production, in your
        # own database, written in the same transaction as the effect of the event).
        seen: set[str] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout), queue.iterator() as messages:
                async for message in messages:
                    # process() acks when the block ends without error and requeues otherwise.
                    async with message.process(requeue=True):
                        event = json.loads(message.body)
                        if event["id"] not in seen:
                            handle(event)
                            seen.add(event["id"])
                    if len(seen) >= args.max:
                        break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--queue", default="intake.events")
    parser.add_argument("--max", type=int, default=2**63, help="stop after N events")
    parser.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()

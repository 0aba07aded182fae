"""The relay end to end: gateway → outbox → real NATS JetStream, through a broker outage."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import aiohttp

from gateway.runtime import Gateway
from gateway.testing.harness import read_events
from gateway.testing.publisher_harnesses import NatsHarness
from gateway.testing.servers import PrivateServer
from tests.conftest import MakeGateway
from tests.test_publisher_outages import nats_server  # noqa: F401  (a fixture)


async def post_many(gw: Gateway, start: int, count: int) -> list[str]:
    """Post ``count`` messages: a new ticket, then a follow-up to it, alternately."""
    numbers: list[str] = []
    async with aiohttp.ClientSession() as s:
        for i in range(start, start + count):
            contact = {"email": f"relay{i // 2}@example.org"}
            body: dict[str, object] = {"contact": contact, "text": f"message {i}"}
            if i % 2 and numbers:
                body["ticket_number"] = numbers[-1]
            async with s.post(f"{gw.url}/v1/messages", json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
                numbers.append((await resp.json())["ticket_number"])
    return numbers


async def drained(gw: Gateway, timeout: float = 60) -> None:
    assert gw.relay is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while gw.relay.position < gw.store.last_seq:
        assert asyncio.get_running_loop().time() < deadline, "relay did not drain"
        await asyncio.sleep(0.05)


async def test_broker_outage_delays_but_loses_and_reorders_nothing(
        make_gateway: MakeGateway, nats_server: PrivateServer, tmp_path: Path) -> None:  # noqa: F811
    harness = NatsHarness(url=f"nats://127.0.0.1:{nats_server.port}")
    gw = await make_gateway(
        f'[queue]\nbackend = "nats"\nbatch_size = 16\n'
        f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
        f'subject_prefix = "{harness.prefix}"\nconnect_timeout = 1.0\nack_timeout = 1.0\n'
        f'reconnect_wait = 0.2\n')
    await post_many(gw, 0, 40)
    await drained(gw)

    nats_server.kill()
    # Customers keep writing while the broker is down; every one is answered.
    await post_many(gw, 40, 40)
    assert gw.relay is not None and gw.relay.position < gw.store.last_seq
    nats_server.start()
    await drained(gw)

    async with aiohttp.ClientSession() as s:
        log = await read_events(s, gw.url)
    delivered = await harness.received(len(log), timeout=10)
    events = [d for d in delivered if not d.escalation]
    unique_ids = list(dict.fromkeys(d.id for d in events))
    assert unique_ids and sorted(unique_ids) == sorted(e["id"] for e in log)
    # Order per ticket: each ticket's events arrive in the order the outbox holds them.
    want: dict[str, list[str]] = defaultdict(list)
    for e in log:
        want[str(e["subject"])].append(str(e["id"]))
    got: dict[str, list[str]] = defaultdict(list)
    by_id = {str(e["id"]): str(e["subject"]) for e in log}
    for event_id in unique_ids:
        got[by_id[event_id]].append(event_id)
    assert got == want


async def test_gateway_starts_and_accepts_with_the_broker_down(
        make_gateway: MakeGateway, nats_server: PrivateServer) -> None:  # noqa: F811
    harness = NatsHarness(url=f"nats://127.0.0.1:{nats_server.port}")
    nats_server.kill()
    gw = await make_gateway(
        f'[queue]\nbackend = "nats"\n'
        f'[queue.settings]\nurl = "{harness.url}"\nstream = "{harness.stream}"\n'
        f'subject_prefix = "{harness.prefix}"\nconnect_timeout = 1.0\nack_timeout = 1.0\n')
    numbers = await post_many(gw, 0, 6)
    assert len(numbers) == 6
    nats_server.start()
    await drained(gw)
    delivered = await harness.received(6, timeout=10)
    assert len({d.id for d in delivered}) == 6

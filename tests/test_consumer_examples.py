"""The example consumers of ``docs/consumers.md`` run against the real brokers.

Each example is started as a subprocess, exactly as a reader would run it, after the publisher
has published a batch and then a relay-style retry that repeats it: the example must print every
event once, in order, and, pointed at the escalation route, only the high-priority ones. The
documentation must contain each example verbatim, so the page cannot drift from the files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.plugin import OutboundEvent, Publisher
from gateway.queues.rabbitmq import RabbitMqConfig, RabbitMqPublisher
from gateway.queues.webhook import WebhookConfig, WebhookPublisher
from gateway.testing.publisher_contract import make_events
from gateway.testing.publisher_harnesses import NatsHarness, RedisHarness
from gateway.testing.services import free_port, service_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
RUN_TIMEOUT = 30.0


def batches() -> tuple[list[OutboundEvent], list[OutboundEvent]]:
    """All events, and the high-priority ones, in publish order."""
    events = make_events(9, tickets=3)
    return events, [e for e in events if e.priority == "high"]


async def publish_with_retry(publisher: Publisher, events: Sequence[OutboundEvent]) -> None:
    """The first half, then the whole batch again (a relay retry): consumers see duplicates."""
    await publisher.start()
    try:
        await publisher.publish(events[: len(events) // 2])
        await publisher.publish(events)
    finally:
        await publisher.close()


async def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``docs/examples/<name>`` to completion; the event ids it printed, in order."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{name} did not finish within {RUN_TIMEOUT}s")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}: {err.decode()[-2000:]}"
    return [json.loads(line)["id"] for line in out.decode().splitlines() if line.strip()]


def ids(events: Sequence[OutboundEvent]) -> list[str]:
    return [e.id for e in events]


@pytest.mark.asyncio
async def test_nats_example() -> None:
    events, high = batches()
    async with NatsHarness() as harness:
        await publish_with_retry(harness.publisher(), events)
        common = ["--url", str(harness.url), "--stream", harness.stream, "--prefix",
                  harness.prefix, "--timeout", "20"]
        got = await run_example("consume_nats.py", *common, "--durable", "helpdesk",
                                "--max", str(len(events)))
        assert got == ids(events)
        got = await run_example("consume_nats.py", *common, "--durable", "oncall",
                                "--escalations", "--max", str(len(high)))
        assert got == ids(high)


@pytest.mark.asyncio
async def test_redis_example() -> None:
    events, high = batches()
    async with RedisHarness() as harness:
        await publish_with_retry(harness.publisher(), events)
        common = ["--url", str(harness.url), "--timeout", "20"]
        got = await run_example("consume_redis.py", *common, "--stream", harness.stream,
                                "--group", "helpdesk", "--max", str(len(events)))
        assert got == ids(events)
        got = await run_example("consume_redis.py", *common, "--stream",
                                harness.escalation_stream, "--group", "oncall",
                                "--max", str(len(high)))
        assert got == ids(high)


@pytest_asyncio.fixture
async def rabbitmq_config() -> AsyncIterator[RabbitMqConfig]:
    """Own exchange and queues, with no other consumer on them; deleted afterwards."""
    import aio_pika

    url = service_url("INTAKE_TEST_RABBITMQ_URL")
    tag = uuid.uuid4().hex[:12]
    config = RabbitMqConfig(url=url, exchange=f"t.{tag}", queue=f"t.{tag}.events",
                            escalation_queue=f"t.{tag}.escalations")
    yield config
    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        channel = await connection.channel()
        for queue in (config.queue, config.escalation_queue):
            await channel.queue_delete(str(queue))
        await channel.exchange_delete(config.exchange)


@pytest.mark.asyncio
async def test_rabbitmq_example(rabbitmq_config: RabbitMqConfig) -> None:
    events, high = batches()
    await publish_with_retry(RabbitMqPublisher(rabbitmq_config), events)
    common = ["--url", rabbitmq_config.url, "--timeout", "20"]
    got = await run_example("consume_rabbitmq.py", *common, "--queue", str(rabbitmq_config.queue),
                            "--max", str(len(events)))
    assert got == ids(events)
    got = await run_example("consume_rabbitmq.py", *common, "--queue",
                            str(rabbitmq_config.escalation_queue), "--max", str(len(high)))
    assert got == ids(high)


async def start_webhook_example(port: int, path: str, count: int,
                                env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start the receiver example and wait until it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "consume_webhook.py"), "--port", str(port),
        "--path", path, "--max", str(count), "--timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), RUN_TIMEOUT)
    assert b"listening" in line, line
    return proc


async def finished_ids(proc: asyncio.subprocess.Process) -> list[str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("consume_webhook.py did not finish")
    assert proc.returncode == 0, err.decode()[-2000:]
    return [json.loads(line)["id"] for line in out.decode().splitlines() if line.strip()]


@pytest.mark.asyncio
async def test_webhook_example(monkeypatch: pytest.MonkeyPatch) -> None:
    events, high = batches()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    monkeypatch.setenv("INTAKE_TEST_WEBHOOK_SECRET", secret)
    env = {**os.environ, "WEBHOOK_SECRET": secret}
    port, escalation_port = free_port(), free_port()
    helpdesk = await start_webhook_example(port, "/events", len(events), env)
    oncall = await start_webhook_example(escalation_port, "/oncall", len(high), env)
    publisher = WebhookPublisher(WebhookConfig(
        url=f"http://127.0.0.1:{port}/events",
        escalation_url=f"http://127.0.0.1:{escalation_port}/oncall",
        secret_env="INTAKE_TEST_WEBHOOK_SECRET",
    ))
    await publish_with_retry(publisher, events)
    assert await finished_ids(helpdesk) == ids(events)
    assert await finished_ids(oncall) == ids(high)


def test_consumers_md_shows_each_example_verbatim() -> None:
    page = (ROOT / "docs" / "consumers.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", page, re.S))
    for path in sorted(EXAMPLES.glob("consume_*.py")):
        name = f"docs/examples/{path.name}"
        assert name in blocks, f"docs/consumers.md does not include {name}"
        assert blocks[name] == path.read_text(encoding="utf-8"), f"{name} drifted from the page"

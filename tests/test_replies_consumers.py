"""docs/examples/answer_tickets.py, per broker, against a real gateway publishing to the real
broker: the example consumes ticket.created and answers through POST /v1/tickets/{n}/replies;
the customer gets the reply by email once, even when the event is consumed twice."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.queues.rabbitmq import RabbitMqConfig
from gateway.runtime import Gateway
from gateway.testing.publisher_harnesses import NatsHarness, RedisHarness
from gateway.testing.services import free_port
from gateway.testing.smtp_capture import SmtpCapture
from tests.conftest import MakeGateway
from tests.test_consumer_examples import rabbitmq_config  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "answer_tickets.py"
SECRET = "answers-signing-secret"
os.environ["INTAKE_TEST_ANSWERS_SECRET"] = SECRET
ENV = {**os.environ, "REPLIES_SECRET": SECRET}


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def config(capture: SmtpCapture, queue: str) -> str:
    return ('[intake]\ndefault_locale = "en"\n'
            '[replies]\nsecret_env = "INTAKE_TEST_ANSWERS_SECRET"\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "help@example.com"\n'
            f"{queue}\n")


async def new_ticket(gw: Gateway, email: str) -> str:
    async with aiohttp.ClientSession() as s, s.post(f"{gw.url}/v1/messages", json={
            "contact": {"email": email}, "text": "My parcel has not arrived"}) as resp:
        assert resp.status == 201
        return str((await resp.json())["ticket_number"])


async def run(*args: str, timeout: float = 40) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=ENV)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()[-2000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def check_answered(capture: SmtpCapture, email: str, number: str,
                         lines: list[dict[str, Any]]) -> str:
    [line] = lines
    assert line["ticket"] == number and line["channel"] == "email" and line["reply_id"]
    mail = await capture.wait_for(lambda m: email in m.rcpt_tos)
    assert f"looking into your request {number}" in mail.text()
    return str(line["reply_id"])


async def test_nats(make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    async with NatsHarness() as nats:
        gw = await make_gateway(config(capture, (
            f'[queue]\nbackend = "nats"\n[queue.settings]\nurl = "{nats.url}"\n'
            f'stream = "{nats.stream}"\nsubject_prefix = "{nats.prefix}"\n')))
        email = f"n-{uuid.uuid4().hex[:6]}@customers.example.org"
        number = await new_ticket(gw, email)
        common = ["--gateway", gw.url, "--max", "1", "--timeout", "30", "nats", "--url",
                  str(nats.url), "--stream", nats.stream, "--prefix", nats.prefix]
        reply_id = await check_answered(capture, email, number,
                                        await run(*common, "--durable", "answers"))
        # Another consumer reads the same event: the same key, the same reply, no second mail.
        [again] = await run(*common, "--durable", "second")
        assert again["reply_id"] == reply_id and again["replayed"] is True
        assert len(capture.to(email)) == 1


async def test_redis(make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    async with RedisHarness() as redis:
        gw = await make_gateway(config(capture, (
            f'[queue]\nbackend = "redis"\n[queue.settings]\nurl = "{redis.url}"\n'
            f'stream = "{redis.stream}"\nescalation_stream = "{redis.escalation_stream}"\n')))
        email = f"r-{uuid.uuid4().hex[:6]}@customers.example.org"
        number = await new_ticket(gw, email)
        common = ["--gateway", gw.url, "--max", "1", "--timeout", "30", "redis", "--url",
                  str(redis.url), "--stream", redis.stream]
        reply_id = await check_answered(capture, email, number,
                                        await run(*common, "--group", "answers"))
        [again] = await run(*common, "--group", "second")
        assert again["reply_id"] == reply_id and again["replayed"] is True
        assert len(capture.to(email)) == 1


async def test_rabbitmq(make_gateway: MakeGateway, capture: SmtpCapture,
                        rabbitmq_config: RabbitMqConfig) -> None:  # noqa: F811
    c = rabbitmq_config
    gw = await make_gateway(config(capture, (
        f'[queue]\nbackend = "rabbitmq"\n[queue.settings]\nurl = "{c.url}"\n'
        f'exchange = "{c.exchange}"\nqueue = "{c.queue}"\n'
        f'escalation_queue = "{c.escalation_queue}"\n')))
    email = f"q-{uuid.uuid4().hex[:6]}@customers.example.org"
    number = await new_ticket(gw, email)
    lines = await run("--gateway", gw.url, "--max", "1", "--timeout", "30", "rabbitmq",
                      "--url", c.url, "--queue", str(c.queue))
    await check_answered(capture, email, number, lines)


async def test_webhook(make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    hook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    os.environ["INTAKE_TEST_ANSWERS_HOOK"] = hook_secret
    port = free_port()
    # The gateway first (its relay retries until the receiver listens), so the receiver
    # knows where to answer.
    gw = await make_gateway(config(capture, (
        f'[queue]\nbackend = "webhook"\n[queue.settings]\n'
        f'url = "http://127.0.0.1:{port}/answers"\n'
        'secret_env = "INTAKE_TEST_ANSWERS_HOOK"\n')))
    email = f"w-{uuid.uuid4().hex[:6]}@customers.example.org"
    number = await new_ticket(gw, email)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--gateway", gw.url, "--max", "1", "--timeout", "30",
        "webhook", "--port", str(port), "--path", "/answers", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**ENV, "WEBHOOK_SECRET": hook_secret})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert lines, err.decode()[-2000:]
    await check_answered(capture, email, number, lines)


def test_consumers_md_shows_the_answering_example_verbatim() -> None:
    page = (ROOT / "docs" / "consumers.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", page, re.S))
    assert blocks.get("docs/examples/answer_tickets.py") == EXAMPLE.read_text(encoding="utf-8")



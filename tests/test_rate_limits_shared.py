"""Rate limits across replicas: on PostgreSQL, two gateways on one database spend from one
allowance per key (issue 11: "per-sender and per-IP rate limits ... counted across replicas")."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.store.postgres import migrate
from gateway.store.postgres_limits import SharedRateLimiter
from gateway.testing.postgres import postgres_database, postgres_dsn
from tests.conftest import MakeGateway
from tests.test_listener_limits import _send_one, smtp_config, smtp_of
from tests.test_webform import fetch_form, form, post

__all__ = ["postgres_database", "postgres_dsn"]


@pytest.fixture
def replicas_toml(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    migrate(postgres_dsn)
    monkeypatch.setenv("INTAKE_TEST_LIMITS_DSN", postgres_dsn)
    return '[store]\nbackend = "postgres"\ndsn_env = "INTAKE_TEST_LIMITS_DSN"\n'


async def test_the_web_forms_limit_is_one_allowance_across_two_replicas(
        make_gateway: MakeGateway, http: aiohttp.ClientSession, replicas_toml: str) -> None:
    toml = replicas_toml + "[adapters.webform]\nrate_limit = 3\n"
    a, b = await make_gateway(toml), await make_gateway(toml)
    statuses = []
    for i, gw in enumerate([a, b, a, b]):
        _, token = await fetch_form(http, gw)
        resp, _ = await post(http, gw, form(token, message=f"message number {i}"))
        statuses.append(resp.status)
    # Per replica, each would have taken its 3 (and the fourth): together they take 3.
    assert statuses == [200, 200, 200, 429]


async def test_smtps_per_sender_limit_is_counted_across_two_replicas(
        make_gateway: MakeGateway, replicas_toml: str) -> None:
    toml = replicas_toml + smtp_config("max_messages_per_sender = 2\nmax_messages_per_client = 0\n"
                                       "rate_window = 600.0\nper_peer_exempt = []\n")
    a, b = await make_gateway(toml), await make_gateway(toml)
    codes = []
    for n, gw in enumerate([a, b, a]):
        code, _ = await asyncio.to_thread(_send_one, smtp_of(gw).port, "127.0.0.1",
                                          "flood@example.org", n)
        codes.append(code)
    assert codes == [250, 250, 450]


async def test_a_shared_bucket_refills_by_the_databases_clock(postgres_dsn: str) -> None:
    from gateway.store.postgres import PostgresStore

    store = PostgresStore(postgres_dsn, auto_migrate=True)
    await store.open()
    try:
        one, two = (SharedRateLimiter(store, "t", 2, 0.5) for _ in range(2))
        waits: list[Any] = [await one.take("k"), await two.take("k"), await one.take("k")]
        assert waits[:2] == [0.0, 0.0] and 0 < waits[2] <= 0.25
        assert await two.take("another key") == 0.0, "keys are apart"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await two.take("k"):  # refilled at 4 tokens per second
            assert loop.time() < deadline, "the bucket never refilled"
            await asyncio.sleep(0.05)
    finally:
        await store.close()

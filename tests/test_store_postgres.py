"""The PostgreSQL store under the running gateway: two replicas (in one process) on one database.

The store contract suite (tests/test_store_contract.py) holds the store to the protocols; these
tests hold the whole gateway to what replicas promise: one ticket for a message delivered to
two replicas at the same instant, unique numbers under concurrent load on every replica, one
event feed seen alike from each.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import psycopg
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.runtime import Gateway
from gateway.store.postgres import PostgresStore, migrate
from gateway.testing.harness import read_events
from gateway.testing.postgres import postgres_database, postgres_dsn

__all__ = ["postgres_database", "postgres_dsn"]

Replica = Callable[[], Awaitable[Gateway]]


@pytest.fixture
async def replica(postgres_dsn: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Replica]:
    """Starts gateways (replicas) on this test's PostgreSQL schema, each with its own data dir."""
    monkeypatch.setenv("INTAKE_TEST_REPLICA_DSN", postgres_dsn)
    migrate(postgres_dsn)
    started: list[Gateway] = []

    async def start() -> Gateway:
        config = parse_config('[store]\nbackend = "postgres"\n'
                              'dsn_env = "INTAKE_TEST_REPLICA_DSN"\n')
        gw = Gateway(config, tmp_path / f"replica{len(started)}", listen="127.0.0.1:0")
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop()


async def _post(http: aiohttp.ClientSession, gw: Gateway, body: object,
                key: str | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(f"{gw.url}/v1/messages", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_message_delivered_to_two_replicas_at_once_makes_one_ticket(
        replica: Replica, http: aiohttp.ClientSession) -> None:
    a, b = await replica(), await replica()
    body = {"contact": {"phone": "+8613800138000"}, "text": "停电了，整栋楼都没电！"}
    results = await asyncio.gather(*(_post(http, (a, b)[i % 2], body, key="burst-1")
                                     for i in range(60)))
    assert {status for status, _ in results} <= {200, 201}
    assert [status for status, _ in results].count(201) == 1, "one created, the rest replayed"
    assert len({data["ticket_number"] for _, data in results}) == 1
    events = await read_events(http, a.url)
    assert [e["type"] for e in events] == ["ticket.created"]
    assert await read_events(http, b.url) == events, "every replica serves the same feed"


async def test_numbers_stay_unique_and_valid_under_load_on_every_replica(
        replica: Replica, http: aiohttp.ClientSession) -> None:
    gateways = [await replica(), await replica(), await replica()]
    results = await asyncio.gather(*(
        _post(http, gateways[i % 3], {"contact": {"email": f"c{i}@example.org"},
                                      "text": f"question number {i}: {uuid.uuid4()}"})
        for i in range(150)))
    assert {status for status, _ in results} == {201}
    numbers = [str(data["ticket_number"]) for _, data in results]
    assert len(set(numbers)) == 150
    numbering = gateways[0].intake.numbering
    assert all(numbering.parse(n) == n for n in numbers), "mask and check digit hold"
    events = await read_events(http, gateways[2].url)
    assert sorted(str(e["subject"]) for e in events) == sorted(numbers)


async def test_a_replica_wakes_on_another_replicas_commit(
        replica: Replica, http: aiohttp.ClientSession) -> None:
    a, b = await replica(), await replica()
    seen: list[int] = []
    b.store.on_commit(seen.append)
    await _post(http, a, {"contact": {"email": "w@example.org"}, "text": "wake the other one"})
    deadline = asyncio.get_running_loop().time() + 10
    while not seen:
        assert asyncio.get_running_loop().time() < deadline, "no NOTIFY reached replica b"
        await asyncio.sleep(0.02)
    assert b.store.last_seq == a.store.last_seq


async def test_a_replica_refuses_a_database_that_was_not_migrated(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn)
    with pytest.raises(ConfigError, match="intake-gateway migrate"):
        await store.open()


async def test_a_replica_refuses_a_schema_newer_than_its_code(postgres_dsn: str) -> None:
    migrate(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    store = PostgresStore(postgres_dsn)
    with pytest.raises(ConfigError, match="older code than the schema"):
        await store.open()
    with pytest.raises(ConfigError, match="upgrade the gateway"):
        migrate(postgres_dsn)


def test_postgres_needs_its_dsn_from_the_environment(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTAKE_NO_SUCH_DSN", raising=False)
    with pytest.raises(ConfigError, match="dsn_env"):
        Gateway(parse_config('[store]\nbackend = "postgres"\n'), tmp_path)
    with pytest.raises(ConfigError, match="INTAKE_NO_SUCH_DSN is not set"):
        Gateway(parse_config('[store]\nbackend = "postgres"\ndsn_env = "INTAKE_NO_SUCH_DSN"\n'),
                tmp_path)


async def test_tail_keeps_a_consumers_position_in_the_database(
        replica: Replica, http: aiohttp.ClientSession, postgres_dsn: str,
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    gw = await replica()
    for i in range(3):
        await _post(http, gw, {"contact": {"email": f"t{i}@example.org"}, "text": f"tail {i}"})
    conf = tmp_path / "tail.toml"
    conf.write_text('[store]\nbackend = "postgres"\ndsn_env = "INTAKE_TAIL_DSN"\n')

    def tail(data_dir: Path) -> list[str]:
        # Each run from another data dir, as from another machine: only the database is shared.
        res = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "tail", "--config", str(conf),
             "--data-dir", str(data_dir), "--consumer", "crm"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "INTAKE_TAIL_DSN": postgres_dsn})
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()

    first = await asyncio.to_thread(tail, tmp_path / "machine-a")
    assert len(first) == 3
    await _post(http, gw, {"contact": {"email": "t9@example.org"}, "text": "one more"})
    later = await asyncio.to_thread(tail, tmp_path / "machine-b")
    assert len(later) == 1 and later[0] not in first, "resumed where machine a left off"


async def test_every_replica_serves_the_files_another_took_in(
        replica: Replica, http: aiohttp.ClientSession) -> None:
    import base64
    import hashlib

    a, b = await replica(), await replica()
    blob = b"%PDF-1.4 receipt taken in by replica a " + uuid.uuid4().bytes
    status, data = await _post(http, a, {
        "contact": {"email": "f@example.org"}, "text": "Receipt attached.",
        "attachments": [{"name": "receipt.pdf", "content_type": "application/pdf",
                         "data": base64.b64encode(blob).decode()}]})
    assert status == 201
    digest = hashlib.sha256(blob).hexdigest()
    assert not a.attachments.path_of(digest).exists(), "not on replica a's disk: shared"
    url = f"{b.url}/v1/messages/{data['message_id']}"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert (await resp.json())["text"] == "Receipt attached."
    async with http.get(f"{url}/attachments/{digest}") as resp:
        assert resp.status == 200 and await resp.read() == blob
        assert resp.headers["Content-Type"] == "application/pdf"
    async with http.get(f"{url}/attachments/{'0' * 64}") as resp:
        assert resp.status == 404


async def test_the_store_recovers_when_postgresql_restarts() -> None:
    from gateway.errors import TransientError
    from gateway.testing.private_postgres import PrivatePostgres

    with PrivatePostgres() as pg:
        migrate(pg.dsn)
        store = PostgresStore(pg.dsn)
        await store.open()
        try:
            await store.probe_write()
            assert await store.events_after(0, 10) == []  # a pooled read connection now
            await asyncio.to_thread(pg.restart)  # every connection is cut
            # Reads retry once on a fresh connection: the pooled one's loss is not the caller's.
            assert await store.events_after(0, 10) == []
            assert await store.adapter_state("imap").get("mailbox:x") is None
            # The writer finds its connection gone on the next batch at the latest, reconnects.
            for _ in range(2):
                try:
                    await store.probe_write()
                    break
                except TransientError:
                    continue
            else:
                raise AssertionError("the writer did not reconnect")
            await store.probe_write()
        finally:
            await store.close()

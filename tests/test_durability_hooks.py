"""Answered means durable, observed from inside: the writer's own pragmas, and no caller is
answered before its COMMIT has returned.

A SIGKILL test (tests/test_durability.py) cannot see either: the OS page cache survives a killed
process, so ``synchronous = OFF`` passes it, and so does settling the callers' futures a few
milliseconds before COMMIT. Here the COMMIT itself is made observable: SQLite's own trace callback,
installed on the writer's connection through ``store.run``, is called as the COMMIT statement
starts, and holds it there on an event the test owns. No code of the store is replaced.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from gateway.attachments import AttachmentStore
from gateway.config import parse_config
from gateway.intake import IntakeService
from gateway.runtime import Gateway
from gateway.store.sqlite import SqliteStore, SqliteTx
from intake_schemas import Contact, InboundMessage
from tests.conftest import MakeGateway


class CommitGate:
    """Holds the writer's next COMMIT that follows a message insert until :meth:`release`.

    ``reached`` is set on the event loop (``call_soon_threadsafe``, FIFO with the writer's own
    wake-ups), so when a test resumes on it, every callback the writer scheduled before its
    COMMIT (the futures it settled) has already run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.armed = False
        self.saw_message = False
        self.reached = asyncio.Event()
        self.released = threading.Event()
        self.held = 0

    def trace(self, sql: str) -> None:
        """SQLite's trace callback: runs on the writer thread as each statement starts."""
        if not self.armed:
            return
        if sql.lstrip().upper().startswith("INSERT INTO MESSAGES"):
            self.saw_message = True
        elif sql.strip().upper() == "COMMIT" and self.saw_message and not self.released.is_set():
            self.held += 1
            self.loop.call_soon_threadsafe(self.reached.set)
            # Bounded so a broken test cannot hang the suite; the test releases long before.
            self.released.wait(30)

    def release(self) -> None:
        self.released.set()


async def install_gate(store: SqliteStore) -> CommitGate:
    gate = CommitGate(asyncio.get_running_loop())

    def install(tx: SqliteTx) -> None:
        tx.conn.set_trace_callback(gate.trace)

    await store.run(install)
    gate.armed = True  # after install's own COMMIT, which must not be held
    return gate


async def remove_gate(store: SqliteStore) -> None:
    def remove(tx: SqliteTx) -> None:
        tx.conn.set_trace_callback(None)

    await store.run(remove)


def pragma(name: str):  # type: ignore[no-untyped-def]
    def read(tx: SqliteTx) -> object:
        return tx.conn.execute(f"PRAGMA {name}").fetchone()[0]
    return read


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "intake.sqlite3")
    await s.open()
    yield s
    await s.close()


def message(n: int) -> InboundMessage:
    return InboundMessage(channel="api", received_at=datetime.now(UTC),
                          contact=Contact(email=f"gate{n}@example.org"),
                          text=f"my router number {n} is broken")


async def test_the_writer_connection_is_wal_and_synchronous_full(store: SqliteStore) -> None:
    # On the writer's OWN connection (the one that commits), not a fresh one: pragmas like
    # synchronous are per connection, and a fresh connection would say what connect() does
    # today, not what the writer runs with.
    assert await store.run(pragma("journal_mode")) == "wal"
    assert await store.run(pragma("synchronous")) == 2  # FULL: fsync at every commit


async def test_the_running_gateway_writer_is_wal_and_synchronous_full(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    assert await gw.store.run(pragma("journal_mode")) == "wal"
    assert await gw.store.run(pragma("synchronous")) == 2


async def test_no_submit_returns_before_its_commit_has(store: SqliteStore,
                                                       tmp_path: Path) -> None:
    intake = IntakeService(parse_config(""), store,
                           AttachmentStore(tmp_path / "files", max_bytes=1 << 20))
    gate = await install_gate(store)
    try:
        tasks = [asyncio.create_task(intake.submit(message(n))) for n in range(5)]
        await asyncio.wait_for(gate.reached.wait(), 10)
        # The writer is inside COMMIT now, and everything it scheduled before is done.
        assert not any(t.done() for t in tasks), "a caller was answered before its COMMIT"
        # Nor can anyone read it yet: it is not committed.
        assert await store.read(
            lambda c: c.execute("SELECT count(*) FROM messages").fetchone()[0]) == 0
    finally:
        gate.release()
    receipts = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [r.outcome for r in receipts] == ["created"] * 5
    await remove_gate(store)
    assert gate.held >= 1
    # Answered means on disk: a connection of its own sees every answered message.
    conn = sqlite3.connect(store.path)
    try:
        uids = {row[0] for row in conn.execute("SELECT uid FROM messages")}
    finally:
        conn.close()
    assert {r.message_id for r in receipts} <= uids


async def test_no_http_request_is_answered_before_its_commit(gateway: Gateway,
                                                             http: aiohttp.ClientSession) -> None:
    gate = await install_gate(gateway.store)

    async def post(n: int) -> tuple[int, dict[str, object]]:
        body = {"contact": {"email": f"http{n}@example.org"}, "text": f"invoice {n} is wrong"}
        async with http.post(f"{gateway.url}/v1/messages", json=body) as resp:
            return resp.status, await resp.json()

    try:
        tasks = [asyncio.create_task(post(n)) for n in range(3)]
        await asyncio.wait_for(gate.reached.wait(), 10)
        # A full round trip on the same server, which needs no write: any answer the gateway
        # had written for the held requests would have reached their clients by now.
        async with http.get(f"{gateway.url}/healthz") as resp:
            assert resp.status == 200
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(t.done() for t in tasks), "an HTTP request was answered before COMMIT"
    finally:
        gate.release()
    answers = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert [status for status, _ in answers] == [201] * 3
    await remove_gate(gateway.store)

"""Singletons across replicas on PostgreSQL: one holder at a time, taken over when it dies.

Leases (gateway/leases.py) keep one IMAP mailbox watcher, Telegram long polling and the event
relay on one replica at a time; the acknowledgement outbox is leased row by row. Here: a
holder SIGKILLed in another process is replaced within seconds; two gateways on one Dovecot
mailbox take every mail once and send every acknowledgement once; stopping the holder hands
the mailbox over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.leases import LeasedExclusive
from gateway.runtime import Gateway
from gateway.store.postgres import PostgresStore, migrate
from gateway.testing.dovecot import PrivateDovecot, require_dovecot
from gateway.testing.drivers_mail import customer_mail
from gateway.testing.postgres import postgres_database, postgres_dsn
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.mail import ImapAdapter

__all__ = ["postgres_database", "postgres_dsn"]

PASSWORD_ENV = "INTAKE_TEST_IMAP_PASSWORD"
DSN_ENV = "INTAKE_TEST_REPLICA_DSN"


async def until(predicate: Callable[[], object], *, timeout: float = 15.0,
                what: str = "condition") -> float:
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


_HOLDER = textwrap.dedent("""
    import asyncio, sys
    from gateway.leases import LeasedExclusive
    from gateway.store.postgres import PostgresStore

    async def main():
        store = PostgresStore(sys.argv[1])
        await store.open()
        async def work():
            print("held", flush=True)
            await asyncio.Event().wait()
        await LeasedExclusive(store, ttl=float(sys.argv[2])).run("imap:support", work)

    asyncio.run(main())
""")


async def test_a_lease_holder_killed_is_replaced_within_seconds(postgres_dsn: str) -> None:
    migrate(postgres_dsn)
    ttl = 1.5
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, postgres_dsn, str(ttl)],
                              stdout=subprocess.PIPE, text=True)
    store = PostgresStore(postgres_dsn)
    await store.open()
    try:
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
        mine = LeasedExclusive(store, ttl=ttl)
        running: list[float] = []

        async def work() -> None:
            running.append(time.monotonic())
            await asyncio.Event().wait()
        task = asyncio.create_task(mine.run("imap:support", work))
        await asyncio.sleep(ttl * 2)
        assert running == [], "never two holders: the other process renews its lease"
        killed = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        await until(lambda: running, timeout=ttl * 3, what="takeover")
        # Expiry (at most ttl after its last renewal) plus one of our polls (ttl / 3).
        assert running[0] - killed <= ttl * 4 / 3 + 0.5
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        await store.close()


async def test_a_holder_that_cannot_renew_stops_before_its_lease_expires(
        postgres_dsn: str) -> None:
    migrate(postgres_dsn)
    ttl = 1.5
    a, b = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
    await a.open()
    await b.open()
    spans: dict[str, list[float]] = {"a": [], "b": []}

    def working(who: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            spans[who].append(time.monotonic())
            try:
                await asyncio.Event().wait()
            finally:
                spans[who].append(time.monotonic())
        return work
    ta = asyncio.create_task(LeasedExclusive(a, ttl=ttl).run("relay:x", working("a")))
    await until(lambda: spans["a"], what="a holds")
    tb = asyncio.create_task(LeasedExclusive(b, ttl=ttl).run("relay:x", working("b")))
    await a.close()  # a loses the database: it cannot renew
    await until(lambda: spans["b"], timeout=ttl * 4, what="b takes over")
    assert len(spans["a"]) == 2 and spans["a"][1] <= spans["b"][0], "a stopped before b began"
    for task in (ta, tb):
        task.cancel()
    await asyncio.gather(ta, tb, return_exceptions=True)
    await b.close()


# -- two gateways on one mailbox ---------------------------------------------------------------


@pytest.fixture
def dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateDovecot]:
    require_dovecot()
    with PrivateDovecot(users={"support": "s3cret"}) as server:
        monkeypatch.setenv(PASSWORD_ENV, "s3cret")
        yield server


@pytest.fixture
async def replicas(postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   dovecot: PrivateDovecot) -> AsyncIterator[tuple[
                       Callable[[], Awaitable[Gateway]], SmtpCapture]]:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    migrate(postgres_dsn)
    started: list[Gateway] = []
    with SmtpCapture() as capture:
        toml = (f'[store]\nbackend = "postgres"\ndsn_env = "{DSN_ENV}"\nlease_seconds = 1.5\n'
                "[adapters.imap]\nbackoff_min = 0.1\nbackoff_max = 1.0\n"
                + dovecot.mailbox_toml("support", password_env=PASSWORD_ENV)
                + f'[adapters.mailer]\nport = {capture.port}\n'
                  'from_address = "support@example.com"\n')

        async def start() -> Gateway:
            gw = Gateway(parse_config(toml), tmp_path / f"r{len(started)}", listen="127.0.0.1:0")
            await gw.start()
            started.append(gw)
            return gw
        yield start, capture
        for gw in reversed(started):
            await gw.stop()


def _imap(gw: Gateway) -> ImapAdapter:
    return next(a for a in gw.adapters if isinstance(a, ImapAdapter))


def _mail(n: int) -> bytes:
    return customer_mail(sender=f"customer{n}@customers.example.cn", subject=f"问题 {n}",
                         text=f"第 {n} 个问题：我的设备无法开机。",
                         message_id=f"m{n}@customers.example.cn")


async def _tickets(gw: Gateway) -> list[str]:
    def rows(c: object) -> list[str]:
        return [r[0] for r in c.execute("SELECT number FROM tickets")]  # type: ignore[attr-defined]
    assert isinstance(gw.store, PostgresStore)
    return await gw.store.read(rows)


async def test_two_replicas_take_each_mail_once_and_hand_the_mailbox_over(
        replicas: tuple[Callable[[], Awaitable[Gateway]], SmtpCapture],
        dovecot: PrivateDovecot) -> None:
    start, capture = replicas
    a, b = await start(), await start()
    boxes = [_imap(a).mailboxes[0], _imap(b).mailboxes[0]]
    await until(lambda: any(box.connected for box in boxes), what="one replica connected")
    with dovecot.client() as client:
        for n in range(10):
            client.append("INBOX", _mail(n))
    await until(lambda: sum(box.counts["accepted"] for box in boxes) == 10, what="ten taken")
    assert sorted(box.counts["accepted"] for box in boxes) == [0, 10], "one replica works it"
    holder, standby = (a, b) if boxes[0].counts["accepted"] else (b, a)
    assert not (boxes[0].connected and boxes[1].connected), "never both logged in"

    # A rolling upgrade: the holder goes (its sends in flight recorded first, its leases
    # handed back), the other takes the mailbox and the outbox.
    await holder.stop()
    with dovecot.client() as client:
        for n in range(10, 15):
            client.append("INBOX", _mail(n))
    other = _imap(standby).mailboxes[0]
    await until(lambda: other.counts["accepted"] == 5, what="the standby takes the rest")
    numbers = await _tickets(standby)
    assert len(numbers) == len(set(numbers)) == 15, "every mail made one ticket, once"
    await until(lambda: len(capture.messages) >= 15, what="fifteen acknowledgements")
    await asyncio.sleep(0.5)  # nothing further arrives: each acknowledgement was sent once
    sent = sorted(m.rcpt_tos[0] for m in capture.messages)
    assert len(sent) == 15 and sent == sorted({*sent}), "each acknowledgement sent once"


# -- the event relay: one replica publishes, another takes over --------------------------------


async def test_one_replica_relays_and_another_takes_over_when_it_stops(
        postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp

    from gateway.testing.webhook_receiver import WebhookReceiver

    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    monkeypatch.setenv("INTAKE_TEST_HOOK_SECRET", "hook-s3cret")
    migrate(postgres_dsn)
    async with WebhookReceiver(secret="hook-s3cret") as receiver:
        toml = (f'[store]\nbackend = "postgres"\ndsn_env = "{DSN_ENV}"\nlease_seconds = 1.5\n'
                '[queue]\nbackend = "webhook"\n[queue.settings]\n'
                f'url = "{receiver.url()}"\nsecret_env = "INTAKE_TEST_HOOK_SECRET"\n'
                "[adapters.smtp]\nenabled = false\n")
        gateways = [Gateway(parse_config(toml), tmp_path / f"r{i}", listen="127.0.0.1:0")
                    for i in range(3)]
        for gw in gateways:
            await gw.start()
        try:
            async with aiohttp.ClientSession() as http:
                async def post(i: int) -> None:
                    gw = gateways[i % len(gateways)]
                    async with http.post(f"{gw.url}/v1/messages", json={
                            "contact": {"email": f"r{i}@example.org"},
                            "text": f"relay question {i}"}) as resp:
                        assert resp.status == 201
                await asyncio.gather(*(post(i) for i in range(30)))
                await receiver.wait_for(30, timeout=15)
                leaders = [gw for gw in gateways if gw._relay_active()]
                assert len(leaders) == 1, "one relay publishes; the others stand by"
                for gw in gateways:
                    assert "relay" not in await gw.readiness(), "standbys are not stuck"
                await leaders[0].stop()
                rest = [gw for gw in gateways if gw is not leaders[0]]
                await asyncio.gather(*(post(i) for i in range(30, 45)
                                       if gateways[i % 3] is not leaders[0]))
                await until(lambda: any(gw._relay_active() for gw in rest), what="takeover")
                expected = 30 + sum(1 for i in range(30, 45) if gateways[i % 3] is not leaders[0])
                await receiver.wait_for(expected, timeout=15)
            ids = [d.event_id for d in receiver.deliveries]
            assert len(set(ids)) == expected, "every event delivered"
            assert len(ids) == expected, "and none twice: the new leader resumed at the saved seq"
        finally:
            for gw in gateways:
                await gw.stop()


async def test_the_dispatcher_outlives_a_postgresql_outage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.testing.drivers_mail import SUPPORT_ADDRESS, smtp_transaction
    from gateway.testing.private_postgres import PrivatePostgres
    from gateway.testing.services import free_port

    with PrivatePostgres() as pg, SmtpCapture() as capture:
        migrate(pg.dsn)
        monkeypatch.setenv(DSN_ENV, pg.dsn)
        port = free_port()
        gw = Gateway(parse_config(
            f'[store]\nbackend = "postgres"\ndsn_env = "{DSN_ENV}"\nlease_seconds = 1.5\n'
            f'[adapters.smtp]\nlisten = "127.0.0.1:{port}"\naccept = ["{SUPPORT_ADDRESS}"]\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT_ADDRESS}"\n'),
            tmp_path / "gw", listen="127.0.0.1:0")
        await gw.start()
        try:
            await asyncio.to_thread(pg.stop, "fast")
            # The dispatcher reads the outbox now, while the database is away: a read that
            # fails must not end it (it did, and acknowledgements then stayed pending).
            gw.dispatcher._wake.set()
            await asyncio.sleep(0.2)
            await asyncio.to_thread(pg.start)
            mail = customer_mail(sender="after@customers.example.org", subject="after",
                                 text="after the outage", message_id="after@customers")
            for _ in range(5):  # as an MTA does: retry a 451 (the first write found the cut)
                reply = await asyncio.to_thread(
                    smtp_transaction, port, sender="after@customers.example.org",
                    recipients=[SUPPORT_ADDRESS], data=mail)
                if reply.code != 451:
                    break
            assert reply.code == 250, reply
            await capture.wait_for(lambda m: "after@customers.example.org" in m.rcpt_tos,
                                   timeout=15)
            assert gw.dispatcher._task is not None and not gw.dispatcher._task.done()
        finally:
            await gw.stop()

"""Three gateway processes on one PostgreSQL, under load on every channel that takes load, with
one replica SIGKILLed and restarted and PostgreSQL itself restarted during the run.

The load generator behaves as providers do: a delivery that was not answered (refused, 5xx,
connection cut) is delivered again, to another replica, until it is answered; every tenth
delivery is sent to two replicas at the same instant. Afterwards, from the database and the
event feed: every answered delivery made exactly one ticket (one ``ticket.created`` event after
dedup by event id), ticket numbers are unique and valid, no acknowledgement is left pending,
and every IMAP mail was taken once although all three replicas watch the mailbox.

PostgreSQL here is a private cluster (gateway/testing/private_postgres.py) so that restarting
it disturbs no other test. Bounded: the whole run has a deadline.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import psycopg
import pytest

from gateway.numbering import NumberingConfig, TicketNumbering
from gateway.store.postgres import migrate
from gateway.testing.dovecot import PrivateDovecot, require_dovecot
from gateway.testing.drivers import ApiDriver, Customer, WebformDriver
from gateway.testing.drivers_chat import TelegramDriver, TwilioDriver, WeChatDriver
from gateway.testing.drivers_mail import SUPPORT_ADDRESS, SmtpDriver, customer_mail
from gateway.testing.harness import read_events
from gateway.testing.private_postgres import PrivatePostgres
from gateway.testing.services import free_port

REPLICAS = 3
PER_CHANNEL = 40
SPREAD = 12.0
"""Seconds the deliveries are spread over: the faults below fall inside them."""
IMAP_MAILS = 12
DEADLINE = 240.0
PASSWORD_ENV = "INTAKE_CHAOS_IMAP_PASSWORD"
DSN_ENV = "INTAKE_CHAOS_DSN"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture
def dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateDovecot]:
    require_dovecot()
    with PrivateDovecot(users={"support": "s3cret"}) as server:
        monkeypatch.setenv(PASSWORD_ENV, "s3cret")
        yield server


class Replica:
    """One ``intake-gateway serve`` process on its own port, data dir and SMTP port."""

    def __init__(self, n: int, config: str, tmp: Path, smtp: SmtpDriver) -> None:
        self.n = n
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.smtp = smtp
        self.conf = tmp / f"replica{n}.toml"
        self.conf.write_text(config)
        self.data = tmp / f"replica{n}"
        self.log = tmp / f"replica{n}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.conf),
                 "--data-dir", str(self.data), "--listen", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=log, cwd=ROOT)

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                async with http.get(f"{self.url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _config(smtp: SmtpDriver, dovecot: PrivateDovecot, drivers: list[object]) -> str:
    parts = [f'[store]\nbackend = "postgres"\ndsn_env = "{DSN_ENV}"\nlease_seconds = 2.0\n'
             "ack_lease_seconds = 5.0\n",
             '[intake]\nchat_followup_window = "0s"\n']
    for driver in drivers:
        parts.append(driver.config_toml().replace(  # type: ignore[attr-defined]
            '[intake]\nchat_followup_window = "0s"\n', ""))
    parts.append(smtp.config_toml())
    parts.append("[adapters.imap]\nbackoff_min = 0.1\nbackoff_max = 1.0\n"
                 + dovecot.mailbox_toml("support", password_env=PASSWORD_ENV))
    return "".join(parts)


async def test_three_replicas_lose_nothing_and_double_nothing_through_kills_and_restarts(
        private_pg: PrivatePostgres, dovecot: PrivateDovecot, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    migrate(private_pg.dsn)
    monkeypatch.setenv(DSN_ENV, private_pg.dsn)
    chats = {"api": ApiDriver(), "webform": WebformDriver(), "twilio": TwilioDriver(),
             "telegram": TelegramDriver(), "wechat": WeChatDriver()}
    smtps = [SmtpDriver() for _ in range(REPLICAS)]
    replicas = [Replica(n, _config(smtps[n], dovecot, list(chats.values())), tmp_path, smtps[n])
                for n in range(REPLICAS)]
    for r in replicas:
        r.start()
    answered: dict[str, str] = {}  # token -> channel, for deliveries that were answered
    attempts: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for r in replicas:
                await r.ready(http)
            with dovecot.client() as client:
                for k in range(IMAP_MAILS // 2):
                    client.append("INBOX", _imap_mail(k))

            async def deliver(channel: str, i: int, *, twice: bool) -> None:
                token = f"load-{channel}-{i}-{uuid.uuid4().hex[:8]}"
                customer = Customer(key=f"{channel}{i}x{token[-8:]}")
                delivery_id = f"d-{token}"
                first = random.randrange(REPLICAS)
                order = [replicas[(first + k) % REPLICAS] for k in range(REPLICAS)]
                attempt = 0
                while time.monotonic() - started < DEADLINE - 60:
                    targets = order[:2] if twice and attempt == 0 else [order[attempt % REPLICAS]]
                    results = await asyncio.gather(*(
                        _send(http, channel, chats, r, customer, token, delivery_id)
                        for r in targets))
                    attempt += 1
                    attempts[token] = attempt
                    if any(results):
                        answered[token] = channel
                        return
                    await asyncio.sleep(0.2)

            async def chaos() -> None:
                await asyncio.sleep(3)
                replicas[1].kill()  # mid-load: whatever it had not answered is retried
                await asyncio.sleep(2)
                replicas[1].start()
                await asyncio.sleep(3)
                await asyncio.to_thread(private_pg.restart)  # every connection cut
                with dovecot.client() as client:
                    for k in range(IMAP_MAILS // 2, IMAP_MAILS):
                        client.append("INBOX", _imap_mail(k))

            slots = asyncio.Semaphore(12)

            async def limited(channel: str, i: int) -> None:
                await asyncio.sleep(random.uniform(0, SPREAD))
                async with slots:
                    await deliver(channel, i, twice=i % 10 == 0)
            jobs = [limited(ch, i) for i in range(PER_CHANNEL) for ch in [*chats, "smtp"]]
            random.shuffle(jobs)
            await asyncio.gather(chaos(), *jobs)
            await replicas[1].ready(http)
            unanswered = sorted(set(attempts) - set(answered))
            assert len(answered) == PER_CHANNEL * (len(chats) + 1), (
                f"not answered: {unanswered[:10]}; logs: " + _log_tails(replicas))

            # -- afterwards: the database and the feed ---------------------------------------
            dsn = private_pg.dsn

            def pending() -> int:
                with psycopg.connect(dsn) as conn:
                    row = conn.execute("SELECT count(*) FROM acks WHERE status = 'pending'"
                                       ).fetchone()
                    return int(row[0]) if row else -1

            async def created_by_token() -> dict[str, int]:
                events = await read_events(http, replicas[0].url)
                unique = {str(e["id"]): e for e in events}  # the consumer's dedup
                counts: dict[str, int] = {}
                for e in unique.values():
                    if e["type"] != "ticket.created":
                        continue
                    text = str(e["data"]["message"].get("text", ""))  # type: ignore[index]
                    for word in text.split():
                        if word.startswith(("load-", "imap-")):
                            counts[word] = counts.get(word, 0) + 1
                return counts

            imap_tokens = {f"imap-{k}" for k in range(IMAP_MAILS)}
            while True:
                counts = await created_by_token()
                left = await asyncio.to_thread(pending)
                if imap_tokens <= counts.keys() and left == 0:
                    break
                assert time.monotonic() - started < DEADLINE, (
                    f"{left} acks pending, imap taken: {sorted(imap_tokens & counts.keys())}; "
                    "logs: " + _log_tails(replicas))
                await asyncio.sleep(0.5)
            doubled = {t: n for t, n in counts.items() if n != 1}
            assert doubled == {}, "each delivery and each mail makes exactly one ticket"
            missing = set(answered) - counts.keys()
            assert missing == set(), "an answered delivery was lost"

            with psycopg.connect(dsn) as conn:
                numbers = [r[0] for r in conn.execute("SELECT number FROM tickets")]
                stranded = conn.execute(
                    "SELECT count(*) FROM acks WHERE status = 'pending'").fetchone()
            assert len(numbers) == len(set(numbers)) == len(counts)
            numbering = TicketNumbering(NumberingConfig())
            assert all(numbering.parse(n) == n for n in numbers), "mask and check digit"
            assert stranded == (0,)
            assert sum(attempts.values()) > len(answered), "the faults were felt (retries)"
    finally:
        for r in replicas:
            r.stop()


async def _send(http: aiohttp.ClientSession, channel: str, chats: dict[str, object],
                replica: Replica, customer: Customer, token: str, delivery_id: str) -> bool:
    """One delivery attempt; True when the provider was answered with success."""
    text = f"question {token} about my order"
    try:
        if channel == "smtp":
            result = await replica.smtp.send(http, replica.url, customer=customer, text=text,
                                             delivery_id=delivery_id)
        else:
            result = await chats[channel].send(  # type: ignore[attr-defined]
                http, replica.url, customer=customer, text=text, delivery_id=delivery_id)
    except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, ValueError):
        return False
    return bool(200 <= result.status < 300)


def _log_tails(replicas: list[Replica]) -> str:
    return "\n".join(f"--- replica {r.n}:\n{r.log.read_text(errors='replace')[-1500:]}"
                     for r in replicas)


def _imap_mail(k: int) -> bytes:
    return customer_mail(sender=f"imap{k}@customers.example.cn", to=SUPPORT_ADDRESS,
                         subject=f"mail {k}", text=f"imap-{k} the device does not start",
                         message_id=f"imap{k}-{uuid.uuid4().hex}@customers.example.cn")

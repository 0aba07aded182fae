"""The imap adapter against a private Dovecot started for each test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.dovecot import PrivateDovecot, require_dovecot
from gateway.testing.drivers_mail import customer_mail
from gateway.testing.harness import read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.mail import ImapAdapter
from tests.conftest import MakeGateway

PASSWORD_ENV = "INTAKE_TEST_IMAP_PASSWORD"


@pytest.fixture
def dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateDovecot]:
    require_dovecot()
    with PrivateDovecot(users={"support": "s3cret", "sales": "s3cret"}) as server:
        monkeypatch.setenv(PASSWORD_ENV, "s3cret")
        yield server


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def config(dovecot: PrivateDovecot, capture: SmtpCapture, *, mailbox: str = "",
           folder: str = "INBOX", users: tuple[str, ...] = ("support",)) -> str:
    boxes = "".join(dovecot.mailbox_toml(u, password_env=PASSWORD_ENV, folder=folder,
                                         extra=mailbox) for u in users)
    return ("[adapters.imap]\nbackoff_min = 0.1\nbackoff_max = 1.0\n" + boxes +
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "support@example.com"\n')


def imap_of(gw: Gateway) -> ImapAdapter:
    return next(a for a in gw.adapters if isinstance(a, ImapAdapter))


def mail(n: int, *, sender: str | None = None, message_id: str | None = None) -> bytes:
    return customer_mail(sender=sender or f"customer{n}@customers.example.cn",
                         subject=f"问题 {n}", text=f"第 {n} 个问题：我的设备无法开机。",
                         message_id=message_id or f"m{n}@customers.example.cn")


async def events(gw: Gateway) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def until(predicate, *, timeout: float = 10.0, what: str = "condition") -> float:  # type: ignore[no-untyped-def]
    """Wait for ``predicate()`` (sync or async); return the seconds it took."""
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def book_of(gw: Gateway, mailbox: str = "support") -> dict | None:
    """The adapter's bookkeeping of one mailbox in the store, or None before it was first written.

    The adapter counts a mail as accepted when submit returns and records its UID after the
    whole batch: wait on the state, never read it right after a count.
    """
    for key, value in await gw.store.adapter_state("imap").items():
        if key == f"mailbox:{mailbox}":
            return json.loads(value)
    return None


async def book_matches(gw: Gateway, check: Callable[[dict], bool]) -> bool:
    """Whether the mailbox's bookkeeping is stored and passes ``check`` (for ``until``)."""
    book = await book_of(gw)
    return book is not None and check(book)


async def created(gw: Gateway) -> list[dict]:
    return [e for e in await events(gw) if e["type"] == "ticket.created"]


async def test_mail_read_by_another_client_first_is_still_taken(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    with dovecot.client() as other:
        other.append("INBOX", mail(1))
        other.append("INBOX", mail(2), flags=[b"\\Seen"])
        other.select_folder("INBOX")
        other.fetch(other.search(["ALL"]), ["BODY[]"])  # reading sets \Seen
        assert all(b"\\Seen" in f for f in other.get_flags(other.search(["ALL"])).values())
    gw = await make_gateway(config(dovecot, capture))
    imap = imap_of(gw)
    await until(lambda: imap.counts("support")["accepted"] == 2, what="both taken")
    assert len(await created(gw)) == 2
    await until(lambda: len(capture.messages) == 2, what="two acknowledgements")
    await until(lambda: book_matches(gw, lambda b: b["last_uid"] == 2), what="both recorded")


async def test_a_bookkeeping_file_of_an_earlier_version_is_taken_over_once(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture,
        tmp_path: Path) -> None:
    with dovecot.client() as c:
        for n in (1, 2, 3):
            c.append("INBOX", mail(n))
        validity = int(c.select_folder("INBOX")[b"UIDVALIDITY"])
    data_dir = tmp_path / "upgraded"
    old = data_dir / "imap" / "state.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"version": 1, "mailboxes": {
        "support": {"uidvalidity": validity, "last_uid": 2}}}))
    gw = await make_gateway(config(dovecot, capture), data_dir=data_dir)
    imap = imap_of(gw)
    await until(lambda: book_matches(gw, lambda b: b["last_uid"] == 3), what="mail 3 recorded")
    assert imap.counts("support")["accepted"] == 1, "mails 1 and 2 were taken before"
    assert len(await created(gw)) == 1
    assert json.loads(old.read_text())["mailboxes"]["support"]["last_uid"] == 2, "left as is"


async def test_taken_mail_is_flagged_or_moved_only_after_submit(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    with dovecot.client() as c:
        c.create_folder("Taken")
        c.append("INBOX", mail(1))
    gw = await make_gateway(config(dovecot, capture, mailbox='move_to = "Taken"\n'))
    await until(lambda: imap_of(gw).counts("support")["accepted"] == 1, what="taken")
    await until(lambda: len(capture.messages) == 1, what="acknowledged")
    with dovecot.client() as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
        assert c.select_folder("Taken")[b"EXISTS"] == 1
        assert b"\\Seen" in next(iter(c.get_flags(c.search(["ALL"])).values()))
    assert len(await created(gw)) == 1


async def test_uidvalidity_change_reads_again_without_duplicates(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    with dovecot.client() as c:
        c.create_folder("Support")
        c.append("Support", mail(1))
        c.append("Support", mail(2))
    gw = await make_gateway(config(dovecot, capture, folder="Support"))
    imap = imap_of(gw)
    await until(lambda: imap.counts("support")["accepted"] == 2, what="first two")
    await until(lambda: book_matches(gw, lambda b: b["last_uid"] == 2),
                what="first two recorded")
    first_validity = (await book_of(gw))["uidvalidity"]  # type: ignore[index]

    # Someone recreates the folder (a migration, a restore): new UIDVALIDITY, UIDs from 1.
    with dovecot.client() as c:
        c.delete_folder("Support")
        c.create_folder("Support")
        c.append("Support", mail(1))
        c.append("Support", mail(2))
        c.append("Support", mail(3))
    await until(lambda: imap.counts("support")["accepted"] == 5, timeout=20,
                what="the recreated folder read again")
    numbers = [e["subject"] for e in await created(gw)]
    assert len(numbers) == 3 and len(set(numbers)) == 3, "mails 1 and 2 were replays"
    await until(lambda: book_matches(gw, lambda b: b["uidvalidity"] != first_validity),
                what="the new UIDVALIDITY recorded")
    await until(lambda: book_matches(gw, lambda b: b["last_uid"] == 3),
                what="the recreated folder recorded")
    # No second acknowledgement for a replay: a later mail IS acknowledged, and the outbox is
    # sent in order, so once its acknowledgement is there any for a replay would be too.
    with dovecot.client() as c:
        c.append("Support", mail(4))
    await until(lambda: len(capture.messages) >= 4, what="the later mail acknowledged")
    assert len(capture.messages) == 4, "a replay was acknowledged again"
    assert sorted(r for m in capture.messages for r in m.rcpt_tos) == sorted(
        f"customer{n}@customers.example.cn" for n in (1, 2, 3, 4))


async def test_a_poisoned_message_is_quarantined_and_the_next_taken(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    with dovecot.client() as c:
        c.append("INBOX", b"X-Garbage: yes\r\nSubject:\r\n\r\n")  # no sender, no body
        c.append("INBOX", b"From: a@customers.example.org\r\nSubject:\r\n\r\n")  # empty
        c.append("INBOX", mail(3))
    gw = await make_gateway(config(dovecot, capture))
    imap = imap_of(gw)
    await until(lambda: imap.counts("support") == {"seen": 3, "accepted": 1,
                                                   "quarantined": 2}, what="counts")
    assert len(await created(gw)) == 1
    kept = Path(gw.data_dir) / "imap" / "quarantine" / "support"
    assert (kept / f"{_validity(dovecot)}-1.eml").read_bytes().startswith(b"X-Garbage")
    assert "From" in (kept / f"{_validity(dovecot)}-1.reason").read_text()
    assert (kept / f"{_validity(dovecot)}-2.reason").read_text()
    with dovecot.client() as c:
        c.select_folder("INBOX")
        flags = c.get_flags([1, 2, 3])
    assert b"\\Seen" not in flags[1] and b"\\Seen" not in flags[2], "left for a person"
    assert b"\\Seen" in flags[3]
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'intake_imap_quarantined_total{mailbox="support"}' in metrics
    assert 'intake_imap_accepted_total{mailbox="support"}' in metrics
    assert 'intake_imap_seen_total{mailbox="support"}' in metrics


def _validity(dovecot: PrivateDovecot) -> int:
    with dovecot.client() as c:
        return int(c.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"])


async def test_idle_wakes_up_within_two_seconds(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    # Polling would wait ten minutes: only IDLE can make this test pass.
    gw = await make_gateway(config(dovecot, capture, mailbox="poll_interval = 600\n"))
    imap = imap_of(gw)
    await until(lambda: imap.mailboxes[0].connected, what="connected")
    await asyncio.sleep(0.5)  # the adapter is idling now
    for n in (1, 2):
        with dovecot.client() as c:
            c.append("INBOX", mail(n))
        took = await until(lambda n=n: imap.counts("support")["accepted"] == n, timeout=5,
                           what="IDLE wake-up")
        assert took < 2.0, took


async def test_polling_where_idle_is_off(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(dovecot, capture,
                                   mailbox="idle = false\npoll_interval = 0.3\n"))
    imap = imap_of(gw)
    await until(lambda: imap.mailboxes[0].connected, what="connected")
    with dovecot.client() as c:
        c.append("INBOX", mail(1))
    await until(lambda: imap.counts("support")["accepted"] == 1, timeout=5, what="polled")


async def test_same_message_in_two_mailboxes_is_two_deliveries(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    for user in ("support", "sales"):
        with dovecot.client(user) as c:
            c.append("INBOX", mail(1, message_id="cc-both@customers.example.cn"))
    gw = await make_gateway(config(dovecot, capture, users=("support", "sales")))
    imap = imap_of(gw)
    await until(lambda: imap.counts("support")["accepted"] == 1
                and imap.counts("sales")["accepted"] == 1, what="both mailboxes")
    types = sorted(e["type"] for e in await events(gw) if e["type"].startswith("ticket."))
    assert types == ["ticket.created", "ticket.duplicate_received"]


async def test_reconnects_after_the_server_restarts(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(dovecot, capture))
    imap = imap_of(gw)
    await until(lambda: imap.mailboxes[0].connected, what="connected")
    await asyncio.to_thread(dovecot.restart)
    with dovecot.client() as c:
        c.append("INBOX", mail(1))
    await until(lambda: imap.counts("support")["accepted"] == 1, timeout=15,
                what="taken after reconnecting")
    assert imap.mailboxes[0].connected


async def test_nothing_is_taken_twice_across_a_restart(
        make_gateway: MakeGateway, dovecot: PrivateDovecot, capture: SmtpCapture,
        tmp_path: Path) -> None:
    with dovecot.client() as c:
        c.append("INBOX", mail(1))
    data = tmp_path / "data"
    gw = await make_gateway(config(dovecot, capture, mailbox="flag = \"$Intake\"\n"),
                            data_dir=data)
    await until(lambda: imap_of(gw).counts("support")["accepted"] == 1, what="taken")
    await gw.stop()
    with dovecot.client() as c:
        c.append("INBOX", mail(2))
    again = await make_gateway(config(dovecot, capture, mailbox="flag = \"$Intake\"\n"),
                               data_dir=data)
    imap = imap_of(again)
    await until(lambda: imap.counts("support")["accepted"] == 1, what="the new one")
    assert imap.counts("support")["seen"] == 1, "the first was not fetched again"
    assert len(await created(again)) == 2

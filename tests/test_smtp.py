"""The smtp adapter through real smtplib sessions against a running gateway."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.drivers_mail import SmtpReply, customer_mail, smtp_transaction
from gateway.testing.harness import outbox_settled, read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"
SALES = "sales@example.com"
CORPUS = Path(__file__).parent / "corpus" / "email"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "email"


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def config(capture: SmtpCapture, extra: str = "") -> str:
    return (f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}", "@help.example.com",'
            f' "{SALES}"]\n{extra}'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n')


def smtp_of(gw: Gateway) -> SmtpAdapter:
    return next(a for a in gw.adapters if isinstance(a, SmtpAdapter))


async def send(gw: Gateway, data: bytes, *, sender: str = "zhang@example.cn",
               to: list[str] | None = None) -> SmtpReply:
    return await asyncio.to_thread(smtp_transaction, smtp_of(gw).port, sender=sender,
                                   recipients=to or [SUPPORT], data=data)


async def events(gw: Gateway) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


def ticket_events(evs: list[dict]) -> list[dict]:
    return [e for e in evs if str(e["type"]).startswith("ticket.")]


async def test_accepted_mail_is_answered_with_its_ticket_number(make_gateway: MakeGateway,
                                                                capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    reply = await send(gw, customer_mail(sender="zhang@example.cn", subject="路由器",
                                         text="我的路由器从今天早上开始不能上网。",
                                         message_id="m1@example.cn"))
    assert reply.code == 250, reply
    assert reply.text.startswith("2.0.0 OK: ")
    assert reply.ticket is not None
    number, outcome = reply.ticket
    assert outcome == "created"
    # The 250 came after the commit: the event is already there.
    created = ticket_events(await events(gw))
    assert [(e["type"], e["subject"]) for e in created] == [("ticket.created", number)]
    message = created[0]["data"]["message"]
    assert message["channel"] == "smtp"
    assert message["text"].startswith("我的路由器")
    assert message["metadata"]["mailbox"] == SUPPORT
    raw_sha = message["metadata"]["raw_sha256"]
    assert (gw.attachments.path_of(raw_sha)).read_bytes().startswith(b"From: zhang@example.cn")


async def test_recipients_that_are_not_ours_are_refused(make_gateway: MakeGateway,
                                                        capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    data = customer_mail(sender="x@example.org", subject="hi", text="hello", message_id="r@x")
    for rcpt in ("someone@elsewhere.org", "support@example.com.evil.org", "@relay.org:x@e.org",
                 "other@sub.help.example.com"):
        reply = await send(gw, data, to=[rcpt])
        # aiosmtpd itself refuses source routes (553) before asking us.
        assert reply.recipients[rcpt] in (550, 553), rcpt
    # A domain entry takes every address of that domain, case-insensitively.
    reply = await send(gw, data, to=["Anyone@HELP.example.com", "victim@elsewhere.org"])
    assert reply.recipients == {"Anyone@HELP.example.com": 250, "victim@elsewhere.org": 550}
    assert reply.code == 250
    created = ticket_events(await events(gw))
    assert len(created) == 1
    assert created[0]["data"]["message"]["metadata"]["mailbox"] == "anyone@help.example.com"


async def test_size_limit_is_advertised_and_enforced(make_gateway: MakeGateway,
                                                     capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture, "max_message_bytes = 4096\n"))
    port = smtp_of(gw).port
    big = customer_mail(sender="big@example.org", subject="big", text="x" * 8000,
                        message_id="big@x")

    def declared() -> tuple[int, bytes]:
        import smtplib
        with smtplib.SMTP("127.0.0.1", port) as c:
            c.ehlo()
            assert c.esmtp_features["size"] == "4096"
            return c.mail("big@example.org", [f"SIZE={len(big)}"])

    code, text = await asyncio.to_thread(declared)
    assert code == 552, text
    # Without SIZE on MAIL FROM the limit bites after DATA.
    reply = await send(gw, big, sender="big@example.org")
    assert reply.code == 552, reply
    assert ticket_events(await events(gw)) == []
    ok = await send(gw, customer_mail(sender="small@example.org", subject="small",
                                      text="fits", message_id="small@x"))
    assert ok.code == 250


async def test_a_truncated_session_leaves_nothing(make_gateway: MakeGateway,
                                                  capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    port = smtp_of(gw).port

    def cut_off() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            f = sock.makefile("rwb")
            f.readline()
            for line in (b"EHLO client.example.org", b"MAIL FROM:<cut@example.org>",
                         f"RCPT TO:<{SUPPORT}>".encode(), b"DATA"):
                f.write(line + b"\r\n")
                f.flush()
                while True:  # multi-line EHLO answer ends with "250 " (a space)
                    answer = f.readline()
                    if answer[3:4] != b"-":
                        break
            f.write(b"From: cut@example.org\r\nSubject: half\r\n\r\nthe first half of a mes")
            f.flush()
        # Closed without the final "." line.

    await asyncio.to_thread(cut_off)
    # A whole mail after it: once that one is answered, the cut one would have been recorded.
    reply = await send(gw, customer_mail(sender="cut@example.org", subject="whole",
                                         text="the whole message", message_id="whole@x"))
    assert reply.code == 250
    [only] = ticket_events(await events(gw))
    assert only["data"]["message"]["subject"] == "whole"
    stored = {p.name for p in gw.attachments.root.rglob("*") if p.is_file()}
    assert stored <= {only["data"]["message"]["metadata"].get("raw_sha256")}, "nothing stored"


async def test_store_unavailable_answers_451_and_the_retry_succeeds(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    data = customer_mail(sender="retry@example.org", subject="retry", text="please work",
                         message_id="retry@x")
    # Another process holds the database's write lock (a backup tool, a stuck migration):
    # the store cannot commit within its busy timeout and says so.
    locker = sqlite3.connect(gw.store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        reply = await send(gw, data, sender="retry@example.org")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert reply.code == 451, reply
    assert reply.text.startswith("4.3.0")
    assert ticket_events(await events(gw)) == []
    again = await send(gw, data, sender="retry@example.org")
    assert again.code == 250 and again.ticket and again.ticket[1] == "created"


async def test_one_mail_to_two_mailboxes_is_two_deliveries_and_one_ack(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    data = customer_mail(sender="li@example.cn", subject="账单", text="我的账单金额不对。",
                         message_id="two@example.cn")
    reply = await send(gw, data, sender="li@example.cn", to=[SUPPORT, SALES])
    assert reply.code == 250 and reply.ticket and reply.ticket[1] == "created"
    evs = ticket_events(await events(gw))
    assert [e["type"] for e in evs] == ["ticket.created", "ticket.duplicate_received"]
    assert {e["data"]["message"]["metadata"]["mailbox"] for e in evs} == {SUPPORT, SALES}
    await capture.wait_for(lambda m: m.rcpt_tos == ["li@example.cn"])
    await outbox_settled(gw)
    assert len(capture.to("li@example.cn")) == 1, "one mail, one acknowledgement"

    # The sending server retries the same mail to one mailbox: replayed, nothing new.
    again = await send(gw, data, sender="li@example.cn", to=[SALES])
    assert again.ticket == (reply.ticket[0], "replayed")
    assert len(ticket_events(await events(gw))) == 2


async def test_same_message_id_to_a_second_mailbox_is_a_new_delivery(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    data = customer_mail(sender="wu@example.cn", subject="退款", text="请给我退款。",
                         message_id="same-id@example.cn")
    first = await send(gw, data, sender="wu@example.cn", to=[SUPPORT])
    second = await send(gw, data, sender="wu@example.cn", to=[SALES])
    assert first.ticket and first.ticket[1] == "created"
    assert second.ticket == (first.ticket[0], "duplicate"), "not silently dropped as a replay"
    assert len(ticket_events(await events(gw))) == 2


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_starttls_can_be_required(make_gateway: MakeGateway, capture: SmtpCapture,
                                        tmp_path: Path) -> None:
    import smtplib
    import ssl

    cert, key = _self_signed(tmp_path)
    gw = await make_gateway(config(capture, f'tls_cert_file = "{cert}"\n'
                                            f'tls_key_file = "{key}"\nrequire_starttls = true\n'))
    port = smtp_of(gw).port
    data = customer_mail(sender="tls@example.org", subject="secure", text="over TLS",
                         message_id="tls@x")

    def session() -> tuple[int, int, str]:
        with smtplib.SMTP("127.0.0.1", port) as c:
            c.ehlo()
            assert c.has_extn("starttls")
            plain, _ = c.mail("tls@example.org")
            c.rset()
            ctx = ssl.create_default_context(cafile=str(cert))
            ctx.check_hostname = False
            c.starttls(context=ctx)
            c.ehlo()
            c.mail("tls@example.org")
            c.rcpt(SUPPORT)
            code, text = c.data(data)
            return plain, code, text.decode()

    plain, code, text = await asyncio.to_thread(session)
    assert plain == 530, "MAIL before STARTTLS must be refused"
    assert code == 250, text


def _corpus() -> list[Path]:
    files = sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []
    # The AGPL-licensed files are not copied into the repository; read them where present.
    if SHARED_CORPUS.is_dir():
        files += sorted(SHARED_CORPUS.glob("kopano_*.eml"))
    return files


async def test_every_corpus_mail_is_taken_or_refused_with_a_reason(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    files = _corpus()
    if not files:
        pytest.skip("no email corpus in tests/corpus/email or ../shared/corpus/email")
    gw = await make_gateway(config(  # one sender, hundreds of mails: no per-sender allowance
        capture, "max_messages_per_sender = 0\nmax_messages_per_client = 0\n"))
    results: dict[str, int] = {}
    for i, path in enumerate(files):
        # On the wire every line ends in CRLF: a sending MTA converts bare LFs.
        data = re.sub(rb"(?<!\r)\n", b"\r\n", path.read_bytes())
        # A mailbox per file: the corpora reuse Message-IDs, which to one mailbox are replays.
        reply = await send(gw, data, sender="corpus@example.org",
                           to=[f"corpus{i}@help.example.com"])
        results[path.name] = reply.code
        assert reply.code == 250 or (500 <= reply.code < 600 and len(reply.text) > 6), \
            (path.name, reply)
        # The next message is processed normally.
        control = await send(gw, customer_mail(sender=f"control{i}@example.org",
                                               subject=f"control {i}", text=f"control {i}",
                                               message_id=f"control-{i}@x"),
                             sender=f"control{i}@example.org")
        assert control.code == 250 and control.ticket and control.ticket[1] == "created", \
            (path.name, control)
    assert sum(code == 250 for code in results.values()) >= len(files) // 2, results

"""Acknowledgements by email: language, threading headers, replies joining the ticket, relay
failures. Mail goes in through the smtp adapter and comes out at a local capture relay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial

import aiohttp
import pytest

from gateway.errors import PermanentError, TransientError
from gateway.runtime import Gateway
from gateway.testing.drivers import first_number
from gateway.testing.drivers_mail import SmtpReply, customer_mail, smtp_transaction
from gateway.testing.harness import outbox_settled, read_events
from gateway.testing.recording import context
from gateway.testing.services import free_port
from gateway.testing.smtp_capture import CapturedMail, SmtpCapture
from intake_adapters.mail import MailerAdapter, MailerConfig, SmtpAdapter
from intake_schemas import Acknowledgement
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def config(capture: SmtpCapture, extra: str = "") -> str:
    # English by default, so that a Chinese acknowledgement proves the language was detected.
    return ('[intake]\ndefault_locale = "en"\n'
            f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n'
            f'from_name = "客服中心"\n{extra}')


async def send(gw: Gateway, data: bytes, *, sender: str) -> SmtpReply:
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    return await asyncio.to_thread(smtp_transaction, port, sender=sender, recipients=[SUPPORT],
                                   data=data)


async def events(gw: Gateway) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def wait_event(gw: Gateway, type_: str, subject: str, *, timeout: float = 10) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for e in await events(gw):
            if e["type"] == type_ and e["subject"] == subject:
                return e
        assert asyncio.get_running_loop().time() < deadline, f"no {type_} for {subject}"
        await asyncio.sleep(0.05)


CASES = [
    # charset, subject, text, the acknowledgement's language
    ("gb2312", "宽带故障", "我家的宽带从昨天晚上开始断网，请尽快处理。", "zh-CN"),
    ("gbk", "账单疑问", "本月账单多扣了三十元，镕字测试。", "zh-CN"),
    ("big5", "寬頻故障", "我家的寬頻從昨天晚上開始斷線，請盡快處理。", "zh-TW"),
    ("utf-8", "退款申请", "我上周退货了，但是还没有收到退款。", "zh-CN"),
    ("utf-8", "退款申請", "我上週退貨了，但是還沒有收到退款，請幫忙查詢。", "zh-TW"),
    # No Japanese templates: the gateway's default locale (here en) answers.
    ("iso-2022-jp", "ルーターの故障", "ルーターが昨日から使えません。確認をお願いします。", "en"),
    ("us-ascii", "Router", "My router has had no internet since this morning.", "en"),
]


@pytest.mark.parametrize(("charset", "subject", "text", "locale"), CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in CASES])
async def test_acknowledgement_in_the_customers_language(
        make_gateway: MakeGateway, capture: SmtpCapture, charset: str, subject: str,
        text: str, locale: str) -> None:
    gw = await make_gateway(config(capture))
    customer = f"c-{uuid.uuid4().hex[:8]}@customers.example.cn"
    message_id = f"{uuid.uuid4().hex}@customers.example.cn"
    reply = await send(gw, customer_mail(sender=customer, subject=subject, text=text,
                                         charset=charset, message_id=message_id),
                       sender=customer)
    assert reply.code == 250 and reply.ticket, reply
    number = reply.ticket[0]
    ack = await capture.wait_for(lambda m: customer in m.rcpt_tos)
    msg = ack.message

    assert first_number(ack.subject) == number, ack.subject
    assert msg["Content-Language"] == locale
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert ack.in_reply_to == message_id
    assert str(msg["References"]).strip() == f"<{message_id}>"
    assert ack.message_id and ack.message_id.endswith("@example.com")
    assert ack.mail_from == SUPPORT  # bounces of the acknowledgement come back to us
    assert msg["From"].addresses[0].display_name == "客服中心"
    assert msg.get_content_type() == "multipart/alternative"
    assert number in ack.text() and number in ack.html()
    if locale == "zh-CN":
        assert "工单编号" in ack.text()
    elif locale == "zh-TW":
        assert "工單編號" in ack.text()
    else:
        assert "ticket number" in ack.text()
    assert "<script" not in ack.html() and "http" not in ack.html()
    # The Message-ID is what the dispatcher recorded, so replies find the ticket.
    sent = await wait_event(gw, "ack.sent", number)
    assert sent["data"]["provider_message_id"] == ack.message_id

    # The message itself arrived readable, not as question marks.
    created = await wait_event(gw, "ticket.created", number)
    assert created["data"]["message"]["text"].strip().startswith(text[:8])
    assert created["data"]["message"]["subject"] == subject


async def test_a_reply_to_the_acknowledgement_joins_the_ticket(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    customer = "liu@customers.example.cn"
    first = await send(gw, customer_mail(sender=customer, subject="发票", text="请开具发票。",
                                         message_id="first@customers.example.cn"),
                       sender=customer)
    assert first.ticket
    ack: CapturedMail = await capture.wait_for(lambda m: customer in m.rcpt_tos)
    assert ack.message_id
    await wait_event(gw, "ack.sent", first.ticket[0])

    # The customer answers the acknowledgement; the subject has lost the ticket tag.
    answer = await send(gw, customer_mail(
        sender=customer, subject="Re: 您好", text="补充：发票抬头是某某公司。",
        message_id="answer@customers.example.cn",
        headers={"In-Reply-To": f"<{ack.message_id}>",
                 "References": f"<first@customers.example.cn> <{ack.message_id}>"}),
        sender=customer)
    assert answer.ticket == (first.ticket[0], "followup")
    added = await wait_event(gw, "ticket.message_added", first.ticket[0])
    assert added["data"]["matched_by"] == "reply_header"
    # A colleague answering the forwarded acknowledgement joins it too (the id is secret).
    colleague = await send(gw, customer_mail(
        sender="colleague@customers.example.cn", subject="Re: 发票", text="我是同事，补充一点。",
        message_id="colleague@customers.example.cn",
        headers={"In-Reply-To": f"<{ack.message_id}>"}),
        sender="colleague@customers.example.cn")
    assert colleague.ticket == (first.ticket[0], "followup")
    created = [e for e in await events(gw) if e["type"] == "ticket.created"]
    assert len(created) == 1


async def test_an_attachment_is_stored_with_a_safe_name(make_gateway: MakeGateway,
                                                        capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    raw = (b"From: zhao@customers.example.cn\r\nTo: support@example.com\r\n"
           b"Subject: =?UTF-8?B?5Y+R56Wo?=\r\nMessage-ID: <att@customers.example.cn>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           + "请看附件。".encode() + b"\r\n--b1\r\n"
           b"Content-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename*=UTF-8''..%2F..%2F%E5%8F%91%E7%A5%A8.pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n--b1--\r\n")
    reply = await send(gw, raw, sender="zhao@customers.example.cn")
    assert reply.code == 250 and reply.ticket
    created = await wait_event(gw, "ticket.created", reply.ticket[0])
    [att] = created["data"]["message"]["attachments"]
    assert "/" not in att["name"] and att["name"].endswith(".pdf") and "发票" in att["name"]
    assert gw.attachments.path_of(att["sha256"]).read_bytes().startswith(b"%PDF-1.4")


# -- the mailer against a relay that refuses ---------------------------------------------


def mailer(port: int) -> MailerAdapter:
    ctx = context("mailer", public_url="http://127.0.0.1:1")
    return MailerAdapter(MailerConfig(port=port, from_address=SUPPORT), None, ctx)  # type: ignore[arg-type]


ACK = Acknowledgement(ticket_number="CX-20250101-00001-3", outcome="created",
                      due_at=datetime(2025, 1, 2, tzinfo=UTC), locale="en",
                      subject="[CX-20250101-00001-3] We have received your request",
                      text="Thank you.")


async def test_mailer_maps_relay_answers_to_retry_or_give_up(capture: SmtpCapture) -> None:
    sender = mailer(capture.port)
    message_id = await sender.send_ack(ACK, to="a@customers.example.org", reply_to="x@y")
    assert message_id and capture.messages[-1].message_id == message_id

    capture.reply = "451 4.3.0 try again later"
    with pytest.raises(TransientError):
        await sender.send_ack(ACK, to="a@customers.example.org", reply_to=None)
    capture.reply = "550 5.1.1 no such user"
    with pytest.raises(PermanentError):
        await sender.send_ack(ACK, to="a@customers.example.org", reply_to=None)
    nowhere = mailer(free_port())
    with pytest.raises(TransientError):  # nothing listens
        await nowhere.send_ack(ACK, to="a@customers.example.org", reply_to=None)
    await nowhere.stop()
    with pytest.raises(PermanentError):  # a header injection attempt never reaches the relay
        await sender.send_ack(ACK, to="a@x.org\r\nBcc: all@x.org", reply_to=None)
    capture.reply = None
    # An internationalised address travels with SMTPUTF8 (the capture relay offers it).
    await sender.send_ack(ACK, to="jörg@customers.example.org", reply_to=None)
    assert capture.messages[-1].rcpt_tos == ["jörg@customers.example.org"]
    await sender.stop()


async def test_mailer_keeps_its_relay_connection_for_a_burst(capture: SmtpCapture) -> None:
    sender = mailer(capture.port)
    for i in range(5):
        await sender.send_ack(ACK, to=f"b{i}@customers.example.org", reply_to=None)
    assert len(capture.messages) == 5
    assert capture.sessions == 1, "one connection for the burst"
    await sender.stop()


async def test_a_refused_acknowledgement_is_recorded_once(make_gateway: MakeGateway,
                                                          capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    capture.reply = "550 5.1.1 mailbox unavailable"
    reply = await send(gw, customer_mail(sender="gone@customers.example.org", subject="hello",
                                         text="anyone there?", message_id="gone@x"),
                       sender="gone@customers.example.org")
    assert reply.ticket
    failed = await wait_event(gw, "ack.failed", reply.ticket[0])
    assert "550" in failed["data"]["reason"]
    await outbox_settled(gw)  # nothing pending: no retry is scheduled
    assert [e["type"] for e in await events(gw)].count("ack.failed") == 1, "never retried"


async def test_a_burst_acks_everyone_once_and_each_recipient_in_order_up_to_the_limit(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    """Many customers at once: each gets one acknowledgement; one customer writing eight mails
    gets the first three (the per-recipient limit), in the order they wrote, and no more."""
    gw = await make_gateway(config(capture, "[acks]\nper_recipient_limit = 3\n"))
    others = [f"burst-{i}-{uuid.uuid4().hex[:6]}@customers.example.org" for i in range(12)]
    busy = f"busy-{uuid.uuid4().hex[:6]}@customers.example.org"
    busy_ids = [f"busy-{n}-{uuid.uuid4().hex}@customers.example.org" for n in range(8)]
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    # The clients get threads of their own: the loop's default executor serves the gateway.
    pool = ThreadPoolExecutor(max_workers=len(others) + 1)

    async def deliver(data: bytes, sender: str) -> None:
        reply = await asyncio.get_running_loop().run_in_executor(pool, partial(
            smtp_transaction, port, sender=sender, recipients=[SUPPORT], data=data))
        assert reply.code == 250

    async def the_busy_one() -> None:
        for n, mid in enumerate(busy_ids):
            await deliver(customer_mail(sender=busy, subject=f"Question {n}",
                                        text=f"My question number {n}.", message_id=mid), busy)

    try:
        await asyncio.gather(the_busy_one(), *(
            deliver(customer_mail(sender=a, subject="Router", text=f"Router {a} is down."), a)
            for a in others))
    finally:
        pool.shutdown()

    deadline = asyncio.get_running_loop().time() + 20
    while True:
        failed = [e for e in await events(gw) if e["type"] == "ack.failed"]
        if (len(failed) == 5 and all(len(capture.to(a)) == 1 for a in others)
                and len(capture.to(busy)) == 3):
            break
        assert asyncio.get_running_loop().time() < deadline, (
            f"{len(failed)} suppressed, {len(capture.to(busy))} to the busy customer, "
            f"{sum(len(capture.to(a)) for a in others)} to the others")
        await asyncio.sleep(0.05)
    await outbox_settled(gw)  # nothing is pending, so nothing more can follow
    assert [m.in_reply_to for m in capture.to(busy)] == busy_ids[:3]
    assert all("per-recipient limit" in e["data"]["reason"] for e in failed)
    assert len([e for e in await events(gw) if e["type"] == "ack.failed"]) == 5

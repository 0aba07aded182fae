"""No mail loops: robots get no acknowledgement, bounces of ours join their ticket, and two
gateways acknowledging each other stop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.drivers_mail import SmtpReply, customer_mail, smtp_transaction
from gateway.testing.harness import outbox_settled, read_events
from gateway.testing.smtp_capture import SmtpCapture, strip_headers
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def config(capture: SmtpCapture, *, address: str = SUPPORT, extra: str = "") -> str:
    return (f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{address}"]\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{address}"\n{extra}')


def smtp_port(gw: Gateway) -> int:
    return next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port


async def send(gw: Gateway, data: bytes, *, sender: str, to: str = SUPPORT) -> SmtpReply:
    return await asyncio.to_thread(smtp_transaction, smtp_port(gw), sender=sender,
                                   recipients=[to], data=data)


async def events(gw: Gateway) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


def _report(report_type: str, sender: str, subject: str, human: str, machine: str,
            enclosed: str) -> bytes:
    return (f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@mx.customers.example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type={report_type}; boundary="rep"\r\n'
            f"\r\n--rep\r\nContent-Type: text/plain\r\n\r\n{human}\r\n"
            f"--rep\r\nContent-Type: message/{report_type}\r\n\r\n{machine}\r\n"
            f"--rep\r\nContent-Type: text/rfc822-headers\r\n\r\n{enclosed}\r\n"
            "--rep--\r\n").encode()


def bounce_of(original_id: str, recipient: str) -> bytes:
    """A DSN as Postfix writes it, enclosing the headers of the mail that bounced."""
    return _report(
        "delivery-status", "Mail Delivery System <MAILER-DAEMON@mx.customers.example.org>",
        "Undelivered Mail Returned to Sender",
        "I'm sorry to have to inform you that your message could not be delivered.",
        f"Reporting-MTA: dns; mx.customers.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1",
        f"From: {SUPPORT}\r\nTo: {recipient}\r\nMessage-ID: <{original_id}>\r\n"
        "Subject: [CX] We have received your request")


ROBOTS: dict[str, tuple[str, bytes]] = {
    "vacation (Auto-Submitted)": ("away@customers.example.org", customer_mail(
        sender="away@customers.example.org", subject="Automatic reply: 咨询",
        text="I am out of the office until Monday.", message_id="v1@customers.example.org",
        headers={"Auto-Submitted": "auto-replied"})),
    "iCloud vacation (X-Apple-Action only)": ("icloud@customers.example.org", customer_mail(
        sender="icloud@customers.example.org", subject="Re: 咨询",
        text="我正在休假，下周回来。", message_id="v2@customers.example.org",
        headers={"X-Apple-Action": "vacation"})),
    "Exchange out of office": ("exch@customers.example.org", customer_mail(
        sender="exch@customers.example.org", subject="自动回复: 咨询",
        text="我目前不在办公室。", message_id="v3@customers.example.org",
        headers={"X-Auto-Response-Suppress": "All"})),
    "mailing list": ("list@lists.example.org", customer_mail(
        sender="list@lists.example.org", subject="Weekly digest", text="News of the week",
        message_id="l1@lists.example.org",
        headers={"Precedence": "bulk", "List-Id": "<news.lists.example.org>"})),
    "no-reply robot": ("noreply@shop.example.org", customer_mail(
        sender="noreply@shop.example.org", subject="Your order has shipped",
        text="Your order 1234 has shipped.", message_id="n1@shop.example.org")),
    "bounce of someone else's mail": ("", bounce_of("unknown@elsewhere.example.org",
                                                    "nobody@customers.example.org")),
    "read receipt": ("reader@customers.example.org", _report(
        "disposition-notification", "reader@customers.example.org", "Read: 咨询",
        "Your message was read on Monday.",
        "Final-Recipient: rfc822; reader@customers.example.org\r\n"
        "Original-Message-ID: <orig@customers.example.org>\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed",
        "Message-ID: <orig@customers.example.org>")),
}


@pytest.mark.parametrize("kind", list(ROBOTS))
async def test_robots_are_recorded_but_never_acknowledged(
        make_gateway: MakeGateway, capture: SmtpCapture, kind: str) -> None:
    gw = await make_gateway(config(capture))
    envelope, data = ROBOTS[kind]
    reply = await send(gw, data, sender=envelope)
    assert reply.code == 250 and reply.text.endswith("recorded (automated)"), reply
    evs = await events(gw)
    # Recorded and published, but no ticket, no number, no response target.
    assert [e["type"] for e in evs] == ["message.automated"], "recorded"
    assert evs[0]["data"]["message"]["auto_submitted"] is True
    assert evs[0]["data"]["mail_class"] == evs[0]["data"]["message"]["metadata"]["mail_class"]
    assert evs[0]["data"]["mail_class"] != "human"
    assert evs[0]["subject"] == evs[0]["data"]["contact"]["id"]
    # A person's mail after it is acknowledged; the dispatcher goes oldest first, so by then
    # the robot's acknowledgement would have gone out too, if there were one.
    human = await send(gw, customer_mail(sender="person@customers.example.org", subject="Hi",
                                         text="A real question.", message_id="p@x"),
                       sender="person@customers.example.org")
    assert human.code == 250
    await capture.wait_for(lambda m: m.rcpt_tos == ["person@customers.example.org"])
    # The capture has the mail a moment before the dispatcher records it as sent.
    await outbox_settled(gw)
    assert [m.rcpt_tos for m in capture.messages] == [["person@customers.example.org"]], \
        "no acknowledgement to a robot"
    assert [e["type"] for e in await events(gw) if str(e["type"]).startswith("ack.")] == [
        "ack.sent"]


async def test_a_null_envelope_sender_gets_no_acknowledgement(make_gateway: MakeGateway,
                                                               capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    data = customer_mail(sender="looks-human@customers.example.org", subject="Hello",
                         text="An ordinary looking message.", message_id="null@x")
    reply = await send(gw, data, sender="")  # MAIL FROM:<>
    assert reply.code == 250
    await outbox_settled(gw)
    assert capture.messages == []


async def test_a_bounce_of_our_acknowledgement_joins_its_ticket(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(config(capture))
    customer = "typo@customers.example.org"
    first = await send(gw, customer_mail(sender=customer, subject="我的订单",
                                         text="订单 1234 一直没有发货。",
                                         message_id="order@customers.example.org"),
                       sender=customer)
    assert first.ticket
    number = first.ticket[0]
    ack = await capture.wait_for(lambda m: customer in m.rcpt_tos)
    assert ack.message_id
    for _ in range(100):  # the dispatcher records the Message-ID right after the relay took it
        if any(e["type"] == "ack.sent" for e in await events(gw)):
            break
        await asyncio.sleep(0.05)

    reply = await send(gw, bounce_of(ack.message_id, customer), sender="")
    assert reply.ticket == (number, "followup"), reply
    evs = await events(gw)
    assert [e["type"] for e in evs if str(e["type"]).startswith("ticket.")] == \
        ["ticket.created", "ticket.message_added"]
    added = next(e for e in evs if e["type"] == "ticket.message_added")
    assert added["subject"] == number
    assert added["data"]["message"]["auto_submitted"] is True
    await outbox_settled(gw)
    assert len(capture.messages) == 1, "the bounce itself is not acknowledged"


async def _two_gateways(make_gateway: MakeGateway, capture: SmtpCapture,
                        limit: int) -> tuple[Gateway, Gateway]:
    extra = f"[acks]\nper_recipient_limit = {limit}\n"
    # Different masks, so that neither gateway reads the other's numbers as its own.
    a = await make_gateway(config(capture, address="support@a.test", extra=extra) +
                           '[numbering]\nmask = "AA-{date}-{seq:05}-{check}"\n')
    b = await make_gateway(config(capture, address="support@b.test", extra=extra) +
                           '[numbering]\nmask = "BB-{date}-{seq:05}-{check}"\n')
    capture.forward["a.test"] = ("127.0.0.1", smtp_port(a))
    capture.forward["b.test"] = ("127.0.0.1", smtp_port(b))
    return a, b


async def _quiet(capture: SmtpCapture, *, for_seconds: float, limit: float = 60) -> None:
    """Wait until the relay has seen no new mail for ``for_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    count, since = -1, loop.time()
    while loop.time() < deadline:
        now = len(capture.messages)
        if now != count:
            count, since = now, loop.time()
        elif loop.time() - since >= for_seconds:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"mail still flowing after {limit} s: {count} mails")


async def test_two_gateways_stop_at_the_first_automatic_reply(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    a, b = await _two_gateways(make_gateway, capture, limit=5)
    # Someone at B writes to A; A's acknowledgement goes to B, which sees Auto-Submitted.
    reply = await send(a, customer_mail(sender="support@b.test", to="support@a.test",
                                        subject="Hello A", text="A question from B's desk.",
                                        message_id="kick@b.test"),
                       sender="support@b.test", to="support@a.test")
    assert reply.code == 250
    await capture.wait_for(lambda m: m.rcpt_tos == ["support@b.test"])
    await _quiet(capture, for_seconds=1.5)
    assert [m.rcpt_tos for m in capture.messages] == [["support@b.test"]]
    b_events = await events(b)
    assert [e["type"] for e in b_events] == ["message.automated"]
    assert b_events[0]["data"]["message"]["auto_submitted"] is True


async def test_two_gateways_behind_a_header_stripping_forwarder_stop_at_the_limit(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    limit = 3
    a, b = await _two_gateways(make_gateway, capture, limit=limit)
    # A forwarder that drops every loop signal and thread header: only the per-recipient limit
    # is left to stop the two robots.
    capture.rewrite = strip_headers("Auto-Submitted", "X-Auto-Response-Suppress",
                                    "In-Reply-To", "References")
    reply = await send(a, customer_mail(sender="support@b.test", to="support@a.test",
                                        subject="Hello A", text="A question from B's desk.",
                                        message_id="kick@b.test"),
                       sender="support@b.test", to="support@a.test")
    assert reply.code == 250
    await _quiet(capture, for_seconds=2.0)
    to_b = [m for m in capture.messages if m.rcpt_tos == ["support@b.test"]]
    to_a = [m for m in capture.messages if m.rcpt_tos == ["support@a.test"]]
    assert len(to_b) == limit and len(to_a) == limit, (len(to_b), len(to_a))
    suppressed = [e for gw in (a, b) for e in await events(gw)
                  if e["type"] == "ack.failed" and "per-recipient limit" in e["data"]["reason"]]
    assert suppressed, "the limit stopped the loop and said so"
    assert not capture.forward_errors


async def test_a_person_repeating_an_automated_mail_opens_a_ticket(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    # The automated message has no ticket: it must not be taken for the first of a duplicate.
    gw = await make_gateway(config(capture))
    sender = "desk@customers.example.org"
    robot = await send(gw, customer_mail(sender=sender, subject="Printer",
                                         text="The printer on floor 2 is broken.",
                                         message_id="r1@x",
                                         headers={"Auto-Submitted": "auto-replied"}),
                       sender=sender)
    person = await send(gw, customer_mail(sender=sender, subject="Printer",
                                          text="The printer on floor 2 is broken.",
                                          message_id="p1@x"),
                        sender=sender)
    assert robot.text.endswith("recorded (automated)")
    assert person.code == 250 and person.ticket is not None and person.ticket[1] == "created"

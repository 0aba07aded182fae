"""Replies out through the real senders: email through the mailer to an SMTP capture, Telegram
through PTB to the Bot API fake. The customer's answer to a reply is a follow-up."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from gateway.runtime import Gateway
from gateway.testing.drivers_mail import customer_mail, smtp_transaction
from gateway.testing.fakes import FakeTelegram
from gateway.testing.harness import read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.api import sign_request
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = "support@example.com"
TOKEN = "555000222:replies-test-token"
SECRET = "replies-signing-secret"
os.environ["INTAKE_TEST_REPLIES_TG_TOKEN"] = TOKEN
os.environ["INTAKE_TEST_REPLIES_SECRET"] = SECRET
TG_SECRET = "replies-webhook-secret"
os.environ["INTAKE_TEST_REPLIES_TG_SECRET"] = TG_SECRET


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


def mail_config(capture: SmtpCapture, extra: str = "") -> str:
    return ('[intake]\ndefault_locale = "en"\n'
            f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n{extra}')


def telegram_config(fake: FakeTelegram) -> str:
    return ('[adapters.telegram]\nenabled = true\n'
            'token_env = "INTAKE_TEST_REPLIES_TG_TOKEN"\n'
            'secret_token_env = "INTAKE_TEST_REPLIES_TG_SECRET"\n'
            f'api_base_url = "{fake.url}"\nmode = "webhook"\n')


async def mail_in(gw: Gateway, *, sender: str, subject: str, text: str,
                  message_id: str, headers: dict[str, str] | None = None) -> str:
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    reply = await asyncio.to_thread(
        smtp_transaction, port, sender=sender, recipients=[SUPPORT],
        data=customer_mail(sender=sender, subject=subject, text=text, message_id=message_id,
                           headers=headers))
    assert reply.code == 250 and reply.ticket, reply
    return reply.ticket[0]


async def post_reply(gw: Gateway, number: str, body: dict[str, Any], *,
                     key: str | None = "k-1", secret: str | None = None
                     ) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if secret is not None:
        ts = str(int(time.time()))
        headers |= {"X-Intake-Timestamp": ts,
                    "X-Intake-Signature": sign_request(secret, ts, raw)}
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v1/tickets/{number}/replies", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


async def events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def wait_event(gw: Gateway, type_: str, *, timeout: float = 10.0,
                     **data: Any) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for e in await events(gw):
            if e["type"] == type_ and all(e["data"].get(k) == v for k, v in data.items()):
                return e
        assert asyncio.get_running_loop().time() < deadline, f"no {type_} {data}"
        await asyncio.sleep(0.05)


async def replies_settled(gw: Gateway, timeout: float = 10.0) -> None:
    """No reply is queued any more: every one that will go out has (the condition to wait on
    before asserting that something was *not* sent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await gw.store.next_reply_attempt() is not None:
        assert asyncio.get_running_loop().time() < deadline, "replies still queued"
        await asyncio.sleep(0.02)


def customer() -> str:
    return f"c-{uuid.uuid4().hex[:8]}@customers.example.cn"


# -- email ---------------------------------------------------------------------------------------


async def test_an_email_reply_is_threaded_and_the_answer_to_it_is_a_followup(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture))
    who, first_id = customer(), f"{uuid.uuid4().hex}@customers.example.cn"
    number = await mail_in(gw, sender=who, subject="Router broken",
                           text="My router has had no internet since this morning.",
                           message_id=first_id)
    await capture.wait_for(lambda m: who in m.rcpt_tos)  # the acknowledgement
    capture.clear()

    status, body = await post_reply(gw, number, {
        "text": "Please restart the router and tell us if the light turns green.",
        "html": "<p>Please <b>restart</b> the router.<script>alert(1)</script></p>"})
    assert status == 202, body
    assert body["ticket_number"] == number and body["channel"] == "email"
    assert body["status"] == "queued" and not body["replayed"]

    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    assert mail.in_reply_to == first_id, "threaded to the customer's mail"
    assert f"<{first_id}>" in str(mail.message["References"])
    assert f"[{number}]" in mail.subject and "Router broken" in mail.subject
    assert "restart the router" in mail.text()
    assert "<b>restart</b>" in mail.html() and "<script" not in mail.html()
    assert mail.message["Auto-Submitted"] is None, "a person's answer, not an auto-reply"
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    assert sent["subject"] == number and sent["data"]["provider_message_id"] == mail.message_id
    queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
    assert queued["data"]["chosen_because"] == "latest_inbound"

    # The customer answers the reply; the subject lost the number, the header still threads.
    again = await mail_in(gw, sender=who, subject="it is still red",
                          text="Still red after the restart.",
                          message_id=f"{uuid.uuid4().hex}@customers.example.cn",
                          headers={"In-Reply-To": f"<{mail.message_id}>"})
    assert again == number
    added = await wait_event(gw, "ticket.message_added")
    assert added["subject"] == number and added["data"]["matched_by"] == "reply_header"
    # The reply events match the committed JSON Schema consumers validate with.
    schema = json.loads((ROOT / "schemas/json/event.json").read_text())
    for event in await events(gw):
        jsonschema.validate(event, schema)


async def test_a_retry_with_the_same_idempotency_key_sends_once(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Bill", text="I was billed twice.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    reply = {"text": "We refunded the second charge."}
    first = await post_reply(gw, number, reply, key="refund-1")
    second = await post_reply(gw, number, reply, key="refund-1")
    assert first[0] == second[0] == 202
    assert second[1]["reply_id"] == first[1]["reply_id"] and second[1]["replayed"]
    conflict = await post_reply(gw, number, {"text": "something else"}, key="refund-1")
    assert conflict[0] == 422 and conflict[1]["field"] == "Idempotency-Key"
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    await replies_settled(gw)
    assert len(capture.to(who)) == 1
    assert [e["type"] for e in await events(gw)].count("reply.queued") == 1


async def test_bad_requests_are_refused_with_a_reason(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Hello", text="A question about my plan.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    assert (await post_reply(gw, number, {"text": "hi"}, key=None))[0] == 400
    assert (await post_reply(gw, number, {"text": "  "}))[0] == 400
    assert (await post_reply(gw, number, {"text": "hi", "colour": "red"}))[0] == 400
    missing = number[:-1] + str((int(number[-1]) + 1) % 10)  # a wrong check digit
    assert (await post_reply(gw, missing, {"text": "hi"}))[0] == 404
    # No channel reaches the customer: refused at once, with the reason, nothing queued.
    status, body = await post_reply(gw, number, {"text": "hi", "channel": "telegram"})
    assert status == 422 and "telegram" in body["error"]
    status, body = await post_reply(gw, number, {"text": "hi", "channel": "sms"}, key="k-2")
    assert status == 422 and "sms" in body["error"]
    assert "reply.queued" not in [e["type"] for e in await events(gw)]


async def test_replies_are_signed_like_the_api_when_a_secret_is_set(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture, '[replies]\n'
                                        'secret_env = "INTAKE_TEST_REPLIES_SECRET"\n'))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Hello", text="Where is my parcel?",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    assert (await post_reply(gw, number, {"text": "On its way."}))[0] == 401
    assert (await post_reply(gw, number, {"text": "On its way."}, secret="wrong"))[0] == 403
    status, body = await post_reply(gw, number, {"text": "On its way."}, secret=SECRET)
    assert status == 202, body
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])


async def test_a_resolution_asks_for_a_rating_in_the_customers_language(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture))
    who = customer()
    number = await mail_in(gw, sender=who, subject="宽带故障",
                           text="我家的宽带从昨天晚上开始断网，请尽快处理。",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    status, body = await post_reply(gw, number, {"text": "已为您修复线路。", "resolution": True})
    assert status == 202, body
    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    assert "已为您修复线路" in mail.text()
    assert f"您对工单 {number} 的处理结果满意吗" in mail.text()
    assert "1（很不满意）到 5（非常满意）" in mail.text()
    queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
    assert queued["data"]["resolution"] is True


# -- Telegram ------------------------------------------------------------------------------------


async def test_a_telegram_reply_answers_the_customers_latest_message(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(telegram_config(telegram))
    update = {"update_id": 10, "message": {
        "message_id": 77, "date": int(time.time()),
        "chat": {"id": 4343, "type": "private", "first_name": "Mei"},
        "from": {"id": 4343, "is_bot": False, "first_name": "Mei", "language_code": "en"},
        "text": "My parcel never arrived"}}
    status, _ = await telegram.deliver(update, url=f"{gw.url}/telegram/webhook",
                                        secret_token=TG_SECRET)
    assert status == 200
    created = await wait_event(gw, "ticket.created")
    number = created["subject"]
    await wait_event(gw, "ack.sent")
    status, body = await post_reply(gw, number, {"text": "A new parcel leaves today."})
    assert status == 202 and body["channel"] == "telegram", body
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [reply] = [m for m in telegram.sent if m.text == "A new parcel leaves today."]
    assert reply.chat_id == 4343 and reply.reply_to_message_id == 77
    assert sent["data"]["provider_message_id"] == f"telegram:4343:{reply.message['message_id']}"


async def test_a_rating_by_email_becomes_one_ticket_rated_event(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Password reset",
                           text="I cannot reset my password.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    status, body = await post_reply(gw, number, {"text": "Your password is reset.",
                                                 "resolution": True})
    assert status == 202
    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    # The customer answers "4" above the quoted mail, as mail clients write it.
    answer = await mail_in(gw, sender=who, subject=f"Re: {mail.subject}",
                           text="4\r\n\r\nOn Monday you wrote:\r\n> How satisfied are you",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn",
                           headers={"In-Reply-To": f"<{mail.message_id}>"})
    assert answer == number, "no new ticket"
    rated = await wait_event(gw, "ticket.rated")
    assert rated["subject"] == number
    assert rated["data"] | {"message_id": None} == {
        "ticket_number": number, "rating": 4, "channel": "smtp",
        "reply_id": body["reply_id"], "message_id": None}
    # The same digit again is no second rating: it is an ordinary message on the ticket.
    await mail_in(gw, sender=who, subject=f"Re: {mail.subject}", text="4",
                  message_id=f"{uuid.uuid4().hex}@customers.example.cn",
                  headers={"In-Reply-To": f"<{mail.message_id}>"})
    types = [e["type"] for e in await events(gw)]
    assert types.count("ticket.rated") == 1 and types.count("ticket.created") == 1
    assert types[-1] == "ticket.message_added"


async def test_the_cli_replies_through_the_running_gateway(
        make_gateway: MakeGateway, capture: SmtpCapture, tmp_path: Path) -> None:
    gw = await make_gateway(mail_config(capture, '[replies]\n'
                                        'secret_env = "INTAKE_TEST_REPLIES_SECRET"\n'))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Wifi", text="The wifi drops every hour.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    config = tmp_path / "cli.toml"
    config.write_text('[replies]\nsecret_env = "INTAKE_TEST_REPLIES_SECRET"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "reply", number, "--config", str(config),
             "--url", gw.url, *args], capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(cli, "--text", "Update the router firmware.", "--key", "c1")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["channel"] == "email" and answer["ticket_number"] == number
    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    assert "Update the router firmware." in mail.text()
    again = await asyncio.to_thread(cli, "--text", "Update the router firmware.", "--key", "c1")
    assert again.returncode == 0 and json.loads(again.stdout)["replayed"] is True
    refused = await asyncio.to_thread(cli, "--text", "x", "--channel", "telegram")
    assert refused.returncode == 1 and "telegram" in refused.stderr
    await replies_settled(gw)
    assert len(capture.to(who)) == 1


async def test_a_bounce_of_a_reply_is_reply_failed(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    from tests.test_mail_loops import bounce_of

    gw = await make_gateway(mail_config(capture))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Order", text="Where is order 1234?",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    status, body = await post_reply(gw, number, {"text": "It ships today."})
    assert status == 202
    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    got = await asyncio.to_thread(smtp_transaction, port, sender="", recipients=[SUPPORT],
                                  data=bounce_of(str(mail.message_id), who))
    assert got.code == 250 and got.ticket == (number, "followup"), got
    failed = await wait_event(gw, "reply.failed", reply_id=body["reply_id"])
    assert failed["data"]["provider_message_id"] == mail.message_id
    assert "bounced" in failed["data"]["reason"]
    # The bounce joined the ticket, but it is not the customer: the next reply goes to them.
    capture.clear()
    status, body = await post_reply(gw, number, {"text": "Second try."}, key="k-2")
    assert status == 202 and body["channel"] == "email", body
    again = await capture.wait_for(lambda m: "Second try." in m.text())
    assert again.rcpt_tos == [who]


async def test_the_per_recipient_limit_stops_a_looping_consumer(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture, "[replies]\nper_recipient_limit = 2\n"))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Loop", text="Please call me back.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    answers = [await post_reply(gw, number, {"text": f"Reply {i}"}, key=f"loop-{i}")
               for i in range(3)]
    assert [status for status, _ in answers] == [202, 202, 202]
    failed = await wait_event(gw, "reply.failed", reply_id=answers[2][1]["reply_id"])
    assert "per-recipient limit" in failed["data"]["reason"]
    await replies_settled(gw)
    assert sorted(m.text().strip() for m in capture.to(who)) == ["Reply 0", "Reply 1"]


def test_unsigned_replies_are_refused_off_loopback(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    os.environ["INTAKE_TEST_REPLIES_EVENTS_TOKEN"] = "events-token-for-the-test"
    base = ('[server]\nevents_token_env = "INTAKE_TEST_REPLIES_EVENTS_TOKEN"\n'
            "[adapters.api]\nenabled = false\n")
    with pytest.raises(ConfigError, match="unsigned replies"):
        Gateway(parse_config(base), tmp_path / "a", listen="0.0.0.0:0")
    signed = base + '[replies]\nsecret_env = "INTAKE_TEST_REPLIES_SECRET"\n'
    assert Gateway(parse_config(signed), tmp_path / "b", listen="0.0.0.0:0").replies.authenticated
    off = base + "[replies]\nenabled = false\n"
    assert not Gateway(parse_config(off), tmp_path / "c", listen="0.0.0.0:0").replies.routes()


async def test_email_reply_attachments_are_attached_and_their_headers_kept_clean(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Invoice", text="Send me the invoice.",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    pdf = b"%PDF-1.4 invoice"
    status, _ = await post_reply(gw, number, {"text": "Attached.", "attachments": [
        {"name": "invoice.pdf", "content_type": "application/pdf",
         "data": base64.b64encode(pdf).decode()},
        {"name": "evil\r\nBcc: x@evil.example.txt", "content_type": "text/plain\r\nX-A: 1",
         "data": base64.b64encode(b"hi").decode()}]})
    assert status == 202
    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    parts = list(mail.message.iter_attachments())
    assert [(p.get_content_type(), p.get_content()) for p in parts] == [
        ("application/pdf", pdf), ("application/octet-stream", b"hi")]
    assert "Bcc" not in mail.message and "X-A" not in str(parts[1])
    too_many = [{"name": f"f{i}", "data": ""} for i in range(11)]
    assert (await post_reply(gw, number, {"text": "x", "attachments": too_many},
                             key="many"))[0] == 413


async def test_the_signed_rating_link_takes_one_rating(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    gw = await make_gateway(mail_config(capture, '[replies]\n'
                                        'secret_env = "INTAKE_TEST_REPLIES_SECRET"\n'))
    who = customer()
    number = await mail_in(gw, sender=who, subject="Refund", text="Where is my refund?",
                           message_id=f"{uuid.uuid4().hex}@customers.example.cn")
    await capture.wait_for(lambda m: who in m.rcpt_tos)
    capture.clear()
    status, body = await post_reply(gw, number, {"text": "Refunded today.", "resolution": True},
                                    secret=SECRET)
    assert status == 202
    mail = await capture.wait_for(lambda m: who in m.rcpt_tos)
    link = next(w for w in mail.text().split() if "/v1/ratings/" in w)
    assert link.startswith(f"{gw.url}/v1/ratings/{body['reply_id']}?")
    async with aiohttp.ClientSession() as s:
        for _ in range(100):  # the page answers once the send is recorded (reply.sent)
            async with s.get(link) as resp:
                if resp.status == 200:
                    page = await resp.text()
                    break
            await asyncio.sleep(0.05)
        assert number in page and 'value="5"' in page and "<script" not in page
        async with s.get(link.replace("sig=", "sig=0")) as resp:
            assert resp.status == 403
        async with s.post(link, data={"rating": "9"}) as resp:
            assert resp.status == 400
        async with s.post(link, data={"rating": "5"}) as resp:
            assert resp.status == 200 and "Thank you" in await resp.text()
        async with s.post(link, data={"rating": "1"}) as resp:
            assert resp.status == 410, "one rating per resolution"
    rated = await wait_event(gw, "ticket.rated")
    assert (rated["subject"], rated["data"]["rating"], rated["data"]["channel"],
            rated["data"]["reply_id"]) == (number, 5, "link", body["reply_id"])
    assert [e["type"] for e in await events(gw)].count("ticket.rated") == 1
    # Rated by the link: a later "3" by mail is an ordinary message, not a second rating.
    await mail_in(gw, sender=who, subject=f"Re: {mail.subject}", text="3",
                  message_id=f"{uuid.uuid4().hex}@customers.example.cn",
                  headers={"In-Reply-To": f"<{mail.message_id}>"})
    assert [e["type"] for e in await events(gw)].count("ticket.rated") == 1


async def test_a_long_telegram_reply_goes_in_parts_of_4096(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(telegram_config(telegram))
    update = {"update_id": 11, "message": {
        "message_id": 78, "date": int(time.time()),
        "chat": {"id": 4444, "type": "private", "first_name": "Li"},
        "from": {"id": 4444, "is_bot": False, "first_name": "Li", "language_code": "en"},
        "text": "Please send me the full terms"}}
    status, _ = await telegram.deliver(update, url=f"{gw.url}/telegram/webhook",
                                       secret_token=TG_SECRET)
    assert status == 200
    number = (await wait_event(gw, "ticket.created"))["subject"]
    await wait_event(gw, "ack.sent")
    text = "x" * 5000
    status, body = await post_reply(gw, number, {"text": text})
    assert status == 202
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    parts = [m for m in telegram.sent if m.chat_id == 4444 and set(m.text) == {"x"}]
    assert [len(m.text) for m in parts] == [4096, 904]
    assert parts[0].reply_to_message_id == 78 and parts[1].reply_to_message_id is None
    assert sent["data"]["provider_message_id"] == f"telegram:4444:{parts[0].message['message_id']}"


async def test_no_customer_data_in_the_logs_of_a_reply(
        make_gateway: MakeGateway, capture: SmtpCapture) -> None:
    from tests.test_log_secrets import Lines

    handler = Lines()
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        # The relay refuses the reply once (a 451: retried), then takes it.
        gw = await make_gateway(mail_config(capture, "[replies]\nmax_backoff = 0.5\n"))
        who = "wang.logtest@customers.example.cn"
        number = await mail_in(gw, sender=who, subject="Secret subject LGX1",
                               text="private words LGX2",
                               message_id=f"{uuid.uuid4().hex}@customers.example.cn")
        await capture.wait_for(lambda m: who in m.rcpt_tos)
        capture.clear()
        capture.reply = "451 4.3.0 try later"
        status, body = await post_reply(gw, number, {"text": "the reply's words LGX3",
                                                     "channel": "email"})
        assert status == 202
        deadline = asyncio.get_running_loop().time() + 10
        while (at := await gw.store.next_reply_attempt()) is None or at <= time.time():
            assert asyncio.get_running_loop().time() < deadline, "no retry was scheduled"
            await asyncio.sleep(0.01)
        capture.reply = None
        sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
        assert sent["data"]["attempts"] == 2
        status, _ = await post_reply(gw, number, {"text": "no route LGX4", "channel": "sms"},
                                     key="k-sms")
        assert status == 422
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    text = "\n".join(handler.lines)
    assert handler.lines, "something was logged"
    for secret in (who, "wang.logtest", "LGX1", "LGX2", "LGX3", "LGX4"):
        assert secret not in text, secret

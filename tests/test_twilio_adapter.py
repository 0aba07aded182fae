"""The twilio adapter (SMS, MMS, WhatsApp) through real HTTP, with the Twilio fake and client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.acks import render_ack
from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.sla import BusinessCalendar, CalendarConfig
from gateway.testing.fakes import FakeTwilio
from gateway.testing.harness import read_events
from gateway.testing.services import free_port
from intake_adapters.twilio import (
    TwilioAdapter,
    form_pairs,
    guess_locale,
    one_segment,
    sms_ack_text,
)
from intake_adapters.twilio.protocol import compute_twilio_signature, sms_segments
from tests.conftest import MakeGateway

CORPUS = Path(__file__).parent / "corpus" / "twilio"
SID = "AC" + "5a" * 16
TOKEN = "twilio-test-auth-token"
OURS = "+14155550100"
PHONE = "+8613912345678"
os.environ["INTAKE_TEST_TWILIO_TOKEN"] = TOKEN


def toml(fake: FakeTwilio, *, account_sid: str = SID, extra: str = "", intake: str = "") -> str:
    return (f"[intake]\n{intake}\n[adapters.twilio]\nenabled = true\n"
            f'account_sid = "{account_sid}"\nauth_token_env = "INTAKE_TEST_TWILIO_TOKEN"\n'
            f'sms_from = "{OURS}"\napi_base_url = "{fake.url}"\n'
            # The fake serves media over http: allowed explicitly, as only that origin.
            f'media_hosts = ["{fake.url}"]\n{extra}\n')


_counter = iter(range(10**6))


def sms(body: str, *, frm: str = PHONE, sid: str | None = None, **more: str) -> dict[str, str]:
    """An inbound SMS webhook as Twilio posts it."""
    sid = sid or f"SM{next(_counter):032x}"
    return {"ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0", "SmsSid": sid,
            "SmsStatus": "received", "Body": body, "To": OURS, "NumSegments": "1",
            "MessageSid": sid, "AccountSid": SID, "From": frm, "ApiVersion": "2010-04-01",
            **more}


def said(twiml: bytes) -> str | None:
    """The text of the TwiML <Message>, or None for an empty answer."""
    text = twiml.decode()
    if "<Message>" not in text:
        assert "<Response />" in text or "<Response/>" in text, text
        return None
    return text.split("<Message>", 1)[1].split("</Message>", 1)[0]


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TOKEN) as fake:
        yield fake


@pytest.fixture
async def gw(make_gateway: MakeGateway, twilio: FakeTwilio) -> Gateway:
    return await make_gateway(toml(twilio))


@pytest.fixture
async def fixed_port_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Gateways on a known port, so the public URL (status callbacks) is right from the start."""
    started: list[Gateway] = []

    async def make(config: str) -> Gateway:
        gw = Gateway(parse_config(config), tmp_path / f"fixed{len(started)}",
                     listen=f"127.0.0.1:{free_port()}")
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in reversed(started):
        await gw.stop()


async def events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def wait_events(gw: Gateway, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = await events(gw)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def adapter(gw: Gateway) -> TwilioAdapter:
    return next(a for a in gw.adapters if a.kind == "twilio")


async def api_message(gw: Gateway, phone: str, text: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v1/messages", json={"contact": {"phone": phone}, "text": text}) as r:
        return await r.json()


# -- the happy path ------------------------------------------------------------------------------


async def test_sms_is_acknowledged_in_twiml_in_one_segment(gw: Gateway, twilio: FakeTwilio) -> None:
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", sms("我的宽带从昨天开始一直连不上"))
    assert got.status == 200 and got.content_type == "text/xml"
    text = said(got.body)
    assert text is not None and "工单编号" in text
    assert sms_segments(text) == ("UCS-2", 1)
    [event] = await events(gw)
    assert event["type"] == "ticket.created" and event["subject"] in text
    data = event["data"]
    assert data["contact"]["phone"] == PHONE
    assert data["acknowledged_inline"] is True
    assert data["message"]["metadata"]["twilio.channel"] == "sms"
    assert twilio.messages == [], "the acknowledgement went in the answer, not through REST"


async def test_english_sms_is_answered_in_english_gsm7(gw: Gateway, twilio: FakeTwilio) -> None:
    body = sms("My router keeps dropping the connection", frm="+14155550123")
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", body)
    text = said(got.body)
    assert text is not None and "ticket number" in text
    assert sms_segments(text) == ("GSM-7", 1)


async def test_redelivery_gets_the_same_answer_and_writes_nothing(
        gw: Gateway, twilio: FakeTwilio) -> None:
    params = sms("Please cancel my order 1234")
    first = await twilio.post_webhook(f"{gw.url}/twilio/sms", params)
    again = await twilio.post_webhook(f"{gw.url}/twilio/sms", params)
    assert first.status == again.status == 200
    assert said(first.body) == said(again.body)
    assert [e["type"] for e in await events(gw)] == ["ticket.created"]


# -- signatures ----------------------------------------------------------------------------------


async def test_unsigned_forged_and_tampered_webhooks_are_refused(
        gw: Gateway, twilio: FakeTwilio) -> None:
    url = f"{gw.url}/twilio/sms"
    params = sms("Give me a refund")
    other = sms("Close my account and refund everything")
    cases = {
        "missing": "",
        "garbage": "bm90IGEgc2lnbmF0dXJl",
        "another token": compute_twilio_signature("not-our-token", url, params),
        "signed for other fields (replayed signature)": compute_twilio_signature(TOKEN, url, other),
        "signed for another URL": compute_twilio_signature(TOKEN, url + "?x=1", params),
    }
    for what, signature in cases.items():
        got = await twilio.post_webhook(url, params, signature=signature)
        assert got.status == 403, what
        assert b"Message" not in got.body
    # Correctly signed by a holder of our token, but for another account: refused too.
    foreign = {**sms("hello"), "AccountSid": "AC" + "0" * 32}
    assert (await twilio.post_webhook(url, foreign)).status == 403
    assert await events(gw) == [], "nothing may be stored for a refused request"


async def test_signature_is_checked_against_the_public_url(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    behind = await make_gateway(toml(twilio, extra='public_url = "https://help.example.com/in"'))
    params = sms("Hello from behind the proxy")
    public = "https://help.example.com/in/twilio/sms"
    ok = await twilio.post_webhook(f"{behind.url}/twilio/sms", params,
                                   signature=compute_twilio_signature(TOKEN, public, params))
    assert ok.status == 200 and said(ok.body)
    # Signed for the address the proxy forwarded to: not what Twilio signed, so refused.
    local = await twilio.post_webhook(f"{behind.url}/twilio/sms", sms("again"))
    assert local.status == 403
    # Without a configured base URL, X-Forwarded-Proto/Host describe the public URL.
    plain = await make_gateway(toml(twilio))
    params = sms("Hello through a tunnel")
    tunnel = "https://abc123.tunnel.example/twilio/sms"
    got = await twilio.post_webhook(
        f"{plain.url}/twilio/sms", params,
        signature=compute_twilio_signature(TOKEN, tunnel, params),
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc123.tunnel.example"})
    assert got.status == 200 and said(got.body)


# -- media ---------------------------------------------------------------------------------------


async def test_mms_media_is_fetched_with_the_account_credentials(
        gw: Gateway, twilio: FakeTwilio) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    pdf = b"%PDF-1.4\n" + b"x" * 3000
    params = sms("Photo of the broken screen and the receipt", NumMedia="2",
                 MediaUrl0=twilio.add_media(png, "image/png"), MediaContentType0="image/png",
                 MediaUrl1=twilio.add_media(pdf, "application/pdf"),
                 MediaContentType1="application/pdf")
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", params)
    assert got.status == 200 and said(got.body)
    [event] = await events(gw)
    attachments = event["data"]["message"]["attachments"]
    assert [(a["content_type"], a["size"]) for a in attachments] == [
        ("image/png", len(png)), ("application/pdf", len(pdf))]
    for a, data in zip(attachments, (png, pdf), strict=True):
        assert gw.attachments.path_of(a["sha256"]).read_bytes() == data
    assert [d.authorized for d in twilio.downloads] == [True, True]


async def test_media_limits_keep_the_message_and_record_what_was_left_out(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio, extra="media_max_bytes = 1000"))
    big = twilio.add_media(b"\xff\xd8" + b"0" * 5000, "image/jpeg")
    params = sms("Three files", NumMedia="3",
                 MediaUrl0=big, MediaContentType0="image/jpeg",
                 MediaUrl1=twilio.add_media(b"PK\x03\x04", "application/zip"),
                 MediaContentType1="application/zip",
                 MediaUrl2="http://169.254.169.254/latest/meta-data", MediaContentType2="image/png")
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", params)
    assert got.status == 200 and said(got.body)
    [event] = await events(gw)
    message = event["data"]["message"]
    assert message["text"] == "Three files" and "attachments" not in message
    meta = message["metadata"]
    assert "larger than 1000 bytes" in meta["twilio.media0"]
    assert "application/zip" in meta["twilio.media1"]
    assert "not a media URL of this Twilio account" in meta["twilio.media2"]
    # Only the first was requested at all: a refused type or a foreign URL is never fetched.
    assert len(twilio.downloads) == 1


# -- WhatsApp ------------------------------------------------------------------------------------


async def test_whatsapp_and_sms_from_one_number_are_one_contact(
        gw: Gateway, twilio: FakeTwilio) -> None:
    wa = sms("我买的空调不制冷，已经报修三次了", frm=f"whatsapp:{PHONE}", ProfileName="王小明",
             WaId=PHONE[1:])
    wa["To"] = f"whatsapp:{OURS}"
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", wa)
    text = said(got.body)
    # WhatsApp is no SMS: the whole acknowledgement, courtesy sentences included.
    assert text is not None and text.endswith("如需补充，请注明此编号。")
    later = await twilio.post_webhook(f"{gw.url}/twilio/sms", sms("型号是 KFR-35GW"))
    assert said(later.body) is None, "a follow-up is not acknowledged"
    created, added = await events(gw)
    assert added["type"] == "ticket.message_added" and added["subject"] == created["subject"]
    assert added["data"]["matched_by"] == "chat_window"
    assert created["data"]["contact"]["id"] == added["data"]["contact"]["id"]
    assert created["data"]["contact"]["name"] == "王小明"
    assert created["data"]["contact"]["chat_ids"] == {"whatsapp": PHONE}
    assert created["data"]["message"]["metadata"]["twilio.channel"] == "whatsapp"


# -- opt-out, REST acknowledgements, status callbacks --------------------------------------------


async def test_opt_out_is_respected_until_start(gw: Gateway, twilio: FakeTwilio) -> None:
    url = f"{gw.url}/twilio/sms"
    stop = await twilio.post_webhook(url, sms("Stop"))
    assert stop.status == 200 and said(stop.body) is None
    assert await events(gw) == [], "STOP opens no ticket"
    assert adapter(gw).state.opted_out("sms", PHONE)
    # A high-priority ticket would also be told by SMS; not to an opted-out number.
    await api_message(gw, PHONE, "整栋楼停电了，电梯里有人被困！")
    failed = await wait_events(gw, 2)
    assert [e["type"] for e in failed] == ["ticket.created", "ack.failed"]
    assert "opted out" in failed[1]["data"]["reason"]
    # Writing while opted out still opens a ticket, answered with nothing.
    quiet = await twilio.post_webhook(url, sms("我的账单有问题"))
    assert quiet.status == 200 and said(quiet.body) is None
    assert (await twilio.post_webhook(url, sms("START"))).status == 200
    assert not adapter(gw).state.opted_out("sms", PHONE)
    await api_message(gw, PHONE, "机房起火了，全部用户断网")
    sent = await wait_events(gw, 6)
    assert [e["type"] for e in sent][-2:] == ["ticket.created", "ack.sent"]
    assert [m.to for m in twilio.messages] == [PHONE]


async def test_opt_out_survives_a_restart(make_gateway: MakeGateway, twilio: FakeTwilio,
                                          tmp_path: Path) -> None:
    data = tmp_path / "gw"
    gw = await make_gateway(toml(twilio), data_dir=data)
    assert (await twilio.post_webhook(f"{gw.url}/twilio/sms", sms("STOP"))).status == 200
    await gw.stop()
    gw = await make_gateway(toml(twilio), data_dir=data)
    assert adapter(gw).state.opted_out("sms", PHONE), "the opt-out was forgotten on restart"
    assert await gw.store.adapter_state("twilio").items("opt-out/") != []


async def test_high_priority_is_told_by_sms_and_the_delivery_report_is_recorded(
        fixed_port_gateway: Callable[..., Any], twilio: FakeTwilio) -> None:
    gw = await fixed_port_gateway(toml(twilio))
    answer = await api_message(gw, PHONE, "小区大面积停电，已经三个小时了")
    got = await wait_events(gw, 2)
    assert [e["type"] for e in got] == ["ticket.created", "ack.sent"]
    [sms_sent] = twilio.messages
    assert (sms_sent.to, sms_sent.from_) == (PHONE, OURS)
    assert answer["ticket_number"] in sms_sent.body
    assert sms_segments(sms_sent.body)[1] == 1
    assert sms_sent.status_callback == f"{gw.url}/twilio/status"
    assert got[1]["data"]["provider_message_id"] == sms_sent.sid
    report = await twilio.deliver_status(sms_sent.sid, "delivered")
    assert report.status == 200
    assert await adapter(gw).state.status_of(sms_sent.sid) == ("delivered", None)
    # A report of error 21610 means the number opted out at Twilio: remembered.
    other = "+8613700000001"
    params = {"AccountSid": SID, "MessageSid": "SM" + "e" * 32, "MessageStatus": "undelivered",
              "ErrorCode": "21610", "To": other, "From": OURS}
    assert (await twilio.post_webhook(f"{gw.url}/twilio/status", params)).status == 200
    assert adapter(gw).state.opted_out("sms", other)
    # Unsigned reports are refused like every other webhook.
    forged = await twilio.post_webhook(f"{gw.url}/twilio/status", params, signature="x")
    assert forged.status == 403


async def test_rest_outage_is_retried_and_twilio_refusal_records_the_opt_out(
        gw: Gateway, twilio: FakeTwilio) -> None:
    twilio.fail_next(503, 20503, "Service Unavailable")
    await api_message(gw, PHONE, "There is smoke coming out of the meter, unsafe!")
    got = await wait_events(gw, 2, timeout=15)
    assert [e["type"] for e in got] == ["ticket.created", "ack.sent"]
    assert len(twilio.messages) == 1, "sent once, after the retry"
    other = "+8613700000002"
    twilio.opted_out.add(other)
    await api_message(gw, other, "Fire alarm in the server room, outage for everyone")
    got = await wait_events(gw, 4)
    assert got[-1]["type"] == "ack.failed" and "21610" in got[-1]["data"]["reason"]
    assert adapter(gw).state.opted_out("sms", other)


# -- odd senders, malformed input, the corpus ----------------------------------------------------


async def test_short_code_sender_opens_a_ticket_without_an_answer(
        gw: Gateway, twilio: FakeTwilio) -> None:
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", sms("Your code is 1234", frm="95588"))
    assert got.status == 200 and said(got.body) is None
    [event] = await events(gw)
    assert event["data"]["contact"]["chat_ids"] == {"sms": "95588"}


async def test_malformed_webhooks_get_4xx_and_write_nothing(
        gw: Gateway, twilio: FakeTwilio) -> None:
    url = f"{gw.url}/twilio/sms"
    no_sid = {k: v for k, v in sms("hi").items() if "Sid" not in k or k == "AccountSid"}
    assert (await twilio.post_webhook(url, no_sid)).status == 400
    assert (await twilio.post_webhook(url, sms("hi", frm="<script>"))).status == 400
    assert (await twilio.post_webhook(url, sms(""))).status == 400
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=b"Body=\xff\xfe&From=%2B1", headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": "x"}) as r:
            assert r.status == 400
        async with s.post(url, data=b"x" * 300_000, headers={"X-Twilio-Signature": "x"}) as r:
            assert r.status == 413
    assert await events(gw) == []


def corpus_form(name: str) -> list[tuple[str, str]]:
    return parse_qsl((CORPUS / name).read_text(encoding="utf-8"), keep_blank_values=True)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.form")))
async def test_every_corpus_payload_is_handled(
        make_gateway: MakeGateway, twilio: FakeTwilio, name: str) -> None:
    pairs = corpus_form(name)
    account = dict(pairs)["AccountSid"]
    gw = await make_gateway(toml(twilio, account_sid=account))
    voice = "voice" in name
    got = await twilio.post_webhook(f"{gw.url}/twilio/{'voice' if voice else 'sms'}", pairs)
    assert got.status == 200, got
    if voice:
        assert b"<Record" in got.body
        return
    text = said(got.body)
    [event] = await events(gw)
    assert text is not None and event["subject"] in text
    if "bogus_media" in name:
        # A scheme-less MediaUrl0 of type "json": recorded, never fetched.
        meta = event["data"]["message"]["metadata"]
        assert meta["twilio.media0.url"] == "www.google.com"
        assert twilio.downloads == []


async def test_json_corpus_payload_is_refused_without_a_body_signature(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio))
    body = (CORPUS / "botbuilder_sms_inbound_as_json_percent_encoded_values.json").read_bytes()
    url = f"{gw.url}/twilio/sms"
    async with aiohttp.ClientSession() as s:
        headers = {"Content-Type": "application/json",
                   "X-Twilio-Signature": compute_twilio_signature(TOKEN, url, {})}
        async with s.post(url, data=body, headers=headers) as r:
            assert r.status == 403  # no bodySHA256: not a request Twilio signs
        # Signed the JSON way, but of another account (AccountSid 4444): refused as well.
        signed = f"{url}?bodySHA256={hashlib.sha256(body).hexdigest()}"
        headers["X-Twilio-Signature"] = compute_twilio_signature(TOKEN, signed, body.decode())
        async with s.post(signed, data=body, headers=headers) as r:
            assert r.status == 403
        # Ours, signed: the percent-encoded From ("%2B2222") is no number: a clear 400.
        mine = json.dumps({**json.loads(body), "AccountSid": SID}).encode()
        signed = f"{url}?bodySHA256={hashlib.sha256(mine).hexdigest()}"
        headers["X-Twilio-Signature"] = compute_twilio_signature(TOKEN, signed, mine.decode())
        async with s.post(signed, data=mine, headers=headers) as r:
            assert r.status == 400 and "From" in (await r.json())["error"]
    assert await events(gw) == []


# -- pure functions ------------------------------------------------------------------------------

_CALENDAR = BusinessCalendar(CalendarConfig())


@settings(max_examples=200, deadline=None)
@given(locale=st.sampled_from(["zh-CN", "zh-TW", "en"]),
       outcome=st.sampled_from(["created", "duplicate", "followup", "replayed"]),
       seq=st.integers(1, 99_999), minutes=st.integers(0, 60 * 24 * 30))
def test_sms_acknowledgement_fits_one_segment_and_keeps_the_number(
        locale: str, outcome: str, seq: int, minutes: int) -> None:
    number = f"CX-20250101-{seq:05d}-7"
    due = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    ack = render_ack(number=number, outcome=outcome, due_at=due, locale=locale,  # type: ignore[arg-type]
                     calendar=_CALENDAR)
    text = sms_ack_text(ack)
    assert sms_segments(text)[1] == 1
    assert number in text
    if sms_segments(ack.text)[1] == 1:
        assert text == ack.text


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09 .@€[]^{}~\\|éΔ\n好，。😀\u00e0"), max_size=200))
def test_the_fast_segment_check_agrees_with_sms_segments(text: str) -> None:
    assert one_segment(text) == (sms_segments(text)[1] == 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=12),
       st.text(alphabet="=&%+;ab1 ", max_size=30))
def test_form_parsing_agrees_with_parse_qsl(pairs: list[tuple[str, str]], junk: str) -> None:
    body = urlencode(pairs)
    assert form_pairs(body) == parse_qsl(body, keep_blank_values=True)
    assert form_pairs(junk) == parse_qsl(junk, keep_blank_values=True)


def test_locale_follows_the_script_of_the_message() -> None:
    assert guess_locale("我的网络断了", "CN") == "zh-CN"
    assert guess_locale("我的網路斷了", "TW") == "zh-TW"
    assert guess_locale("my internet is down", "US") == "en"
    assert guess_locale("12345", None) is None

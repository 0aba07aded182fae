"""Replies by SMS and WhatsApp through the twilio adapter's real client against the Twilio fake:
segments, WhatsApp's 24-hour window (free text, the template, SMS as fallback), voice mail
answered by SMS, signed status callbacks as reply.delivered / reply.failed, quiet hours."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTwilio
from gateway.testing.services import free_port
from tests.test_replies import events, post_reply, replies_settled, wait_event

SID = "AC" + "6b" * 16
TOKEN = "twilio-replies-auth-token"
OURS = "+14155550100"
WA_FROM = "+14155550199"
PHONE = "+8613912345678"
os.environ["INTAKE_TEST_TWILIO_REPLIES_TOKEN"] = TOKEN
_n = iter(range(10**6))


def toml(fake: FakeTwilio, *, extra: str = "", replies: str = "", calendar: str = "") -> str:
    return (f"[replies]\n{replies}\n[calendar]\n{calendar}\n"
            f'[adapters.twilio]\nenabled = true\naccount_sid = "{SID}"\n'
            'auth_token_env = "INTAKE_TEST_TWILIO_REPLIES_TOKEN"\n'
            f'sms_from = "{OURS}"\nwhatsapp_from = "{WA_FROM}"\napi_base_url = "{fake.url}"\n'
            f'{extra}\n')


def inbound(body: str, *, whatsapp: bool = False, phone: str = PHONE) -> dict[str, str]:
    sid = f"SM{next(_n):032x}"
    frm = f"whatsapp:{phone}" if whatsapp else phone
    to = f"whatsapp:{WA_FROM}" if whatsapp else OURS
    return {"SmsMessageSid": sid, "NumMedia": "0", "SmsSid": sid, "SmsStatus": "received",
            "Body": body, "To": to, "NumSegments": "1", "MessageSid": sid, "AccountSid": SID,
            "From": frm, "ApiVersion": "2010-04-01"}


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TOKEN) as fake:
        yield fake


@pytest.fixture
async def gateway_on_port(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Gateways on a known port, so the status callback URL is right from the start."""
    started: list[Gateway] = []

    async def make(config: str) -> Gateway:
        gw = Gateway(parse_config(config), tmp_path / f"gw{len(started)}",
                     listen=f"127.0.0.1:{free_port()}")
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in reversed(started):
        await gw.stop()


async def ticket_from(gw: Gateway, fake: FakeTwilio, text: str, *, whatsapp: bool = False,
                      phone: str = PHONE) -> str:
    got = await fake.post_webhook(f"{gw.url}/twilio/sms",
                                  inbound(text, whatsapp=whatsapp, phone=phone))
    assert got.status == 200
    created = [e for e in await events(gw) if e["type"] == "ticket.created"
               and e["data"]["contact"].get("phone") == phone]
    return str(created[-1]["subject"])


def later(gw: Gateway, hours: float) -> None:
    """The replies endpoint's clock, ``hours`` ahead: the customer wrote that long ago."""
    clock = gw.replies.service.clock
    gw.replies.service.clock = lambda: clock() + timedelta(hours=hours)


async def test_an_sms_reply_goes_whole_and_its_delivery_report_is_an_event(
        gateway_on_port: Callable[..., Any], twilio: FakeTwilio) -> None:
    gw = await gateway_on_port(toml(twilio, replies="quiet_hours = false"))
    number = await ticket_from(gw, twilio, "My internet is down since yesterday")
    long_text = ("Our technician found the fault in the street cabinet. " * 40).strip()
    status, body = await post_reply(gw, number, {"text": long_text})
    assert status == 202 and body["channel"] == "sms", body
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    parts = [m for m in twilio.messages if m.to == PHONE]
    assert len(parts) == 2 and all(len(p.body) <= 1600 for p in parts), "over 1600: in parts"
    assert " ".join(p.body for p in parts) == long_text
    assert sent["data"]["provider_message_id"] == parts[0].sid
    assert parts[0].status_callback == f"{gw.url}/twilio/status"

    report = await twilio.deliver_status(parts[0].sid, "delivered")
    assert report.status == 200
    delivered = await wait_event(gw, "reply.delivered", reply_id=body["reply_id"])
    assert delivered["data"]["provider_message_id"] == parts[0].sid
    await twilio.deliver_status(parts[0].sid, "read")  # a second report: no second event
    await twilio.deliver_status(parts[0].sid, "delivered")
    assert [e["type"] for e in await events(gw)].count("reply.delivered") == 1


async def test_an_undelivered_report_is_reply_failed(
        gateway_on_port: Callable[..., Any], twilio: FakeTwilio) -> None:
    gw = await gateway_on_port(toml(twilio, replies="quiet_hours = false"))
    number = await ticket_from(gw, twilio, "Billing question about my plan")
    status, body = await post_reply(gw, number, {"text": "Your plan is 30 yuan a month."})
    assert status == 202
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [sms] = [m for m in twilio.messages if m.to == PHONE]
    await twilio.deliver_status(sms.sid, "undelivered")
    failed = await wait_event(gw, "reply.failed", reply_id=body["reply_id"])
    assert failed["data"]["provider_message_id"] == sms.sid
    assert "undelivered" in failed["data"]["reason"]


async def test_whatsapp_inside_its_window_gets_free_text(
        make_gateway: Any, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio))
    number = await ticket_from(gw, twilio, "Where is my order 1234?", whatsapp=True)
    status, body = await post_reply(gw, number, {"text": "It ships tomorrow."})
    assert status == 202 and body["channel"] == "whatsapp", body
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [wa] = [m for m in twilio.messages if m.body == "It ships tomorrow."]
    assert (wa.to, wa.from_, wa.content_sid) == (f"whatsapp:{PHONE}", f"whatsapp:{WA_FROM}",
                                                 None)


async def test_whatsapp_outside_its_window_uses_the_template(
        make_gateway: Any, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio, extra='whatsapp_reply_template_sid = "HX' + "1" * 32
                                 + '"'))
    number = await ticket_from(gw, twilio, "Where is my order 1234?", whatsapp=True)
    later(gw, 25)
    status, body = await post_reply(gw, number, {"text": "It ships tomorrow."})
    assert status == 202 and body["channel"] == "whatsapp", body
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    assert sent["data"]["template"] is True
    [wa] = [m for m in twilio.messages if m.content_sid]
    assert wa.content_sid == "HX" + "1" * 32 and wa.to == f"whatsapp:{PHONE}"
    assert json.loads(wa.content_variables or "{}") == {"1": number, "2": "It ships tomorrow."}
    queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
    assert queued["data"]["chosen_because"] == "window_closed_template"


async def test_whatsapp_outside_its_window_without_a_template_falls_back_to_sms(
        make_gateway: Any, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio, replies="quiet_hours = false"))
    number = await ticket_from(gw, twilio, "Where is my order 1234?", whatsapp=True)
    later(gw, 23)
    inside = await post_reply(gw, number, {"text": "Inside the window."}, key="in")
    assert inside[1]["channel"] == "whatsapp", "23 hours: still inside"
    later(gw, 2)
    status, body = await post_reply(gw, number, {"text": "It ships tomorrow."}, key="out")
    assert status == 202 and body["channel"] == "sms", body
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [sms] = [m for m in twilio.messages if m.body == "It ships tomorrow."]
    assert (sms.to, sms.from_) == (PHONE, OURS)
    queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
    assert queued["data"]["chosen_because"] == "window_closed_sms"


async def test_whatsapp_outside_its_window_with_no_fallback_fails_at_once(
        make_gateway: Any, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio, replies='window_fallback = "none"'))
    number = await ticket_from(gw, twilio, "Where is my order 1234?", whatsapp=True)
    later(gw, 25)
    status, body = await post_reply(gw, number, {"text": "It ships tomorrow."})
    assert status == 422 and "24-hour" in body["error"], body
    await replies_settled(gw)
    assert not [m for m in twilio.messages if m.body == "It ships tomorrow."]


async def test_quiet_hours_hold_an_sms_unless_the_ticket_is_high_priority(
        make_gateway: Any, twilio: FakeTwilio) -> None:
    # Closed all week: every moment is outside the business calendar.
    closed = 'working_days = [1]\nholidays_country = "US"\nopens = "00:00"\ncloses = "00:01"\n'
    gw = await make_gateway(toml(twilio, calendar=closed))
    number = await ticket_from(gw, twilio, "A question about my invoice")
    status, body = await post_reply(gw, number, {"text": "Held until we open."}, key="q")
    assert status == 202
    next_at = await gw.store.next_reply_attempt()
    assert next_at is not None and next_at > time.time() + 60, "held"
    assert not [m for m in twilio.messages if m.body == "Held until we open."]
    # High priority (an outage) goes at once, whatever the hour.
    urgent = await ticket_from(gw, twilio, "全小区大面积停电，已经三个小时了，有安全隐患",
                               phone="+8613700000002")
    assert urgent != number
    status, body = await post_reply(gw, urgent, {"text": "A crew is on its way."}, key="u")
    assert status == 202
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    assert [m.to for m in twilio.messages if m.body == "A crew is on its way."] == [
        "+8613700000002"]
    assert sent["data"]["channel"] == "sms"
    assert not [m for m in twilio.messages if m.body == "Held until we open."], "still held"


async def test_a_rating_by_sms_becomes_one_ticket_rated_event(
        make_gateway: Any, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio, replies="quiet_hours = false"))
    number = await ticket_from(gw, twilio, "我的宽带又断了")
    status, body = await post_reply(gw, number, {"text": "线路已修复。", "resolution": True})
    assert status == 202
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [sms] = [m for m in twilio.messages if m.body.startswith("线路已修复")]
    assert f"您对工单 {number} 的处理结果满意吗" in sms.body
    got = await twilio.post_webhook(f"{gw.url}/twilio/sms", inbound("５"))
    assert got.status == 200 and "<Message>" not in got.body.decode(), "no acknowledgement"
    rated = await wait_event(gw, "ticket.rated")
    assert (rated["subject"], rated["data"]["rating"], rated["data"]["channel"]) == (
        number, 5, "twilio")
    types = [e["type"] for e in await events(gw)]
    assert types.count("ticket.created") == 1 and types.count("ticket.rated") == 1


async def test_a_voice_mail_is_answered_by_sms(make_gateway: Any) -> None:
    from tests.test_voice import MOBILE, Call
    from tests.test_voice import SID as VOICE_SID
    from tests.test_voice import TOKEN as VOICE_TOKEN
    from tests.test_voice import toml as voice_toml

    async with FakeTwilio(VOICE_SID, VOICE_TOKEN) as fake:
        gw = await make_gateway(voice_toml(fake) + "\n[replies]\nquiet_hours = false\n")
        call = Call(fake, gw)
        await call.incoming()
        await call.recording()
        await call.transcription("My internet has been down since this morning.")
        created = await wait_event(gw, "ticket.created")
        status, body = await post_reply(gw, created["subject"], {"text": "Fixed, please retry."})
        assert status == 202 and body["channel"] == "sms", body
        queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
        assert queued["data"]["chosen_because"] == "voice_by_sms"
        await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
        assert [m.to for m in fake.messages if m.body == "Fixed, please retry."] == [MOBILE]

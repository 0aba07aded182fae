"""Chat follow-ups end to end: within the window a message joins the open ticket, after it not.

One gateway runs SMS/WhatsApp (twilio), Telegram and WeChat with ``chat_followup_window = 2s``;
every channel is driven through its real wire protocol and the outcome read from the event feed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTelegram, FakeTwilio, FakeWeChat
from gateway.testing.harness import read_events
from tests.conftest import MakeGateway

SID = "AC" + "9c" * 16
TW_TOKEN = "followup-twilio-token"
TG_TOKEN = "600000002:followup-telegram-token"
TG_SECRET = "followup-secret"
WX_TOKEN = "followup-wechat-token"
OURS = "+14155550100"
WINDOW = 2.0
os.environ |= {"INTAKE_FU_TW": TW_TOKEN, "INTAKE_FU_TG": TG_TOKEN, "INTAKE_FU_TG_SECRET": TG_SECRET,
               "INTAKE_FU_WX": WX_TOKEN}

_n = itertools.count(1)
Send = Callable[[str], Awaitable[int]]


class Channels:
    """Senders for one customer on each chat channel of a running gateway."""

    def __init__(self, gw: Gateway, twilio: FakeTwilio, telegram: FakeTelegram) -> None:
        self.gw, self.twilio, self.telegram = gw, twilio, telegram

    def sms(self, phone: str, *, whatsapp: bool = False) -> Send:
        async def send(text: str) -> int:
            sid = f"SM{next(_n):032x}"
            prefix = "whatsapp:" if whatsapp else ""
            got = await self.twilio.post_webhook(f"{self.gw.url}/twilio/sms", {
                "MessageSid": sid, "AccountSid": SID, "From": prefix + phone,
                "To": prefix + OURS, "Body": text, "NumMedia": "0"})
            return got.status
        return send

    def telegram_chat(self, chat: int) -> Send:
        async def send(text: str) -> int:
            update = {"update_id": next(_n), "message": {
                "message_id": next(_n), "date": 0, "text": text,
                "chat": {"id": chat, "type": "private"},
                "from": {"id": chat, "is_bot": False, "first_name": "Zhang"}}}
            status, _ = await self.telegram.deliver(
                update, url=f"{self.gw.url}/telegram/webhook", secret_token=TG_SECRET)
            return status
        return send

    def wechat(self, openid: str) -> Send:
        async def send(text: str) -> int:
            async with FakeWeChat(WX_TOKEN, openid=openid) as wx:
                result = await wx.push(f"{self.gw.url}/wechat", {
                    "MsgType": "text", "Content": text, "MsgId": 10**15 + next(_n)})
                return result.status
        return send


@pytest.fixture
async def channels(make_gateway: MakeGateway) -> AsyncIterator[Channels]:
    async with FakeTwilio(SID, TW_TOKEN) as twilio, FakeTelegram(TG_TOKEN) as telegram:
        gw = await make_gateway(
            f'[intake]\nchat_followup_window = "{int(WINDOW)}s"\n'
            f'[adapters.twilio]\nenabled = true\naccount_sid = "{SID}"\n'
            f'auth_token_env = "INTAKE_FU_TW"\nsms_from = "{OURS}"\n'
            f'api_base_url = "{twilio.url}"\n'
            '[adapters.telegram]\nenabled = true\ntoken_env = "INTAKE_FU_TG"\n'
            f'secret_token_env = "INTAKE_FU_TG_SECRET"\napi_base_url = "{telegram.url}"\n'
            '[adapters.wechat]\nenabled = true\ntoken_env = "INTAKE_FU_WX"\n')
        yield Channels(gw, twilio, telegram)


async def tickets(gw: Gateway) -> list[tuple[str, str, str | None]]:
    """(event type, ticket number, how it was matched) of every ticket event, in order."""
    async with aiohttp.ClientSession() as s:
        got = await read_events(s, gw.url)
    return [(e["type"], e["subject"], e["data"].get("matched_by"))  # type: ignore[index,union-attr]
            for e in got if str(e["type"]).startswith("ticket.")]


def sender(channels: Channels, name: str) -> Send:
    key = next(_n)
    return {
        "sms": lambda: channels.sms(f"+86139{key:08d}"),
        "whatsapp": lambda: channels.sms(f"+86138{key:08d}", whatsapp=True),
        "telegram": lambda: channels.telegram_chat(900_000 + key),
        "wechat": lambda: channels.wechat(f"oFollowUp{key:020d}"),
    }[name]()


@pytest.mark.parametrize("name", ["sms", "whatsapp", "telegram", "wechat"])
async def test_a_message_within_the_window_joins_and_after_it_opens_a_new_ticket(
        channels: Channels, name: str) -> None:
    send = sender(channels, name)
    assert await send("My television shows no picture since yesterday") == 200
    await asyncio.sleep(WINDOW * 0.6)
    assert await send("The model is LE-55X, bought last spring") == 200
    # The window runs from the ticket's last touch, not from its first message.
    await asyncio.sleep(WINDOW * 0.6)
    assert await send("I already tried another HDMI cable") == 200
    await asyncio.sleep(WINDOW + 0.3)
    assert await send("Now the washing machine leaks water as well") == 200
    got = await tickets(channels.gw)
    assert [(t, m) for t, _, m in got] == [
        ("ticket.created", None), ("ticket.message_added", "chat_window"),
        ("ticket.message_added", "chat_window"), ("ticket.created", None)]
    numbers = [n for _, n, _ in got]
    assert numbers[0] == numbers[1] == numbers[2] != numbers[3]


async def test_sms_and_whatsapp_from_one_number_share_the_window(channels: Channels) -> None:
    phone = "+8613911112222"
    assert await channels.sms(phone)("Internet is down at home") == 200
    assert await channels.sms(phone, whatsapp=True)("Sending the router photo here") == 200
    got = await tickets(channels.gw)
    assert [(t, m) for t, _, m in got] == [("ticket.created", None),
                                          ("ticket.message_added", "chat_window")]
    assert got[0][1] == got[1][1]


async def test_the_window_belongs_to_one_contact(channels: Channels) -> None:
    first, second = sender(channels, "telegram"), sender(channels, "telegram")
    assert await first("Card payment declined") == 200
    assert await second("Card payment declined for me too, different person") == 200
    got = await tickets(channels.gw)
    assert [t for t, _, _ in got] == ["ticket.created", "ticket.created"]
    assert got[0][1] != got[1][1]


async def test_voice_mail_is_not_a_chat(channels: Channels) -> None:
    """A voice mail after an SMS within the window is its own request (not conversational)."""
    phone = "+8613911113333"
    assert await channels.sms(phone)("Meter reading seems wrong") == 200
    twilio, gw = channels.twilio, channels.gw
    call = {"AccountSid": SID, "CallSid": f"CA{next(_n):032x}", "From": phone, "To": OURS,
            "RecordingUrl": twilio.add_media(b"RIFFwav", "audio/x-wav"),
            "RecordingDuration": "5"}
    await twilio.post_webhook(f"{gw.url}/twilio/voice/recording", call)
    await twilio.post_webhook(f"{gw.url}/twilio/voice/transcription", {
        **call, "TranscriptionStatus": "completed",
        "TranscriptionText": "Please send someone to check the gas pipe."})
    got: list[Any] = await tickets(gw)
    assert [t for t, _, _ in got] == ["ticket.created", "ticket.created"]

"""Each signed channel says who vouches for the sender (``Contact.verified_by``); claims do not.

Read back from the ``ticket.created`` event (``data.message.verified_by``), through the real
listeners and the provider fakes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTelegram, FakeTwilio, FakeWeChat
from gateway.testing.harness import read_events
from intake_adapters.api import sign_request
from tests.conftest import MakeGateway

SID = "AC" + "9d" * 16
TG_TOKEN = "555000444:telegram-verified-token"
os.environ["INTAKE_VB_TW"] = "twilio-verified-token"
os.environ["INTAKE_VB_TG"] = TG_TOKEN
os.environ["INTAKE_VB_TG_SECRET"] = "telegram-verified-secret"
os.environ["INTAKE_VB_WX"] = "wechat-verified-token"
os.environ["INTAKE_VB_API"] = "api-verified-secret"


async def verified_by(gw: Gateway, count: int) -> list[str | None]:
    """``verified_by`` of the first ``count`` created tickets' messages, oldest first."""
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as s:
        while True:
            got: list[dict[str, Any]] = [e["data"]["message"] for e in
                                         await read_events(s, gw.url)
                                         if e["type"] == "ticket.created"]
            if len(got) >= count or time.monotonic() > deadline:
                return [m.get("verified_by") for m in got]
            await asyncio.sleep(0.05)


async def test_signed_channels_name_who_vouches(make_gateway: MakeGateway) -> None:
    async with FakeTwilio(SID, "twilio-verified-token") as tw, FakeTelegram(TG_TOKEN) as tg, \
            FakeWeChat("wechat-verified-token") as wx:
        gw = await make_gateway(
            '[adapters.twilio]\nenabled = true\n'
            f'account_sid = "{SID}"\nauth_token_env = "INTAKE_VB_TW"\n'
            f'sms_from = "+14155550100"\napi_base_url = "{tw.url}"\n'
            '[adapters.telegram]\nenabled = true\ntoken_env = "INTAKE_VB_TG"\n'
            'secret_token_env = "INTAKE_VB_TG_SECRET"\nregister_webhook = false\n'
            f'api_base_url = "{tg.url}"\n'
            '[adapters.wechat]\nenabled = true\ntoken_env = "INTAKE_VB_WX"\n')
        got = await tw.post_webhook(f"{gw.url}/twilio/sms", {
            "MessageSid": "SM" + "1" * 32, "AccountSid": SID, "From": "+8613911110001",
            "To": "+14155550100", "Body": "My meter is broken"})
        assert got.status == 200
        assert (await verified_by(gw, 1))[-1] == "twilio-signature"
        status, _ = await tg.deliver({"update_id": 1, "message": {
            "message_id": 2, "date": int(time.time()), "chat": {"id": 42, "type": "private"},
            "from": {"id": 42, "is_bot": False, "first_name": "Mei"},
            "text": "The app will not log me in"}}, url=f"{gw.url}/telegram/webhook",
            secret_token="telegram-verified-secret")
        assert status == 200
        assert (await verified_by(gw, 2))[-1] == "telegram"
        pushed = await wx.push(f"{gw.url}/wechat", {"MsgType": "text", "MsgId": 31,
                                                   "Content": "发票金额不对"})
        assert pushed.status == 200
        assert (await verified_by(gw, 3))[-1] == "wechat-signature"


async def test_the_api_vouches_only_when_signed(make_gateway: MakeGateway) -> None:
    unsigned = await make_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{unsigned.url}/v1/messages", json={
                "contact": {"email": "claim@example.org"}, "text": "Typed, not proven"}) as r:
            assert r.status == 201
        assert await verified_by(unsigned, 1) == [None]
        signed = await make_gateway('[adapters.api]\nsecret_env = "INTAKE_VB_API"\n')
        body = b'{"contact": {"email": "client@example.org"}, "text": "From our CRM"}'
        ts = str(int(time.time()))
        async with s.post(f"{signed.url}/v1/messages", data=body, headers={
                "Content-Type": "application/json", "X-Intake-Timestamp": ts,
                "X-Intake-Signature": sign_request("api-verified-secret", ts, body)}) as r:
            assert r.status == 201
        assert await verified_by(signed, 1) == ["api-signature"]

"""Contract-suite drivers for the messaging channels: Twilio SMS, Telegram and WeChat.

Each driver speaks to the gateway exactly as its provider does (a signed Twilio form, a Telegram
update with the webhook's secret token, a signed WeChat push) and reads the ticket number where
the customer would: in the TwiML answer, in the bot's ``sendMessage`` recorded by the Telegram
fake, in the WeChat passive reply. When the customer is told nothing new (a follow-up, which is
not acknowledged, or a re-delivery whose answer Telegram never shows), the driver reports the
number this customer was told last.

Two settings differ from a production gateway, both in :meth:`config_toml`:

* ``[intake] chat_followup_window = "0s"``: on chat channels the core joins any message to the
  contact's recent open ticket before it looks for duplicates, so with a window the suite's
  "same content again is a duplicate" would be a follow-up. The window is tested on its own in
  ``tests/test_chat_followups.py``; here ticket numbers typed in the text do the joining.
* Test secrets are put into the environment under ``INTAKE_CONTRACT_*`` names.

The Telegram adapter calls the Bot API (``getMe``, ``sendMessage``), so its driver serves one
:class:`~gateway.testing.fakes.FakeTelegram` for the whole process, in a thread of its own with
its own event loop: the suite builds the gateway's config before any test coroutine runs, and
the fake's address must be in that config. The thread stops at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import re
import threading
import time
from typing import ClassVar

import aiohttp

from gateway.testing.drivers import Customer, Delivery, first_number
from gateway.testing.fakes.telegram import FakeTelegram
from gateway.testing.fakes.twilio import signed_webhook
from gateway.testing.fakes.wechat import FakeWeChat

__all__ = ["TelegramDriver", "TwilioDriver", "WeChatDriver"]

_NO_WINDOW = '[intake]\nchat_followup_window = "0s"\n'


def _int(text: str, modulo: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % modulo


def _with_number(text: str, ticket_number: str | None) -> str:
    return f"{text} {ticket_number}" if ticket_number else text


class _Told:
    """The last ticket number each customer was told, for answers that tell nothing new."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def remember(self, customer: Customer, number: str | None) -> str | None:
        if number:
            self._last[customer.key] = number
            return number
        return self._last.get(customer.key)


# -- Twilio ---------------------------------------------------------------------------------------


class TwilioDriver:
    """An SMS posted to ``/twilio/sms`` signed with the account's auth token."""

    kind: ClassVar[str] = "twilio"
    verified: ClassVar[bool] = True
    account_sid: ClassVar[str] = "AC" + "c0ffee00" * 4
    auth_token: ClassVar[str] = "contract-twilio-auth-token"
    number: ClassVar[str] = "+14155550100"

    def __init__(self) -> None:
        self._told = _Told()

    def config_toml(self) -> str:
        os.environ["INTAKE_CONTRACT_TWILIO_TOKEN"] = self.auth_token
        # The REST API points at a closed port: the suite's messages need no SMS sent later.
        return _NO_WINDOW + (
            "[adapters.twilio]\nenabled = true\n"
            f'account_sid = "{self.account_sid}"\n'
            'auth_token_env = "INTAKE_CONTRACT_TWILIO_TOKEN"\n'
            f'sms_from = "{self.number}"\n'
            'api_base_url = "http://127.0.0.1:9"\n')

    async def _post(self, session: aiohttp.ClientSession, url: str,
                    form: list[tuple[str, str]]) -> tuple[int, str]:
        headers = signed_webhook(url, form, self.auth_token)
        async with session.post(url, data=form, headers=headers) as resp:
            return resp.status, await resp.text()

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        form = [("ToCountry", "US"), ("SmsMessageSid", f"SM{_int(delivery_id, 16**32):032x}"),
                ("NumMedia", "0"), ("SmsSid", f"SM{_int(delivery_id, 16**32):032x}"),
                ("SmsStatus", "received"), ("Body", _with_number(text, ticket_number)),
                ("To", self.number), ("NumSegments", "1"),
                ("MessageSid", f"SM{_int(delivery_id, 16**32):032x}"),
                ("AccountSid", self.account_sid), ("From", customer.phone),
                ("ApiVersion", "2010-04-01")]
        status, twiml = await self._post(session, f"{base_url}/twilio/sms", form)
        told = re.search(r"<Message>(.*?)</Message>", twiml, re.S)
        number = first_number(told.group(1)) if told else None
        return Delivery(status=status, ticket_number=self._told.remember(customer, number))

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        # Correctly signed, but no MessageSid and a sender that is no number at all.
        form = [("AccountSid", self.account_sid), ("From", "not a phone <>"), ("Body", "hi")]
        status, _ = await self._post(session, f"{base_url}/twilio/sms", form)
        return status


# -- Telegram -------------------------------------------------------------------------------------


class _ThreadedTelegram:
    """A FakeTelegram served from a daemon thread with its own event loop."""

    def __init__(self, token: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.fake = FakeTelegram(token)
        self._thread = threading.Thread(target=self._run, name="fake-telegram", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Telegram fake did not start")
        atexit.register(self.close)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.fake.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.fake.close())
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


_shared_telegram: _ThreadedTelegram | None = None
_shared_lock = threading.Lock()


def _telegram_fake(token: str) -> FakeTelegram:
    global _shared_telegram
    with _shared_lock:
        if _shared_telegram is None:
            _shared_telegram = _ThreadedTelegram(token)
        return _shared_telegram.fake


class TelegramDriver:
    """An update posted to the webhook with its secret token; the ack read from the fake."""

    kind: ClassVar[str] = "telegram"
    verified: ClassVar[bool] = True
    token: ClassVar[str] = "700000001:contract-telegram-token"
    secret: ClassVar[str] = "contract-telegram-secret"
    ack_wait: ClassVar[float] = 2.0
    """Seconds to wait for the bot's reply before concluding that none is coming."""

    def __init__(self) -> None:
        self._told = _Told()

    def config_toml(self) -> str:
        fake = _telegram_fake(self.token)
        os.environ["INTAKE_CONTRACT_TELEGRAM_TOKEN"] = self.token
        os.environ["INTAKE_CONTRACT_TELEGRAM_SECRET"] = self.secret
        return _NO_WINDOW + (
            "[adapters.telegram]\nenabled = true\n"
            'token_env = "INTAKE_CONTRACT_TELEGRAM_TOKEN"\n'
            'secret_token_env = "INTAKE_CONTRACT_TELEGRAM_SECRET"\n'
            f'api_base_url = "{fake.url}"\n')

    async def _post(self, session: aiohttp.ClientSession, base_url: str,
                    body: bytes) -> int:
        headers = {"Content-Type": "application/json",
                   "X-Telegram-Bot-Api-Secret-Token": self.secret}
        async with session.post(f"{base_url}/telegram/webhook", data=body,
                                headers=headers) as resp:
            await resp.read()
            return resp.status

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        fake = _telegram_fake(self.token)
        chat_id = 10**9 + _int(customer.key, 10**9)
        seen = len(fake.sent)
        update = {
            "update_id": _int(delivery_id, 2**31),
            "message": {
                "message_id": 1 + _int(delivery_id, 10**6),
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private", "first_name": "Customer"},
                "from": {"id": chat_id, "is_bot": False, "first_name": "Customer",
                         "language_code": "en"},
                "text": _with_number(text, ticket_number),
            },
        }
        status = await self._post(session, base_url, json.dumps(update).encode())
        number = None
        deadline = time.monotonic() + self.ack_wait
        while status < 300 and number is None and time.monotonic() < deadline:
            replies = [m for m in fake.sent[seen:] if m.chat_id == chat_id]
            if replies:
                number = first_number(replies[0].text)
                break
            await asyncio.sleep(0.02)
        return Delivery(status=status, ticket_number=self._told.remember(customer, number))

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        return await self._post(session, base_url, b'{"update_id": "seven", "message": [')


# -- WeChat ---------------------------------------------------------------------------------------


class WeChatDriver:
    """A signed plain-mode push; the ticket number read from the passive reply."""

    kind: ClassVar[str] = "wechat"
    verified: ClassVar[bool] = True
    token: ClassVar[str] = "contract-wechat-token"

    def __init__(self) -> None:
        self._told = _Told()

    def config_toml(self) -> str:
        os.environ["INTAKE_CONTRACT_WECHAT_TOKEN"] = self.token
        return _NO_WINDOW + (
            "[adapters.wechat]\nenabled = true\n"
            'token_env = "INTAKE_CONTRACT_WECHAT_TOKEN"\n')

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        openid = "o" + hashlib.sha256(customer.key.encode()).hexdigest()[:27]
        async with FakeWeChat(self.token, openid=openid) as wechat:
            result = await wechat.push(f"{base_url}/wechat", {
                "MsgType": "text", "Content": _with_number(text, ticket_number),
                "MsgId": 10**15 + _int(delivery_id, 10**17)})
        number = None
        if result.status < 300:
            reply = FakeWeChat.read_reply(result)
            number = first_number(reply.get("Content", "")) if reply else None
        return Delivery(status=result.status, ticket_number=self._told.remember(customer, number))

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        # Signed, but XML with a DTD and an entity: refused before any parsing of entities.
        body = b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x "boom">]><xml><a>&x;</a></xml>'
        async with FakeWeChat(self.token) as wechat:
            result = await wechat.push(f"{base_url}/wechat", body)
        return result.status

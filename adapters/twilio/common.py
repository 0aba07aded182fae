"""What the parts of the Twilio adapter share: TwiML answers, phone numbers, the language guess."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, ClassVar

import aiohttp
import phonenumbers
from aiohttp import web
from twilio.rest import Client

from gateway.plugin import AdapterContext, Intake, MediaHosts

if TYPE_CHECKING:
    from intake_adapters.twilio.adapter import TwilioConfig, _Params
    from intake_adapters.twilio.state import TwilioState

_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
_NANP = re.compile(r"^\+1[2-9][0-9]{2}[2-9][0-9]{6}$")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_TWIML = "text/xml"
_API_HOST = "https://api.twilio.com"
_VERIFIED_BY = "twilio-signature"
"""Every identity here came in a webhook whose X-Twilio-Signature was checked."""


class TwilioParts:
    """What the parts of :class:`~adapters.twilio.TwilioAdapter` share, declared for readers and
    type checkers: the adapter's ``__init__`` sets these, and defines ``_verified``."""

    kind: ClassVar[str]
    config: TwilioConfig
    intake: Intake
    ctx: AdapterContext
    token: str
    state: TwilioState
    path: str
    api_base: str
    media_prefix: str
    media_hosts: MediaHosts
    transcription_wait: float
    _basic: str
    _session: aiohttp.ClientSession | None
    _client: Client | None
    _calls: dict[str, asyncio.Lock]
    _wake: asyncio.Event

    if TYPE_CHECKING:
        async def _verified(self, request: web.Request, *, with_base: bool = False
                            ) -> _Params: ...

        async def _download(self, url: str) -> tuple[bytes, str]: ...


def _twiml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=_TWIML, charset="utf-8")


def _e164(text: str, region: str | None = None) -> str | None:
    """E.164 for a caller id or sender, or None when it is none (client:…, short codes)."""
    value = text.strip()
    if (_E164.match(value) and not value.startswith(("+1", "+7"))) or _NANP.match(value):
        # Twilio sends senders in E.164 already: the schema's own pattern is enough, and
        # phonenumbers costs tens of microseconds per message. (+1 and +7 share one country
        # code across several countries; there the full parse checks the length.)
        return value
    if not value or len(value) > 32 or not (value.startswith("+") or region):
        return None
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_SMS_TYPES = frozenset({
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
})


def can_receive_sms(phone: str) -> bool:
    """Whether an E.164 number is (or may be, as in North America) a mobile number."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.number_type(number) in _SMS_TYPES


def guess_locale(text: str | None, country: str | None) -> str | None:
    """The language to answer in: Chinese text in Chinese, Latin-only text in English."""
    if not text:
        return None
    if _HAN.search(text):
        return "zh-TW" if (country or "").upper() in ("TW", "HK", "MO") else "zh-CN"
    if _LATIN.search(text):
        return "en"
    return None

"""Sending later: SMS and WhatsApp acknowledgements through the REST API, their delivery reports
(``<path>/status``), and fitting an acknowledgement into one SMS segment."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from twilio.base.exceptions import TwilioException, TwilioRestException

from gateway.errors import PermanentError, RejectedInput, TransientError
from gateway.plugin import OutgoingReply
from intake_adapters.twilio.common import _HAN, TwilioParts, _e164, _twiml
from intake_adapters.twilio.protocol import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    fit_one_segment,
    render_twiml_empty,
)
from intake_schemas import Acknowledgement


class OutboundMixin(TwilioParts):
    """Acknowledgements sent later through the REST API, and their delivery reports."""

    async def handle_status(self, request: web.Request) -> web.Response:
        """Delivery reports of the SMS we sent: recorded; error 21610 means the number opted out."""
        p = (await self._verified(request)).fields
        sid = p.get("MessageSid") or p.get("SmsSid")
        status = p.get("MessageStatus") or p.get("SmsStatus")
        if not sid or not status:
            raise RejectedInput("MessageSid and MessageStatus are required")
        error = p.get("ErrorCode") or None
        await self.state.record_status(sid, status, error)
        if status in _DELIVERED or status in _FAILED:
            # A reply's delivery becomes reply.delivered / reply.failed (the core ignores ids
            # of acknowledgements); the error code says why, never what the customer wrote.
            await self.intake.report_delivery(
                provider_id=sid, delivered=status in _DELIVERED,
                detail=status if error is None else f"{status} ({error})")
        if error == "21610" and p.get("To"):
            to = p["To"]
            network = "whatsapp" if to.startswith("whatsapp:") else "sms"
            phone = _e164(to.removeprefix("whatsapp:"))
            if phone:
                await self.state.set_opt_out(network, phone, True)
        return _twiml(render_twiml_empty())

    # -- sending later ------------------------------------------------------------------------

    async def send_ack(self, ack: Acknowledgement, *, to: str, reply_to: str | None) -> str | None:
        """Send one acknowledgement by SMS (``+E164``) or WhatsApp (``whatsapp:+E164``)."""
        if self._client is None:
            raise TransientError("the Twilio adapter is not started")
        whatsapp = to.startswith("whatsapp:")
        network = "whatsapp" if whatsapp else "sms"
        phone = _e164(to.removeprefix("whatsapp:"))
        if phone is None:
            raise PermanentError("the recipient is not a phone number")
        if self.state.opted_out(network, phone):
            raise PermanentError("the recipient opted out (STOP); nothing was sent")
        kwargs: dict[str, str] = {}
        if whatsapp:
            if not self.config.whatsapp_from:
                raise PermanentError("adapters.twilio.whatsapp_from is not set")
            kwargs |= {"to": f"whatsapp:{phone}", "from_": f"whatsapp:{self.config.whatsapp_from}",
                       "body": ack.text}
        else:
            kwargs |= {"to": phone, "body": sms_ack_text(ack)}
            if self.config.messaging_service_sid:
                kwargs["messaging_service_sid"] = self.config.messaging_service_sid
            else:
                kwargs["from_"] = self.config.sms_from or ""
        callback = self._status_callback_url()
        if callback:
            kwargs["status_callback"] = callback
        try:
            async with asyncio.timeout(self.config.api_timeout):
                created = await self._client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            if exc.code == 21610:
                await self.state.set_opt_out(network, phone, True)
                raise PermanentError("the recipient opted out (Twilio error 21610)") from exc
            if exc.status == 429 or exc.status >= 500 or exc.status == 401:
                # 401: a rotated token is fixed by the operator; keep the ack until then.
                raise TransientError(f"Twilio answered {exc.status} ({exc.code})") from exc
            raise PermanentError(f"Twilio refused the message: {exc.code}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError, TwilioException) as exc:
            raise TransientError(f"Twilio unreachable: {type(exc).__name__}") from exc
        return str(created.sid)

    def reply_template_ready(self, channel: str) -> bool:
        """WhatsApp outside its 24-hour window needs an approved template (Content SID)."""
        return channel == "whatsapp" and bool(self.config.whatsapp_reply_template_sid)

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """A downstream reply by SMS (segmented by Twilio; texts over its 1600-character limit
        go in parts) or WhatsApp (free text in the window, the approved template outside)."""
        if self._client is None:
            raise TransientError("the Twilio adapter is not started")
        whatsapp = channel == "whatsapp"
        network = "whatsapp" if whatsapp else "sms"
        phone = _e164(to.removeprefix("whatsapp:"))
        if phone is None:
            raise PermanentError("the recipient is not a phone number")
        if self.state.opted_out(network, phone):
            raise PermanentError("the recipient opted out (STOP); nothing was sent")
        base: dict[str, str] = {}
        if whatsapp:
            if not self.config.whatsapp_from:
                raise PermanentError("adapters.twilio.whatsapp_from is not set")
            base = {"to": f"whatsapp:{phone}", "from_": f"whatsapp:{self.config.whatsapp_from}"}
        else:
            base = {"to": phone}
            if self.config.messaging_service_sid:
                base["messaging_service_sid"] = self.config.messaging_service_sid
            else:
                base["from_"] = self.config.sms_from or ""
        if callback := self._status_callback_url():
            base["status_callback"] = callback
        if whatsapp and reply.template:
            # Variables as the operator's approved template numbers them: {{1}} the ticket
            # number, {{2}} the reply (WhatsApp caps a variable at 1024 characters).
            variables = {"1": reply.ticket_number, "2": reply.text[:1024]}
            return await self._create(network, phone, {
                **base, "content_sid": self.config.whatsapp_reply_template_sid or "",
                "content_variables": json.dumps(variables, ensure_ascii=False)})
        first: str | None = None
        for part in split_text(reply.text, _TWILIO_MAX):
            sid = await self._create(network, phone, {**base, "body": part})
            first = first or sid
        return first

    async def _create(self, network: str, phone: str, kwargs: dict[str, str]) -> str:
        assert self._client is not None
        try:
            async with asyncio.timeout(self.config.api_timeout):
                created = await self._client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            if exc.code == 21610:
                await self.state.set_opt_out(network, phone, True)
                raise PermanentError("the recipient opted out (Twilio error 21610)") from exc
            if exc.status == 429 or exc.status >= 500 or exc.status == 401:
                raise TransientError(f"Twilio answered {exc.status} ({exc.code})") from exc
            raise PermanentError(f"Twilio refused the message: {exc.code}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError, TwilioException) as exc:
            raise TransientError(f"Twilio unreachable: {type(exc).__name__}") from exc
        return str(created.sid)

    def _status_callback_url(self) -> str | None:
        if not self.config.status_callbacks:
            return None
        base = (self.config.public_url or self.ctx.public_url).rstrip("/")
        # The runtime learns an ephemeral port only after adapters were built (tests).
        if urlsplit(base).port == 0:
            return None
        return f"{base}{self.path}/status"


_SENTENCE = re.compile(r"(?<=[。！？.!?])\s*")
_TWILIO_MAX = 1600
"""Characters of one Messages API body; Twilio splits it into segments itself."""
_DELIVERED = frozenset({"delivered", "read"})
_FAILED = frozenset({"failed", "undelivered"})


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut after a sentence or a space
    where there is one in the part's second half."""
    parts: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind(ch, limit // 2, limit) for ch in "。！？.!? \n")
        cut = limit if cut < 0 else cut + 1
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*parts, text] if text else parts


def sms_ack_text(ack: Acknowledgement) -> str:
    """The acknowledgement as one SMS segment where possible (GSM-7 160 / UCS-2 70).

    Courtesy sentences go first (those without digits: the thanks, "quote this number"), from
    the end backwards; the sentences with the ticket number and the due time stay. If even they
    do not fit, the text is cut to one segment, keeping the number if it fits at all.
    """
    text = ack.text
    if one_segment(text):
        return text
    sentences = [s for s in _SENTENCE.split(text) if s]
    optional = [i for i, s in enumerate(sentences) if not any(c.isdigit() for c in s)]
    kept = list(range(len(sentences)))
    for index in reversed(optional):
        kept.remove(index)
        candidate = _join(sentences, kept)
        if one_segment(candidate):
            return candidate
    return fit_one_segment(_join(sentences, kept))


_GSM7 = re.compile("[" + re.escape("".join(sorted(GSM7_BASIC | GSM7_EXTENSION))) + "]*")
_GSM7_EXT = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")


def one_segment(text: str) -> bool:
    """``sms_segments(text)[1] == 1``, with regular expressions instead of a loop per character
    (the acknowledgement of every SMS passes here, several times)."""
    if len(text) > 160:
        return False
    if _GSM7.fullmatch(text):
        return len(text) + len(_GSM7_EXT.findall(text)) <= 160
    return len(text.encode("utf-16-le")) <= 140


def _join(sentences: Sequence[str], kept: Sequence[int]) -> str:
    parts = [sentences[i] for i in kept]
    # Chinese sentences run on; others are separated by one space.
    out = ""
    for part in parts:
        if out and not _HAN.search(out[-1]) and out[-1] not in "。！？":
            out += " "
        out += part
    return out

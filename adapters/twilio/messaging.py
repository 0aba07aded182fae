"""``<path>/sms``: inbound SMS, MMS and WhatsApp answered in TwiML, and the media they carry."""

from __future__ import annotations

import mimetypes
import re
from urllib.parse import urljoin

import aiohttp
from aiohttp import web
from multidict import MultiDict

from gateway.errors import RejectedInput, TooLarge
from gateway.plugin import (
    IDENTITY,
    Inline,
    InlineOnPhone,
    MediaRefused,
    file_not_kept,
    read_limited,
)
from intake_adapters.twilio.common import (
    _API_HOST,
    _VERIFIED_BY,
    TwilioParts,
    _e164,
    _twiml,
    guess_locale,
)
from intake_adapters.twilio.outbound import sms_ack_text
from intake_adapters.twilio.protocol import (
    classify_keyword,
    render_twiml_empty,
    render_twiml_message,
)
from intake_schemas import Attachment, Contact, FileNotKept, InboundMessage, ThreadHints

# Short codes and alphanumeric sender ids cannot be E.164, yet they are who wrote.
_SENDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,15}$")
_MAX_MEDIA = 10  # Twilio sends at most 10 media per message
_ANSWERED = ("created", "duplicate", "replayed")
"""Outcomes acknowledged in the reply; follow-ups are not, as in the outbox (``ack_on``)."""


class MessagingMixin(TwilioParts):
    """Inbound SMS, MMS and WhatsApp, answered in TwiML; the media they carry."""

    async def handle_message(self, request: web.Request) -> web.Response:
        """An inbound SMS, MMS or WhatsApp message: answer the acknowledgement in TwiML."""
        verified = await self._verified(request)
        p = verified.fields
        sid = p.get("MessageSid") or p.get("SmsMessageSid") or p.get("SmsSid")
        if not sid:
            raise RejectedInput("MessageSid is missing", field="MessageSid")
        sender = p.get("From", "")
        whatsapp = sender.startswith("whatsapp:")
        network = "whatsapp" if whatsapp else "sms"
        raw = sender.removeprefix("whatsapp:")
        phone = _e164(raw, self.config.default_region)
        if phone is None and (whatsapp or not _SENDER_ID.match(raw)):
            raise RejectedInput("From is not a phone number or sender id", field="From")
        body = p.get("Body", "")
        if phone is not None:
            keyword = classify_keyword(body)
            # Keywords are Twilio's business (it confirms STOP/START/HELP itself); we only
            # remember opt-outs so that nothing is sent later, and open no ticket for them.
            if keyword == "opt_out":
                await self.state.set_opt_out(network, phone, True)
                self.ctx.log.info("opt-out recorded for message %s", sid)
                return _twiml(render_twiml_empty())
            if keyword == "opt_in":
                await self.state.set_opt_out(network, phone, False)
                self.ctx.log.info("opt-in recorded for message %s", sid)
                return _twiml(render_twiml_empty())
            if keyword == "help":
                return _twiml(render_twiml_empty())
        attachments, notes, not_kept = await self._fetch_media(p)
        text = body or _message_extras(p) or ("" if attachments or not notes else "[media]")
        metadata = {"twilio.channel": network, "twilio.message_sid": sid, **notes}
        if p.get("To"):
            metadata["twilio.to"] = p["To"]
        chat_ids = {"whatsapp": phone} if whatsapp and phone else {}
        if phone is None:
            chat_ids = {"sms": raw}
        message = InboundMessage(
            channel=self.kind, provider_message_id=sid, received_at=self.ctx.clock(),
            contact=Contact(name=(p.get("ProfileName") or "").strip() or None, phone=phone,
                            chat_ids=chat_ids, verified_by=_VERIFIED_BY),
            text=text, attachments=attachments, files_not_kept=not_kept,
            thread=ThreadHints(ticket_number=self._number_in(text)),
            locale=guess_locale(text, p.get("FromCountry")), conversational=True,
            metadata=metadata,
        )
        # The TwiML reply lands on the sender's phone, so no escalation SMS on top of it.
        receipt = await self.intake.submit(
            message, reply=InlineOnPhone() if phone is not None else Inline())
        ack = receipt.acknowledgement
        if (ack is None or receipt.outcome not in _ANSWERED or phone is None
                or self.state.opted_out(network, phone)):
            return _twiml(render_twiml_empty())
        # WhatsApp is no SMS: no segments to fit, so the whole acknowledgement goes. Nor when a
        # file did not reach us: saying so is worth a second segment (nothing dropped silently).
        whole = whatsapp or bool(not_kept)
        return _twiml(render_twiml_message(ack.text if whole else sms_ack_text(ack)))

    def _number_in(self, text: str) -> str | None:
        # A ticket number typed in the chat joins that ticket when it is the sender's own.
        found = self.intake.find_ticket_numbers(text)
        return found[0] if found else None

    async def _fetch_media(self, p: MultiDict[str]
                           ) -> tuple[list[Attachment], dict[str, str], list[FileNotKept]]:
        try:
            count = min(max(int(p.get("NumMedia") or 0), 0), _MAX_MEDIA)
        except ValueError:
            count = 0
        attachments: list[Attachment] = []
        notes: dict[str, str] = {}
        not_kept: list[FileNotKept] = []
        for i in range(count):
            url = p.get(f"MediaUrl{i}", "")
            declared = p.get(f"MediaContentType{i}", "")
            try:
                if not self._type_allowed(declared):
                    raise _MediaSkipped(f"type {declared or 'unknown'} is not accepted",
                                        kind="type")
                data, ctype = await self._download(url)
                if not self._type_allowed(ctype):
                    raise _MediaSkipped(f"type {ctype} is not accepted", kind="type")
                name = f"media{i}{mimetypes.guess_extension(ctype) or ''}"
                attachments.append(await self.intake.store_attachment(
                    data, name=name, content_type=ctype))
            except (_MediaSkipped, TooLarge) as exc:
                # The words still matter: keep the message, say what was left out and where.
                reason = exc.reason if isinstance(exc, TooLarge) else str(exc)
                notes[f"twilio.media{i}"] = f"not stored: {reason}"
                notes[f"twilio.media{i}.url"] = url[:500]
                not_kept.append(file_not_kept(f"media{i}", exc))
        return attachments, notes, not_kept

    def _type_allowed(self, content_type: str) -> bool:
        ctype = content_type.split(";")[0].strip().lower()
        return bool(ctype) and any(ctype.startswith(t) for t in self.config.media_types)

    def _api_url(self, url: str) -> str | None:
        """Media URLs are fetched only below our account on the API, never elsewhere (SSRF)."""
        if self.api_base != _API_HOST and url.startswith(_API_HOST + "/"):
            url = self.api_base + url[len(_API_HOST):]
        return url if url.startswith(self.media_prefix) else None

    async def _download(self, url: str) -> tuple[bytes, str]:
        """GET with the account's credentials, following Twilio's redirect to its CDN.

        Every hop must be on ``media_hosts``: a redirect to loopback, a metadata address or any
        other host is refused, not followed. The body is stored only when it is whole and
        within ``media_max_bytes``.
        """
        target = self._api_url(url)
        if target is None:
            raise _MediaSkipped("the URL is not a media URL of this Twilio account")
        if not self.media_hosts.allows(target):
            raise _MediaSkipped("the media URL is not on adapters.twilio.media_hosts")
        assert self._session is not None
        limit = self.config.media_max_bytes
        headers: dict[str, str] = {"Authorization": self._basic, **IDENTITY}
        try:
            for _ in range(4):
                async with self._session.get(target, headers=headers,
                                             allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = urljoin(target, resp.headers["Location"])
                        if not self.media_hosts.allows(target):
                            raise _MediaSkipped("redirected off adapters.twilio.media_hosts")
                        # The CDN URL is pre-signed: our credentials stay with Twilio's API.
                        headers = dict(IDENTITY)
                        continue
                    if resp.status != 200:
                        raise _MediaSkipped(f"the media answered HTTP {resp.status}")
                    data = await read_limited(resp, limit)
                    ctype = resp.headers.get("Content-Type", "application/octet-stream")
                    return data, ctype.split(";")[0].strip().lower()
        except MediaRefused as exc:
            raise _MediaSkipped(exc.reason, kind=exc.kind, limit=exc.limit) from exc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # ClientPayloadError: the body broke off (shorter than declared, cut chunking).
            raise _MediaSkipped(f"download failed: {type(exc).__name__}") from exc
        raise _MediaSkipped("too many redirects")


class _MediaSkipped(MediaRefused):
    """A media item that is recorded by URL instead of stored."""


def _message_extras(p: MultiDict[str]) -> str:
    """Text for messages without a Body: a WhatsApp location or a quick-reply button."""
    if p.get("ButtonText"):
        return p["ButtonText"]
    if p.get("Latitude") and p.get("Longitude"):
        label = " ".join(x for x in (p.get("Label", ""), p.get("Address", "")) if x)
        return f"[location] {label} ({p['Latitude']}, {p['Longitude']})".replace("  ", " ")
    return ""

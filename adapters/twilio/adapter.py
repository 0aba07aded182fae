"""``/twilio/*``: SMS, WhatsApp and voice mail through Twilio, acknowledged in TwiML or by SMS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import mimetypes
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
import msgspec
import phonenumbers
from aiohttp import web
from multidict import MultiDict
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse
from yarl import URL

from adapters.twilio.protocol import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    classify_keyword,
    compute_twilio_signature,
    fit_one_segment,
    public_url,
    render_twiml_empty,
    render_twiml_message,
    render_voice_record_twiml,
    verify_twilio_signature,
)
from gateway.config import parse_duration, resolve_secret
from gateway.contracts import AdapterContext
from gateway.decision import OutboxAck
from gateway.errors import (
    ConfigError,
    Forbidden,
    PermanentError,
    RejectedInput,
    TooLarge,
    TransientError,
)
from gateway.intake import IntakeService, now_utc
from gateway.media import IDENTITY, MediaHosts, MediaRefused, file_not_kept, read_limited
from schemas import (
    Acknowledgement,
    Attachment,
    Contact,
    FileNotKept,
    InboundMessage,
    Receipt,
    ThreadHints,
)

log = logging.getLogger("intake.twilio")

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
# Short codes and alphanumeric sender ids cannot be E.164, yet they are who wrote.
_SENDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,15}$")
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
_NANP = re.compile(r"^\+1[2-9][0-9]{2}[2-9][0-9]{6}$")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_MAX_FORM = 262_144
_MAX_MEDIA = 10  # Twilio sends at most 10 media per message
_ANSWERED = ("created", "duplicate", "replayed")
"""Outcomes acknowledged in the reply; follow-ups are not, as in the outbox (``ack_on``)."""
_TWIML = "text/xml"
_API_HOST = "https://api.twilio.com"
_VERIFIED_BY = "twilio-signature"
"""Every identity here came in a webhook whose X-Twilio-Signature was checked."""


class TwilioConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.twilio]``."""

    enabled: bool = False
    account_sid: str = ""
    """The account (``AC…``) whose webhooks are accepted and whose credentials fetch media."""
    auth_token_env: str | None = None
    """Environment variable holding the auth token (signs webhooks; Basic auth for the API)."""
    auth_token_file: str | None = None
    sms_from: str | None = None
    """E.164 sender of acknowledgements sent later by SMS (voice mail, high priority)."""
    messaging_service_sid: str | None = None
    """Alternatively a Messaging Service (``MG…``) that picks the sender."""
    whatsapp_from: str | None = None
    """E.164 WhatsApp sender for acknowledgements sent later on WhatsApp."""
    path: str = "/twilio"
    """Routes: ``<path>/sms`` (SMS, MMS, WhatsApp), ``<path>/status``, ``<path>/voice``,
    ``<path>/voice/recording``, ``<path>/voice/transcription``."""
    public_url: str | None = None
    """The base URL Twilio calls, if not ``server.public_url``; signatures are checked against
    it. Without either (a loopback listener), the request's forwarded headers and Host say it."""
    api_base_url: str = _API_HOST
    """Twilio's REST API; media URLs must point below it. Tests point it at a local fake."""
    api_timeout: float = 10.0
    status_callbacks: bool = True
    """Ask Twilio to report the delivery of every SMS we send to ``<path>/status``."""
    media_max_bytes: int = 5_242_880
    """Largest media item stored; a larger one (declared or counted) is recorded, not cut."""
    media_hosts: list[str] = msgspec.field(default_factory=lambda: [
        "api.twilio.com", "*.twiliocdn.com",
        "s3-external-1.amazonaws.com/media.twiliocdn.com/"])
    """Where media (and every redirect on the way) may be fetched from, over https: the API
    and the CDNs Twilio documents (``mms.twiliocdn.com`` for media behind HTTP auth, the S3
    bucket ``media.twiliocdn.com`` for older public media). ``scheme://host:port`` entries allow
    exactly that origin, e.g. a local fake over http in tests."""
    media_types: list[str] = msgspec.field(default_factory=lambda: [
        "image/", "audio/", "video/", "application/pdf", "text/vcard", "text/x-vcard"])
    """Content types kept (prefixes); other media are recorded by URL, not fetched."""
    media_timeout: float = 10.0
    voice_prompt: str = ("您好，这里是客服中心。请在提示音后留言，说明您的问题，"
                         "我们会以短信告知工单编号。留言完毕请挂机或按井号键。")
    voice_language: str = "zh-CN"
    voice_thanks: str = "谢谢，您的留言已收到，再见。"
    voice_no_message: str = "没有收到您的留言，再见。"
    voice_max_length: int = 120
    """Seconds of voice mail recorded at most (Twilio transcribes up to 120 s)."""
    transcription_wait: str = "2m"
    """How long a recording waits for its transcription before the ticket is made without it."""
    recording_format: Literal["wav", "mp3"] = "wav"
    voice_sms_ack: bool = True
    """Acknowledge voice mail by SMS when the caller's number can receive one."""
    default_region: str | None = None
    """Region for caller ids without a country code (Twilio normally sends E.164)."""


class _Params(msgspec.Struct, frozen=True):
    """A verified webhook: its fields, and the public base URL it was addressed to."""

    fields: MultiDict[str]
    base: str = ""


class TwilioAdapter:
    """SMS/WhatsApp answered in TwiML, voice mail turned into tickets, SMS acks through REST."""

    kind: ClassVar[str] = "twilio"
    Config: ClassVar[type[msgspec.Struct]] = TwilioConfig
    ack_channels: ClassVar[tuple[str, ...]] = ("sms", "whatsapp")

    def __init__(self, config: TwilioConfig, intake: IntakeService, ctx: AdapterContext) -> None:
        self.config = config
        self.intake = intake
        self.ctx = ctx
        self.authenticated = True
        if not _ACCOUNT_SID.match(config.account_sid):
            raise ConfigError("adapters.twilio.account_sid: expected the account SID, "
                              "'AC' and 32 hexadecimal digits")
        token = resolve_secret(config.auth_token_env, config.auth_token_file,
                               key="adapters.twilio.auth_token")
        if not token:
            raise ConfigError("adapters.twilio: set auth_token_env (or auth_token_file); "
                              "without the auth token no webhook can be verified")
        self.token = token
        if not (config.sms_from or config.messaging_service_sid):
            raise ConfigError("adapters.twilio: set sms_from (an E.164 number) or "
                              "messaging_service_sid; acknowledgements by SMS need a sender")
        for key in ("sms_from", "whatsapp_from"):
            value = getattr(config, key)
            if value is not None and _e164(value) != value:
                raise ConfigError(f"adapters.twilio.{key}: expected an E.164 number such as "
                                  f"+14155550123, got {value!r}")
        for key in ("public_url", "api_base_url"):
            value = getattr(config, key)
            if value is not None and urlsplit(value).scheme not in ("http", "https"):
                raise ConfigError(f"adapters.twilio.{key}: expected an http(s) URL")
        self.transcription_wait = parse_duration(
            config.transcription_wait, key="adapters.twilio.transcription_wait").total_seconds()
        self.path = "/" + config.path.strip("/")
        self.api_base = config.api_base_url.rstrip("/")
        self.media_prefix = f"{self.api_base}/2010-04-01/Accounts/{config.account_sid}/"
        self.media_hosts = MediaHosts(config.media_hosts, key="adapters.twilio.media_hosts")
        self._basic = "Basic " + base64.b64encode(
            f"{config.account_sid}:{token}".encode()).decode("ascii")
        self.state = TwilioState(Path(ctx.data_dir) / self.kind / "state.sqlite3")
        self.signed_base = self._configured_base()
        self._session: aiohttp.ClientSession | None = None
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None
        self._calls: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        p = self.path
        return [
            web.post(f"{p}/sms", self.handle_message),
            web.post(f"{p}/status", self.handle_status),
            web.post(f"{p}/voice", self.handle_voice),
            web.post(f"{p}/voice/recording", self.handle_recording),
            web.post(f"{p}/voice/transcription", self.handle_transcription),
        ]

    async def start(self) -> None:
        """Open the adapter's state, the media session and the REST client; resume voice mail."""
        await asyncio.to_thread(self.state.open)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.media_timeout))
        self._http = AsyncTwilioHttpClient()
        self._client = Client(self.config.account_sid, self.token, http_client=self._http)
        self._client.api.base_url = self.api_base
        self._wake = asyncio.Event()
        self._sweeper = asyncio.create_task(self._sweep_voice_mail(), name="twilio-voice-mail")

    async def stop(self) -> None:
        """Stop the voice-mail sweeper, close the HTTP sessions and the state."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.to_thread(self.state.close)

    # -- verification -------------------------------------------------------------------------

    def _configured_base(self) -> str | None:
        if self.config.public_url:
            return self.config.public_url
        # A base derived from a loopback or wildcard listener is not what Twilio called: then
        # the proxy's X-Forwarded-* headers and Host tell (tunnels, local tests).
        host = urlsplit(self.ctx.public_url).hostname or ""
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None if host in ("", "localhost") else self.ctx.public_url
        return None if addr.is_loopback or addr.is_unspecified else self.ctx.public_url

    async def _verified(self, request: web.Request, *, with_base: bool = False) -> _Params:
        """The webhook's fields once ``X-Twilio-Signature`` proves Twilio sent them (else 403)."""
        signature = request.headers.get("X-Twilio-Signature")
        if not signature:
            raise Forbidden("X-Twilio-Signature is missing")
        if not signature.isascii():
            # aiohttp keeps undecodable header bytes as surrogates: never a base64 HMAC.
            raise Forbidden("X-Twilio-Signature is not a base64 signature")
        body = await request.read()
        if len(body) > _MAX_FORM:
            raise TooLarge(f"a Twilio webhook is never larger than {_MAX_FORM} bytes")
        configured = self.signed_base
        url = _signable(public_url(request.raw_path, request.headers, configured))
        if request.content_type == "application/json":
            # Twilio signs JSON bodies through a bodySHA256 query parameter over the URL.
            if not verify_twilio_signature(self.token, url, body, signature):
                raise Forbidden("X-Twilio-Signature does not match this request")
            fields = _json_fields(body)
        else:
            try:
                pairs = form_pairs(body.decode("utf-8"))
            except UnicodeDecodeError:
                raise RejectedInput("the form is not UTF-8") from None
            # The URL as received matches in the common case: one HMAC instead of the
            # validator's two (with and without the port), which remain the fallback.
            exact = compute_twilio_signature(self.token, url, pairs)
            if not (hmac.compare_digest(exact.encode(), signature.encode("utf-8", "replace"))
                    or verify_twilio_signature(self.token, url, pairs, signature)):
                raise Forbidden("X-Twilio-Signature does not match this request")
            fields = MultiDict(pairs)
        account = fields.get("AccountSid")
        if account and account != self.config.account_sid:
            raise Forbidden("the webhook belongs to another Twilio account")
        if not with_base:
            return _Params(fields=fields)
        return _Params(fields=fields,
                       base=public_url("/", request.headers, configured).rstrip("/"))

    # -- SMS, MMS, WhatsApp -------------------------------------------------------------------

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
                log.info("opt-out recorded for message %s", sid)
                return _twiml(render_twiml_empty())
            if keyword == "opt_in":
                await self.state.set_opt_out(network, phone, False)
                log.info("opt-in recorded for message %s", sid)
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
            channel=self.kind, provider_message_id=sid, received_at=now_utc(),
            contact=Contact(name=(p.get("ProfileName") or "").strip() or None, phone=phone,
                            chat_ids=chat_ids, verified_by=_VERIFIED_BY),
            text=text, attachments=attachments, files_not_kept=not_kept,
            thread=ThreadHints(ticket_number=self._number_in(text)),
            locale=guess_locale(text, p.get("FromCountry")), conversational=True,
            metadata=metadata,
        )
        # The TwiML reply lands on the sender's phone, so no escalation SMS on top of it.
        receipt = await self.intake.submit(message, inline_reaches_phone=phone is not None)
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
        found = self.intake.numbering.find_in(text)
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

    # -- status callbacks ---------------------------------------------------------------------

    async def handle_status(self, request: web.Request) -> web.Response:
        """Delivery reports of the SMS we sent: recorded; error 21610 means the number opted out."""
        p = (await self._verified(request)).fields
        sid = p.get("MessageSid") or p.get("SmsSid")
        status = p.get("MessageStatus") or p.get("SmsStatus")
        if not sid or not status:
            raise RejectedInput("MessageSid and MessageStatus are required")
        error = p.get("ErrorCode") or None
        await self.state.record_status(sid, status, error)
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

    def _status_callback_url(self) -> str | None:
        if not self.config.status_callbacks:
            return None
        base = (self.config.public_url or self.ctx.public_url).rstrip("/")
        # The runtime learns an ephemeral port only after adapters were built (tests).
        if urlsplit(base).port == 0:
            return None
        return f"{base}{self.path}/status"

    # -- voice mail ---------------------------------------------------------------------------

    async def handle_voice(self, request: web.Request) -> web.Response:
        """An incoming call: invite a message and record it with transcription."""
        verified = await self._verified(request, with_base=True)
        if not verified.fields.get("CallSid"):
            raise RejectedInput("CallSid is missing", field="CallSid")
        c = self.config
        base = f"{verified.base}{self.path}/voice"
        return _twiml(render_voice_record_twiml(
            c.voice_prompt, f"{base}/recording", f"{base}/transcription", c.voice_max_length,
            language=c.voice_language, goodbye=c.voice_no_message))

    async def handle_recording(self, request: web.Request) -> web.Response:
        """``<Record action>``: the recording is there; wait for the transcription a while."""
        p = (await self._verified(request)).fields
        call = self._call_facts(p)
        await self.state.save_call(call)
        answer = VoiceResponse()
        answer.say(self.config.voice_thanks, language=self.config.voice_language)
        answer.hangup()
        if call.recording_url:
            stored = await self.state.call(call.call_sid)
            if stored is not None and stored.transcription_status is not None:
                await self._finish_call(call.call_sid)
            else:
                self._wake.set()  # the sweeper makes the ticket if no transcription comes
        return _twiml(answer.to_xml().encode("utf-8"))

    async def handle_transcription(self, request: web.Request) -> web.Response:
        """``transcribeCallback``: the text of the voice mail (or its failure)."""
        p = (await self._verified(request)).fields
        call = self._call_facts(p)
        status = (p.get("TranscriptionStatus") or "failed").lower()
        text = (p.get("TranscriptionText") or "").strip() if status == "completed" else ""
        call = msgspec.structs.replace(call, transcription_status=status, transcript=text)
        await self.state.save_call(call)
        await self._finish_call(call.call_sid)
        return _twiml(render_twiml_empty())

    def _call_facts(self, p: MultiDict[str]) -> VoiceCall:
        sid = p.get("CallSid")
        if not sid:
            raise RejectedInput("CallSid is missing", field="CallSid")
        try:
            duration = int(p.get("RecordingDuration") or 0)
        except ValueError:
            duration = 0
        return VoiceCall(call_sid=sid, caller=p.get("From") or p.get("Caller") or "",
                         called=p.get("To") or p.get("Called") or "",
                         recording_url=p.get("RecordingUrl") or None,
                         recording_sid=p.get("RecordingSid") or None,
                         duration=duration, recorded_at=time.time())

    async def _finish_call(self, call_sid: str) -> None:
        """Make the voice-mail ticket once; a transcript arriving later joins it.

        The lock only saves work: both submissions carry the CallSid as their delivery id, so
        two racing callbacks still make one ticket (the second is answered ``replayed``).
        """
        lock = self._calls.setdefault(call_sid, asyncio.Lock())
        try:
            async with lock:
                call = await self.state.call(call_sid)
                if call is None or not call.recording_url:
                    return
                if call.ticket_number is None:
                    receipt = await self._submit_call(call)
                    await self.state.mark_submitted(call_sid, receipt.ticket_number,
                                                    with_transcript=bool(call.transcript))
                elif call.transcript and not call.transcript_submitted:
                    await self._submit_late_transcript(call)
                    await self.state.mark_submitted(call_sid, call.ticket_number,
                                                    with_transcript=True)
        finally:
            if not lock.locked():
                self._calls.pop(call_sid, None)

    def _caller(self, call: VoiceCall) -> tuple[Contact, str | None]:
        phone = _e164(call.caller, self.config.default_region)
        if phone is not None:
            return Contact(phone=phone, verified_by=_VERIFIED_BY), phone
        if call.caller.startswith("client:") and len(call.caller) > 7:
            return Contact(chat_ids={"twilio_client": call.caller[7:]},
                           verified_by=_VERIFIED_BY), None
        # A withheld number: the voice mail still becomes a ticket, of a contact of its own.
        return Contact(chat_ids={"twilio_call": call.call_sid}, verified_by=_VERIFIED_BY), None

    async def _submit_call(self, call: VoiceCall) -> Receipt:
        contact, phone = self._caller(call)
        attachments: list[Attachment] = []
        metadata = {"twilio.channel": "voice", "twilio.call_sid": call.call_sid,
                    "twilio.recording_duration": str(call.duration),
                    "twilio.transcription": call.transcription_status or "pending"}
        if call.recording_sid:
            metadata["twilio.recording_sid"] = call.recording_sid
        url = call.recording_url or ""
        if self.config.recording_format == "mp3":
            url += ".mp3"
        try:
            data, ctype = await self._download(url)
            ext = ".mp3" if "mpeg" in ctype or "mp3" in ctype else ".wav"
            attachments.append(await self.intake.store_attachment(
                data, name=f"voicemail-{call.call_sid}{ext}", content_type=ctype))
        except (_MediaSkipped, TooLarge) as exc:
            metadata["twilio.recording"] = "not stored: " + (
                exc.reason if isinstance(exc, TooLarge) else str(exc))
            metadata["twilio.recording.url"] = url[:500]
        text = call.transcript or (
            f"Voice mail of {call.duration} s received "
            f"{datetime.fromtimestamp(call.recorded_at, UTC):%Y-%m-%d %H:%M:%S} UTC; "
            "no transcript." + (" The recording is attached." if attachments else ""))
        message = InboundMessage(
            channel=self.kind, provider_message_id=call.call_sid, delivery_scope="call",
            received_at=now_utc(), contact=contact, subject="", text=text,
            attachments=attachments, locale=guess_locale(call.transcript, None),
            metadata=metadata)
        ack_via = None
        if phone is not None and self.config.voice_sms_ack and can_receive_sms(phone):
            ack_via = OutboxAck(channel="sms", to=phone)
        # The caller hung up long ago: without an SMS nobody hears the ticket number.
        return await self.intake.submit(message, ack_via=ack_via, unreachable=ack_via is None)

    async def _submit_late_transcript(self, call: VoiceCall) -> None:
        contact, _ = self._caller(call)
        message = InboundMessage(
            channel=self.kind, provider_message_id=f"{call.call_sid}/transcript",
            delivery_scope="call", received_at=now_utc(), contact=contact,
            text=call.transcript or "", thread=ThreadHints(ticket_number=call.ticket_number),
            locale=guess_locale(call.transcript, None),
            metadata={"twilio.channel": "voice", "twilio.call_sid": call.call_sid,
                      "twilio.transcription": "late"})
        await self.intake.submit(message)

    async def _sweep_voice_mail(self) -> None:
        """Make the tickets of recordings whose transcription did not come in time."""
        while True:
            self._wake.clear()
            now = time.time()
            due, oldest = await self.state.waiting_calls(now - self.transcription_wait)
            wake_at = None if oldest is None else oldest + self.transcription_wait
            for call_sid in due:
                try:
                    await self._finish_call(call_sid)
                except Exception:  # one bad call must not stop the others; retried soon
                    log.exception("voice mail of call %s could not be submitted", call_sid)
                    wake_at = min(wake_at or now + 30, now + 30)
            timeout = None if wake_at is None else max(0.05, wake_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


class _MediaSkipped(MediaRefused):
    """A media item that is recorded by URL instead of stored."""


def _twiml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=_TWIML, charset="utf-8")


def _signable(url: str) -> str:
    """The URL to check the signature against, or 403 when no Twilio request has that URL.

    It is built from Host and X-Forwarded-* headers, which anyone can fill with bytes that are
    not UTF-8 or a port above 65535; the signature library would raise on both.
    """
    try:
        url.encode("utf-8")
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:  # UnicodeEncodeError included
        raise Forbidden("the request's Host or X-Forwarded-Host is not a URL Twilio signs"
                        ) from None
    return url


def _json_fields(body: bytes) -> MultiDict[str]:
    try:
        data = json.loads(body)
    except ValueError:
        raise RejectedInput("the body is not JSON") from None
    if not isinstance(data, dict):
        raise RejectedInput("the JSON body is not an object")
    fields: MultiDict[str] = MultiDict()
    for key, value in data.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            fields.add(str(key), str(value))
    return fields


def form_pairs(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True)``, through yarl's C decoder (4x faster here)."""
    return list(URL.build(query_string=text, encoded=True).query.items())


def _message_extras(p: MultiDict[str]) -> str:
    """Text for messages without a Body: a WhatsApp location or a quick-reply button."""
    if p.get("ButtonText"):
        return p["ButtonText"]
    if p.get("Latitude") and p.get("Longitude"):
        label = " ".join(x for x in (p.get("Label", ""), p.get("Address", "")) if x)
        return f"[location] {label} ({p['Latitude']}, {p['Longitude']})".replace("  ", " ")
    return ""


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


_SENTENCE = re.compile(r"(?<=[。！？.!?])\s*")


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


# -- the adapter's own state --------------------------------------------------------------------


class VoiceCall(msgspec.Struct, frozen=True, kw_only=True):
    """What the voice callbacks told us about one call, until its ticket exists."""

    call_sid: str
    caller: str
    called: str = ""
    recording_url: str | None = None
    recording_sid: str | None = None
    duration: int = 0
    recorded_at: float = 0.0
    transcript: str | None = None
    transcription_status: str | None = None
    ticket_number: str | None = None
    transcript_submitted: bool = False


_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS opt_outs(
    network TEXT NOT NULL, phone TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY(network, phone))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statuses(
    sid TEXT PRIMARY KEY, status TEXT NOT NULL, error_code TEXT, updated_at REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calls(
    call_sid TEXT PRIMARY KEY, caller TEXT NOT NULL, called TEXT NOT NULL,
    recording_url TEXT, recording_sid TEXT, duration INTEGER NOT NULL DEFAULT 0,
    recorded_at REAL NOT NULL, transcript TEXT, transcription_status TEXT,
    ticket_number TEXT, transcript_submitted INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""


class TwilioState:
    """Opt-outs, delivery reports and voice calls in progress: ``<data_dir>/twilio``.

    Small and rarely written, so one SQLite connection behind a lock, used from worker
    threads. Opt-outs are also kept in memory: every inbound message and every send checks them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._opted_out: set[tuple[str, str]] = set()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_STATE_SCHEMA)
        self._opted_out = {(n, p) for n, p in conn.execute("SELECT network, phone FROM opt_outs")}
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            with self._lock:
                if self._conn is None:
                    raise TransientError("the Twilio adapter's state is closed")
                return self._conn.execute(sql, args).fetchall()
        return await asyncio.to_thread(run)

    def opted_out(self, network: str, phone: str) -> bool:
        return (network, phone) in self._opted_out

    async def set_opt_out(self, network: str, phone: str, opted_out: bool) -> None:
        if opted_out:
            await self._run("INSERT OR REPLACE INTO opt_outs(network, phone, at) VALUES (?,?,?)",
                            (network, phone, time.time()))
            self._opted_out.add((network, phone))
        else:
            await self._run("DELETE FROM opt_outs WHERE network = ? AND phone = ?",
                            (network, phone))
            self._opted_out.discard((network, phone))

    async def record_status(self, sid: str, status: str, error_code: str | None) -> None:
        await self._run("INSERT INTO statuses(sid, status, error_code, updated_at)"
                        " VALUES (?,?,?,?) ON CONFLICT(sid) DO UPDATE SET status = excluded.status,"
                        " error_code = coalesce(excluded.error_code, error_code),"
                        " updated_at = excluded.updated_at",
                        (sid, status, error_code, time.time()))

    async def status_of(self, sid: str) -> tuple[str, str | None] | None:
        rows = await self._run("SELECT status, error_code FROM statuses WHERE sid = ?", (sid,))
        return (str(rows[0][0]), rows[0][1] and str(rows[0][1])) if rows else None  # type: ignore[return-value]

    async def save_call(self, call: VoiceCall) -> None:
        """Merge what one callback told into the call's row (callbacks come in any order)."""
        await self._run(
            "INSERT INTO calls(call_sid, caller, called, recording_url, recording_sid, duration,"
            " recorded_at, transcript, transcription_status) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(call_sid) DO UPDATE SET"
            " caller = CASE WHEN excluded.caller != '' THEN excluded.caller ELSE caller END,"
            " called = CASE WHEN excluded.called != '' THEN excluded.called ELSE called END,"
            " recording_url = coalesce(recording_url, excluded.recording_url),"
            " recording_sid = coalesce(recording_sid, excluded.recording_sid),"
            " duration = max(duration, excluded.duration),"
            " recorded_at = min(recorded_at, excluded.recorded_at),"
            " transcript = coalesce(transcript, excluded.transcript),"
            " transcription_status = coalesce(transcription_status,"
            "                                 excluded.transcription_status)",
            (call.call_sid, call.caller, call.called, call.recording_url, call.recording_sid,
             call.duration, call.recorded_at, call.transcript or None,
             call.transcription_status))

    async def call(self, call_sid: str) -> VoiceCall | None:
        rows = await self._run(
            "SELECT call_sid, caller, called, recording_url, recording_sid, duration,"
            " recorded_at, transcript, transcription_status, ticket_number, transcript_submitted"
            " FROM calls WHERE call_sid = ?", (call_sid,))
        if not rows:
            return None
        names = ("call_sid", "caller", "called", "recording_url", "recording_sid", "duration",
                 "recorded_at", "transcript", "transcription_status", "ticket_number",
                 "transcript_submitted")
        return msgspec.convert(dict(zip(names, rows[0], strict=True)), VoiceCall, strict=False)

    async def mark_submitted(self, call_sid: str, ticket_number: str, *,
                             with_transcript: bool) -> None:
        await self._run("UPDATE calls SET ticket_number = ?,"
                        " transcript_submitted = max(transcript_submitted, ?) WHERE call_sid = ?",
                        (ticket_number, int(with_transcript), call_sid))

    async def waiting_calls(self, recorded_before: float) -> tuple[list[str], float | None]:
        """Calls with a recording and no ticket: those recorded before the cut-off, and the
        oldest recording time of the others (when the sweeper must look again)."""
        rows = await self._run("SELECT call_sid, recorded_at FROM calls WHERE ticket_number IS"
                               " NULL AND recording_url IS NOT NULL")
        due = [str(sid) for sid, at in rows if float(at) <= recorded_before]  # type: ignore[arg-type]
        later = [float(at) for _, at in rows if float(at) > recorded_before]  # type: ignore[arg-type]
        return due, (min(later) if later else None)

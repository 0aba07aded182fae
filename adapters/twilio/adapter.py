"""``/twilio/*``: SMS, WhatsApp and voice mail through Twilio, acknowledged in TwiML or by SMS.

The adapter itself, its config, its routes and webhook verification; the parts it is made of
live beside it: ``messaging``, ``voice``, ``outbound``, ``state``."""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp import web
from multidict import MultiDict
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from yarl import URL

from gateway.errors import ConfigError, Forbidden, RejectedInput, TooLarge
from gateway.plugin import (
    AdapterBase,
    AdapterContext,
    Intake,
    MediaHosts,
    parse_duration,
    resolve_secret,
)
from gateway.plugin.openapi import Operation
from intake_adapters.twilio.common import _API_HOST, _e164
from intake_adapters.twilio.messaging import MessagingMixin
from intake_adapters.twilio.openapi import twilio_operations
from intake_adapters.twilio.outbound import OutboundMixin
from intake_adapters.twilio.protocol import (
    compute_twilio_signature,
    public_url,
    verify_twilio_signature,
)
from intake_adapters.twilio.state import TwilioState
from intake_adapters.twilio.voice import VoiceMixin

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_MAX_FORM = 262_144


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
    whatsapp_reply_template_sid: str | None = None
    """Content SID (``HX…``) of the approved WhatsApp template replies use outside the 24-hour
    window; ``{{1}}`` is the ticket number and ``{{2}}`` the reply. Unset: outside the window
    replies fall back to SMS or are refused (``replies.window_fallback``)."""
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


class TwilioAdapter(MessagingMixin, VoiceMixin, OutboundMixin, AdapterBase):
    """SMS/WhatsApp answered in TwiML, voice mail turned into tickets, SMS acks through REST."""

    kind: ClassVar[str] = "twilio"
    Config: ClassVar[type[msgspec.Struct]] = TwilioConfig
    ack_channels: ClassVar[tuple[str, ...]] = ("sms", "whatsapp")
    reply_channels: ClassVar[tuple[str, ...]] = ("sms", "whatsapp")
    reply_windows: ClassVar[dict[str, float]] = {"whatsapp": 86_400.0}
    """WhatsApp's customer-service window: free text only within 24 h of the customer's last
    message; outside it the approved template (``whatsapp_reply_template_sid``)."""

    def __init__(self, config: TwilioConfig, intake: Intake, ctx: AdapterContext) -> None:
        AdapterBase.__init__(self, config, intake, ctx)
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
        self.state = TwilioState(ctx.state)
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

    @classmethod
    def http_operations(cls, config: TwilioConfig) -> Sequence[Operation]:
        return twilio_operations(config.path)

    async def start(self) -> None:
        """Load the opt-outs, open the media session and the REST client; resume voice mail."""
        await self.state.open()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.media_timeout))
        self._http = AsyncTwilioHttpClient()
        self._client = Client(self.config.account_sid, self.token, http_client=self._http)
        self._client.api.base_url = self.api_base
        self._wake = asyncio.Event()
        self._sweeper = asyncio.create_task(self._sweep_voice_mail(), name="twilio-voice-mail")

    async def stop(self) -> None:
        """Stop the voice-mail sweeper and close the HTTP sessions (the state is the store's)."""
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

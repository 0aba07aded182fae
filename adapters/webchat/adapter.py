"""Live chat: the widget, visitor sessions, WebSocket with an HTTP fallback, replies, push.

Every visitor message goes through ``submit`` like any other channel's; the receipt is shown at
once in the chat (``Inline``). The protocol (for the widget and for mobile apps) is in
``docs/webchat.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote

import msgspec
from aiohttp import WSMsgType, web

from gateway.errors import (
    ConfigError,
    Forbidden,
    NotFound,
    PermanentError,
    RateLimited,
    RejectedInput,
    StorageFull,
    TooLarge,
    TransientError,
    Unauthorized,
)
from gateway.plugin import (
    AdapterBase,
    AdapterContext,
    Inline,
    Intake,
    OutgoingReply,
    normalize_email,
    normalize_phone,
    parse_duration,
    peer_key,
    resolve_secret,
)
from gateway.plugin.files import safe_filename
from gateway.plugin.locales import pick_locale
from gateway.plugin.openapi import Operation
from intake_adapters.webchat.config import SiteConfig, WebchatConfig
from intake_adapters.webchat.history import (
    Conversation,
    Conversations,
    Device,
    Entry,
    SessionRecord,
    encode,
)
from intake_adapters.webchat.openapi import webchat_operations
from intake_adapters.webchat.push import PushEvent, PushSenders
from intake_adapters.webchat.session import (
    SITE_KEY,
    check_identity,
    issue_token,
    new_session_id,
    read_token,
)
from intake_schemas import Attachment, Contact, InboundMessage, ThreadHints

_STATIC = Path(__file__).parent / "static"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,60}/[A-Za-z0-9][\w.+-]{0,60}", re.ASCII)
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{16}$")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_MAX_BAD_FRAMES = 10
_MAX_DEVICES = 5
_POLL_WAIT = 25.0


def _load_texts() -> dict[str, dict[str, str]]:
    texts = msgspec.json.decode((_STATIC / "texts.json").read_bytes(),
                                type=dict[str, dict[str, str]])
    keys = set(texts["en"])
    for loc in ("zh-CN", "zh-TW"):
        if set(texts.get(loc, {})) != keys:
            raise RuntimeError(f"webchat texts.json: {loc} has not the same keys as en")
    return texts


TEXTS = _load_texts()
"""The widget's words (and the push titles), by locale: zh-CN, zh-TW, en."""


_FORWARD_HEAD = {
    "en": "You did not read this answer in the chat on {site}; here it is (ticket {number}):",
    "zh-CN": "您在 {site} 的在线客服中尚未查看此答复，现发送给您（工单 {number}）：",
    "zh-TW": "您在 {site} 的線上客服中尚未查看此答覆，現傳送給您（工單 {number}）：",
}
_FORWARD_CLAIM = {
    "en": "This address was given in the chat on {site}. If that was not you, please ignore "
          "this message.",
    "zh-CN": "此地址是在 {site} 的在线客服中填写的。如果不是您本人填写，请忽略此消息。",
    "zh-TW": "此地址是在 {site} 的線上客服中填寫的。如果不是您本人填寫，請忽略此訊息。",
}


def render_forward(text: str, *, number: str, site: str, locale: str, claimed: bool) -> str:
    """The message an unseen reply is forwarded as: a line naming the chat and the ticket,
    the reply's own text, and for a claimed address the line to ignore it if it was not them.
    Nothing else of the conversation, the ticket or the contact goes in it."""
    head = _FORWARD_HEAD.get(locale, _FORWARD_HEAD["en"]).format(site=site, number=number)
    parts = [head, text]
    if claimed:
        parts.append(_FORWARD_CLAIM.get(locale, _FORWARD_CLAIM["en"]).format(site=site))
    return "\n\n".join(parts)


class ReplyFallback(msgspec.Struct, frozen=True, kw_only=True):
    """A reply the visitor did not see in the chat within ``reply_fallback_delay``: what the
    host needs to send it by email or SMS instead."""

    site: str
    session_id: str
    email: str | None
    phone: str | None
    locale: str
    text: str
    reply_id: str
    ticket_number: str | None


class DeliveryResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`WebchatAdapter.deliver_reply` did with one reply."""

    status: Literal["live", "queued", "duplicate"]
    """``live``: sent to at least one connected client; ``queued``: kept for catch-up (and
    pushed to the app, and a fallback scheduled); ``duplicate``: this reply id was delivered
    already, nothing done again."""
    sessions: list[str]
    """The sessions the reply was written to."""
    pushed: int = 0
    """App notifications handed to the push service."""
    fallback_at: str | None = None
    """When the email/phone fallback fires unless the visitor has seen the reply (ISO UTC)."""


class _Identity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: str
    email: str
    signature: str
    name: str | None = None


class _NewSession(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    site: str
    locale: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    identity: _Identity | None = None


class _NewMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    client_id: str
    text: str = ""
    attachments: list[str] = []


class _NewDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["fcm", "webhook"]
    token: str


class _Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A WebSocket frame from a client: ``auth``, ``message``, ``catchup`` or ``ping``."""

    type: Literal["auth", "message", "catchup", "ping"]
    token: str | None = None
    after: int = 0
    client_id: str | None = None
    text: str = ""
    attachments: list[str] = []


_dec_session = msgspec.json.Decoder(_NewSession)
_dec_message = msgspec.json.Decoder(_NewMessage)
_dec_device = msgspec.json.Decoder(_NewDevice)
_dec_frame = msgspec.json.Decoder(_Frame)
_dec_attachment = msgspec.json.Decoder(Attachment)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RejectedInput(f"the JSON does not fit: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise RejectedInput("the body is not valid UTF-8 JSON") from None
    except RecursionError:
        raise RejectedInput("the JSON is nested too deeply") from None


def _clean(text: str | None, limit: int, field: str) -> str | None:
    """Stripped text, None when empty; refused when over ``limit`` or not encodable."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RejectedInput("the text holds an unpaired surrogate", field=field) from None
    if "\x00" in text:
        raise RejectedInput("the text holds a NUL character", field=field)
    text = text.strip()
    if len(text) > limit:
        raise TooLarge(f"{field} is longer than {limit} characters", field=field, limit=limit)
    return text or None


class _Site:
    def __init__(self, config: SiteConfig, identity_secret: bytes | None) -> None:
        self.config = config
        self.key = config.key
        self.origins = frozenset(o.rstrip("/").lower() for o in config.allowed_origins)
        self.identity_secret = identity_secret


class WebchatAdapter(AdapterBase):
    """Visitors chat on the company's site or app; every message is submitted and answered in
    the chat at once with its ticket number and due time."""

    kind: ClassVar[str] = "webchat"
    Config: ClassVar[type[msgspec.Struct]] = WebchatConfig
    reply_channels: ClassVar[tuple[str, ...]] = ("webchat",)
    """Replies to a ticket whose latest message came from the chat are answered in the chat
    (gateway/replies/routing.py sends a ``webchat`` message's reply to its contact's
    ``chat_ids["webchat"]``). No window: a chat reply may go any time; an unseen one is
    caught up on the next visit, pushed to the app, or sent to the fallback."""

    config: WebchatConfig
    intake: Intake
    ctx: AdapterContext

    def __init__(self, config: WebchatConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        secret = resolve_secret(config.session_secret_env, config.session_secret_file,
                                key="adapters.webchat.session_secret")
        if secret is None or len(secret.encode()) < 32:
            raise ConfigError("adapters.webchat: set session_secret_env (or _file) to a random "
                              "secret of at least 32 bytes; it signs the visitors' sessions")
        self.secret = secret.encode()
        if not config.sites:
            raise ConfigError("adapters.webchat: add at least one [[adapters.webchat.sites]] "
                              "with its key and allowed_origins")
        self.sites: dict[str, _Site] = {}
        for n, site in enumerate(config.sites):
            where = f"adapters.webchat.sites[{n}]"
            if not SITE_KEY.match(site.key):
                raise ConfigError(f"{where}.key: 8 to 64 of A-Z, a-z, 0-9, _ and -")
            if site.key in self.sites:
                raise ConfigError(f"{where}.key: {site.key!r} is used twice")
            for origin in site.allowed_origins:
                if not _ORIGIN.match(origin.rstrip("/")):
                    raise ConfigError(f"{where}.allowed_origins: {origin!r} is not an origin "
                                      "like https://shop.example.com (scheme, host, port)")
            if not site.allowed_origins and not site.allow_apps:
                raise ConfigError(f"{where}: set allowed_origins (websites) or allow_apps")
            if not _COLOR.match(site.color):
                raise ConfigError(f"{where}.color: expected #rrggbb")
            ident = resolve_secret(site.identity_secret_env, site.identity_secret_file,
                                   key=f"{where}.identity_secret")
            self.sites[site.key] = _Site(site, ident.encode() if ident else None)
        for name in ("max_message_chars", "max_frame_bytes", "max_upload_bytes",
                     "message_rate", "ip_message_rate", "session_rate",
                     "max_connections_per_ip", "history_limit"):
            if getattr(config, name) <= 0:
                raise ConfigError(f"adapters.webchat.{name}: must be above 0")
        self.ttl = parse_duration(config.session_ttl, key="adapters.webchat.session_ttl"
                                  ).total_seconds()
        window = parse_duration(config.rate_window, key="adapters.webchat.rate_window"
                                ).total_seconds()
        self.auth_timeout = parse_duration(config.auth_timeout,
                                           key="adapters.webchat.auth_timeout").total_seconds()
        self.heartbeat = parse_duration(config.heartbeat,
                                        key="adapters.webchat.heartbeat").total_seconds()
        self.fallback_delay = parse_duration(
            config.reply_fallback_delay, key="adapters.webchat.reply_fallback_delay"
        ).total_seconds()
        for n, channel in enumerate(config.reply_fallback):
            if channel not in ("email", "sms") or channel in config.reply_fallback[:n]:
                raise ConfigError(f"adapters.webchat.reply_fallback[{n}]: {channel!r}; "
                                  'expected some of "email" and "sms", each once')
        self.path = "/" + config.path.strip("/")
        self.text_limit = min(config.max_message_chars, intake.limits.max_text_chars)
        self.convs = Conversations(ctx.state, history_limit=config.history_limit)
        # From the context: counted across replicas when the store is shared.
        self.session_buckets = ctx.rate_limiter("webchat_session", config.session_rate, window)
        self.ip_buckets = ctx.rate_limiter("webchat_ip", config.ip_message_rate, window)
        self.message_buckets = ctx.rate_limiter("webchat_message", config.message_rate, window)
        self.connections: dict[str, int] = {}
        self.push = PushSenders(config.push, log=ctx.log)
        self.reply_fallback: Callable[[ReplyFallback], Awaitable[None]] | None = None
        """A test's hook: when set, an unseen reply is handed to it instead of being forwarded
        (:meth:`Intake.forward_reply`) or posted to the push webhook. The product leaves it
        unset."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        """Every live WebSocket of this process (closed when the listener drains)."""
        self._draining = False
        self._widget_js = self._build_widget()

    @classmethod
    def http_operations(cls, config: WebchatConfig) -> Sequence[Operation]:
        # Not on ``enabled``: the committed document shows the chat under its default path.
        return webchat_operations(config.path)

    # -- lifecycle ----------------------------------------------------------------------------

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        p = self.path
        return [
            web.get(f"{p}/widget.js", self.widget_js),
            web.get(f"{p}/widget.css", self.widget_css),
            web.post(f"{p}/v1/sessions", self._http(self.create_session)),
            web.get(f"{p}/v1/session", self._http(self.get_session)),
            web.delete(f"{p}/v1/session", self._http(self.revoke_session)),
            web.post(f"{p}/v1/messages", self._http(self.post_message)),
            web.get(f"{p}/v1/messages", self._http(self.get_messages)),
            web.post(f"{p}/v1/uploads", self._http(self.post_upload)),
            web.post(f"{p}/v1/devices", self._http(self.post_device)),
            web.get(f"{p}/v1/ws", self.handle_ws),
            web.options(p + "/v1/{tail:.*}", self.preflight),
        ]

    async def start(self) -> None:
        await self.push.start()
        # Fallbacks scheduled before a restart are armed again (their replies are kept).
        for key, raw in await self.ctx.state.items("f/"):
            _, sid, seq = key.split("/")
            conv = await self.convs.get(sid)
            entry = next((e for e in conv.entries if e.seq == int(seq)), None) if conv else None
            if conv is None or entry is None:
                await self.ctx.state.delete(key)
                continue
            delay = max(0.0, float(raw.decode()) - self.ctx.clock().timestamp())
            self._spawn(self._fallback_later(conv, entry, delay))

    async def draining(self) -> None:
        """Close every live connection (1001, going away): clients reconnect to a replica
        and catch up. Long polls are answered by their own timeout or the next entry."""
        self._draining = True
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        for conv in list(self.convs._cache.values()):
            async with conv.changed:
                conv.changed.notify_all()

    async def stop(self) -> None:
        await self.draining()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.push.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the widget ---------------------------------------------------------------------------

    def _build_widget(self) -> bytes:
        texts = json.dumps(TEXTS, ensure_ascii=False, separators=(",", ":"))
        sites = {k: {"name": s.config.name, "color": s.config.color}
                 for k, s in self.sites.items()}
        head = (f"/* intake webchat widget */\nvar INTAKE_WEBCHAT_TEXTS={texts};\n"
                f"var INTAKE_WEBCHAT_SITES={json.dumps(sites, ensure_ascii=False)};\n"
                f"var INTAKE_WEBCHAT_DEFAULT_LOCALE={json.dumps(self.ctx.default_locale)};\n")
        return head.encode() + (_STATIC / "widget.js").read_bytes()

    async def widget_js(self, request: web.Request) -> web.Response:
        return web.Response(body=self._widget_js, content_type="application/javascript",
                            charset="utf-8", headers={"Cache-Control": "public, max-age=300",
                                                      "Access-Control-Allow-Origin": "*"})

    async def widget_css(self, request: web.Request) -> web.Response:
        return web.Response(body=(_STATIC / "widget.css").read_bytes(), content_type="text/css",
                            charset="utf-8", headers={"Cache-Control": "public, max-age=300",
                                                      "Access-Control-Allow-Origin": "*"})

    # -- HTTP plumbing: origins, CORS, errors ---------------------------------------------------

    def _check_origin(self, request: web.Request, site: _Site) -> str | None:
        """The request's Origin when the site allows it; 403 otherwise."""
        origin = request.headers.get("Origin")
        if origin is None:
            if site.config.allow_apps:
                return None
            raise Forbidden("this site takes chats only from its own web pages (Origin)")
        if origin.rstrip("/").lower() not in site.origins:
            raise Forbidden("this page's origin is not allowed for this site")
        return origin

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin and any(origin.rstrip("/").lower() in s.origins for s in self.sites.values()):
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    async def preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if not headers:
            return web.Response(status=403)
        headers |= {"Access-Control-Allow-Methods": "GET, POST, DELETE",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Filename",
                    "Access-Control-Max-Age": "600"}
        return web.Response(status=204, headers=headers)

    def _http(self, handler: Callable[[web.Request], Awaitable[Any]]
              ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """JSON in and out, with CORS headers on errors too (a cross-origin page cannot read
        an error answer without them, and the widget must see a 401 to start afresh)."""
        async def wrapped(request: web.Request) -> web.Response:
            cors = self._cors(request)
            try:
                result = await handler(request)
            except RateLimited as exc:
                return web.json_response(
                    {"error": exc.reason}, status=429,
                    headers=cors | {"Retry-After": str(max(1, round(exc.retry_after)))})
            except RejectedInput as exc:
                # As the core's error body (gateway/http.py): ``field`` only when one is at
                # fault, never null (the OpenAPI Error schema says a string).
                error = {"error": exc.reason} | ({"field": exc.field} if exc.field else {})
                return web.json_response(error, status=exc.status, headers=cors)
            except StorageFull:
                return web.json_response({"error": "no room to store it now, retry later"},
                                         status=503, headers=cors | {"Retry-After": "30"})
            except TransientError:
                return web.json_response({"error": "temporarily unavailable, please retry"},
                                         status=503, headers=cors | {"Retry-After": "5"})
            return web.Response(body=encode(result), content_type="application/json",
                                headers=cors)
        return wrapped

    async def _body(self, request: web.Request) -> bytes:
        limit = self.config.max_frame_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"the body is larger than {limit} bytes", limit=limit)
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise TooLarge(f"the body is larger than {limit} bytes", limit=limit)
        return body

    def _peer(self, request: web.Request) -> str:
        raw = request.remote or "unknown"
        if self.config.trust_forwarded_for:
            hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
            hops = [h for h in hops if h]
            if hops:
                raw = hops[-1]
        return peer_key(raw.strip("[]"))

    async def _session_of(self, token: str) -> tuple[_Site, Conversation]:
        """The live session a token names: 401 when forged, expired, unknown or revoked."""
        site_key, sid = read_token(self.secret, token, now=self.ctx.clock().timestamp(),
                                   ttl=self.ttl)
        site = self.sites.get(site_key)
        conv = await self.convs.get(sid) if site is not None else None
        if site is None or conv is None or conv.record.site != site_key:
            raise Unauthorized("the session is unknown; start a new session")
        # The revocation mark is read from the store on every use, not from this process's
        # cache: a session revoked through another replica is refused here too.
        if conv.record.revoked or await self.ctx.state.get(f"r/{sid}") is not None:
            conv.record.revoked = True
            raise Unauthorized("the session was revoked; start a new session")
        return site, conv

    async def _authorized(self, request: web.Request) -> tuple[_Site, Conversation]:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send the session token as Authorization: Bearer <token>")
        site, conv = await self._session_of(token.strip())
        self._check_origin(request, site)
        return site, conv

    # -- sessions -------------------------------------------------------------------------------

    async def create_session(self, request: web.Request) -> dict[str, Any]:
        """``POST /v1/sessions``: a new visitor session, with optional pre-chat fields and an
        optional signed identity of a logged-in user."""
        body = _decode(_dec_session, await self._body(request))
        site = self.sites.get(body.site)
        if site is None:
            raise NotFound("no such site key", field="site")
        self._check_origin(request, site)
        wait = await self.session_buckets.take(self._peer(request))
        if wait:
            raise RateLimited("too many new chat sessions from this address", retry_after=wait)
        name = _clean(body.name, 100, "name")
        email = _clean(body.email, 254, "email")
        phone = _clean(body.phone, 40, "phone")
        user_id: str | None = None
        verified = False
        if body.identity is not None:
            ident = body.identity
            if not (0 < len(ident.user_id) <= 200 and ident.user_id.isprintable()):
                raise RejectedInput("identity.user_id: 1 to 200 printable characters",
                                    field="identity.user_id")
            check_identity(site.identity_secret, ident.user_id, ident.email, ident.signature)
            user_id, verified = ident.user_id, True
            email = ident.email
            name = _clean(ident.name, 100, "identity.name") or name
        email = normalize_email(email, field="email") if email else None
        phone = (normalize_phone(phone, default_region=self.config.default_region,
                                 field="phone") if phone else None)
        now = self.ctx.clock().timestamp()
        record = SessionRecord(
            site=site.key, sid=new_session_id(), created=now,
            locale=pick_locale(body.locale, self.ctx.default_locale), name=name, email=email,
            phone=phone, user_id=user_id, verified=verified)
        await self.convs.create(record)
        if user_id is not None:
            await self.ctx.state.put(f"user/{site.key}/{_user_key(user_id)}/{record.sid}", b"1")
        self.ctx.log.info("session opened on site %s (%s)", site.key,
                          "signed identity" if verified else "anonymous")
        return {"token": issue_token(self.secret, site.key, record.sid, int(now)),
                "session_id": record.sid, "site": site.key, "locale": record.locale,
                "verified": verified, "expires_at": _iso(now + self.ttl)}

    async def get_session(self, request: web.Request) -> dict[str, Any]:
        """``GET /v1/session``: the session the token names (the widget checks it on load)."""
        _, conv = await self._authorized(request)
        r = conv.record
        return {"session_id": r.sid, "site": r.site, "locale": r.locale, "name": r.name,
                "verified": r.verified, "last_seq": conv.last_seq}

    async def revoke_session(self, request: web.Request) -> dict[str, Any]:
        """``DELETE /v1/session``: the token is refused from now on, by every replica."""
        _, conv = await self._authorized(request)
        await self.revoke(conv.record.sid)
        return {"revoked": True}

    async def revoke(self, session_id: str) -> None:
        """Revoke a session durably and close its live connections."""
        conv = await self.convs.get(session_id)
        if conv is None:
            raise NotFound("no such session")
        conv.record.revoked = True
        await self.ctx.state.put(f"r/{session_id}", b"1")
        await self.convs.save(conv)
        for ws in list(conv.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=4001, message=b"session revoked")

    # -- messages -------------------------------------------------------------------------------

    async def post_message(self, request: web.Request) -> dict[str, Any]:
        """``POST /v1/messages``: one visitor message; answers its entry with the receipt."""
        _, conv = await self._authorized(request)
        body = _decode(_dec_message, await self._body(request))
        entry = await self.take_message(conv, body.client_id, body.text, body.attachments,
                                        peer=self._peer(request))
        return {"entry": entry}

    async def get_messages(self, request: web.Request) -> dict[str, Any]:
        """``GET /v1/messages?after=N&wait=S``: catch-up, or a long poll of up to 25 s."""
        _, conv = await self._authorized(request)
        after = _int_query(request, "after", 0)
        wait = min(float(_int_query(request, "wait", 0)), _POLL_WAIT)
        if wait > 0 and conv.last_seq <= after:
            async with conv.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        conv.changed.wait_for(
                            lambda: conv.last_seq > after or self._draining), wait)
        entries = conv.after(after)
        await self._seen(conv, conv.last_seq)
        return {"entries": entries, "last_seq": conv.last_seq}

    async def take_message(self, conv: Conversation, client_id: str, text: str,
                           uploads: list[str], *, peer: str) -> Entry:
        """Check, submit and record one visitor message; a resent ``client_id`` answers the
        first entry again (nothing lost, nothing doubled)."""
        if not _CLIENT_ID.match(client_id):
            raise RejectedInput("client_id: 8 to 64 of A-Z, a-z, 0-9, _ and -",
                                field="client_id")
        cleaned = _clean(text, self.text_limit, "text") or ""
        if len(uploads) > self.config.max_attachments:
            raise TooLarge(f"at most {self.config.max_attachments} attachments per message",
                           field="attachments", limit=self.config.max_attachments)
        earlier = conv.cids.get(client_id)
        if earlier is not None:
            return earlier
        if not cleaned and not uploads:
            raise RejectedInput("the message is empty", field="text")
        for bucket, key, what in ((self.message_buckets, conv.record.sid, "this chat"),
                                  (self.ip_buckets, peer, "this address")):
            wait = await bucket.take(key)
            if wait:
                raise RateLimited(f"too many messages from {what}; wait a moment",
                                  retry_after=wait)
        attachments = [await self._upload(conv, u) for u in uploads]
        async with conv.lock:
            earlier = conv.cids.get(client_id)
            if earlier is not None:
                return earlier
            receipt = await self.intake.submit(
                self._message(conv, client_id, cleaned, attachments), reply=Inline())
            record = conv.record
            due = receipt.due_at
            entry = Entry(
                seq=conv.last_seq + 1, kind="visitor", at=self.ctx.clock().isoformat(),
                text=cleaned, client_id=client_id, attachments=[a.name for a in attachments],
                ticket_number=receipt.ticket_number, outcome=receipt.outcome,
                due_at=due.isoformat() if due else None,
                due_text=self.intake.format_due(due, record.locale) if due else None,
                ack=receipt.acknowledgement.text if receipt.acknowledgement else None)
            await self.convs.append(conv, entry)
        self.ctx.log.info("message %s on %s: %s", receipt.message_id, receipt.ticket_number,
                          receipt.outcome)
        await self._broadcast(conv, entry)
        if conv.record.devices and entry.ack:
            self._spawn(self.push.notify(conv.record, PushEvent(
                type="webchat.ack", title=self._texts(conv)["push_ack_title"],
                body=entry.ack, entry=entry)))
        return entry

    def _message(self, conv: Conversation, client_id: str, text: str,
                 attachments: list[Attachment]) -> InboundMessage:
        r = conv.record
        metadata = {"webchat.site": r.site, "webchat.session": r.sid}
        if r.verified:
            # The site signed user id and email: a verified identity of that contact.
            contact = Contact(name=r.name, email=r.email,
                              chat_ids={"webchat": f"{r.site}:u:{r.user_id}"},
                              verified_by="webchat-identity")
        else:
            # Anonymous: the only identity is the session's own random id, minted here and
            # known only to the holder of its signed token, so it can only ever reach this
            # session's own tickets. What the visitor typed (email, phone) is a claim: kept
            # for the agents and the reply fallback, never made an identity (docs/webchat.md).
            contact = Contact(name=r.name, chat_ids={"webchat": f"{r.site}:s:{r.sid}"},
                              verified_by="webchat-session")
            if r.email:
                metadata["webchat.claimed_email"] = r.email
            if r.phone:
                metadata["webchat.claimed_phone"] = r.phone
        found = self.intake.find_ticket_numbers(text)
        return InboundMessage(
            channel=self.kind, provider_message_id=client_id,
            delivery_scope=f"{r.site}:{r.sid}", received_at=self.ctx.clock(), contact=contact,
            text=text, attachments=attachments,
            thread=ThreadHints(ticket_number=found[0] if found else None),
            locale=r.locale, conversational=True, metadata=metadata)

    def _texts(self, conv: Conversation) -> dict[str, str]:
        return TEXTS.get(conv.record.locale, TEXTS["en"])

    # -- uploads and devices ----------------------------------------------------------------------

    async def post_upload(self, request: web.Request) -> dict[str, Any]:
        """``POST /v1/uploads``: the raw file as the body, its name in ``X-Filename``
        (percent-encoded); answers the upload id a message then names."""
        _, conv = await self._authorized(request)
        limit = min(self.config.max_upload_bytes, self.intake.limits.max_attachment_bytes)
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"a file may have at most {limit} bytes", limit=limit)
        wait = await self.message_buckets.take(conv.record.sid)
        if wait:
            raise RateLimited("too many uploads from this chat", retry_after=wait)
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"a file may have at most {limit} bytes", limit=limit)
        if not data:
            raise RejectedInput("the file is empty")
        name = safe_filename(unquote(request.headers.get("X-Filename", "attachment"))[:200])
        ctype = request.headers.get("Content-Type", "")[:100].split(";", 1)[0].strip()
        if not _MEDIA_TYPE.fullmatch(ctype):  # it is stored and echoed: a plain type/subtype
            ctype = "application/octet-stream"
        attachment = await self.intake.store_attachment(data, name=name, content_type=ctype)
        upload_id = secrets.token_urlsafe(12)
        await self.ctx.state.put(f"u/{conv.record.sid}/{upload_id}", encode(attachment))
        return {"upload_id": upload_id, "name": attachment.name, "size": attachment.size}

    async def _upload(self, conv: Conversation, upload_id: str) -> Attachment:
        raw = (await self.ctx.state.get(f"u/{conv.record.sid}/{upload_id}")
               if _UPLOAD_ID.match(upload_id) else None)
        if raw is None:
            raise RejectedInput("no such upload in this chat", field="attachments")
        decoded: Attachment = _dec_attachment.decode(raw)
        return decoded

    async def post_device(self, request: web.Request) -> dict[str, Any]:
        """``POST /v1/devices``: an app registers for notifications of acks and replies."""
        _, conv = await self._authorized(request)
        body = _decode(_dec_device, await self._body(request))
        if not (0 < len(body.token) <= 4096 and body.token.isprintable()):
            raise RejectedInput("token: 1 to 4096 printable characters", field="token")
        if body.kind == "fcm" and not self.push.fcm_enabled:
            raise RejectedInput("FCM is not configured on this gateway", field="kind")
        if body.kind == "webhook" and not self.push.webhook_enabled:
            raise RejectedInput("no push webhook is configured on this gateway", field="kind")
        device = Device(kind=body.kind, token=body.token)
        record = conv.record
        if device not in record.devices:
            record.devices = [*record.devices, device][-_MAX_DEVICES:]
            await self.convs.save(conv)
        return {"devices": len(record.devices)}

    # -- WebSocket ------------------------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/ws?site=KEY``: the live channel. Origin and per-address limits are checked
        before the upgrade; the first frame must authenticate within ``auth_timeout``."""
        site = self.sites.get(request.query.get("site", ""))
        if site is None:
            raise NotFound("no such site key", field="site")
        self._check_origin(request, site)
        if self._draining:
            raise TransientError("the gateway is stopping; reconnect")
        peer = self._peer(request)
        if self.connections.get(peer, 0) >= self.config.max_connections_per_ip:
            raise RateLimited("too many open chat connections from this address",
                              retry_after=30)
        ws = web.WebSocketResponse(heartbeat=self.heartbeat,
                                   max_msg_size=self.config.max_frame_bytes)
        await ws.prepare(request)
        self.sockets.add(ws)
        self.connections[peer] = self.connections.get(peer, 0) + 1
        conv: Conversation | None = None
        try:
            conv = await self._ws_auth(ws, site)
            if conv is None:
                return ws
            await self._ws_loop(ws, conv, peer)
        finally:
            self.sockets.discard(ws)
            if conv is not None:
                conv.sockets.discard(ws)
            left = self.connections.get(peer, 1) - 1
            if left > 0:
                self.connections[peer] = left
            else:
                self.connections.pop(peer, None)
            if not ws.closed:
                await ws.close()
        return ws

    async def _ws_auth(self, ws: web.WebSocketResponse, site: _Site) -> Conversation | None:
        try:
            msg = await ws.receive(timeout=self.auth_timeout)
        except TimeoutError:
            await ws.close(code=4001, message=b"authenticate within the timeout")
            return None
        if msg.type != WSMsgType.TEXT:
            await ws.close(code=4001, message=b"the first frame must be auth")
            return None
        try:
            frame = _dec_frame.decode(msg.data)
            if frame.type != "auth" or not frame.token:
                raise Unauthorized("the first frame must be {type: auth, token}")
            got_site, conv = await self._session_of(frame.token)
            if got_site is not site:
                raise Unauthorized("the token belongs to another site")
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError,
                UnicodeDecodeError):
            await ws.close(code=4001, message=b"the first frame must be auth")
            return None
        except Unauthorized as exc:
            await ws.send_json({"type": "error", "status": 401, "error": exc.reason})
            await ws.close(code=4001, message=b"unauthorized")
            return None
        conv.sockets.add(ws)
        await ws.send_str(encode({"type": "ready", "session_id": conv.record.sid,
                                  "last_seq": conv.last_seq}).decode())
        await self._send_after(ws, conv, frame.after)
        return conv

    async def _send_after(self, ws: web.WebSocketResponse, conv: Conversation,
                          after: int) -> None:
        for entry in conv.after(after):
            await ws.send_str(encode({"type": "entry", "entry": entry}).decode())
        await self._seen(conv, conv.last_seq)

    async def _ws_loop(self, ws: web.WebSocketResponse, conv: Conversation, peer: str) -> None:
        bad = 0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.close(code=1003, message=b"text frames only")
                return
            if msg.type != WSMsgType.TEXT:
                continue
            client_id: str | None = None
            try:
                frame = _dec_frame.decode(msg.data)
                client_id = frame.client_id
                if frame.type == "message":
                    entry = await self.take_message(conv, frame.client_id or "", frame.text,
                                                    frame.attachments, peer=peer)
                    await ws.send_str(encode({"type": "ack", "client_id": frame.client_id,
                                              "entry": entry}).decode())
                elif frame.type == "catchup":
                    await self._send_after(ws, conv, frame.after)
                elif frame.type == "ping":
                    await ws.send_str('{"type":"pong"}')
                else:
                    raise RejectedInput("already authenticated")
                continue
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError,
                    UnicodeDecodeError) as exc:
                error: dict[str, Any] = {"type": "error", "status": 400,
                                         "error": f"not a frame this channel takes: {exc}"
                                         if isinstance(exc, msgspec.ValidationError)
                                         else "not valid JSON"}
            except RateLimited as exc:
                error = {"type": "error", "status": 429, "error": exc.reason,
                         "retry_after": max(1, round(exc.retry_after))}
            except RejectedInput as exc:
                error = {"type": "error", "status": exc.status, "error": exc.reason,
                         "field": exc.field}
            except TransientError:
                error = {"type": "error", "status": 503,
                         "error": "temporarily unavailable, send it again", "retry_after": 5}
            if client_id is not None and _CLIENT_ID.match(client_id):
                error["client_id"] = client_id
            await ws.send_str(encode(error).decode())
            if error["status"] in (400, 413):
                bad += 1
                if bad >= _MAX_BAD_FRAMES:
                    await ws.close(code=1008, message=b"too many bad frames")
                    return
            if conv.record.revoked:
                return

    async def _broadcast(self, conv: Conversation, entry: Entry) -> int:
        """Send ``entry`` to every live connection of the session; how many took it."""
        frame = encode({"type": "entry", "entry": entry}).decode()
        sent = 0
        for ws in list(conv.sockets):
            if ws.closed:
                conv.sockets.discard(ws)
                continue
            try:
                await ws.send_str(frame)
                sent += 1
            except (ConnectionError, RuntimeError):
                conv.sockets.discard(ws)
        if sent:
            await self._seen(conv, entry.seq)
        return sent

    async def _seen(self, conv: Conversation, seq: int) -> None:
        """A client was given the entries up to ``seq``: their pending fallbacks are off, for
        every replica and after a restart (``_fallback_later`` fires only while its key is)."""
        if seq <= conv.seen:
            return
        earlier, conv.seen = conv.seen, seq
        # Only replies have fallbacks: a visitor's own message echoed back reads nothing.
        if not any(e.kind == "reply" and earlier < e.seq <= seq for e in conv.entries):
            return
        for key, _ in await self.ctx.state.items(f"f/{conv.record.sid}/"):
            if int(key.rsplit("/", 1)[1]) <= seq:
                await self.ctx.state.delete(key)

    # -- replies (the receiving side of the reply path) -----------------------------------------

    async def deliver_reply(self, address: str, text: str, *, reply_id: str,
                            ticket_number: str | None = None) -> DeliveryResult:
        """Deliver one agent reply into the chat of ``address``.

        ``address`` is the contact's ``chat_ids["webchat"]`` as the messages carry it:
        ``<site>:s:<session id>`` (an anonymous session) or ``<site>:u:<user id>`` (every
        session of a signed-in user). The reply is written durably to the conversation first
        (catch-up serves it after any reconnection), then sent live to connected clients. When
        none is connected it is pushed to the session's registered app devices, and unless a
        client has seen it within ``reply_fallback_delay`` it goes to the visitor's email or
        phone through :attr:`reply_fallback`. ``reply_id`` makes a repeat harmless.

        Raises :class:`NotFound` for an address naming no session.
        """
        if not 0 < len(reply_id) <= 100:
            raise RejectedInput("reply_id: 1 to 100 characters", field="reply_id")
        cleaned = _clean(text, 20_000, "text")
        if not cleaned:
            raise RejectedInput("the reply is empty", field="text")
        convs = await self._sessions_of(address)
        if not convs:
            raise NotFound("no chat session for this address")
        status: Literal["live", "queued", "duplicate"] = "duplicate"
        pushed = 0
        fallback_at: str | None = None
        for conv in convs:
            async with conv.lock:
                if any(e.reply_id == reply_id for e in conv.entries):
                    continue
                entry = Entry(seq=conv.last_seq + 1, kind="reply",
                              at=self.ctx.clock().isoformat(), text=cleaned,
                              reply_id=reply_id, ticket_number=ticket_number)
                await self.convs.append(conv, entry)
            if await self._broadcast(conv, entry):
                status = "live"
                continue
            if status == "duplicate":
                status = "queued"
            if conv.record.devices:
                pushed += await self.push.notify(conv.record, PushEvent(
                    type="webchat.reply", title=self._texts(conv)["push_reply_title"],
                    body=cleaned, entry=entry))
            if conv.record.email or conv.record.phone:
                due = self.ctx.clock().timestamp() + self.fallback_delay
                fallback_at = _iso(due)
                await self.ctx.state.put(f"f/{conv.record.sid}/{entry.seq}",
                                         repr(due).encode())
                self._spawn(self._fallback_later(conv, entry, self.fallback_delay))
        return DeliveryResult(status=status, sessions=[c.record.sid for c in convs],
                              pushed=pushed, fallback_at=fallback_at)

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """A downstream reply (``POST /v1/tickets/{number}/replies``) into the visitor's chat.

        ``to`` is the contact's ``chat_ids["webchat"]``; :meth:`deliver_reply` writes it to every
        session of that address, live or for catch-up. The dispatcher sends at least once; the
        reply id makes a second send write nothing. The provider id is ``webchat:<reply id>``
        (stable, so a resend names the same delivery). A session revoked or gone, or a text the
        chat refuses, can never succeed: :class:`PermanentError`, recorded as ``reply.failed``.
        """
        text = reply.text
        if reply.files:
            text += "\n\n" + "\n".join(f"[{f.name}]" for f in reply.files)
        try:
            await self.deliver_reply(to, text, reply_id=reply.reply_id,
                                     ticket_number=reply.ticket_number)
        except RejectedInput as exc:  # NotFound, TooLarge: the same send never succeeds
            raise PermanentError(f"the chat refused the reply: {exc.reason}") from None
        return f"webchat:{reply.reply_id}"

    async def _sessions_of(self, address: str) -> list[Conversation]:
        site, _, rest = address.partition(":")
        kind, _, ident = rest.partition(":")
        if site not in self.sites or not ident:
            return []
        if kind == "s":
            conv = await self.convs.get(ident)
            return [conv] if conv and conv.record.site == site and not conv.record.revoked else []
        if kind == "u":
            found = []
            for key, _ in await self.ctx.state.items(f"user/{site}/{_user_key(ident)}/"):
                conv = await self.convs.get(key.rsplit("/", 1)[1])
                if conv is not None and not conv.record.revoked:
                    found.append(conv)
            return found
        return []

    async def _fallback_later(self, conv: Conversation, entry: Entry, delay: float) -> None:
        await asyncio.sleep(delay)
        key = f"f/{conv.record.sid}/{entry.seq}"
        # The key is deleted when any client of the session is given the reply, by any replica
        # or an earlier process: gone, the visitor has seen it.
        if conv.seen >= entry.seq or await self.ctx.state.get(key) is None:
            await self.ctx.state.delete(key)
            return
        r = conv.record
        fallback = ReplyFallback(site=r.site, session_id=r.sid, email=r.email, phone=r.phone,
                                 locale=r.locale, text=entry.text, reply_id=entry.reply_id or "",
                                 ticket_number=entry.ticket_number)
        try:
            if self.reply_fallback is not None:
                await self.reply_fallback(fallback)
                how = "the hook"
            elif (channel := await self._forward(conv, entry)) is not None:
                how = channel
            elif self.push.webhook_enabled:
                await self.push.send_webhook("webchat.reply.fallback",
                                             msgspec.to_builtins(fallback))
                how = "the push webhook"
            else:
                how = ""
                self.ctx.log.warning("reply %s unseen and no fallback sender is configured",
                                     entry.reply_id)
            if how:
                self.ctx.log.info("reply %s unseen in the chat: sent to %s", entry.reply_id, how)
        except Exception:
            # Not retried: the reply stays in the chat for the visitor's next visit.
            self.ctx.log.exception("reply %s: the fallback failed", entry.reply_id)
        await self.ctx.state.delete(key)

    async def _forward(self, conv: Conversation, entry: Entry) -> str | None:
        """Forward an unseen reply by email or SMS; the channel it was queued on, or None.

        Only to what this session's own record holds: the email or phone typed into its
        pre-chat (settable only by the holder of its signed token, checked and normalised when
        the session was created) or the email the site signed. Only this reply's text and its
        ticket's number go. Once per reply: the key ``webchat-fallback:<reply id>`` makes a
        second replica or a restart queue nothing. The address stays a recipient; it never
        becomes an identity of the contact (the customer's answer to a forwarded mail joins
        the ticket only through our unguessable Message-ID). See docs/webchat.md.
        """
        r = conv.record
        if entry.ticket_number is None or entry.reply_id is None:
            return None
        site = self.sites[r.site].config.name or r.site
        for channel in self.config.reply_fallback:
            to = r.email if channel == "email" else r.phone
            if not to:
                continue
            claimed = not (channel == "email" and r.verified)
            text = render_forward(entry.text, number=entry.ticket_number, site=site,
                                  locale=r.locale, claimed=claimed)
            try:
                await self.intake.forward_reply(
                    ticket_number=entry.ticket_number, text=text, channel=channel, to=to,
                    key=f"webchat-fallback:{entry.reply_id}", locale=r.locale,
                    because=f"chat_unseen_{channel}")
            except RejectedInput as exc:  # no sender on that channel, a ticket gone: the next
                self.ctx.log.info("reply %s: not forwarded by %s (%s)", entry.reply_id,
                                  channel, exc.reason)
                continue
            return channel
        return None


def _user_key(user_id: str) -> str:
    # User ids are the site's (up to 200 characters); the state's keys are short.
    return hashlib.sha256(user_id.encode()).hexdigest()[:32]


def _iso(ts: float) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(ts, UTC).isoformat()


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise RejectedInput(f"{name}: expected a whole number", field=name)
    return int(raw)


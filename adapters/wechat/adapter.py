"""WeChat Official Account (微信公众号) message push: plain and safe mode, passive replies."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp import web

from gateway.errors import (
    ConfigError,
    Forbidden,
    PermanentError,
    RejectedInput,
    TooLarge,
    TransientError,
)
from gateway.plugin import (
    IDENTITY,
    AdapterBase,
    AdapterContext,
    Intake,
    MediaRefused,
    OutgoingReply,
    file_not_kept,
    is_loopback,
    parse_duration,
    read_limited,
    resolve_secret,
)
from gateway.plugin.openapi import Operation
from intake_adapters.wechat.openapi import wechat_operations
from intake_adapters.wechat.outbound import WINDOW, WeChatApi, send_reply
from intake_adapters.wechat.protocol import (
    WeChatCrypto,
    WeChatPush,
    check_signature,
    parse_push,
    render_text_reply,
    to_push,
)
from intake_schemas import Attachment, Contact, FileNotKept, InboundMessage, ThreadHints

_ANSWERED = ("created", "duplicate", "replayed")
"""Outcomes answered with the acknowledgement; a follow-up gets no reply, as in the outbox."""
_SUCCESS = b"success"
_REPLY_TTL = 60.0
"""Seconds a finished reply is kept for WeChat's retries (three within 15 s)."""
_MAX_REPLIES = 10_000
_WELCOME = ("感谢关注！如需帮助，请直接发送消息描述您的问题（可附图片），"
            "我们会为您登记工单，并告知工单编号和答复时间。")


class WeChatConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.wechat]``."""

    enabled: bool = False
    path: str = "/wechat"
    """The server URL configured in the Official Account (GET verification, POST pushes)."""
    token_env: str | None = None
    """Environment variable holding the Token set in the account's server configuration."""
    token_file: str | None = None
    mode: Literal["plain", "compat", "safe"] = "plain"
    """明文 / 兼容 / 安全模式. ``safe`` refuses unencrypted pushes; ``compat`` accepts both."""
    encoding_aes_key_env: str | None = None
    """Environment variable holding the 43-character EncodingAESKey (compat and safe mode)."""
    encoding_aes_key_file: str | None = None
    app_id: str | None = None
    """The account's AppID: encrypted messages name it (compat and safe mode)."""
    timestamp_tolerance: str = "5m"
    """How far a request's ``timestamp`` may be from our clock; older requests are replays."""
    max_body_bytes: int = 1_048_576
    reply_deadline: float = 4.5
    """Seconds to wait for the ticket before answering ``success`` (WeChat waits 5)."""
    welcome_text: str | None = None
    """The passive reply to a new follower (``subscribe``); default a short invitation."""
    fetch_images: bool = True
    """Download ``PicUrl`` of image messages into attachments (from ``image_hosts`` only)."""
    image_hosts: list[str] = msgspec.field(
        default_factory=lambda: ["mmbiz.qpic.cn", "mmbiz.qlogo.cn"])
    """Hosts (and their subdomains) images are fetched from; anything else is only recorded."""
    image_timeout: float = 2.0
    max_image_bytes: int = 10_485_760
    app_secret_env: str | None = None
    """Environment variable holding the account's AppSecret: replies (客服消息, 模板消息) need
    it with ``app_id``. Unset: this adapter sends no replies."""
    app_secret_file: str | None = None
    api_base_url: str = "https://api.weixin.qq.com"
    """The Official Account API; tests point it at a local fake."""
    api_timeout: float = 10.0
    reply_template_id: str | None = None
    """Template (模板消息) replies use outside WeChat's 48-hour window; unset: outside it replies
    fall back to SMS or are refused (``replies.window_fallback``)."""
    reply_template_number_key: str = "keyword1"
    """The template's field that gets the ticket number."""
    reply_template_text_key: str = "keyword2"
    """The template's field that gets the reply (cut to 200 characters)."""


class WeChatAdapter(AdapterBase):
    """Pushes become tickets; the passive reply carries the acknowledgement (no outbox)."""

    kind: ClassVar[str] = "wechat"
    Config: ClassVar[type[msgspec.Struct]] = WeChatConfig
    reply_channels: ClassVar[tuple[str, ...]] = ("wechat",)
    reply_windows: ClassVar[dict[str, float]] = {"wechat": WINDOW}

    config: WeChatConfig
    intake: Intake
    ctx: AdapterContext

    def __init__(self, config: WeChatConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        token = resolve_secret(config.token_env, config.token_file, key="adapters.wechat.token")
        if not token:
            raise ConfigError("adapters.wechat: set token_env (or token_file) to the Token of "
                              "the account's server configuration")
        self.token = token
        key = resolve_secret(config.encoding_aes_key_env, config.encoding_aes_key_file,
                             key="adapters.wechat.encoding_aes_key")
        self.crypto: WeChatCrypto | None = None
        if config.mode != "plain" or key:
            if not key or not config.app_id:
                raise ConfigError(f"adapters.wechat: mode {config.mode!r} needs "
                                  "encoding_aes_key_env (or _file) and app_id")
            self.crypto = WeChatCrypto(token, key, config.app_id)
        self.tolerance = parse_duration(config.timestamp_tolerance,
                                        key="adapters.wechat.timestamp_tolerance").total_seconds()
        self.path = "/" + config.path.strip("/")
        # (account, message key) -> the reply in progress or done, shared by WeChat's retries.
        self._replies: OrderedDict[tuple[str, str], tuple[float, asyncio.Task[bytes | None]]] = (
            OrderedDict())
        self._session: aiohttp.ClientSession | None = None
        secret = resolve_secret(config.app_secret_env, config.app_secret_file,
                                key="adapters.wechat.app_secret")
        if secret is not None and not config.app_id:
            raise ConfigError("adapters.wechat: app_secret_env needs app_id too")
        self.api = None if secret is None or not config.app_id else WeChatApi(
            config.api_base_url, config.app_id, secret, config.api_timeout)

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get(self.path, self.handle_verify), web.post(self.path, self.handle_push)]

    @classmethod
    def http_operations(cls, config: WeChatConfig) -> Sequence[Operation]:
        return wechat_operations(config.path)

    async def start(self) -> None:
        """Open the session images are fetched with; warn when plain pushes face the network."""
        if self.config.mode != "safe" and not is_loopback(self.ctx.listen_host):
            self.ctx.log.warning(
                "adapters.wechat.mode = %r on %s: WeChat signs the query of plain pushes, not "
                "their body, so only the replay guard stands between a captured query and a "
                "forged message; use mode = \"safe\"", self.config.mode, self.ctx.listen_host)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.image_timeout))

    async def stop(self) -> None:
        """Let replies in progress finish; close the session."""
        pending = [task for _, task in self._replies.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.config.reply_deadline)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- replies later ------------------------------------------------------------------------

    def reply_template_ready(self, channel: str) -> bool:
        """Outside the 48-hour window, a template message when one is configured."""
        return self.api is not None and bool(self.config.reply_template_id)

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """A customer-service message within 48 hours, the template message outside."""
        if self.api is None:
            raise PermanentError("adapters.wechat: set app_id and app_secret_env to reply")
        if self._session is None:
            raise TransientError("the wechat adapter is not started")
        return await send_reply(self.api, self._session, reply, openid=to,
                                template_id=self.config.reply_template_id,
                                number_key=self.config.reply_template_number_key,
                                text_key=self.config.reply_template_text_key)

    # -- authentication -----------------------------------------------------------------------

    def _check(self, request: web.Request) -> tuple[str, str, str]:
        """Verify ``signature`` and the timestamp's age; returns (timestamp, nonce, signature)."""
        q = request.query
        timestamp, nonce, signature = q.get("timestamp"), q.get("nonce"), q.get("signature")
        if not timestamp or not nonce or not signature:
            raise Forbidden("signature, timestamp and nonce are required")
        if not check_signature(self.token, timestamp, nonce, signature):
            raise Forbidden("the signature does not match")
        # ASCII digits of a sane length: int("1" + "0" * 400) would overflow the float below.
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise Forbidden("timestamp must be Unix seconds")
        if abs(time.time() - int(timestamp)) > self.tolerance:
            raise Forbidden("the timestamp is too old: a replayed request")
        return timestamp, nonce, signature

    async def _first_use(self, signed: tuple[str, str, str], content: bytes) -> None:
        """Refuse a signed query that was used before with other content (durably).

        Plain mode signs only token, timestamp and nonce, never the body: a captured query (a
        push, or the GET verification) could carry any body. Each signed query is recorded
        in the store for as long as its timestamp is accepted, together with a digest of what
        it carried (method and body). The same query with the same content again is WeChat
        retrying, answered as before; with other content it is a forgery (403).
        """
        timestamp, nonce, signature = signed
        query = hashlib.sha256(f"{timestamp}\0{nonce}\0{signature}".encode(
            "utf-8", "surrogateescape")).hexdigest()
        pair = hashlib.sha256(query.encode() + b"\0" + content).hexdigest()
        # Valid until the timestamp leaves the window on the far side, not just `tolerance`.
        ttl = max(int(timestamp) + self.tolerance - time.time(), 0.0) + 1.0
        # The pair first: two racing deliveries of one retry both pass; two different bodies
        # for one query cannot (only one of them claims the query).
        if not await self.intake.first_use("wechat:signed-content", pair, ttl=ttl):
            return  # exactly this request before: a retry
        if not await self.intake.first_use("wechat:signed-query", query, ttl=ttl):
            raise Forbidden("this signed query was already used for another request: a "
                            "replay; WeChat signs every push afresh")

    # -- URL verification ---------------------------------------------------------------------

    async def handle_verify(self, request: web.Request) -> web.Response:
        """Server configuration check: answer ``echostr`` (decrypted, when WeCom-style)."""
        signed = self._check(request)
        timestamp, nonce, _ = signed
        echostr = request.query.get("echostr")
        if not echostr:
            raise RejectedInput("echostr is missing", field="echostr")
        # Recorded like a push, so this query can never be reused to sign a POST body.
        await self._first_use(signed, b"GET\0" + echostr.encode("utf-8", "surrogateescape"))
        msg_signature = request.query.get("msg_signature")
        if msg_signature and self.crypto is not None:
            plain = self.crypto.decrypt(msg_signature, timestamp, nonce, echostr)
            return web.Response(body=plain, content_type="text/plain")
        return web.Response(text=echostr, content_type="text/plain")

    # -- pushes -------------------------------------------------------------------------------

    async def handle_push(self, request: web.Request) -> web.Response:
        """A message or event; the answer is the passive reply (encrypted in safe mode)."""
        signed = self._check(request)
        timestamp, nonce, _ = signed
        body = await request.read()
        if len(body) > self.config.max_body_bytes:
            raise TooLarge(f"the push exceeds {self.config.max_body_bytes} bytes")
        encrypted = request.query.get("encrypt_type", "").lower() == "aes"
        if encrypted and self.crypto is None:
            raise Forbidden("an encrypted push, but no EncodingAESKey is configured")
        if not encrypted and self.config.mode == "safe":
            raise Forbidden("safe mode: unencrypted pushes are refused")
        await self._first_use(signed, b"POST\0" + body)
        fields = parse_push(body, self.config.max_body_bytes)
        if encrypted:
            assert self.crypto is not None
            ciphertext = fields.get("Encrypt")
            if not ciphertext:
                raise RejectedInput("Encrypt is missing", field="Encrypt")
            plain = self.crypto.decrypt(request.query.get("msg_signature", ""), timestamp,
                                        nonce, ciphertext)
            fields = parse_push(plain, self.config.max_body_bytes)
        push = to_push(fields)
        reply = await self._reply_to(push)
        if reply is None:
            return web.Response(body=_SUCCESS, content_type="text/plain")
        if encrypted:
            assert self.crypto is not None
            reply = self.crypto.render_encrypted_reply(reply, nonce, str(int(time.time())))
        return web.Response(body=reply, content_type="application/xml")

    async def _reply_to(self, push: WeChatPush) -> bytes | None:
        if push.msg_type == "event":
            if (push.event or "").lower() == "subscribe":
                return render_text_reply(push.from_user, push.to_user,
                                         self.config.welcome_text or _WELCOME, int(time.time()))
            return None  # menus, scans, location reports, unsubscribes: nothing to register
        # WeChat's own dedup key for messages; events without MsgId are not submitted.
        msg_key = push.msg_id or f"{push.from_user}:{push.create_time}"
        key = (push.to_user, msg_key)
        self._forget_old_replies()
        entry = self._replies.get(key)
        if entry is None:
            task = asyncio.create_task(self._submit(push, msg_key))
            task.add_done_callback(partial(self._drop_if_failed, key))
            entry = (time.monotonic(), task)
            self._replies[key] = entry
        try:
            # Shielded: a slow commit finishes even when this answer gives up waiting.
            return await asyncio.wait_for(asyncio.shield(entry[1]), self.config.reply_deadline)
        except TimeoutError:
            self.ctx.log.warning("message %s took longer than the reply deadline; answered "
                                 "without an acknowledgement", msg_key)
            return None

    def _drop_if_failed(self, key: tuple[str, str], task: asyncio.Task[bytes | None]) -> None:
        # A refused or failed submission is not cached: WeChat's retry tries again.
        if task.cancelled() or task.exception() is not None:
            entry = self._replies.get(key)
            if entry is not None and entry[1] is task:
                del self._replies[key]

    def _forget_old_replies(self) -> None:
        now = time.monotonic()
        while self._replies:
            started, task = next(iter(self._replies.values()))
            if (now - started < _REPLY_TTL or not task.done()) and len(
                    self._replies) < _MAX_REPLIES:
                break
            self._replies.popitem(last=False)

    async def _submit(self, push: WeChatPush, msg_key: str) -> bytes | None:
        not_kept: list[FileNotKept] = []
        text, attachments, metadata = await self._content(push, not_kept)
        found = self.intake.find_ticket_numbers(text)
        message = InboundMessage(
            channel=self.kind, provider_message_id=msg_key, delivery_scope=push.to_user,
            received_at=self.ctx.clock(),
            contact=Contact(chat_ids={"wechat": push.from_user}, verified_by="wechat-signature"),
            text=text, attachments=attachments, files_not_kept=not_kept,
            thread=ThreadHints(ticket_number=found[0] if found else None),
            conversational=True,
            metadata={"wechat.msg_type": push.msg_type,
                      "wechat.create_time": str(push.create_time), **metadata},
        )
        receipt = await self.intake.submit(message)
        ack = receipt.acknowledgement
        if ack is None or receipt.outcome not in _ANSWERED:
            return None
        return render_text_reply(push.from_user, push.to_user, ack.text, int(time.time()))

    async def _content(self, push: WeChatPush, not_kept: list[FileNotKept]
                       ) -> tuple[str, list[Attachment], dict[str, str]]:
        """Text, attachments and metadata of each message type WeChat pushes; images that could
        not be kept are added to ``not_kept``."""
        meta: dict[str, str] = {}
        for name in ("media_id", "thumb_media_id", "format", "pic_url", "msg_data_id", "idx"):
            value = getattr(push, name)
            if value:
                meta[f"wechat.{name}"] = value[:500]
        attachments: list[Attachment] = []
        kind = push.msg_type
        if kind == "text":
            text = push.content or ""
        elif kind == "image":
            image = await self._fetch_image(push.pic_url, push.media_id, meta, not_kept)
            attachments = [image] if image else []
            text = "" if attachments else "[image]"
        elif kind == "voice":
            # Recognition is WeChat's own speech-to-text, when the account enabled it.
            text = (push.recognition or "").strip() or "[voice message]"
        elif kind == "location":
            text = f"[location] {push.label or ''} ({push.location_x}, {push.location_y})"
        elif kind == "link":
            text = "\n".join(x for x in (push.title, push.description, push.url) if x)
        else:
            # video, shortvideo, file, and types WeChat adds later: recorded, with their ids.
            text = f"[{kind}]"
            for name, value in push.extra.items():
                meta.setdefault(f"wechat.{name}", value[:500])
        return text or ("" if attachments else f"[{kind}]"), attachments, meta

    async def _fetch_image(self, url: str | None, media_id: str | None,
                           meta: dict[str, str], not_kept: list[FileNotKept]
                           ) -> Attachment | None:
        if not url or not self.config.fetch_images or self._session is None:
            return None
        host = (urlsplit(url).hostname or "").lower()
        if urlsplit(url).scheme not in ("http", "https") or not any(
                host == h or host.endswith("." + h) for h in self.config.image_hosts):
            meta["wechat.image"] = "not fetched: host not in image_hosts"
            return None
        limit = min(self.config.max_image_bytes, self.intake.limits.max_attachment_bytes)
        try:
            async with self._session.get(url, headers=IDENTITY, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise MediaRefused(f"HTTP {resp.status}")
                # Whole or not at all: a body past the limit or cut short is never stored.
                data = await read_limited(resp, limit)
                ctype = resp.headers.get("Content-Type", "image/jpeg").split(";")[0].strip()
        except (aiohttp.ClientError, TimeoutError, MediaRefused) as exc:
            # The reply must leave within 5 s: an image that does not come is only recorded.
            reason = exc.reason if isinstance(exc, MediaRefused) else type(exc).__name__
            meta["wechat.image"] = f"not fetched: {reason}"
            # Agents can still fetch it by media_id for a few days; the customer is told only
            # when it can never come (too large), not for a passing network failure.
            if isinstance(exc, MediaRefused) and exc.kind == "too_large":
                not_kept.append(file_not_kept(f"image-{media_id or 'wechat'}", exc))
            return None
        if not ctype.startswith("image/"):
            ctype = "image/jpeg"
        name = f"image-{media_id or 'wechat'}.{ctype.split('/')[1][:5]}"
        return await self.intake.store_attachment(data, name=name, content_type=ctype)

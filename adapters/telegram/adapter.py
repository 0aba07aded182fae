"""Telegram bot: webhook (secret token) or long polling; acknowledgements as replies in the chat."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
import phonenumbers
from aiohttp import web
from telegram import Bot, ReplyParameters
from telegram.error import (
    BadRequest,
    Conflict,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.error import Forbidden as TelegramForbidden
from telegram.request import HTTPXRequest

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
    Outbox,
    OutgoingReply,
    file_not_kept,
    read_limited,
    resolve_secret,
)
from gateway.plugin.openapi import Operation
from intake_adapters.telegram.openapi import telegram_operations
from intake_adapters.telegram.wire import TgFile, TgMessage, TgUpdate, _decode_update
from intake_schemas import (
    Acknowledgement,
    Attachment,
    Contact,
    FileNotKept,
    InboundMessage,
    ThreadHints,
)

_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_TOKEN = re.compile(r"^(\d+):[A-Za-z0-9_-]+$")
_MAX_UPDATE = 1_048_576
_WELCOME_COMMANDS = frozenset({"/start", "/help"})
_TG_MAX = 4096
"""Characters of one Bot API sendMessage text."""
_WELCOME = {
    "zh": "您好！请直接发送消息描述您的问题（可附图片或文件），我们会为您登记工单，"
          "并告知工单编号和答复时间。",
    "en": "Hello! Describe your question in a message (photos and files are welcome). We will "
          "register it and tell you the ticket number and when to expect an answer.",
}


class TelegramConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.telegram]``."""

    enabled: bool = False
    token_env: str | None = None
    """Environment variable holding the bot token from @BotFather."""
    token_file: str | None = None
    mode: Literal["webhook", "polling"] = "webhook"
    """``webhook`` needs a public HTTPS URL; ``polling`` works from any machine."""
    secret_token_env: str | None = None
    """Webhook mode: the ``secret_token`` given to setWebhook, checked on every delivery."""
    secret_token_file: str | None = None
    path: str = "/telegram/webhook"
    webhook_url: str | None = None
    """Registered with setWebhook at start; default ``<public_url><path>`` when that is HTTPS."""
    register_webhook: bool = True
    api_base_url: str = "https://api.telegram.org"
    """Bot API server (a local Bot API server, or a fake in tests)."""
    poll_timeout: int = 30
    """Polling mode: seconds one getUpdates call waits for updates."""
    max_file_bytes: int = 20_971_520
    """Files above this are recorded, not downloaded (the cloud Bot API stops at 20 MB); a
    download that grows past it while streaming is refused, never cut and stored."""
    file_timeout: float = 60.0
    """Seconds for downloading one file."""
    chat_types: list[str] = msgspec.field(default_factory=lambda: ["private"])
    """Chats whose messages are taken; messages in groups are ignored by default."""
    welcome_text: str | None = None
    """Answer to /start and /help; default a short zh/en invitation by the user's language."""


_ALLOWED_UPDATES = ["message", "edited_message"]


class TelegramAdapter(AdapterBase):
    """Messages to the bot become tickets; the acknowledgement is a reply in the same chat."""

    kind: ClassVar[str] = "telegram"
    Config: ClassVar[type[msgspec.Struct]] = TelegramConfig
    ack_channels: ClassVar[tuple[str, ...]] = ("telegram",)
    reply_channels: ClassVar[tuple[str, ...]] = ("telegram",)

    config: TelegramConfig
    intake: Intake
    ctx: AdapterContext

    def __init__(self, config: TelegramConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        token = resolve_secret(config.token_env, config.token_file,
                               key="adapters.telegram.token")
        match = _TOKEN.match(token or "")
        if token is None or match is None:
            raise ConfigError("adapters.telegram: set token_env (or token_file) to the bot "
                              "token from @BotFather, like 123456789:AA…")
        self.token = token
        self.bot_id = match.group(1)
        self.secret: str | None = None
        if config.mode == "webhook":
            self.secret = resolve_secret(config.secret_token_env, config.secret_token_file,
                                         key="adapters.telegram.secret_token")
            if self.secret is None or not _SECRET.match(self.secret):
                raise ConfigError("adapters.telegram: webhook mode needs secret_token_env (or "
                                  "_file): 1-256 characters A-Z, a-z, 0-9, _ and -; without "
                                  "it anyone could post updates")
        api = config.api_base_url.rstrip("/")
        if urlsplit(api).scheme not in ("http", "https"):
            raise ConfigError("adapters.telegram.api_base_url: expected an http(s) URL")
        # Files are fetched by us, below this URL only: never through PTB's File, which reads
        # a file_path naming a local file from the disk (/etc/passwd, our own database).
        self.file_base = f"{api}/file/bot{token}/"
        self._session: aiohttp.ClientSession | None = None
        # Long polls hold the request for poll_timeout seconds: that connection reads longer.
        self.bot = Bot(token, base_url=f"{api}/bot", base_file_url=f"{api}/file/bot",
                       request=HTTPXRequest(connection_pool_size=16),
                       get_updates_request=HTTPXRequest(
                           connection_pool_size=1, read_timeout=config.poll_timeout + 10))
        self.path = "/" + config.path.strip("/")
        self._ready = asyncio.Lock()
        self._initialized = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        if self.config.mode != "webhook":
            return []
        return [web.post(self.path, self.handle_webhook)]

    @classmethod
    def http_operations(cls, config: TelegramConfig) -> Sequence[Operation]:
        return telegram_operations(config.path, config.mode)

    async def start(self) -> None:
        """Register the webhook or start polling, in the background: Telegram being down must
        not keep the gateway from starting."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.file_timeout))
        if self.config.mode == "polling":
            # One replica at a time polls (Telegram answers a second getUpdates with 409).
            self._poller = asyncio.create_task(
                self.ctx.exclusive.run("telegram:polling", self._poll), name="telegram-poll")
        elif self.config.register_webhook and self._webhook_url():
            self._spawn(self._register_webhook())

    async def stop(self) -> None:
        """Stop polling and background sends; close the Bot API connections."""
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._initialized:
            with contextlib.suppress(TelegramError):
                await self.bot.shutdown()
            self._initialized = False

    async def _ensure_bot(self) -> Bot:
        # Initialized on first use, so the webhook route works while the Bot API is unreachable.
        async with self._ready:
            if not self._initialized:
                await self.bot.initialize()
                self._initialized = True
        return self.bot

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _webhook_url(self) -> str | None:
        if self.config.webhook_url:
            return self.config.webhook_url
        base = self.ctx.public_url.rstrip("/")
        return f"{base}{self.path}" if urlsplit(base).scheme == "https" else None

    async def _register_webhook(self) -> None:
        delay = 1.0
        while True:
            try:
                bot = await self._ensure_bot()
                await bot.set_webhook(url=self._webhook_url() or "", secret_token=self.secret,
                                      allowed_updates=_ALLOWED_UPDATES)
                self.ctx.log.info("webhook registered")
                return
            except BadRequest as exc:  # a NetworkError in PTB's tree, but final
                self.ctx.log.error("setWebhook refused: %s", exc.message)
                return
            except (NetworkError, RetryAfter) as exc:
                self.ctx.log.warning("setWebhook failed (%s); retrying in %.0f s",
                                     type(exc).__name__, delay)
            except TelegramError as exc:
                self.ctx.log.error("setWebhook refused: %s", exc)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)

    # -- webhook ------------------------------------------------------------------------------

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """One update from Telegram, authenticated by ``X-Telegram-Bot-Api-Secret-Token``."""
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        assert self.secret is not None
        # Undecodable header bytes arrive as surrogates, which cannot be encoded: never the
        # secret (A-Z, a-z, 0-9, _ and -), so refused before the comparison.
        if (not given or not given.isascii()
                or not hmac.compare_digest(given.encode("ascii"), self.secret.encode())):
            raise Forbidden("X-Telegram-Bot-Api-Secret-Token is missing or wrong")
        body = await request.read()
        if len(body) > _MAX_UPDATE:
            raise TooLarge(f"an update is never larger than {_MAX_UPDATE} bytes")
        try:
            update = _decode_update(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RejectedInput(f"not a Telegram update: {exc}") from None
        await self.handle_update(update)
        return web.Response(status=200)

    # -- long polling -------------------------------------------------------------------------

    async def _poll(self) -> None:
        """getUpdates in a loop; an update is confirmed only once it is durable."""
        offset: int | None = None
        delay = 1.0
        while True:
            try:
                bot = await self._ensure_bot()
                if offset is None:
                    # Polling and a webhook exclude each other (409 Conflict otherwise).
                    await bot.delete_webhook()
                    offset = 0
                kwargs: dict[str, Any] = {"timeout": self.config.poll_timeout,
                                          "allowed_updates": _ALLOWED_UPDATES}
                if offset:
                    kwargs["offset"] = offset
                # Raw dicts, parsed one by one below: PTB's get_updates parses the batch as a
                # whole, so one update it cannot build would stall polling for good. Bot API
                # method names are case-insensitive; the lower-case name keeps PTB from
                # suggesting get_updates.
                raw = await bot.do_api_request("getupdates", api_kwargs=kwargs,
                                               read_timeout=self.config.poll_timeout + 10)
                delay = 1.0
            except RetryAfter as exc:
                await asyncio.sleep(_seconds(exc.retry_after))
                continue
            except (InvalidToken, TelegramForbidden, Conflict, NetworkError) as exc:
                # TimedOut is a NetworkError; all of these may pass (or need the operator).
                self.ctx.log.warning("getUpdates failed (%s); retrying in %.0f s",
                                     type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            for item in raw if isinstance(raw, list) else []:
                update_id = item.get("update_id") if isinstance(item, dict) else None
                if not isinstance(update_id, int):
                    continue
                try:
                    await self.handle_update(msgspec.convert(item, TgUpdate))
                except msgspec.ValidationError:
                    self.ctx.log.warning("update %s is not understood; skipped", update_id)
                except RejectedInput as exc:
                    self.ctx.log.warning("update %s refused: %s", update_id, exc.reason)
                except TransientError:
                    # Not confirmed: getUpdates serves it again after the pause.
                    self.ctx.log.warning("update %s not stored yet; retrying", update_id)
                    await asyncio.sleep(delay)
                    break
                offset = update_id + 1

    # -- turning updates into messages --------------------------------------------------------

    async def handle_update(self, update: TgUpdate) -> None:
        """Submit the message an update carries; other updates are acknowledged and dropped."""
        msg = update.message or update.edited_message
        if msg is None or msg.from_ is None or msg.from_.is_bot:
            return
        if msg.chat.type not in self.config.chat_types:
            return
        sender = msg.from_
        edited = update.message is None
        text = (msg.text or msg.caption or "").strip()
        command = text.split(maxsplit=1)[0].split("@")[0].lower() if text else ""
        if not edited and command in _WELCOME_COMMANDS:
            self._spawn(self._welcome(msg.chat.id, sender.language_code))
            return
        phone: str | None = None
        extras: list[str] = []
        if msg.contact is not None:
            shared = _phone(msg.contact.phone_number)
            # Only the customer's own number (the "share my phone" button) joins their
            # identity; someone else's contact is just content.
            if shared and msg.contact.user_id == sender.id:
                phone = shared
            name = " ".join(x for x in (msg.contact.first_name, msg.contact.last_name) if x)
            extras.append(f"[contact] {name} {shared or msg.contact.phone_number}".strip())
        if msg.location is not None:
            extras.append(f"[location] {msg.location.latitude}, {msg.location.longitude}")
        attachments, notes, not_kept = await self._files(msg)
        text = "\n".join(x for x in (text, *extras) if x)
        if not text and not attachments:
            if not notes:
                return  # a service message (joined, pinned, web-app access...): nothing to do
            text = "[" + ", ".join(sorted({k.split(".")[1] for k in notes})) + "]"
        key = f"{update.update_id}/{msg.chat.id}/{msg.message_id}"
        if edited:
            key += f"/edit/{msg.edit_date or 0}"
        in_reply_to = None
        replied = msg.reply_to_message
        if replied and replied.from_ and str(replied.from_.id) == self.bot_id:
            in_reply_to = f"telegram:{msg.chat.id}:{replied.message_id}"
        found = self.intake.find_ticket_numbers(text)
        metadata = {"telegram.chat_id": str(msg.chat.id),
                    "telegram.message_id": str(msg.message_id),
                    "telegram.date": str(msg.date), **notes}
        if edited:
            metadata["telegram.edited"] = "true"
        sender_name = " ".join(
            x for x in (sender.first_name, sender.last_name) if x) or sender.username
        message = InboundMessage(
            channel=self.kind, provider_message_id=key, delivery_scope=self.bot_id,
            received_at=self.ctx.clock(),
            contact=Contact(name=sender_name, phone=phone, chat_ids={"telegram": str(sender.id)},
                            verified_by="telegram"),
            text=text, attachments=attachments, files_not_kept=not_kept,
            thread=ThreadHints(in_reply_to=in_reply_to,
                               ticket_number=found[0] if found else None),
            locale=sender.language_code, conversational=True, metadata=metadata,
        )
        await self.intake.submit(message, reply=Outbox(
            channel="telegram", to=str(msg.chat.id), reply_to=str(msg.message_id)))

    async def _files(self, msg: TgMessage
                     ) -> tuple[list[Attachment], dict[str, str], list[FileNotKept]]:
        wanted: list[tuple[str, TgFile, str, str]] = []
        if msg.photo:
            # Telegram sends every size; the largest is the photo the customer took.
            best = max(msg.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
            wanted.append(("photo", best, f"photo-{best.file_unique_id or 'telegram'}.jpg",
                           "image/jpeg"))
        for kind, default_name, default_type in (
                ("document", "document", "application/octet-stream"),
                ("voice", "voice.ogg", "audio/ogg"),
                ("audio", "audio", "audio/mpeg"),
                ("video", "video.mp4", "video/mp4"),
                ("video_note", "video-note.mp4", "video/mp4")):
            f: TgFile | None = getattr(msg, kind)
            if f is not None:
                wanted.append((kind, f, f.file_name or default_name,
                               f.mime_type or default_type))
        attachments: list[Attachment] = []
        notes: dict[str, str] = {}
        not_kept: list[FileNotKept] = []
        for kind, f, name, ctype in wanted:
            try:
                if f.file_size is not None and f.file_size > self.config.max_file_bytes:
                    raise _FileSkipped(f"larger than {self.config.max_file_bytes} bytes",
                                       kind="too_large", limit=self.config.max_file_bytes)
                data = await self._download(f.file_id)
                attachments.append(await self.intake.store_attachment(
                    data, name=name, content_type=ctype))
            except (_FileSkipped, TooLarge) as exc:
                reason = exc.reason if isinstance(exc, TooLarge) else str(exc)
                notes[f"telegram.{kind}"] = f"not stored: {reason}"
                notes[f"telegram.{kind}.file_id"] = f.file_id[:200]
                not_kept.append(file_not_kept(name, exc))
        return attachments, notes, not_kept

    async def _download(self, file_id: str) -> bytes:
        """getFile, then the file itself, checked like any input from outside.

        The Bot API's ``file_path`` must be a plain relative path (no scheme, no leading ``/``,
        no ``..``); the body must be whole and within ``max_file_bytes``.
        """
        limit = self.config.max_file_bytes
        try:
            bot = await self._ensure_bot()
            # The raw answer: PTB's get_file would keep a file_path naming a local file as is.
            info = await bot.do_api_request("getfile", api_kwargs={"file_id": file_id})
        except BadRequest as exc:
            raise _FileSkipped(f"Telegram refused the file: {exc.message}") from exc
        except TelegramError as exc:
            raise _FileSkipped(f"download failed: {type(exc).__name__}") from exc
        path = info.get("file_path") if isinstance(info, dict) else None
        size = info.get("file_size") if isinstance(info, dict) else None
        if not isinstance(path, str) or not safe_file_path(path):
            raise _FileSkipped("the Bot API named a file_path that is not a relative path")
        if isinstance(size, int) and size > limit:
            raise _FileSkipped(f"larger than {limit} bytes", kind="too_large", limit=limit)
        if self._session is None:
            raise _FileSkipped("the adapter is stopping")
        try:
            async with self._session.get(self.file_base + quote(path), headers=IDENTITY,
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    raise _FileSkipped(f"the file answered HTTP {resp.status}")
                return await read_limited(resp, limit)
        except MediaRefused as exc:
            raise _FileSkipped(exc.reason, kind=exc.kind, limit=exc.limit) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception's text would carry the URL, and the URL carries the bot token.
            raise _FileSkipped(f"download failed: {type(exc).__name__}") from None

    async def _welcome(self, chat_id: int, language: str | None) -> None:
        text = self.config.welcome_text or _WELCOME[
            "zh" if (language or self.ctx.default_locale).lower().startswith("zh") else "en"]
        try:
            bot = await self._ensure_bot()
            await bot.send_message(chat_id=chat_id, text=text)
        except TelegramError as exc:
            # A courtesy only: nothing to retry, and the customer can simply write.
            self.ctx.log.warning("welcome not sent: %s", type(exc).__name__)

    # -- acknowledgements ---------------------------------------------------------------------

    async def send_ack(self, ack: Acknowledgement, *, to: str, reply_to: str | None) -> str | None:
        """Reply to the customer's message in its chat; the id names our reply for threading."""
        return await self._send_text(ack.text, to=to, reply_to=reply_to)

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """A downstream reply in the customer's chat, any time (Telegram has no window), as
        a reply to their latest message; long texts go in parts of Telegram's 4096."""
        text = reply.text
        if reply.files:
            text += "\n\n" + "\n".join(f"[{f.name}]" for f in reply.files)
        parts = [text[i:i + _TG_MAX] for i in range(0, len(text), _TG_MAX)] or [""]
        first = None
        for part in parts:
            sent = await self._send_text(part, to=to, reply_to=reply_to if first is None
                                         else None)
            first = first or sent
        return first

    async def _send_text(self, text: str, *, to: str, reply_to: str | None) -> str:
        try:
            chat_id = int(to)
        except ValueError:
            raise PermanentError("the Telegram chat id is not a number") from None
        reply = None
        if reply_to and reply_to.isdigit():
            reply = ReplyParameters(message_id=int(reply_to), allow_sending_without_reply=True)
        try:
            bot = await self._ensure_bot()
            sent = await bot.send_message(chat_id=chat_id, text=text,
                                          reply_parameters=reply)
        except RetryAfter as exc:
            raise TransientError(f"Telegram asks to wait {_seconds(exc.retry_after):.0f} s"
                                 ) from exc
        except BadRequest as exc:  # a NetworkError in PTB's tree, but final
            raise PermanentError(f"Telegram refused the message: {exc.message}") from exc
        except NetworkError as exc:  # TimedOut included
            raise TransientError(f"Telegram unreachable: {type(exc).__name__}") from exc
        except TelegramError as exc:
            # The bot was blocked, the chat is gone, the token was revoked...
            raise PermanentError(f"Telegram refused the message: {exc.message}") from exc
        return f"telegram:{sent.chat.id}:{sent.message_id}"


class _FileSkipped(MediaRefused):
    """A file recorded by id instead of stored."""


_FILE_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")


def safe_file_path(path: str) -> bool:
    """Whether a Bot API ``file_path`` is a plain relative path below the file URL.

    The cloud Bot API answers ``photos/file_1.jpg``; anything absolute (``/etc/passwd``, a
    local Bot API server's disk path), with a scheme, a backslash, a ``..`` segment or an
    empty one is refused rather than interpreted.
    """
    if not 0 < len(path) <= 512 or not _FILE_PATH.match(path):
        return False
    return all(part not in (".", "..") for part in path.split("/"))


def _seconds(value: Any) -> float:
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)


def _phone(text: str) -> str | None:
    """Telegram shares numbers with or without ``+``; always with the country code."""
    digits = text.strip()
    if not digits.startswith("+"):
        digits = "+" + digits
    try:
        number = phonenumbers.parse(digits, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

"""A local Telegram Bot API: the methods an intake bot uses, and file downloads.

Serves ``/bot<token>/<method>`` (GET query, form, multipart or JSON bodies, method names in any
case, like the real API) and ``/file/bot<token>/<file_path>``. Point python-telegram-bot at it
with ``Bot(token, base_url=f"{fake.url}/bot", base_file_url=f"{fake.url}/file/bot")``.

Implemented: getMe, sendMessage, getFile, getUpdates (long polling with offset, limit, timeout
and allowed_updates), setWebhook, deleteWebhook, getWebhookInfo, and a few that only answer
``true`` (sendChatAction, answerCallbackQuery, setMyCommands). Errors have the real shape
``{"ok": false, "error_code": N, "description": ...}`` and status: 401 for a wrong token, 400 for
bad parameters, 409 for getUpdates while a webhook is set, 429 with ``retry_after`` via
:meth:`FakeTelegram.fail_next`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from gateway.testing.fakes import Delivery, FakeServer, serve_body

__all__ = ["ApiCall", "FakeTelegram", "FileDownload", "SentMessage"]

_MAX_TEXT = 4096
_MAX_DOWNLOAD = 20 * 1024 * 1024  # the cloud Bot API serves files up to 20 MB
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_ANSWER_TRUE = frozenset({"sendchataction", "answercallbackquery", "setmycommands", "close"})


class ApiCall(msgspec.Struct, frozen=True, kw_only=True):
    """One Bot API request: the method as written in the URL, and its decoded parameters."""

    method: str
    params: dict[str, Any]


class SentMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A sendMessage the fake accepted; ``message`` is the Message object it answered with."""

    chat_id: int | str
    text: str
    reply_to_message_id: int | None
    parse_mode: str | None
    message: dict[str, Any]
    params: dict[str, Any]


class FileDownload(msgspec.Struct, frozen=True, kw_only=True):
    """One request under ``/file/bot<token>/``; ``status`` is what the fake answered."""

    file_path: str
    status: int


class _Failure(msgspec.Struct, frozen=True):
    error_code: int
    description: str
    retry_after: int | None


class _BotApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def _error_response(
    code: int, description: str, parameters: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


def _json_param(value: Any) -> Any:
    # Form bodies carry objects (reply_parameters, reply_markup) as JSON text.
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise _BotApiError(400, f"Bad Request: invalid {name} specified") from None


def _bool_param(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


class FakeTelegram(FakeServer):
    """A Telegram Bot API for one bot ``token``, recording every call.

    ``push_update`` queues an incoming update for getUpdates; ``deliver`` posts one to the
    webhook set with setWebhook, as Telegram does (with the secret token header). ``add_file``
    registers a file for getFile and download. ``calls``, ``sent`` and ``downloads`` record what
    the client did.
    """

    def __init__(self, token: str, *, username: str = "intake_test_bot") -> None:
        super().__init__()
        self.token = token
        head = token.split(":", 1)[0]
        self.bot_user: dict[str, Any] = {
            "id": int(head) if head.isdigit() else 123456789,
            "is_bot": True,
            "first_name": "Intake Test Bot",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[ApiCall] = []
        self.sent: list[SentMessage] = []
        self.downloads: list[FileDownload] = []
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.allowed_updates: list[str] | None = None
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._arrived = asyncio.Event()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._file_options: dict[str, tuple[Delivery, int | None]] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._next_message_id = 1000

    # -- what tests call ---------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an incoming update; returns its ``update_id`` (assigned when missing)."""
        update = dict(update)
        if "update_id" not in update:
            update["update_id"] = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        self._updates.append(update)
        # Wake every waiting long poll, then arm a fresh event for the next ones.
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()
        return int(update["update_id"])

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by a getUpdates offset."""
        return list(self._updates)

    def add_file(self, file_id: str, data: bytes, file_path: str | None = None, *,
                 delivery: Delivery = "whole", file_size: int | None = None) -> str:
        """Register a file for getFile and download; returns its ``file_path``.

        A hostile Bot API: ``file_path`` may be anything (``/etc/passwd``, ``../x``), getFile
        answers it as given; ``file_size`` overrides the size getFile reports; ``delivery``
        serves the download without a declared size or cut short.
        """
        path = file_path or f"documents/file_{len(self._files)}.bin"
        self._files[file_id] = (data, path)
        self._file_options[file_id] = (delivery, file_size)
        return path

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        description: str | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        """Make the next call of ``method`` fail (e.g. 429 with ``retry_after``, or 500)."""
        if error_code == 429 and retry_after is None:
            retry_after = 1
        text = description or (
            f"Too Many Requests: retry after {retry_after}"
            if error_code == 429
            else "Internal Server Error"
        )
        self._failures.setdefault(method.lower(), []).append(
            _Failure(error_code, text, retry_after)
        )

    async def deliver(
        self, update: dict[str, Any], *, url: str | None = None, secret_token: str | None = None
    ) -> tuple[int, bytes]:
        """POST one update to the webhook the way Telegram does; returns (status, body).

        ``url`` and ``secret_token`` default to what setWebhook recorded; a ``secret_token`` given
        here overrides it (to test a wrong one). Telegram would retry a non-2xx answer later.
        """
        target = url or self.webhook_url
        if not target:
            raise RuntimeError("no webhook set: call setWebhook first or pass url=")
        if "update_id" not in update:
            update = {**update, "update_id": self._next_update_id}
            self._next_update_id += 1
        headers = {"Content-Type": "application/json"}
        secret = secret_token if secret_token is not None else self.webhook_secret
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        async with (
            aiohttp.ClientSession() as session,
            session.post(target, data=json.dumps(update).encode(), headers=headers) as response,
        ):
            return response.status, await response.read()

    # -- the server --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Bot API and file routes."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._download)
        return app

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method != "POST" or not request.body_exists:
            return params
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.read())
            except ValueError:
                raise _BotApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(body, dict):
                raise _BotApiError(400, "Bad Request: can't parse JSON object")
            params.update(body)
        else:
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, str):
                    params[name] = value
                elif isinstance(value, bytes | bytearray):
                    params[name] = bytes(value)
                else:
                    params[name] = value.file.read()
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error_response(401, "Unauthorized")
        method = request.match_info["method"]
        try:
            params = await self._params(request)
            self.calls.append(ApiCall(method=method, params=params))
            failures = self._failures.get(method.lower())
            if failures:
                failure = failures.pop(0)
                parameters = {"retry_after": failure.retry_after} if failure.retry_after else None
                return _error_response(failure.error_code, failure.description, parameters)
            result = await self._dispatch(method.lower(), params)
        except _BotApiError as exc:
            return _error_response(exc.code, exc.description, exc.parameters)
        return web.json_response({"ok": True, "result": result})

    async def _dispatch(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getme":
            return self.bot_user
        if method == "sendmessage":
            return self._send_message(params)
        if method == "getfile":
            return self._get_file(params)
        if method == "getupdates":
            return await self._get_updates(params)
        if method == "setwebhook":
            return self._set_webhook(params)
        if method == "deletewebhook":
            self.webhook_url = self.webhook_secret = None
            if _bool_param(params, "drop_pending_updates"):
                self._updates.clear()
            return True
        if method == "getwebhookinfo":
            return {
                "url": self.webhook_url or "",
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
                "max_connections": 40,
            }
        if method in _ANSWER_TRUE:
            return True
        raise _BotApiError(404, "Not Found")

    def _chat(self, chat_id: Any) -> tuple[int | str, dict[str, Any]]:
        text = str(chat_id).strip()
        if re.fullmatch(r"-?\d+", text):
            number = int(text)
            if number > 0:
                return number, {"id": number, "type": "private", "first_name": "Customer"}
            kind = "supergroup" if text.startswith("-100") else "group"
            return number, {"id": number, "type": kind, "title": "Test group"}
        if text.startswith("@") and len(text) > 1:
            # Channels are addressed by username; their numeric id is stable per name here.
            number = -1000000000000 - sum(text.encode())
            return text, {"id": number, "type": "channel", "title": text[1:], "username": text[1:]}
        raise _BotApiError(400, "Bad Request: chat not found")

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("chat_id") in (None, ""):
            raise _BotApiError(400, "Bad Request: chat_id is empty")
        chat_id, chat = self._chat(params["chat_id"])
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _BotApiError(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > _MAX_TEXT:
            raise _BotApiError(400, "Bad Request: message is too long")
        reply_to: int | None = None
        reply_parameters = _json_param(params.get("reply_parameters"))
        if isinstance(reply_parameters, dict) and "message_id" in reply_parameters:
            reply_to = int(reply_parameters["message_id"])
        elif params.get("reply_to_message_id") not in (None, ""):
            reply_to = _int_param(params, "reply_to_message_id", 0)
        message: dict[str, Any] = {
            "message_id": self._next_message_id,
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        self._next_message_id += 1
        parse_mode = params.get("parse_mode") or None
        self.sent.append(
            SentMessage(
                chat_id=chat_id,
                text=text,
                reply_to_message_id=reply_to,
                parse_mode=parse_mode,
                message=message,
                params=params,
            )
        )
        return message

    def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params.get("file_id") or "")
        if file_id not in self._files:
            raise _BotApiError(400, "Bad Request: invalid file_id")
        data, path = self._files[file_id]
        if len(data) > _MAX_DOWNLOAD:
            raise _BotApiError(400, "Bad Request: file is too big")
        _, size = self._file_options.get(file_id, ("whole", None))
        answer: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": "u" + hashlib.sha1(file_id.encode()).hexdigest()[:15],
            "file_size": len(data) if size is None else size,
            "file_path": path,
        }
        if size == -1:
            del answer["file_size"]  # the field is optional in the Bot API
        return answer

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise _BotApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int_param(params, "offset", 0)
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        timeout = max(_int_param(params, "timeout", 0), 0)
        allowed = _json_param(params.get("allowed_updates"))
        if isinstance(allowed, list):
            self.allowed_updates = [str(kind) for kind in allowed] or None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            # An offset confirms every earlier update: they are forgotten, as on Telegram.
            if offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            elif offset < 0:
                self._updates = self._updates[offset:]
            if self.allowed_updates:
                kinds = set(self.allowed_updates)
                self._updates = [u for u in self._updates if kinds & set(u)]
            if self._updates:
                return self._updates[:limit]
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return []

    def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        secret = params.get("secret_token") or None
        if secret is not None and not _SECRET_TOKEN.match(str(secret)):
            raise _BotApiError(400, "Bad Request: secret token contains unallowed characters")
        if url and not url.startswith(("https://", "http://")):
            raise _BotApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided")
        # The real API insists on HTTPS; the fake accepts http:// so tests need no certificate.
        self.webhook_url = url or None
        self.webhook_secret = str(secret) if secret and url else None
        allowed = _json_param(params.get("allowed_updates"))
        if isinstance(allowed, list):
            self.allowed_updates = [str(kind) for kind in allowed] or None
        if _bool_param(params, "drop_pending_updates"):
            self._updates.clear()
        return True

    async def _download(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["file_path"]
        file_id = next((i for i, (_, p) in self._files.items() if p == path), None)
        status = 200 if request.match_info["token"] == self.token and file_id is not None else 404
        self.downloads.append(FileDownload(file_path=path, status=status))
        if status != 200 or file_id is None:
            return _error_response(404, "Not Found: file not found")
        delivery, _ = self._file_options.get(file_id, ("whole", None))
        return await serve_body(request, self._files[file_id][0], "application/octet-stream",
                                delivery)

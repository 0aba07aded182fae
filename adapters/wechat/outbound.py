"""Replies later through the Official Account API: customer-service messages (客服消息)
within 48 hours of the follower's last message, template messages (模板消息) outside it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import msgspec

from gateway.errors import PermanentError, TransientError
from gateway.plugin import OutgoingReply

WINDOW = 48 * 3600.0
"""WeChat accepts customer-service messages within 48 hours of the follower's last message."""
_TOKEN_EXPIRED = frozenset({40001, 40014, 42001})
_BUSY = frozenset({-1, 45009, 45047})
"""System busy, the daily API quota, too many customer-service messages in a row: later."""
_MAX_CONTENT = 2000
"""Characters of one text customer-service message (WeChat's limit is 2048 bytes of UTF-8
for some clients; 600 Chinese characters fit)."""


class _Answer(msgspec.Struct):
    errcode: int = 0
    errmsg: str = ""
    access_token: str | None = None
    expires_in: int = 0
    msgid: int | None = None


_answer = msgspec.json.Decoder(_Answer)


class WeChatApi:
    """The few API calls replies make, with the access token fetched and renewed as needed."""

    def __init__(self, base_url: str, app_id: str, app_secret: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.app_secret = app_secret
        self.timeout = timeout
        self._token: str | None = None
        self._token_until = 0.0
        self._lock = asyncio.Lock()

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str, *,
                    params: dict[str, str], body: dict[str, Any] | None = None) -> _Answer:
        try:
            async with asyncio.timeout(self.timeout), session.request(
                    method, f"{self.base_url}{path}", params=params,
                    data=None if body is None else msgspec.json.encode(body),
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise TransientError(f"WeChat answered HTTP {resp.status}")
                raw = await resp.content.read(65_536)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"WeChat unreachable: {type(exc).__name__}") from exc
        try:
            return _answer.decode(raw)
        except msgspec.DecodeError as exc:
            raise TransientError("WeChat answered something that is not its JSON") from exc

    async def token(self, session: aiohttp.ClientSession) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._token_until:
                return self._token
            got = await self._call(session, "GET", "/cgi-bin/token", params={
                "grant_type": "client_credential", "appid": self.app_id,
                "secret": self.app_secret})
            if got.errcode or not got.access_token:
                # Our credentials: the operator fixes them; keep the reply until then.
                raise TransientError(f"WeChat refused our AppID/AppSecret ({got.errcode})")
            self._token = got.access_token
            self._token_until = time.monotonic() + max(60, got.expires_in - 300)
            return self._token

    async def send(self, session: aiohttp.ClientSession, path: str,
                   body: dict[str, Any]) -> _Answer:
        token = await self.token(session)
        got = await self._call(session, "POST", path, params={"access_token": token},
                               body=body)
        if got.errcode in _TOKEN_EXPIRED:
            self._token = None  # renewed on the retry
            raise TransientError(f"WeChat's access token expired ({got.errcode})")
        if got.errcode in _BUSY:
            raise TransientError(f"WeChat is busy ({got.errcode})")
        if got.errcode:
            raise PermanentError(f"WeChat refused the message ({got.errcode})")
        return got


async def send_reply(api: WeChatApi, session: aiohttp.ClientSession, reply: OutgoingReply, *,
                     openid: str, template_id: str | None, number_key: str,
                     text_key: str) -> str:
    """One reply: customer-service text messages in the window (long texts in parts), the
    template message outside it. Returns an id for the reply (``wechat:…``)."""
    if reply.template:
        if not template_id:
            raise PermanentError("adapters.wechat.reply_template_id is not set")
        got = await api.send(session, "/cgi-bin/message/template/send", {
            "touser": openid, "template_id": template_id,
            "data": {number_key: {"value": reply.ticket_number},
                     text_key: {"value": reply.text[:200]}}})
        return f"wechat-template:{got.msgid}"
    text = reply.text
    for start in range(0, len(text), _MAX_CONTENT):
        await api.send(session, "/cgi-bin/message/custom/send", {
            "touser": openid, "msgtype": "text",
            "text": {"content": text[start:start + _MAX_CONTENT]}})
    # Customer-service messages get no id from WeChat; ours names the reply, unguessable.
    return f"wechat:{uuid.uuid4().hex}"

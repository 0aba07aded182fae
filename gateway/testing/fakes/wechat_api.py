"""A stand-in for WeChat's Official Account API (``api.weixin.qq.com``), the server side.

What replies need of it, as WeChat answers:

- ``GET /cgi-bin/token?grant_type=client_credential&appid=…&secret=…`` → ``access_token``,
  ``expires_in`` (a wrong secret: ``errcode`` 40001);
- ``POST /cgi-bin/message/custom/send?access_token=…`` (客服消息): ``{"touser", "msgtype":
  "text", "text": {"content"}}``; refused with ``errcode`` 45015 when the follower has not
  written within 48 hours (``window_closed`` holds such openids);
- ``POST /cgi-bin/message/template/send?access_token=…`` (模板消息): ``{"touser",
  "template_id", "data": {key: {"value"}}}`` → ``msgid``.

Every call answers HTTP 200 with a JSON ``errcode``, as WeChat does; an expired or unknown
token is 40001/42001. ``sent`` records what was accepted; ``expire_tokens()`` invalidates the
tokens handed out so far.
"""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import msgspec
from aiohttp import web

from gateway.testing.fakes import FakeServer

__all__ = ["FakeWeChatApi", "WeChatSent"]


class WeChatSent(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted message: ``kind`` is ``custom`` or ``template``."""

    kind: str
    touser: str
    content: str = ""
    template_id: str = ""
    data: dict[str, Any] = {}
    msgid: int | None = None


class FakeWeChatApi(FakeServer):
    """The API of one Official Account (``app_id`` / ``app_secret``)."""

    def __init__(self, app_id: str, app_secret: str) -> None:
        super().__init__()
        self.app_id = app_id
        self.app_secret = app_secret
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.window_closed: set[str] = set()
        self.sent: list[WeChatSent] = []
        self.fail_next: list[dict[str, Any]] = []
        """Answers (``{"errcode": -1, "errmsg": "system error"}``) given to the next sends."""
        self._msgids = itertools.count(200_228_332)

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._token)
        app.router.add_post("/cgi-bin/message/custom/send", self._custom)
        app.router.add_post("/cgi-bin/message/template/send", self._template)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        q = request.query
        self.token_requests += 1
        if q.get("grant_type") != "client_credential" or q.get("appid") != self.app_id \
                or q.get("secret") != self.app_secret:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": 7200})

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if request.query.get("access_token") not in self.tokens:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        if self.fail_next:
            return web.json_response(self.fail_next.pop(0))
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"errcode": 47001, "errmsg": "data format error"})
        return body if isinstance(body, dict) else web.json_response(
            {"errcode": 47001, "errmsg": "data format error"})

    async def _custom(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        touser = str(body.get("touser", ""))
        if touser in self.window_closed:
            return web.json_response({"errcode": 45015, "errmsg": "response out of time limit "
                                      "or subscription is canceled"})
        if body.get("msgtype") != "text" or not isinstance(body.get("text"), dict):
            return web.json_response({"errcode": 40008, "errmsg": "invalid message type"})
        self.sent.append(WeChatSent(kind="custom", touser=touser,
                                    content=str(body["text"].get("content", ""))))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _template(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if not body.get("template_id") or not isinstance(body.get("data"), dict):
            return web.json_response({"errcode": 40037, "errmsg": "invalid template_id"})
        msgid = next(self._msgids)
        self.sent.append(WeChatSent(kind="template", touser=str(body.get("touser", "")),
                                    template_id=str(body["template_id"]), data=body["data"],
                                    msgid=msgid))
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": msgid})

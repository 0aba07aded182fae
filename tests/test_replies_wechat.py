"""Replies on WeChat through the adapter's API client against the Official Account API fake:
customer-service messages inside the 48-hour window, the template message outside it, SMS as
the fallback, and WeChat's own refusals."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.testing.fakes import FakeWeChat, FakeWeChatApi
from tests.test_replies import events, post_reply, wait_event
from tests.test_replies_twilio import later

TOKEN = "wechat-replies-token"
APP_ID = "wx00112233445566aa"
APP_SECRET = "wechat-replies-app-secret"
OPENID = "oReplyCustomer_0000000000001"
os.environ["INTAKE_TEST_WECHAT_REPLIES_TOKEN"] = TOKEN
os.environ["INTAKE_TEST_WECHAT_REPLIES_SECRET"] = APP_SECRET
_ids = itertools.count(10**15)


def toml(api: FakeWeChatApi, *, extra: str = "", replies: str = "") -> str:
    return (f"[replies]\n{replies}\n[adapters.wechat]\nenabled = true\n"
            f'token_env = "INTAKE_TEST_WECHAT_REPLIES_TOKEN"\napp_id = "{APP_ID}"\n'
            'app_secret_env = "INTAKE_TEST_WECHAT_REPLIES_SECRET"\n'
            f'api_base_url = "{api.url}"\n{extra}\n')


@pytest.fixture
async def api() -> AsyncIterator[FakeWeChatApi]:
    async with FakeWeChatApi(APP_ID, APP_SECRET) as fake:
        yield fake


@pytest.fixture
async def wechat() -> AsyncIterator[FakeWeChat]:
    async with FakeWeChat(TOKEN, openid=OPENID) as fake:
        yield fake


async def ticket_from(gw: Any, wechat: FakeWeChat, content: str) -> str:
    got = await wechat.push(f"{gw.url}/wechat", {"MsgType": "text", "Content": content,
                                                 "MsgId": next(_ids)})
    assert got.status == 200
    return str((await wait_event(gw, "ticket.created"))["subject"])


async def test_inside_the_window_a_customer_service_message(
        make_gateway: Any, api: FakeWeChatApi, wechat: FakeWeChat) -> None:
    gw = await make_gateway(toml(api))
    number = await ticket_from(gw, wechat, "我的订单一直没有发货")
    status, body = await post_reply(gw, number, {"text": "您的订单今天发出。"})
    assert status == 202 and body["channel"] == "wechat", body
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [msg] = api.sent
    assert (msg.kind, msg.touser, msg.content) == ("custom", OPENID, "您的订单今天发出。")
    assert sent["data"]["provider_message_id"].startswith("wechat:")
    # A second reply reuses the access token.
    status, body = await post_reply(gw, number, {"text": "快递单号稍后发给您。"}, key="k-2")
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    assert api.token_requests == 1


async def test_an_expired_token_is_renewed_and_the_reply_retried(
        make_gateway: Any, api: FakeWeChatApi, wechat: FakeWeChat) -> None:
    gw = await make_gateway(toml(api, replies="max_backoff = 0.2"))
    number = await ticket_from(gw, wechat, "发票怎么开")
    _, body = await post_reply(gw, number, {"text": "请在订单页申请发票。"})
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    api.expire_tokens()
    api.fail_next.append({"errcode": -1, "errmsg": "system error"})
    _, body = await post_reply(gw, number, {"text": "已为您开具。"}, key="k-2")
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    assert sent["data"]["attempts"] >= 2 and api.token_requests == 2
    assert [m.content for m in api.sent] == ["请在订单页申请发票。", "已为您开具。"]


async def test_outside_the_window_the_template_message(
        make_gateway: Any, api: FakeWeChatApi, wechat: FakeWeChat) -> None:
    gw = await make_gateway(toml(api, extra='reply_template_id = "tpl-reply-1"'))
    number = await ticket_from(gw, wechat, "我的订单一直没有发货")
    later(gw, 49)
    status, body = await post_reply(gw, number, {"text": "您的订单今天发出。"})
    assert status == 202 and body["channel"] == "wechat", body
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    [msg] = api.sent
    assert (msg.kind, msg.template_id) == ("template", "tpl-reply-1")
    assert msg.data == {"keyword1": {"value": number}, "keyword2": {"value": "您的订单今天发出。"}}
    assert sent["data"]["template"] is True
    assert sent["data"]["provider_message_id"] == f"wechat-template:{msg.msgid}"


async def test_outside_the_window_without_template_or_phone_fails_at_once(
        make_gateway: Any, api: FakeWeChatApi, wechat: FakeWeChat) -> None:
    gw = await make_gateway(toml(api))
    number = await ticket_from(gw, wechat, "我的订单一直没有发货")
    later(gw, 47)
    assert (await post_reply(gw, number, {"text": "47 小时：还在窗口内。"}, key="in"))[0] == 202
    later(gw, 2)
    status, body = await post_reply(gw, number, {"text": "您的订单今天发出。"}, key="out")
    assert status == 422 and "48-hour" in body["error"], body


async def test_wechat_refusing_the_window_is_reply_failed(
        make_gateway: Any, api: FakeWeChatApi, wechat: FakeWeChat) -> None:
    # WeChat's own clock decides in the end: its refusal (45015) is final, not retried.
    gw = await make_gateway(toml(api))
    number = await ticket_from(gw, wechat, "我的订单一直没有发货")
    api.window_closed.add(OPENID)
    status, body = await post_reply(gw, number, {"text": "您的订单今天发出。"})
    assert status == 202
    failed = await wait_event(gw, "reply.failed", reply_id=body["reply_id"])
    assert "45015" in failed["data"]["reason"] and failed["data"]["attempts"] == 1
    assert "reply.sent" not in [e["type"] for e in await events(gw)]

"""Replies reach the web chat: a downstream system answers a chat ticket through the signed
``POST /v1/tickets/{number}/replies`` and the visitor reads it in the chat, live or on catch-up.

Real gateway (SQLite store), the chat's real WebSocket and HTTP catch-up, the reply endpoint
signed as a downstream system signs it; outcomes read from the event feed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from intake_adapters.api import sign_request
from tests.conftest import MakeGateway
from tests.test_replies import events, post_reply, replies_settled, wait_event
from tests.test_webchat import Visitor, _toml, adapter_of, open_session

SECRET = "webchat-replies-signing-secret"
os.environ["INTAKE_TEST_WEBCHAT_REPLIES_SECRET"] = SECRET


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway(_toml() + '[replies]\n'
                              'secret_env = "INTAKE_TEST_WEBCHAT_REPLIES_SECRET"\n')


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def retried(gw: Gateway, number: str, body: dict[str, Any], *, key: str,
                  ago: int) -> tuple[int, dict[str, Any]]:
    """A downstream system's retry: the same key and body, signed again a moment later (the
    same signature twice is a replay, refused with 409, whatever the key)."""
    raw = json.dumps(body).encode()
    ts = str(int(time.time()) - ago)
    headers = {"Content-Type": "application/json", "Idempotency-Key": key,
               "X-Intake-Timestamp": ts, "X-Intake-Signature": sign_request(SECRET, ts, raw)}
    async with aiohttp.ClientSession() as s, s.post(
            f"{gw.url}/v1/tickets/{number}/replies", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


async def next_reply(v: Visitor) -> dict[str, object]:
    while True:
        frame = await v.frame()
        if frame["type"] == "entry" and frame["entry"]["kind"] == "reply":
            return dict(frame["entry"])


async def test_a_reply_through_the_api_appears_live_on_the_visitors_socket(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.connect()
    number = (await v.say("我的路由器从今天早上开始就没有网络了。"))["ticket_number"]

    unsigned = await post_reply(gw, number, {"text": "请重启路由器。"}, key="unsigned")
    assert unsigned[0] == 401, "the reply endpoint is signed"
    status, body = await post_reply(gw, number, {"text": "请重启路由器。"}, key="wc-1",
                                    secret=SECRET)
    assert status == 202, body
    assert body["channel"] == "webchat" and body["ticket_number"] == number

    entry = await next_reply(v)
    assert entry["text"] == "请重启路由器。" and entry["ticket_number"] == number
    assert entry["reply_id"] == body["reply_id"]
    sent = await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    assert sent["subject"] == number and sent["data"]["channel"] == "webchat"
    assert sent["data"]["provider_message_id"] == f"webchat:{body['reply_id']}"
    queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
    assert queued["data"]["chosen_because"] == "latest_inbound"


async def test_a_disconnected_visitor_reads_the_reply_on_catch_up(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    status, body = await v.post("Do you open on Sundays?")
    assert status == 200, body
    number = body["entry"]["ticket_number"]
    seen = body["entry"]["seq"]

    status, reply = await post_reply(gw, number, {"text": "Yes, from 10 to 18."},
                                     key="wc-2", secret=SECRET)
    assert status == 202, reply
    await wait_event(gw, "reply.sent", reply_id=reply["reply_id"])
    # Over the HTTP catch-up, and over a WebSocket opened after it.
    (entry,) = [e for e in await v.history(after=seen) if e["kind"] == "reply"]
    assert entry["text"] == "Yes, from 10 to 18." and entry["reply_id"] == reply["reply_id"]
    ready = await v.connect(after=seen)
    caught = [e for e in ready.get("entries", []) if e["kind"] == "reply"]
    if not caught:
        caught = [await next_reply(v)]
    assert [e["reply_id"] for e in caught] == [reply["reply_id"]]


async def test_the_same_idempotency_key_twice_delivers_once(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.connect()
    number = (await v.say("I was billed twice."))["ticket_number"]
    reply = {"text": "We refunded the second charge."}
    first = await retried(gw, number, reply, key="refund-1", ago=2)
    second = await retried(gw, number, reply, key="refund-1", ago=1)
    assert first[0] == second[0] == 202
    assert second[1]["reply_id"] == first[1]["reply_id"] and second[1]["replayed"]
    await next_reply(v)
    await replies_settled(gw)
    replies = [e for e in await v.history() if e["kind"] == "reply"]
    assert len(replies) == 1
    kinds = [e["type"] for e in await events(gw)]
    assert kinds.count("reply.queued") == 1 and kinds.count("reply.sent") == 1


async def test_a_resend_of_the_same_reply_writes_nothing_again(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    """The dispatcher sends at least once (a crash after the send, before the row's update):
    the chat's reply id makes the second send harmless and name the same provider id."""
    from gateway.plugin import OutgoingReply

    v = await open_session(http, gw)
    number = (await v.post("Hello"))[1]["entry"]["ticket_number"]
    adapter = adapter_of(gw)
    reply = OutgoingReply(reply_id="r-twice", ticket_number=number, subject="", text="Hi!")
    to = f"{adapter.config.sites[0].key}:s:{v.sid}"
    ids = [await adapter.send_reply(reply, channel="webchat", to=to, reply_to=None)
           for _ in range(2)]
    assert ids == ["webchat:r-twice"] * 2
    assert [e["reply_id"] for e in await v.history() if e["kind"] == "reply"] == ["r-twice"]


async def test_a_revoked_session_makes_the_reply_fail_not_retry(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    number = (await v.post("Hello"))[1]["entry"]["ticket_number"]
    async with http.delete(f"{gw.url}/webchat/v1/session", headers=v.auth) as resp:
        assert resp.status == 200
    status, body = await post_reply(gw, number, {"text": "Anyone there?"}, key="wc-gone",
                                    secret=SECRET)
    assert status == 202, body
    failed = await wait_event(gw, "reply.failed", reply_id=body["reply_id"])
    assert failed["data"]["attempts"] == 1 and "chat" in failed["data"]["reason"]


async def test_the_chat_may_be_named_as_the_channel(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.connect()
    number = (await v.say("Can I change my plan?"))["ticket_number"]
    status, body = await post_reply(gw, number, {"text": "Yes, any day.", "channel": "webchat"},
                                    key="wc-named", secret=SECRET)
    assert status == 202 and body["channel"] == "webchat", body
    assert (await next_reply(v))["text"] == "Yes, any day."
    queued = await wait_event(gw, "reply.queued", reply_id=body["reply_id"])
    assert queued["data"]["chosen_because"] == "requested"

"""The wechat adapter through real HTTP: verification, plain and safe mode, passive replies."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeWeChat
from gateway.testing.harness import read_events
from intake_adapters.wechat.protocol import WeChatCrypto, compute_signature
from tests.conftest import MakeGateway

CORPUS = Path(__file__).parent / "corpus" / "wechat"
VECTORS = {v["name"]: v for v in json.loads(
    (CORPUS / "signature_test_vectors.json").read_bytes())["vectors"]}
TOKEN = "wechat-test-token"
APP_ID = "wx1234567890abcdef"
AES_KEY = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
os.environ["INTAKE_TEST_WECHAT_TOKEN"] = TOKEN
os.environ["INTAKE_TEST_WECHAT_AES"] = AES_KEY

_ids = iter(range(10**15, 10**16))


def toml(*, token_env: str = "INTAKE_TEST_WECHAT_TOKEN", extra: str = "",
         intake: str = "") -> str:
    return (f"[intake]\n{intake}\n[adapters.wechat]\nenabled = true\n"
            f'token_env = "{token_env}"\n{extra}\n')


SAFE = f'mode = "safe"\nencoding_aes_key_env = "INTAKE_TEST_WECHAT_AES"\napp_id = "{APP_ID}"\n'


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway(toml())


@pytest.fixture
async def wechat() -> AsyncIterator[FakeWeChat]:
    async with FakeWeChat(TOKEN) as fake:
        yield fake


def text(content: str, msg_id: int | None = None) -> dict[str, str | int]:
    return {"MsgType": "text", "Content": content, "MsgId": msg_id or next(_ids)}


async def events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def raw_post(gw: Gateway, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(f"{gw.url}/wechat", params=query,
                                                    data=body) as r:
        return r.status, await r.read()


def signed_query(token: str, timestamp: str | None = None, nonce: str = "12345") -> dict[str, str]:
    timestamp = timestamp or str(int(time.time()))
    return {"signature": compute_signature(token, timestamp, nonce), "timestamp": timestamp,
            "nonce": nonce, "openid": "oX"}


# -- URL verification ----------------------------------------------------------------------------


async def test_url_verification_echoes_only_to_signed_requests(
        gw: Gateway, wechat: FakeWeChat) -> None:
    ok = await wechat.verify_url(f"{gw.url}/wechat")
    assert ok.status == 200 and ok.body == (ok.echostr or "").encode()
    assert (await wechat.verify_url(f"{gw.url}/wechat", token="not-the-token")).status == 403
    stale = signed_query(TOKEN, timestamp=str(int(time.time()) - 3600))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/wechat", params={**stale, "echostr": "1"}) as r:
            assert r.status == 403
        async with s.get(f"{gw.url}/wechat", params={"echostr": "1"}) as r:
            assert r.status == 403


async def test_published_plain_mode_vectors(make_gateway: MakeGateway) -> None:
    ok, bad = VECTORS["plain_mode_check_signature_ok"], VECTORS[
        "plain_mode_check_signature_must_fail"]
    os.environ["INTAKE_TEST_WECHAT_VECTOR_TOKEN"] = ok["token"]
    # The vectors are from 2014: only a tolerance of years lets their timestamp through.
    gw = await make_gateway(toml(token_env="INTAKE_TEST_WECHAT_VECTOR_TOKEN",
                                 extra='timestamp_tolerance = "10000d"'))
    async with aiohttp.ClientSession() as s:
        query = {"timestamp": ok["timestamp"], "nonce": ok["nonce"], "echostr": "hello"}
        async with s.get(f"{gw.url}/wechat",
                         params={**query, "signature": ok["expected_signature"]}) as r:
            assert (r.status, await r.text()) == (200, "hello")
        async with s.get(f"{gw.url}/wechat",
                         params={**query, "signature": bad["received_signature"]}) as r:
            assert r.status == 403


async def test_published_safe_mode_vectors(make_gateway: MakeGateway) -> None:
    verify, push = VECTORS["safe_mode_url_verification_echostr"], VECTORS[
        "safe_mode_decrypt_push"]
    os.environ["INTAKE_TEST_WECHAT_VECTOR_TOKEN2"] = push["token"]
    os.environ["INTAKE_TEST_WECHAT_VECTOR_AES"] = push["encoding_aes_key"]
    gw = await make_gateway(toml(
        token_env="INTAKE_TEST_WECHAT_VECTOR_TOKEN2", extra=(
            'mode = "safe"\nencoding_aes_key_env = "INTAKE_TEST_WECHAT_VECTOR_AES"\n'
            f'app_id = "{push["receive_id"]}"\ntimestamp_tolerance = "10000d"\n')))
    async with aiohttp.ClientSession() as s:
        # WeCom-style verification: the echostr is encrypted and signed with msg_signature.
        q = {"timestamp": verify["timestamp"], "nonce": verify["nonce"],
             "msg_signature": verify["expected_msg_signature"], "echostr": verify["echostr"],
             "signature": compute_signature(verify["token"], verify["timestamp"],
                                            verify["nonce"])}
        async with s.get(f"{gw.url}/wechat", params=q) as r:
            assert (r.status, await r.text()) == (200, verify["expected_decrypted_echostr"])
        wrong = {**q, "nonce": verify["must_fail_if_nonce"],
                 "signature": compute_signature(verify["token"], verify["timestamp"],
                                                verify["must_fail_if_nonce"])}
        async with s.get(f"{gw.url}/wechat", params=wrong) as r:
            assert r.status == 403
    # The published encrypted push: decrypted, a ticket, and an encrypted passive reply.
    query = {"timestamp": push["timestamp"], "nonce": push["nonce"], "encrypt_type": "aes",
             "msg_signature": push["expected_msg_signature"],
             "signature": compute_signature(push["token"], push["timestamp"], push["nonce"])}
    body = (CORPUS / "wechatpy_encrypted_safe_mode_push_wecom.xml").read_bytes()
    status, answer = await raw_post(gw, query, body)
    assert status == 200
    crypto = WeChatCrypto(push["token"], push["encoding_aes_key"], push["receive_id"])
    reply = FakeWeChat.read_reply(answer, crypto)
    assert reply is not None and reply["ToUserName"] == "messense"
    [event] = await events(gw)
    assert event["subject"] in reply["Content"]
    assert event["data"]["message"]["text"] == "test"
    assert event["data"]["contact"]["chat_ids"] == {"wechat": "messense"}
    # The same ciphertext with a forged msg_signature is refused.
    status, _ = await raw_post(gw, {**query, "msg_signature": "0" * 40}, body)
    assert status == 403


# -- plain mode ----------------------------------------------------------------------------------


async def test_text_push_is_answered_with_the_ticket_number(
        gw: Gateway, wechat: FakeWeChat) -> None:
    result = await wechat.push(f"{gw.url}/wechat", text("我的宽带从昨天开始就断了"))
    assert result.status == 200 and result.elapsed < 5
    reply = wechat.read_reply(result)
    assert reply is not None
    assert (reply["ToUserName"], reply["FromUserName"], reply["MsgType"]) == (
        wechat.openid, wechat.account, "text")
    [event] = await events(gw)
    assert event["subject"] in reply["Content"] and "工单编号" in reply["Content"]
    data = event["data"]
    assert data["contact"]["chat_ids"] == {"wechat": wechat.openid}
    assert data["message"]["metadata"]["wechat.msg_type"] == "text"
    assert data["acknowledged_inline"] is True


async def test_unsigned_badly_signed_and_replayed_pushes_are_refused(
        gw: Gateway, wechat: FakeWeChat) -> None:
    url = f"{gw.url}/wechat"
    assert (await wechat.push(url, text("refund me"), token="wrong")).status == 403
    status, _ = await raw_post(gw, {}, b"<xml><MsgType>text</MsgType></xml>")
    assert status == 403
    stale = str(int(time.time()) - 600)
    assert (await wechat.push(url, text("old"), timestamp=stale)).status == 403
    # A captured signed query with another body: the body is not signed in plain mode.
    first = await wechat.push(url, text("Where is my parcel?"))
    assert first.status == 200
    q = first.query
    forged = await wechat.push(url, text("Close my account"), timestamp=q["timestamp"],
                               nonce=q["nonce"])
    assert forged.status == 403
    assert [e["type"] for e in await events(gw)] == ["ticket.created"]


async def test_retries_of_one_message_get_the_same_reply_and_one_ticket(
        gw: Gateway, wechat: FakeWeChat) -> None:
    url = f"{gw.url}/wechat"
    message = text("The invoice amount is wrong", msg_id=7250021412600020992)
    first = await wechat.push(url, message)
    # WeChat's retries: the same request again, or a fresh signature for the same message.
    same = await wechat.push(url, first.sent, timestamp=first.query["timestamp"],
                             nonce=first.query["nonce"])
    burst = await asyncio.gather(*(wechat.push(url, message) for _ in range(3)))
    answers = [first, same, *burst]
    assert {r.status for r in answers} == {200}
    assert len({wechat.read_reply(r)["Content"] for r in answers}) == 1  # type: ignore[index]
    assert max(r.elapsed for r in answers) < 5
    assert [e["type"] for e in await events(gw)] == ["ticket.created"]


async def test_safe_mode_encrypts_the_reply_and_refuses_plain_pushes(
        make_gateway: MakeGateway, wechat: FakeWeChat) -> None:
    gw = await make_gateway(toml(extra=SAFE))
    crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    result = await wechat.push(f"{gw.url}/wechat", text("加密模式下的问题"), safe_mode=crypto)
    assert result.status == 200 and b"<Encrypt>" in result.body
    reply = wechat.read_reply(result)
    assert reply is not None and "工单编号" in reply["Content"]
    plain = await wechat.push(f"{gw.url}/wechat", text("明文消息"))
    assert plain.status == 403
    other = WeChatCrypto(TOKEN, AES_KEY, "wx_another_account")
    assert (await wechat.push(f"{gw.url}/wechat", text("x"), safe_mode=other)).status == 403
    assert [e["type"] for e in await events(gw)] == ["ticket.created"]


async def test_compat_mode_takes_both(make_gateway: MakeGateway, wechat: FakeWeChat) -> None:
    gw = await make_gateway(toml(extra=SAFE.replace('"safe"', '"compat"')))
    crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    both = await wechat.push(f"{gw.url}/wechat", text("兼容模式"), safe_mode=crypto, compat=True)
    assert both.status == 200 and wechat.read_reply(both) is not None
    async with FakeWeChat(TOKEN, openid="oAnotherCustomer") as other:
        plain = await other.push(f"{gw.url}/wechat", text("明文也可以"))
        assert plain.status == 200 and other.read_reply(plain) is not None


# -- message types -------------------------------------------------------------------------------


async def test_image_voice_location_link_and_unknown_types(
        make_gateway: MakeGateway, wechat: FakeWeChat) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"j" * 4000

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=jpeg, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/mmbiz/pic.jpg", image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        gw = await make_gateway(toml(extra='image_hosts = ["127.0.0.1"]'))
        url = f"{gw.url}/wechat"
        kinds: list[dict[str, str | int]] = [
            {"MsgType": "image", "PicUrl": f"http://127.0.0.1:{port}/mmbiz/pic.jpg",
             "MediaId": "m-1"},
            {"MsgType": "image", "PicUrl": "http://169.254.169.254/latest", "MediaId": "m-2"},
            {"MsgType": "voice", "MediaId": "m-3", "Format": "amr", "Recognition": "腾讯微信团队"},
            {"MsgType": "voice", "MediaId": "m-4", "Format": "amr"},
            {"MsgType": "location", "Location_X": "23.134521", "Location_Y": "113.358803",
             "Scale": 20, "Label": "位置信息"},
            {"MsgType": "link", "Title": "订单截图", "Description": "见链接",
             "Url": "https://example.com/o/1"},
            {"MsgType": "miniprogrampage", "Title": "小程序", "AppId": "wxmini"},
        ]
        for n, fields in enumerate(kinds):
            # Different customers, so that each message opens its own ticket.
            async with FakeWeChat(TOKEN, openid=f"oCustomer{n}") as sender:
                result = await sender.push(url, {**fields, "MsgId": next(_ids)})
                assert result.status == 200 and sender.read_reply(result), fields
        msgs = [e["data"]["message"] for e in await events(gw)]
        assert len(msgs) == len(kinds)
        assert msgs[0]["attachments"][0]["size"] == len(jpeg) and msgs[0]["text"] == ""
        assert msgs[1]["text"] == "[image]" and "host" in msgs[1]["metadata"]["wechat.image"]
        assert msgs[1]["metadata"]["wechat.media_id"] == "m-2"
        assert msgs[2]["text"] == "腾讯微信团队"
        assert msgs[3]["text"] == "[voice message]"
        assert msgs[4]["text"] == "[location] 位置信息 (23.134521, 113.358803)"
        assert msgs[5]["text"] == "订单截图\n见链接\nhttps://example.com/o/1"
        assert msgs[6]["text"] == "[miniprogrampage]"
        assert msgs[6]["metadata"]["wechat.AppId"] == "wxmini"
    finally:
        await runner.cleanup()


async def test_subscribe_is_welcomed_and_other_events_answer_success(
        gw: Gateway, wechat: FakeWeChat) -> None:
    url = f"{gw.url}/wechat"
    welcome = await wechat.push(url, {"MsgType": "event", "Event": "subscribe"})
    reply = wechat.read_reply(welcome)
    assert reply is not None and "感谢关注" in reply["Content"]
    for event in ("unsubscribe", "CLICK", "LOCATION", "VIEW"):
        result = await wechat.push(url, {"MsgType": "event", "Event": event, "EventKey": "k"})
        assert (result.status, result.body) == (200, b"success")
    assert await events(gw) == []


async def test_xml_with_entities_or_a_dtd_is_refused(gw: Gateway, wechat: FakeWeChat) -> None:
    url = f"{gw.url}/wechat"
    xxe = (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>"
           b"<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&x;</Content></xml>")
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
              b"<xml><Content>&lol2;</Content></xml>")
    for body in (xxe, laughs, b"<xml><unclosed></xml>", b"not xml at all", b"{\"MsgType\": 5}",
                 b"<xml><MsgType>text</MsgType></xml>"):
        result = await wechat.push(url, body)
        assert result.status == 400, body
    # Unsigned, the same bodies never get as far as the parser.
    assert (await wechat.push(url, xxe, token="wrong")).status == 403
    assert await events(gw) == []


@pytest.mark.parametrize("name", sorted(
    p.name for p in CORPUS.iterdir()
    if p.suffix in (".xml", ".json") and p.name != "signature_test_vectors.json"
    and "encrypted" not in p.name))
async def test_every_corpus_push_is_handled(gw: Gateway, wechat: FakeWeChat, name: str) -> None:
    body = (CORPUS / name).read_bytes()
    result = await wechat.push(f"{gw.url}/wechat", body,
                               data_format="json" if name.endswith(".json") else "xml")
    assert result.status == 200, result.body
    got = await events(gw)
    if "event" in name:
        assert got == []
        reply = wechat.read_reply(result)
        assert (reply is not None) == ("subscribe" in name)
    else:
        [event] = got
        reply = wechat.read_reply(result)
        assert reply is not None and event["subject"] in reply["Content"]


async def test_encrypted_corpus_push_in_plain_mode_is_refused(gw: Gateway,
                                                               wechat: FakeWeChat) -> None:
    body = (CORPUS / "wechatpy_encrypted_safe_mode_push_wecom.xml").read_bytes()
    # Without encrypt_type the envelope has no sender: a 400, not a crash.
    assert (await wechat.push(f"{gw.url}/wechat", body)).status == 400
    status, _ = await raw_post(gw, {**signed_query(TOKEN), "encrypt_type": "aes",
                                    "msg_signature": "0" * 40}, body)
    assert status == 403
    assert await events(gw) == []

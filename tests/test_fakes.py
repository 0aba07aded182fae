"""The provider fakes, driven by the real client libraries over real local HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from telegram import Bot, Update
from telegram.error import BadRequest, Conflict, InvalidToken, RetryAfter
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from gateway.errors import Forbidden, RejectedInput
from gateway.testing.fakes import FakeTelegram, FakeTwilio, FakeWeChat, signed_webhook
from intake_adapters.twilio.protocol import (
    public_url,
    render_twiml_empty,
    render_twiml_message,
    verify_twilio_signature,
)
from intake_adapters.wechat.protocol import (
    WeChatCrypto,
    check_signature,
    parse_push,
    render_text_reply,
    to_push,
)

CORPUS = Path(__file__).parent / "corpus"
TG_TOKEN = "123456789:AAH-fake_token_for_tests"


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.AppRunner:
    """Serve ``handler`` for every path on 127.0.0.1:0 (the 'gateway' side of a test)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def base_of(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


# == Telegram ===================================================================================


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TG_TOKEN) as fake:
        yield fake


def ptb(fake: FakeTelegram, token: str = TG_TOKEN) -> Bot:
    return Bot(token, base_url=f"{fake.url}/bot", base_file_url=f"{fake.url}/file/bot")


async def test_ptb_initializes_and_sends_a_reply(telegram: FakeTelegram) -> None:
    async with ptb(telegram) as bot:
        assert bot.username == "intake_test_bot"
        assert bot.id == 123456789
        message = await bot.send_message(chat_id=42, text="工单 T-1 已受理", reply_to_message_id=7)
    assert (message.chat.id, message.chat.type, message.text) == (42, "private", "工单 T-1 已受理")
    assert message.from_user is not None and message.from_user.is_bot
    assert [call.method for call in telegram.calls] == ["getMe", "sendMessage"]
    sent = telegram.sent[0]
    assert (sent.chat_id, sent.text, sent.reply_to_message_id) == (42, "工单 T-1 已受理", 7)
    assert sent.message["message_id"] == message.message_id


async def test_ptb_downloads_a_registered_file(telegram: FakeTelegram) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    telegram.add_file("BQACAgIAAx0", pdf, "documents/file_7.pdf")
    async with ptb(telegram) as bot:
        file = await bot.get_file("BQACAgIAAx0")
        assert file.file_size == len(pdf)
        data = await file.download_as_bytearray()
        with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
            await bot.get_file("unknown")
    assert bytes(data) == pdf
    assert [(d.file_path, d.status) for d in telegram.downloads] == [("documents/file_7.pdf", 200)]


# Samples written against an older Bot API: they lack fields PTB now requires (User.is_bot,
# file_unique_id), so PTB cannot build them. Real Telegram always sends these fields.
PTB_CANNOT_PARSE = {
    "botapi_docs_forwarded_channel_message_channel_in_forward_from.json",
    "nonebot_message_document_pdf.json",
    "nonebot_message_voice.json",
    "telegrambots_update_all_fields_at_once_invalid.json",
}


def corpus_updates(parseable: bool) -> list[dict[str, Any]]:
    updates = []
    for path in sorted((CORPUS / "telegram").glob("*.json")):
        if (path.name not in PTB_CANNOT_PARSE) != parseable:
            continue
        data = json.loads(path.read_bytes())
        for update in data.get("result", [data]):
            # The samples reuse update_id 10000; the fake numbers its queue itself.
            updates.append({k: v for k, v in update.items() if k != "update_id"})
    return updates


async def test_ptb_polls_the_corpus_updates(telegram: FakeTelegram) -> None:
    ids = [telegram.push_update(update) for update in corpus_updates(parseable=True)]
    async with ptb(telegram) as bot:
        updates = await bot.get_updates(timeout=0)
        assert [u.update_id for u in updates] == ids
        assert all(isinstance(u, Update) for u in updates)
        assert any(u.edited_message for u in updates)
        assert any(u.message and u.message.photo for u in updates)
        assert any(u.callback_query and u.callback_query.message is None for u in updates)
        # Confirming with offset forgets them, as Telegram does.
        assert await bot.get_updates(offset=ids[-1] + 1, timeout=0) == ()
    assert telegram.pending_updates == []


@pytest.mark.parametrize("update", corpus_updates(parseable=False))
async def test_one_unparseable_update_fails_the_whole_ptb_batch(
    telegram: FakeTelegram, update: dict[str, Any]
) -> None:
    # Worth knowing for polling mode: PTB parses a getUpdates batch as a whole, so one update
    # it cannot build makes every call fail until the offset moves past it.
    telegram.push_update(
        {
            "message": {
                "message_id": 1,
                "date": 0,
                "text": "fine",
                "chat": {"id": 5, "type": "private"},
            }
        }
    )
    bad_id = telegram.push_update(update)
    async with ptb(telegram) as bot:
        with pytest.raises(TypeError):
            await bot.get_updates(timeout=0)
        async with aiohttp.ClientSession() as session:
            raw = f"{telegram.url}/bot{TG_TOKEN}/getUpdates"
            async with session.post(raw, json={"offset": bad_id}) as response:
                served = (await response.json())["result"]
        assert served == [{**update, "update_id": bad_id}]  # the fake serves it untouched
        assert await bot.get_updates(offset=bad_id + 1, timeout=0) == ()


async def test_ptb_long_poll_wakes_on_push(telegram: FakeTelegram) -> None:
    async with ptb(telegram) as bot:
        started = time.monotonic()
        poll = asyncio.create_task(bot.get_updates(timeout=10))
        await asyncio.sleep(0.2)
        update_id = telegram.push_update(
            {
                "message": {
                    "message_id": 1,
                    "date": 0,
                    "chat": {"id": 5, "type": "private"},
                    "text": "hello",
                }
            }
        )
        updates = await asyncio.wait_for(poll, 5)
        assert [u.update_id for u in updates] == [update_id]
        assert updates[0].message is not None and updates[0].message.text == "hello"
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert await bot.get_updates(offset=update_id + 1, timeout=1) == ()
        assert 0.8 < time.monotonic() - started < 5


async def test_offset_limit_and_negative_offset(telegram: FakeTelegram) -> None:
    ids = [
        telegram.push_update(
            {
                "message": {
                    "message_id": n,
                    "date": 0,
                    "chat": {"id": 5, "type": "private"},
                    "text": str(n),
                }
            }
        )
        for n in range(5)
    ]
    async with ptb(telegram) as bot:
        assert [u.update_id for u in await bot.get_updates(limit=2)] == ids[:2]
        assert [u.update_id for u in await bot.get_updates(offset=ids[2])] == ids[2:]
        assert [u.update_id for u in await bot.get_updates(offset=-1)] == ids[-1:]
    assert [u["update_id"] for u in telegram.pending_updates] == ids[-1:]


async def test_wrong_token_is_invalid(telegram: FakeTelegram) -> None:
    bot = ptb(telegram, token="987654321:AAwrong")
    with pytest.raises(InvalidToken):
        await bot.initialize()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{telegram.url}/bot987654321:AAwrong/getMe") as response,
    ):
        assert response.status == 401
        body = await response.json()
    assert body == {"ok": False, "error_code": 401, "description": "Unauthorized"}


async def test_webhook_blocks_polling_and_deliver_sends_the_secret(telegram: FakeTelegram) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def hook(request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        received.append((secret, await request.json()))
        return web.Response(status=200 if secret == "s3cret_token" else 403)

    runner = await serve(hook)
    try:
        async with ptb(telegram) as bot:
            assert await bot.set_webhook(f"{base_of(runner)}/telegram", secret_token="s3cret_token")
            info = await bot.get_webhook_info()
            assert info.url == f"{base_of(runner)}/telegram"
            with pytest.raises(Conflict):
                await bot.get_updates()
            update = {
                "message": {
                    "message_id": 3,
                    "date": 0,
                    "chat": {"id": 5, "type": "private"},
                    "text": "hi",
                }
            }
            status, _ = await telegram.deliver(update)
            assert status == 200
            status, _ = await telegram.deliver(update, secret_token="forged")
            assert status == 403
            assert await bot.delete_webhook()
            assert await bot.get_updates(timeout=0) == ()
        assert [secret for secret, _ in received] == ["s3cret_token", "forged"]
        assert received[0][1]["message"]["text"] == "hi"
        assert received[0][1]["update_id"] != received[1][1]["update_id"]
    finally:
        await runner.cleanup()


async def test_injected_rate_limit_reaches_ptb(telegram: FakeTelegram) -> None:
    telegram.fail_next("sendMessage", 429, retry_after=3)
    async with ptb(telegram) as bot:
        with pytest.raises(RetryAfter):
            await bot.send_message(chat_id=42, text="ack")
        assert (await bot.send_message(chat_id=42, text="ack")).text == "ack"
    assert len(telegram.sent) == 1


async def test_raw_json_form_and_query_requests(telegram: FakeTelegram) -> None:
    api = f"{telegram.url}/bot{TG_TOKEN}"
    async with aiohttp.ClientSession() as session:
        body = {"chat_id": -1001234567890, "text": "hi", "reply_parameters": {"message_id": 5}}
        async with session.post(f"{api}/sendmessage", json=body) as response:
            result = await response.json()
        assert result["ok"] and result["result"]["chat"]["type"] == "supergroup"
        form = {
            "chat_id": "@support_channel",
            "text": "x",
            "reply_parameters": json.dumps({"message_id": 9}),
        }
        async with session.post(f"{api}/sendMessage", data=form) as response:
            assert (await response.json())["result"]["chat"]["type"] == "channel"
        async with session.get(f"{api}/sendMessage", params={"chat_id": "42", "text": " "}) as r:
            assert r.status == 400
            assert (await r.json())["description"] == "Bad Request: message text is empty"
        async with session.post(f"{api}/sendMessage", data={"text": "x"}) as response:
            assert (await response.json())["description"] == "Bad Request: chat_id is empty"
        async with session.post(
            f"{api}/sendMessage", data={"chat_id": "42", "text": "x" * 4097}
        ) as response:
            assert (await response.json())["description"] == "Bad Request: message is too long"
        async with session.post(f"{api}/noSuchMethod") as response:
            assert response.status == 404
    assert [(s.chat_id, s.reply_to_message_id) for s in telegram.sent] == [
        (-1001234567890, 5),
        ("@support_channel", 9),
    ]


# == Twilio =====================================================================================

SID = "AC" + "1" * 32
TW_TOKEN = "tw-auth-token"


BASIC = {"Authorization": "Basic " + base64.b64encode(f"{SID}:{TW_TOKEN}".encode()).decode()}


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TW_TOKEN) as fake:
        yield fake


def sync_client(fake: FakeTwilio, token: str = TW_TOKEN) -> Client:
    client = Client(SID, token)
    client.api.base_url = fake.url
    return client


async def test_real_twilio_client_creates_and_fetches_a_message(twilio: FakeTwilio) -> None:
    def send() -> tuple[Any, Any]:
        client = sync_client(twilio)
        created = client.messages.create(
            to="+15558675310",
            from_="+15017122661",
            body="Ticket T-1 received. We reply within 24 hours.",
            status_callback="https://gw.example.com/twilio/status",
        )
        return created, client.messages(created.sid).fetch()

    # The sync client blocks (requests), so it runs in a thread while the fake serves here.
    created, fetched = await asyncio.to_thread(send)
    assert re.fullmatch(r"SM[0-9a-f]{32}", created.sid)
    assert (created.status, created.num_segments, created.direction) == (
        "queued",
        "1",
        "outbound-api",
    )
    assert created.to == "+15558675310" and created.from_ == "+15017122661"
    assert created.date_created is not None
    assert fetched.sid == created.sid
    sms = twilio.messages[0]
    assert (sms.to, sms.from_, sms.status_callback) == (
        "+15558675310",
        "+15017122661",
        "https://gw.example.com/twilio/status",
    )


async def test_real_async_twilio_client(twilio: FakeTwilio) -> None:
    http_client = AsyncTwilioHttpClient()
    client = Client(SID, TW_TOKEN, http_client=http_client)
    client.api.base_url = twilio.url
    try:
        message = await client.messages.create_async(
            to="whatsapp:+8613800138000",
            from_="whatsapp:+14155238886",
            body="您的工单编号是 T-1",
        )
        assert message.status == "queued" and message.num_segments == "1"
        with pytest.raises(TwilioRestException) as info:
            await client.messages.create_async(to="+15558675310", from_="+15017122661")
        assert (info.value.status, info.value.code) == (400, 21602)
        twilio.opted_out.add("+15550000001")
        with pytest.raises(TwilioRestException) as info:
            await client.messages.create_async(to="+15550000001", from_="+1501", body="x")
        assert info.value.code == 21610
        twilio.fail_next(503, 20503, "Service Unavailable")
        with pytest.raises(TwilioRestException) as info:
            await client.messages.create_async(to="+15558675310", from_="+1501", body="x")
        assert info.value.status == 503
    finally:
        await http_client.close()
    assert [m.to for m in twilio.messages] == ["whatsapp:+8613800138000"]


async def test_wrong_credentials_are_refused(twilio: FakeTwilio) -> None:
    def send() -> None:
        sync_client(twilio, token="wrong").messages.create(to="+1555", from_="+1501", body="x")

    with pytest.raises(TwilioRestException) as info:
        await asyncio.to_thread(send)
    assert (info.value.status, info.value.code) == (401, 20003)
    assert twilio.messages == []


async def test_media_needs_credentials_and_redirects_to_the_bytes(twilio: FakeTwilio) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    url = twilio.add_media(png, "image/png")
    assert url.startswith(f"{twilio.url}/2010-04-01/Accounts/{SID}/Messages/MM")
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 401
        async with session.get(url, headers=BASIC) as response:
            assert response.status == 200
            assert response.content_type == "image/png"
            assert await response.read() == png
            assert len(response.history) == 1 and response.history[0].status == 307
        async with session.get(url + "0", headers=BASIC) as response:
            assert response.status == 404
    assert [(d.authorized, d.status) for d in twilio.downloads] == [
        (False, 401),
        (True, 307),
        (True, 404),
    ]


async def test_signed_webhooks_and_status_callbacks_verify(twilio: FakeTwilio) -> None:
    seen: list[dict[str, str]] = []

    async def gateway(request: web.Request) -> web.Response:
        form = await request.post()
        url = public_url(request.raw_path, request.headers)
        params = {k: str(v) for k, v in form.items()}
        if not verify_twilio_signature(
            TW_TOKEN, url, form, request.headers.get("X-Twilio-Signature")
        ):
            return web.Response(status=403)
        seen.append(params)
        if "MessageStatus" in params:
            return web.Response(body=render_twiml_empty(), content_type="text/xml")
        return web.Response(body=render_twiml_message("Ticket T-1"), content_type="text/xml")

    runner = await serve(gateway)
    try:
        url = f"{base_of(runner)}/twilio/sms?tenant=a%20b"
        params = parse_qsl(
            (CORPUS / "twilio" / "twilio_go_sms_inbound_real_capture.form").read_text(),
            keep_blank_values=True,
        )
        result = await twilio.post_webhook(url, params)
        assert result.status == 200 and b"<Message>Ticket T-1</Message>" in result.body
        assert seen[0]["Body"] == "twilio-go testing!"
        forged = await twilio.post_webhook(url, params, signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        assert forged.status == 403
        # Same signature as the client-side helper computes, posted by hand.
        async with aiohttp.ClientSession() as session:
            headers = signed_webhook(url, params, TW_TOKEN)
            async with session.post(url, data=params, headers=headers) as response:
                assert response.status == 200

        def send() -> str:
            client = sync_client(twilio)
            return client.messages.create(
                to="+15558675310",
                from_="+15017122661",
                body="x",
                status_callback=f"{base_of(runner)}/twilio/status",
            ).sid

        sid = await asyncio.to_thread(send)
        status = await twilio.deliver_status(sid, "delivered")
        assert status.status == 200
        assert seen[-1]["MessageSid"] == sid and seen[-1]["MessageStatus"] == "delivered"
    finally:
        await runner.cleanup()


# == WeChat =====================================================================================

WX_TOKEN = "wx-token"
APP_ID = "wx49f0ab532d5d035a"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"


class WeChatEndpoint:
    """A minimal Official Account endpoint built from the protocol module, for the fake to hit."""

    def __init__(self, crypto: WeChatCrypto | None) -> None:
        self.crypto = crypto
        self.received: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query
        if not check_signature(
            WX_TOKEN, q.get("timestamp", ""), q.get("nonce", ""), q.get("signature", "")
        ):
            return web.Response(status=403)
        if request.method == "GET":
            return web.Response(text=q.get("echostr", ""))
        try:
            fields = parse_push(await request.read(), 64 * 1024)
            if q.get("encrypt_type") == "aes":
                if self.crypto is None:
                    return web.Response(status=400)
                plain = self.crypto.decrypt(
                    q.get("msg_signature", ""), q["timestamp"], q["nonce"], fields["Encrypt"]
                )
                fields = parse_push(plain, 64 * 1024)
            push = to_push(fields)
        except Forbidden:
            return web.Response(status=403)
        except RejectedInput as exc:
            return web.Response(status=400, text=exc.reason)
        self.received.append(fields)
        if push.msg_type == "event":
            return web.Response(text="success")
        reply = render_text_reply(push.from_user, push.to_user, f"工单 T-1: {push.content}", 1)
        if q.get("encrypt_type") == "aes" and self.crypto is not None:
            reply = self.crypto.render_encrypted_reply(reply, q["nonce"], q["timestamp"])
        return web.Response(body=reply, content_type="application/xml")


@pytest.fixture
async def wechat_endpoint() -> AsyncIterator[tuple[str, WeChatEndpoint]]:
    endpoint = WeChatEndpoint(WeChatCrypto(WX_TOKEN, AES_KEY, APP_ID))
    runner = await serve(endpoint.handle)
    yield f"{base_of(runner)}/wechat", endpoint
    await runner.cleanup()


async def test_wechat_url_verification(wechat_endpoint: tuple[str, WeChatEndpoint]) -> None:
    url, _ = wechat_endpoint
    async with FakeWeChat(WX_TOKEN) as wechat:
        ok = await wechat.verify_url(url)
        assert ok.status == 200 and ok.echostr and ok.body == ok.echostr.encode()
        bad = await wechat.verify_url(url, token="other-token")
        assert bad.status == 403


async def test_wechat_plain_push_and_passive_reply(
    wechat_endpoint: tuple[str, WeChatEndpoint],
) -> None:
    url, endpoint = wechat_endpoint
    async with FakeWeChat(WX_TOKEN) as wechat:
        result = await wechat.push(url, {"MsgType": "text", "Content": "发票]]>问题", "MsgId": 42})
        assert result.status == 200 and result.elapsed < 5
        reply = wechat.read_reply(result)
        assert reply is not None
        assert (reply["ToUserName"], reply["FromUserName"]) == (wechat.openid, wechat.account)
        assert reply["Content"] == "工单 T-1: 发票]]>问题"
        assert endpoint.received[0]["MsgId"] == "42"
        assert result.query["openid"] == wechat.openid and "encrypt_type" not in result.query
        event = await wechat.push(url, {"MsgType": "event", "Event": "subscribe"})
        assert wechat.read_reply(event) is None


async def test_wechat_safe_mode_push_and_encrypted_reply(
    wechat_endpoint: tuple[str, WeChatEndpoint],
) -> None:
    url, endpoint = wechat_endpoint
    crypto = WeChatCrypto(WX_TOKEN, AES_KEY, APP_ID)
    async with FakeWeChat(WX_TOKEN) as wechat:
        result = await wechat.push(
            url, {"MsgType": "text", "Content": "confidential", "MsgId": 7}, safe_mode=crypto
        )
        assert result.query["encrypt_type"] == "aes" and result.query["msg_signature"]
        assert b"<Encrypt>" in result.sent and b"confidential" not in result.sent
        assert b"<Encrypt>" in result.body and b"confidential" not in result.body
        reply = wechat.read_reply(result)
        assert reply is not None and reply["Content"] == "工单 T-1: confidential"
        assert endpoint.received[-1]["Content"] == "confidential"
        with pytest.raises(Forbidden):
            wechat.read_reply(result, WeChatCrypto("other", AES_KEY, APP_ID))
        compat = await wechat.push(
            url, {"MsgType": "text", "Content": "both"}, safe_mode=crypto, compat=True
        )
        assert b"<Content><![CDATA[both]]></Content>" in compat.sent and b"<Encrypt>" in compat.sent
        assert wechat.read_reply(compat) is not None


async def test_wechat_corpus_pushes_reach_the_endpoint(
    wechat_endpoint: tuple[str, WeChatEndpoint],
) -> None:
    url, endpoint = wechat_endpoint
    names = sorted(p.name for p in (CORPUS / "wechat").glob("*.xml") if "encrypted" not in p.name)
    async with FakeWeChat(WX_TOKEN) as wechat:
        for name in names:
            result = await wechat.push(url, (CORPUS / "wechat" / name).read_bytes())
            assert result.status == 200, name
        as_json = (CORPUS / "wechat" / "skit_text_message_json_push_format.json").read_bytes()
        result = await wechat.push(url, as_json, data_format="json")
        assert result.status == 200 and wechat.read_reply(result) is not None
        fields = await wechat.push(
            url,
            {"MsgType": "text", "Content": "json", "MsgId": 9},
            data_format="json",
            safe_mode=endpoint.crypto,
        )
        assert fields.sent.startswith(b'{"ToUserName"') and fields.status == 200
    assert len(endpoint.received) == len(names) + 2


async def test_wechat_replayed_and_hostile_pushes(
    wechat_endpoint: tuple[str, WeChatEndpoint],
) -> None:
    url, _ = wechat_endpoint
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<xml><ToUserName>a</ToUserName><Content>&x;</Content></xml>"
    )
    async with FakeWeChat(WX_TOKEN) as wechat:
        refused = await wechat.push(url, xxe)
        assert refused.status == 400 and b"DTD" in refused.body
        first = await wechat.push(
            url, {"MsgType": "text", "Content": "a", "MsgId": 1}, timestamp="1700000000", nonce="42"
        )
        again = await wechat.push(
            url, {"MsgType": "text", "Content": "a", "MsgId": 1}, timestamp="1700000000", nonce="42"
        )
        assert first.query == again.query  # an exact replay, for idempotency tests
        forged = await wechat.push(url, {"MsgType": "text", "Content": "a"}, token="guessed")
        assert forged.status == 403
    assert FakeWeChat.read_reply(b"success") is None and FakeWeChat.read_reply(b"") is None

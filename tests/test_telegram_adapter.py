"""The telegram adapter in webhook and long-polling mode, with the Bot API fake and real PTB."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTelegram
from gateway.testing.fakes.telegram import SentMessage
from gateway.testing.harness import outbox_settled, read_events
from tests.conftest import MakeGateway

CORPUS = Path(__file__).parent / "corpus" / "telegram"
TOKEN = "555000111:telegram-test-token"
BOT_ID = 555000111
SECRET = "telegram-webhook-secret_1"
os.environ["INTAKE_TEST_TELEGRAM_TOKEN"] = TOKEN
os.environ["INTAKE_TEST_TELEGRAM_SECRET"] = SECRET

_ids = iter(range(1, 10**6))


def toml(fake: FakeTelegram, *, extra: str = "", intake: str = "") -> str:
    return (f"[intake]\n{intake}\n[adapters.telegram]\nenabled = true\n"
            'token_env = "INTAKE_TEST_TELEGRAM_TOKEN"\n'
            'secret_token_env = "INTAKE_TEST_TELEGRAM_SECRET"\n'
            f'api_base_url = "{fake.url}"\n{extra}\n')


def message(chat: int, text: str | None = "hello", *, key: str = "message",
            **fields: Any) -> dict[str, Any]:
    """An update carrying a private-chat message from user ``chat``."""
    msg: dict[str, Any] = {
        "message_id": next(_ids), "date": int(time.time()),
        "chat": {"id": chat, "type": "private", "first_name": "Mei"},
        "from": {"id": chat, "is_bot": False, "first_name": "Mei", "last_name": "Lin",
                 "language_code": "zh-hans"},
        **fields,
    }
    if text is not None:
        msg["text"] = text
    return {"update_id": next(_ids), key: msg}


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def gw(make_gateway: MakeGateway, telegram: FakeTelegram) -> Gateway:
    return await make_gateway(toml(telegram))


async def deliver(fake: FakeTelegram, gw: Gateway, update: dict[str, Any],
                  secret: str = SECRET) -> int:
    status, _ = await fake.deliver(update, url=f"{gw.url}/telegram/webhook", secret_token=secret)
    return status


async def events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return result


async def wait_events(gw: Gateway, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = await events(gw)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def replies(fake: FakeTelegram, chat: int) -> list[SentMessage]:
    return [m for m in fake.sent if m.chat_id == chat]


# -- webhook -------------------------------------------------------------------------------------


async def test_message_is_acknowledged_as_a_reply_in_the_chat(
        gw: Gateway, telegram: FakeTelegram) -> None:
    update = message(4242, "我的快递显示已签收，但我没有收到")
    assert await deliver(telegram, gw, update) == 200
    [ack] = await until(lambda: replies(telegram, 4242))
    assert ack.reply_to_message_id == update["message"]["message_id"]
    got = await wait_events(gw, 2)
    assert [e["type"] for e in got] == ["ticket.created", "ack.sent"]
    assert got[0]["subject"] in ack.text and "工单编号" in ack.text
    data = got[0]["data"]
    assert data["contact"]["chat_ids"] == {"telegram": "4242"}
    assert data["contact"]["name"] == "Mei Lin"
    assert data["message"]["locale"] == "zh-hans"
    assert got[1]["data"]["provider_message_id"] == f"telegram:4242:{ack.message['message_id']}"


async def test_missing_or_wrong_secret_token_is_refused(
        gw: Gateway, telegram: FakeTelegram) -> None:
    assert await deliver(telegram, gw, message(7, "refund me"), secret="") == 403
    assert await deliver(telegram, gw, message(7, "refund me"), secret="wrong-secret") == 403
    assert await deliver(telegram, gw, message(7, "refund me"), secret=SECRET + "x") == 403
    # A good update after them: once it is answered, anything the refused ones had set off
    # would have shown too (the gateway works through both in the same way).
    assert await deliver(telegram, gw, message(8, "my order is late")) == 200
    await until(lambda: replies(telegram, 8))
    await outbox_settled(gw)
    assert [m.chat_id for m in telegram.sent] == [8]
    assert {e["data"]["contact"]["chat_ids"]["telegram"] for e in await events(gw)
            if e["type"] == "ticket.created"} == {"8"}


async def test_a_redelivered_update_makes_one_ticket_and_one_reply(
        gw: Gateway, telegram: FakeTelegram) -> None:
    update = message(99, "The app crashes on start")
    assert await deliver(telegram, gw, update) == 200
    assert await deliver(telegram, gw, update) == 200
    await until(lambda: replies(telegram, 99))
    await outbox_settled(gw)
    assert len(replies(telegram, 99)) == 1
    assert [e["type"] for e in await events(gw)] == ["ticket.created", "ack.sent"]


async def test_photos_documents_and_voice_notes_become_attachments(
        gw: Gateway, telegram: FakeTelegram) -> None:
    small, large = b"\xff\xd8small", b"\xff\xd8" + b"L" * 5000
    telegram.add_file("photo-small", small, "photos/file_1.jpg")
    telegram.add_file("photo-large", large, "photos/file_2.jpg")
    photo = message(11, None, caption="Screen is cracked", photo=[
        {"file_id": "photo-small", "file_unique_id": "s", "file_size": len(small),
         "width": 90, "height": 90},
        {"file_id": "photo-large", "file_unique_id": "l", "file_size": len(large),
         "width": 1280, "height": 960}])
    assert await deliver(telegram, gw, photo) == 200
    pdf = b"%PDF-1.7\n" + b"p" * 2000
    telegram.add_file("doc-1", pdf, "documents/file_3.pdf")
    doc = message(12, None, document={"file_id": "doc-1", "file_unique_id": "d1",
                                      "file_name": "合同.pdf", "mime_type": "application/pdf",
                                      "file_size": len(pdf)})
    assert await deliver(telegram, gw, doc) == 200
    ogg = b"OggS" + b"v" * 700
    telegram.add_file("voice-1", ogg, "voice/file_4.oga")
    voice = message(13, None, voice={"file_id": "voice-1", "file_unique_id": "v1",
                                     "duration": 3, "mime_type": "audio/ogg"})
    assert await deliver(telegram, gw, voice) == 200
    got = [e for e in await events(gw) if e["type"] == "ticket.created"]
    assert len(got) == 3
    shot, contract, note = (e["data"]["message"] for e in got)
    assert shot["text"] == "Screen is cracked"
    assert [(a["content_type"], a["size"]) for a in shot["attachments"]] == [
        ("image/jpeg", len(large))]
    assert [(a["name"], a["content_type"]) for a in contract["attachments"]] == [
        ("合同.pdf", "application/pdf")]
    assert note["text"] == "" and note["attachments"][0]["content_type"] == "audio/ogg"
    assert gw.attachments.path_of(note["attachments"][0]["sha256"]).read_bytes() == ogg
    # Only the largest photo size was downloaded.
    assert [d.file_path for d in telegram.downloads] == [
        "photos/file_2.jpg", "documents/file_3.pdf", "voice/file_4.oga"]


async def test_a_file_that_cannot_be_fetched_is_recorded_not_lost(
        gw: Gateway, telegram: FakeTelegram) -> None:
    update = message(14, None, document={"file_id": "gone", "file_name": "x.pdf",
                                         "file_size": 10})
    assert await deliver(telegram, gw, update) == 200
    [event] = [e for e in await events(gw) if e["type"] == "ticket.created"]
    msg = event["data"]["message"]
    assert msg["text"] == "[document]"
    assert "invalid file_id" in msg["metadata"]["telegram.document"].lower()


async def test_a_shared_own_contact_links_the_phone(gw: Gateway, telegram: FakeTelegram) -> None:
    own = message(21, None, contact={"phone_number": "8613912340021", "first_name": "Mei",
                                     "user_id": 21})
    assert await deliver(telegram, gw, own) == 200
    [created] = [e for e in await events(gw) if e["type"] == "ticket.created"]
    assert created["data"]["contact"]["phone"] == "+8613912340021"
    # The same person through the API by phone is the same contact.
    async with aiohttp.ClientSession() as s, s.post(f"{gw.url}/v1/messages", json={
            "contact": {"phone": "+8613912340021"}, "text": "Different question by API"}) as r:
        assert r.status in (200, 201)
    later = [e for e in await events(gw) if e["type"].startswith("ticket.")][-1]
    assert later["data"]["contact"]["id"] == created["data"]["contact"]["id"]
    # Someone else's contact card is content, not an identity.
    other = message(22, None, contact={"phone_number": "+8613700000022", "first_name": "Bo",
                                       "user_id": 999})
    assert await deliver(telegram, gw, other) == 200
    last = [e for e in await events(gw) if e["type"] == "ticket.created"][-1]
    assert "phone" not in last["data"]["contact"]
    assert "+8613700000022" in last["data"]["message"]["text"]


async def test_an_edited_message_is_a_follow_up(gw: Gateway, telegram: FakeTelegram) -> None:
    first = message(31, "Order 55 arrived damaged")
    assert await deliver(telegram, gw, first) == 200
    edit = {"update_id": next(_ids), "edited_message": {
        **first["message"], "text": "Order 56 arrived damaged", "edit_date": int(time.time())}}
    assert await deliver(telegram, gw, edit) == 200
    got = [e for e in await events(gw) if e["type"].startswith("ticket.")]
    assert [e["type"] for e in got] == ["ticket.created", "ticket.message_added"]
    assert got[1]["subject"] == got[0]["subject"]
    assert got[1]["data"]["message"]["metadata"]["telegram.edited"] == "true"


async def test_a_reply_to_our_acknowledgement_joins_its_ticket_after_the_window(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(toml(telegram, intake='chat_followup_window = "0s"'))
    assert await deliver(telegram, gw, message(41, "Login does not work")) == 200
    [ack] = await until(lambda: replies(telegram, 41))
    reply = message(41, "I tried another browser too", reply_to_message={
        "message_id": ack.message["message_id"], "date": ack.message["date"],
        "chat": {"id": 41, "type": "private"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Intake Test Bot"},
        "text": ack.text})
    assert await deliver(telegram, gw, reply) == 200
    got = [e for e in await events(gw) if e["type"].startswith("ticket.")]
    assert [e["type"] for e in got] == ["ticket.created", "ticket.message_added"]
    assert got[1]["data"]["matched_by"] == "reply_header"


async def test_start_is_welcomed_without_a_ticket_and_groups_are_ignored(
        gw: Gateway, telegram: FakeTelegram) -> None:
    assert await deliver(telegram, gw, message(51, "/start")) == 200
    [welcome] = await until(lambda: replies(telegram, 51))
    assert "工单" in welcome.text
    group = message(52, "hello everyone")
    group["message"]["chat"] = {"id": -100123, "type": "supergroup", "title": "Fans"}
    assert await deliver(telegram, gw, group) == 200
    # A private message after the group's: once its ticket is there, the group's would be too.
    assert await deliver(telegram, gw, message(53, "where is my parcel")) == 200
    await until(lambda: replies(telegram, 53))
    created = [e for e in await events(gw) if e["type"] == "ticket.created"]
    assert [e["data"]["contact"]["chat_ids"]["telegram"] for e in created] == ["53"]


async def test_malformed_updates_get_400(gw: Gateway, telegram: FakeTelegram) -> None:
    url = f"{gw.url}/telegram/webhook"
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        for body in (b"{not json", b"[]", b'{"update_id": "x"}',
                     b'{"update_id": 1, "message": {"chat": 5}}'):
            async with s.post(url, data=body, headers=headers) as r:
                assert r.status == 400, body
    assert await events(gw) == []


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.json")))
async def test_every_corpus_update_is_handled(
        gw: Gateway, telegram: FakeTelegram, name: str) -> None:
    body = (CORPUS / name).read_bytes()
    url = f"{gw.url}/telegram/webhook"
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        status = r.status
    tickets = [e for e in await events(gw) if e["type"] == "ticket.created"]
    if "getupdates_envelope" in name:
        assert status == 400, "a getUpdates answer is not a webhook body"
    elif "callback_query" in name or "/start" in body.decode() or "write_access" in name:
        assert status == 200 and tickets == []  # nothing a customer asked
    else:
        assert status == 200 and len(tickets) == 1, name


# -- acknowledgement failures --------------------------------------------------------------------


async def test_rate_limited_reply_is_retried(gw: Gateway, telegram: FakeTelegram) -> None:
    telegram.fail_next("sendMessage", 429, retry_after=1)
    assert await deliver(telegram, gw, message(61, "Payment failed twice")) == 200
    got = await wait_events(gw, 2, timeout=15)
    assert [e["type"] for e in got] == ["ticket.created", "ack.sent"]
    assert len(replies(telegram, 61)) == 1


async def test_blocked_bot_is_a_permanent_failure(gw: Gateway, telegram: FakeTelegram) -> None:
    telegram.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")
    assert await deliver(telegram, gw, message(62, "Where is my refund?")) == 200
    got = await wait_events(gw, 2)
    assert got[-1]["type"] == "ack.failed" and "blocked" in got[-1]["data"]["reason"]


# -- registration and long polling ---------------------------------------------------------------


async def test_webhook_is_registered_with_its_secret(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    await make_gateway(toml(telegram,
                            extra='webhook_url = "https://bot.example.com/telegram/webhook"'))
    await until(lambda: telegram.webhook_url)
    assert telegram.webhook_url == "https://bot.example.com/telegram/webhook"
    assert telegram.webhook_secret == SECRET
    assert telegram.allowed_updates == ["message", "edited_message"]


async def test_long_polling_takes_updates_and_confirms_them(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    telegram.webhook_url = "https://old.example.com/hook"  # a webhook left from before
    gw = await make_gateway(toml(telegram, extra='mode = "polling"\npoll_timeout = 1\n'))
    first = message(71, "Polling works?")
    telegram.push_update(first)
    [ack] = await until(lambda: replies(telegram, 71))
    assert ack.reply_to_message_id == first["message"]["message_id"]
    assert any(c.method.lower() == "deletewebhook" for c in telegram.calls)
    # An update the adapter cannot read is skipped; the next one still arrives.
    telegram.push_update({"update_id": next(_ids), "message": {"message_id": 1, "text": "x"}})
    telegram.fail_next("getUpdates", 429, retry_after=1)
    telegram.push_update(message(72, "Second customer by polling"))
    await until(lambda: replies(telegram, 72), timeout=15)
    await until(lambda: telegram.pending_updates == [], timeout=5)
    assert [e["type"] for e in await events(gw) if e["type"] == "ticket.created"] == [
        "ticket.created"] * 2


async def test_polling_mode_has_no_webhook_route(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(toml(telegram, extra='mode = "polling"\npoll_timeout = 1\n'))
    status, _ = await telegram.deliver(message(81, "hi"), url=f"{gw.url}/telegram/webhook",
                                       secret_token=SECRET)
    assert status in (404, 405)


def test_corpus_is_what_the_tests_read() -> None:
    # Guards the parametrization above against an empty glob.
    assert len(list(CORPUS.glob("*.json"))) == 11
    assert all(isinstance(json.loads(p.read_bytes()), dict) for p in CORPUS.glob("*.json"))

"""The live chat end to end: a real gateway (SQLite store), its WebSocket and HTTP fallback.

Every outcome is read from the event feed; the conversation from the chat's own catch-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.plugin import check_adapter
from gateway.runtime import Gateway
from gateway.testing.drivers_webchat import SITE, webchat_toml
from gateway.testing.harness import read_events
from intake_adapters.webchat import DeliveryResult, ReplyFallback, WebchatAdapter
from intake_adapters.webchat.session import identity_signature
from tests.conftest import MakeGateway

ORIGIN = "https://shop.example.com"
IDENTITY_SECRET = "site-identity-secret-for-tests"
os.environ["INTAKE_TEST_WEBCHAT_IDENTITY"] = IDENTITY_SECRET


def _toml(window: str = "10m", extra: str = "") -> str:
    table = webchat_toml(extra=extra,
                         site_extra='identity_secret_env = "INTAKE_TEST_WEBCHAT_IDENTITY"\n')
    table = table.replace('allowed_origins = ["http://127.0.0.1"]',
                          f'allowed_origins = ["{ORIGIN}"]')
    return f'[intake]\nchat_followup_window = "{window}"\n' + table


def _cid() -> str:
    return uuid.uuid4().hex


def adapter_of(gw: Gateway) -> WebchatAdapter:
    found = [a for a in gw.adapters if isinstance(a, WebchatAdapter)]
    assert found, "the webchat adapter is not running"
    return found[0]


class Visitor:
    """One visitor: a session token, and a WebSocket when connected."""

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway, token: str, sid: str) -> None:
        self.http, self.gw, self.token, self.sid = http, gw, token, sid
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Origin": ORIGIN}

    async def connect(self, after: int = 0) -> dict[str, Any]:
        self.ws = await self.http.ws_connect(f"{self.gw.url}/webchat/v1/ws?site={SITE}",
                                             headers={"Origin": ORIGIN})
        await self.ws.send_json({"type": "auth", "token": self.token, "after": after})
        ready = await self.ws.receive_json(timeout=5)
        assert ready["type"] == "ready", ready
        return dict(ready)

    async def frame(self) -> dict[str, Any]:
        assert self.ws is not None
        return dict(await self.ws.receive_json(timeout=10))

    async def say(self, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Send over the WebSocket; return the entry of its ``ack`` frame."""
        assert self.ws is not None
        cid = client_id or _cid()
        await self.ws.send_json({"type": "message", "client_id": cid, "text": text})
        while True:
            frame = await self.frame()
            if frame["type"] == "ack" and frame["client_id"] == cid:
                return dict(frame["entry"])
            if frame["type"] == "error":
                raise AssertionError(frame)

    async def post(self, text: str, client_id: str | None = None) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.gw.url}/webchat/v1/messages", headers=self.auth,
                                  json={"client_id": client_id or _cid(), "text": text}) as r:
            return r.status, await r.json()

    async def history(self, after: int = 0, wait: int = 0) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.gw.url}/webchat/v1/messages",
                                 params={"after": after, "wait": wait}, headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return list((await r.json())["entries"])


async def open_session(http: aiohttp.ClientSession, gw: Gateway, **fields: Any) -> Visitor:
    async with http.post(f"{gw.url}/webchat/v1/sessions", headers={"Origin": ORIGIN},
                         json={"site": SITE, "locale": "zh-CN", **fields}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        return Visitor(http, gw, body["token"], body["session_id"])


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway(_toml())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _types(http: aiohttp.ClientSession, gw: Gateway) -> list[str]:
    return [str(e["type"]) for e in await read_events(http, gw.url)
            if not str(e["type"]).startswith("ack.")]


def test_declarations_pass_the_plugin_check() -> None:
    check_adapter(WebchatAdapter)


async def test_ws_message_is_answered_with_ticket_and_due_time(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.connect()
    entry = await v.say("我的路由器从今天早上开始就没有网络了。")
    assert entry["outcome"] == "created"
    number = entry["ticket_number"]
    assert gw.intake.numbering.parse(number)
    assert number in entry["ack"] and entry["due_text"]
    assert "工单" in entry["ack"]  # in the visitor's language (zh-CN)
    events = await read_events(http, gw.url)
    created = [e for e in events if e["type"] == "ticket.created"]
    assert [e["subject"] for e in created] == [number]
    data: Any = created[0]["data"]
    assert data["contact"]["chat_ids"] == {"webchat": f"{SITE}:s:{v.sid}"}
    assert data["message"]["channel"] == "webchat"


async def test_second_message_in_the_window_is_a_followup(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.connect()
    first = await v.say("The invoice for May is wrong.")
    second = await v.say("It charges me twice for the router.")
    assert second["outcome"] == "followup"
    assert second["ticket_number"] == first["ticket_number"]
    assert await _types(http, gw) == ["ticket.created", "ticket.message_added"]
    # Another visitor writing the same words is a ticket of its own.
    other = await open_session(http, gw)
    status, body = await other.post("It charges me twice for the router.")
    assert status == 200 and body["entry"]["ticket_number"] != first["ticket_number"]


async def test_a_resent_message_is_neither_lost_nor_doubled(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    cid = _cid()
    status, first = await v.post("Please cancel order 1234.", client_id=cid)
    assert status == 200
    await v.connect()
    again = await v.say("Please cancel order 1234.", client_id=cid)  # resent on the socket
    assert again == first["entry"]
    assert [e["seq"] for e in await v.history()] == [1]
    assert await _types(http, gw) == ["ticket.created"]


async def test_catch_up_after_reconnect_and_restart(make_gateway: MakeGateway, tmp_path: Path,
                                                    http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(_toml(), data_dir=tmp_path / "gw")
    v = await open_session(http, gw)
    await v.connect()
    await v.say("Hello, my parcel has not arrived.")
    assert v.ws is not None
    await v.ws.close()
    # While disconnected, a reply arrives: kept for catch-up.
    result = await adapter_of(gw).deliver_reply(f"{SITE}:s:{v.sid}", "We are on it.",
                                                reply_id="r-1")
    assert result.status == "queued"
    ready = await v.connect(after=1)
    assert ready["last_seq"] == 2
    caught = await v.frame()
    assert caught["type"] == "entry" and caught["entry"]["text"] == "We are on it."
    await gw.stop()
    gw2 = await make_gateway(_toml(), data_dir=tmp_path / "gw")
    v2 = Visitor(http, gw2, v.token, v.sid)
    entries = await v2.history()
    assert [(e["seq"], e["kind"]) for e in entries] == [(1, "visitor"), (2, "reply")]


async def test_reply_reaches_a_connected_visitor_live_once(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.connect()
    entry = await v.say("Where is my refund?")
    adapter = adapter_of(gw)
    address = f"{SITE}:s:{v.sid}"
    got = await adapter.deliver_reply(address, "Refunded today.", reply_id="rep-9",
                                      ticket_number=entry["ticket_number"])
    assert got == DeliveryResult(status="live", sessions=[v.sid])
    frame = await v.frame()
    assert frame["entry"]["kind"] == "reply" and frame["entry"]["reply_id"] == "rep-9"
    again = await adapter.deliver_reply(address, "Refunded today.", reply_id="rep-9")
    assert again.status == "duplicate"
    assert [e["kind"] for e in await v.history()] == ["visitor", "reply"]


async def test_http_long_poll_receives_a_reply(gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    await v.post("Is the shop open on Sunday?")
    poll = asyncio.create_task(v.history(after=1, wait=20))
    await asyncio.sleep(0)  # the poll is sent before the reply is delivered, or it returns at once
    await adapter_of(gw).deliver_reply(f"{SITE}:s:{v.sid}", "Yes, 10 to 18.", reply_id="p1")
    entries = await asyncio.wait_for(poll, 20)
    assert [e["text"] for e in entries] == ["Yes, 10 to 18."]


async def test_unseen_reply_falls_back_to_email(make_gateway: MakeGateway,
                                                http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(_toml(extra='reply_fallback_delay = "1s"\n'))
    adapter = adapter_of(gw)
    sent: list[ReplyFallback] = []
    fired = asyncio.Event()

    async def fallback(item: ReplyFallback) -> None:
        sent.append(item)
        fired.set()

    adapter.reply_fallback = fallback
    away = await open_session(http, gw, email="Li.Wei@Example.com")
    await away.post("Please call me back.")
    result = await adapter.deliver_reply(f"{SITE}:s:{away.sid}", "Called you.", reply_id="f1")
    assert result.status == "queued" and result.fallback_at
    await asyncio.wait_for(fired.wait(), 10)
    assert [(s.email, s.text, s.reply_id) for s in sent] == [
        ("li.wei@example.com", "Called you.", "f1")]
    # A visitor who reads the reply in the chat in time gets no email.
    seen = await open_session(http, gw, email="zhang@example.com")
    await seen.post("Another question.")
    await adapter.deliver_reply(f"{SITE}:s:{seen.sid}", "Answered.", reply_id="f2")
    assert [e["text"] for e in await seen.history(after=1)] == ["Answered."]
    third = await open_session(http, gw, email="wang@example.com")
    await third.post("Third question.")
    fired.clear()
    await adapter.deliver_reply(f"{SITE}:s:{third.sid}", "Third answer.", reply_id="f3")
    await asyncio.wait_for(fired.wait(), 10)  # f3 fired after f2's time passed: f2 was seen
    assert [s.reply_id for s in sent] == ["f1", "f3"]


async def test_reply_to_an_unknown_address_is_not_found(gw: Gateway) -> None:
    from gateway.errors import NotFound

    with pytest.raises(NotFound):
        await adapter_of(gw).deliver_reply(f"{SITE}:s:{'x' * 22}", "hi", reply_id="r")
    with pytest.raises(NotFound):
        await adapter_of(gw).deliver_reply("nosuchsite:s:abc", "hi", reply_id="r")


async def test_signed_identity_makes_a_verified_contact(gw: Gateway,
                                                        http: aiohttp.ClientSession) -> None:
    sig = identity_signature(IDENTITY_SECRET.encode(), "user-42", "li@example.com")
    v = await open_session(http, gw, identity={"user_id": "user-42", "email": "li@example.com",
                                               "signature": sig, "name": "Li"})
    status, _ = await v.post("My account is locked.")
    assert status == 200
    events = await read_events(http, gw.url)
    contact: Any = events[0]["data"]
    contact = contact["contact"]
    assert contact["email"] == "li@example.com"
    assert contact["chat_ids"] == {"webchat": f"{SITE}:u:user-42"}
    message: Any = events[0]["data"]
    assert message["message"]["verified_by"] == "webchat-identity"
    # The reply path addresses the user: every session of that user gets it.
    got = await adapter_of(gw).deliver_reply(f"{SITE}:u:user-42", "Unlocked.", reply_id="u1")
    assert got.sessions == [v.sid]
    for bad in ({"user_id": "user-42", "email": "other@example.com", "signature": sig},
                {"user_id": "user-43", "email": "li@example.com", "signature": sig},
                {"user_id": "user-42", "email": "li@example.com", "signature": "00" * 32}):
        async with http.post(f"{gw.url}/webchat/v1/sessions", headers={"Origin": ORIGIN},
                             json={"site": SITE, "identity": bad}) as resp:
            assert resp.status == 403, bad


async def test_typed_email_is_a_claim_not_an_identity(gw: Gateway,
                                                      http: aiohttp.ClientSession) -> None:
    # A verified customer has a ticket; a visitor typing their email learns nothing of it.
    sig = identity_signature(IDENTITY_SECRET.encode(), "u-7", "victim@example.com")
    victim = await open_session(http, gw, identity={
        "user_id": "u-7", "email": "victim@example.com", "signature": sig})
    _, first = await victim.post("My order 5555 is late.")
    number = first["entry"]["ticket_number"]
    thief = await open_session(http, gw, email="victim@example.com")
    _, got = await thief.post(f"About {number}: My order 5555 is late.")
    assert got["entry"]["outcome"] == "created" and got["entry"]["ticket_number"] != number
    assert number not in got["entry"]["ack"]
    events = await read_events(http, gw.url)
    data: Any = events[-1]["data"]
    assert "email" not in data["contact"]
    assert data["message"]["metadata"]["webchat.claimed_email"] == "victim@example.com"


async def test_tokens_are_checked_and_revocable(gw: Gateway, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    forged = v.token[:-4] + ("AAAA" if not v.token.endswith("AAAA") else "BBBB")
    for token in (forged, "v1.x", "", "v1." + SITE + ".short.1.sig"):
        async with http.get(f"{gw.url}/webchat/v1/session",
                            headers={"Authorization": f"Bearer {token}", "Origin": ORIGIN}) as r:
            assert r.status == 401, token
            assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN
    await v.connect()
    async with http.delete(f"{gw.url}/webchat/v1/session", headers=v.auth) as r:
        assert r.status == 200
    assert v.ws is not None
    closed = await v.ws.receive(timeout=5)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert v.ws.close_code == 4001
    status, _ = await v.post("still here?")
    assert status == 401


async def test_origins_are_checked(make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    # A site for web pages only (no allow_apps): no Origin, or another origin, is refused.
    toml = _toml().replace("allow_apps = true\n", "")
    gw = await make_gateway(toml)
    for headers in ({"Origin": "https://evil.example"}, {}):
        async with http.post(f"{gw.url}/webchat/v1/sessions", headers=headers,
                             json={"site": SITE}) as r:
            assert r.status == 403, headers
            assert "Access-Control-Allow-Origin" not in r.headers
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(f"{gw.url}/webchat/v1/ws?site={SITE}", headers=headers)
        assert exc.value.status == 403
    async with http.options(f"{gw.url}/webchat/v1/messages", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.options(f"{gw.url}/webchat/v1/messages",
                            headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403


async def test_attachment_is_stored_with_the_message(gw: Gateway,
                                                     http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    async with http.post(f"{gw.url}/webchat/v1/uploads", data=b"\x89PNG fake screenshot",
                         headers=v.auth | {"X-Filename": "%E6%88%AA%E5%9B%BE.png",
                                           "Content-Type": "image/png"}) as r:
        assert r.status == 200
        upload = await r.json()
    async with http.post(f"{gw.url}/webchat/v1/messages", headers=v.auth, json={
            "client_id": _cid(), "text": "See the screenshot",
            "attachments": [upload["upload_id"]]}) as r:
        assert r.status == 200
        entry = (await r.json())["entry"]
    assert entry["attachments"] == ["截图.png"]
    events = await read_events(http, gw.url)
    data: Any = events[0]["data"]
    assert [a["name"] for a in data["message"]["attachments"]] == ["截图.png"]
    other = await open_session(http, gw)  # an upload id is only good in its own chat
    async with http.post(f"{gw.url}/webchat/v1/messages", headers=other.auth, json={
            "client_id": _cid(), "text": "x", "attachments": [upload["upload_id"]]}) as r:
        assert r.status == 400


async def test_widget_is_served_with_its_texts(gw: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gw.url}/webchat/widget.js") as r:
        assert r.status == 200 and r.content_type == "application/javascript"
        js = await r.text()
    texts = json.loads(js.split("var INTAKE_WEBCHAT_TEXTS=", 1)[1].split(";\n", 1)[0])
    assert set(texts) == {"en", "zh-CN", "zh-TW"}
    async with http.get(f"{gw.url}/webchat/widget.css") as r:
        assert r.status == 200 and r.content_type == "text/css"


async def test_rate_and_size_limits(make_gateway: MakeGateway,
                                    http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(_toml(extra=(
        "message_rate = 3\nsession_rate = 4\nmax_message_chars = 50\n"
        "max_frame_bytes = 2048\nmax_connections_per_ip = 2\n"
        'auth_timeout = "1s"\n')))
    v = await open_session(http, gw)
    for n in range(3):
        status, _ = await v.post(f"message number {n}")
        assert status == 200
    async with http.post(f"{gw.url}/webchat/v1/messages", headers=v.auth,
                         json={"client_id": _cid(), "text": "one too many"}) as r:
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    other = await open_session(http, gw)  # the limit is per session
    status, body = await other.post("x" * 51)
    assert status == 413 and body["field"] == "text"
    async with http.post(f"{gw.url}/webchat/v1/messages", headers=other.auth,
                         data=b"{" + b" " * 3000 + b"}") as r:
        assert r.status == 413
    for _ in range(2):  # four sessions per window from one address, two were opened above
        await open_session(http, gw)
    async with http.post(f"{gw.url}/webchat/v1/sessions", headers={"Origin": ORIGIN},
                         json={"site": SITE}) as r:
        assert r.status == 429

    # WebSocket: a frame over the limit closes with 1009; bad frames are answered, then cut.
    await other.connect()
    assert other.ws is not None
    await other.ws.send_str('{"type": "message", "text": "' + "x" * 3000 + '"}')
    closed = await other.ws.receive(timeout=5)
    assert closed.type == aiohttp.WSMsgType.CLOSE and other.ws.close_code == 1009
    await other.connect()
    for _ in range(10):
        await other.ws.send_str("not json")
        frame = await other.ws.receive(timeout=5)
        assert json.loads(frame.data)["status"] == 400
    closed = await other.ws.receive(timeout=5)
    assert closed.type == aiohttp.WSMsgType.CLOSE and other.ws.close_code == 1008
    # No auth frame within auth_timeout: closed 4001. Two open sockets per address at most.
    idle = await http.ws_connect(f"{gw.url}/webchat/v1/ws?site={SITE}",
                                 headers={"Origin": ORIGIN})
    second = await http.ws_connect(f"{gw.url}/webchat/v1/ws?site={SITE}",
                                   headers={"Origin": ORIGIN})
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(f"{gw.url}/webchat/v1/ws?site={SITE}", headers={"Origin": ORIGIN})
    assert exc.value.status == 429
    closed = await idle.receive(timeout=5)
    assert closed.type == aiohttp.WSMsgType.CLOSE and idle.close_code == 4001
    await second.close()


async def test_config_errors_name_the_key(make_gateway: MakeGateway) -> None:
    from gateway.errors import ConfigError

    base = _toml()
    for broken, words in (
            (base.replace('session_secret_env = "INTAKE_CONTRACT_WEBCHAT_SECRET"\n', ""),
             "session_secret_env"),
            (base.replace(f'key = "{SITE}"', 'key = "short"'), "sites[0].key"),
            (base.replace(f'allowed_origins = ["{ORIGIN}"]',
                          'allowed_origins = ["https://shop.example.com/path"]'),
             "allowed_origins"),
            (base.replace("enabled = true\n", 'enabled = true\nmessage_rate = 0\n', 1)
             .replace('[intake]\nchat_followup_window = "10m"\n', ""), "message_rate")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            await make_gateway(broken)


async def test_revocation_and_pending_fallbacks_survive_a_restart(
        make_gateway: MakeGateway, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    toml = _toml(extra='reply_fallback_delay = "2s"\n')
    gw = await make_gateway(toml, data_dir=tmp_path / "gw")
    gone = await open_session(http, gw)
    async with http.delete(f"{gw.url}/webchat/v1/session", headers=gone.auth) as r:
        assert r.status == 200
    away = await open_session(http, gw, phone="+8613800138000")
    await away.post("Please call me.")
    await adapter_of(gw).deliver_reply(f"{SITE}:s:{away.sid}", "We called.", reply_id="k1")
    await gw.stop()  # before the fallback is due

    gw2 = await make_gateway(toml, data_dir=tmp_path / "gw")
    sent: list[ReplyFallback] = []
    adapter_of(gw2).reply_fallback = _append_to(sent)
    status, _ = await Visitor(http, gw2, gone.token, gone.sid).post("back again")
    assert status == 401
    async with http.get(f"{gw2.url}/webchat/v1/session", headers=gone.auth) as r:
        assert r.status == 401
    await _until(lambda: sent)
    assert [(s.phone, s.reply_id) for s in sent] == [("+8613800138000", "k1")]


def _append_to(sink: list[ReplyFallback]) -> Any:
    async def fallback(item: ReplyFallback) -> None:
        sink.append(item)
    return fallback


async def _until(check: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_revocation_on_one_replica_holds_on_another(
        make_gateway: MakeGateway, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # Two gateways on one store, as two replicas: B has the session cached when A revokes it.
    a = await make_gateway(_toml(), data_dir=tmp_path / "shared")
    b = await make_gateway(_toml(), data_dir=tmp_path / "shared")
    v = await open_session(http, a)
    on_b = Visitor(http, b, v.token, v.sid)
    status, _ = await on_b.post("Hello from replica B.")
    assert status == 200
    async with http.delete(f"{a.url}/webchat/v1/session", headers=v.auth) as r:
        assert r.status == 200
    status, _ = await on_b.post("Still me?")
    assert status == 401

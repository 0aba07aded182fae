"""A visitor chats in headless Chromium on a page that embeds the widget with one script tag.

The page is served by its own local server (its own origin, allowed in the site's config), as a
company's website would be; the widget, its styles and the protocol come from the gateway.
Screenshots are decoded and their pixels checked, not only written.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.runtime import Gateway
from gateway.testing.drivers_webchat import SITE, webchat_toml
from gateway.testing.services import unavailable
from intake_adapters.webchat import WebchatAdapter
from tests.conftest import MakeGateway
from tests.test_replies import post_reply

REPLIES_SECRET = "webchat-browser-replies-secret"
os.environ["INTAKE_TEST_WEBCHAT_BROWSER_REPLIES_SECRET"] = REPLIES_SECRET

CHROMIUM = "/usr/bin/chromium"
NUMBER = re.compile(r"^CX-\d{8}-\d{5}-\d$")
ACCENT = (0x1F, 0x6F, 0xEB)
CONNECTED = "document.querySelector('.iwc-status').textContent === '已连接'"
OFFLINE = "document.querySelector('.iwc').classList.contains('iwc-offline')"
WECHAT_UA = ("Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 MMWEBSDK/20231202 "
             "MicroMessenger/8.0.47.2560(0x28002F30) WeChat/arm64 Weixin NetType/WIFI "
             "Language/zh_CN ABI/arm64")


class HostSite:
    """The company's website: one page with the widget's script tag."""

    def __init__(self) -> None:
        self.gateway_url = ""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def page(self, request: web.Request) -> web.Response:
        lang = request.query.get("lang", "zh-CN")
        return web.Response(content_type="text/html", text=(
            f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>Example Shop</title></head><body style=\"margin:0;background:#ffffff\">"
            "<main><h1>Example Shop</h1><p>Routers and more.</p></main>"
            f'<script src="{self.gateway_url}/webchat/widget.js" data-site="{SITE}" '
            f'data-locale="{lang}" async></script></body></html>'))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self.page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable("chromium not installed: apt-get install chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def shop(make_gateway: MakeGateway) -> AsyncIterator[tuple[HostSite, Gateway]]:
    host = HostSite()
    await host.start()
    toml = ('[intake]\nchat_followup_window = "10m"\n' + webchat_toml()).replace(
        'allowed_origins = ["http://127.0.0.1"]', f'allowed_origins = ["{host.url}"]')
    toml += '[replies]\nsecret_env = "INTAKE_TEST_WEBCHAT_BROWSER_REPLIES_SECRET"\n'
    gw = await make_gateway(toml)
    host.gateway_url = gw.url
    try:
        yield host, gw
    finally:
        await host.close()


def adapter_of(gw: Gateway) -> WebchatAdapter:
    return next(a for a in gw.adapters if isinstance(a, WebchatAdapter))


async def write(page: Any, text: str) -> None:
    await page.fill("#iwc-text", text)
    await page.press("#iwc-text", "Enter")


async def ticket_of(page: Any, seq: int) -> str:
    locator = page.locator(f'.iwc-entry[data-seq="{seq}"] .iwc-ticket')
    await locator.wait_for(timeout=10_000)
    return (await locator.text_content() or "").strip()


async def seqs(page: Any) -> list[str]:
    return list(await page.eval_on_selector_all(
        ".iwc-entry[data-seq]", "els => els.map(e => e.dataset.seq)"))


async def test_visitor_chats_reloads_reconnects_and_sees_a_reply(
        shop: tuple[HostSite, Gateway], browser: Any) -> None:
    host, gw = shop
    context = await browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        await page.goto(host.url + "/?lang=zh-CN")
        await page.get_by_role("button", name="在线客服").click()
        assert await page.get_attribute(".iwc-launcher", "aria-expanded") == "true"
        await page.get_by_label("邮箱（选填）").fill("wang@example.com")
        await write(page, "路由器每小时重启一次，指示灯闪红色。")
        number = await ticket_of(page, 1)
        assert NUMBER.match(number)
        assert "预计答复" in (await page.text_content('.iwc-entry[data-seq="1"]') or "")
        await write(page, "型号是 AX3 Pro。")
        assert await ticket_of(page, 2) == number  # a follow-up on the same ticket

        await page.reload()
        await page.get_by_role("button", name="在线客服").click()
        await page.locator('.iwc-entry[data-seq="2"]').wait_for(timeout=10_000)
        assert await seqs(page) == ["1", "2"]
        assert await page.locator(".iwc-prechat").is_hidden()

        # The network drops: the socket dies, a message is written meanwhile, a reply arrives.
        adapter = adapter_of(gw)
        await page.wait_for_function(CONNECTED)
        await context.set_offline(True)
        for ws in list(adapter.sockets):
            await ws.close()
        await page.wait_for_function(OFFLINE)
        await write(page, "断网时写的消息")
        (sid,) = [c.record.sid for c in adapter.convs._cache.values()]
        await adapter.deliver_reply(f"{SITE}:s:{sid}", "我们正在处理。", reply_id="r-offline")
        await context.set_offline(False)
        await page.locator('.iwc-entry[data-seq="4"]').wait_for(timeout=30_000)
        texts = await page.eval_on_selector_all(".iwc-entry[data-seq] .iwc-text",
                                                "els => els.map(e => e.textContent)")
        assert sorted(texts[2:]) == sorted(["断网时写的消息", "我们正在处理。"])
        assert await seqs(page) == ["1", "2", "3", "4"]
        assert await page.locator(".iwc-pending").count() == 0

        # A reply while connected appears live: sent by a downstream system through the
        # signed reply endpoint, routed to the chat, dispatched by the reply path.
        await page.wait_for_function(CONNECTED)
        status, reply = await post_reply(gw, number, {"text": "已为您更换设备。"},
                                         key="browser-live", secret=REPLIES_SECRET)
        assert status == 202 and reply["channel"] == "webchat", reply
        await page.locator('.iwc-entry[data-seq="5"].iwc-reply').wait_for(timeout=10_000)
        assert await seqs(page) == ["1", "2", "3", "4", "5"]
        conv = adapter.convs._cache[sid]
        assert [e.seq for e in conv.entries] == [1, 2, 3, 4, 5]
        assert [e.text for e in conv.entries].count("断网时写的消息") == 1

        shot = await page.screenshot(path="/tmp/webchat-desktop.png")
        check_screenshot(shot, width=1280, phone=False)
        assert await page.locator('.iwc-entry[data-seq="1"] .iwc-ticket').is_visible()
    finally:
        await context.close()
    async with aiohttp.ClientSession() as http, \
            http.get(gw.url + "/v1/events", params={"after": "0"}) as resp:
        events = [e["event"] for e in (await resp.json())["events"]]
    kinds = [e["type"] for e in events if not e["type"].startswith("ack.")]
    assert kinds == ["ticket.created", "ticket.message_added", "ticket.message_added",
                     "reply.queued", "reply.sent"]
    sent = next(e for e in events if e["type"] == "reply.sent")
    assert sent["data"]["reply_id"] == reply["reply_id"] and sent["data"]["channel"] == "webchat"


@pytest.mark.parametrize("lang, ua, open_name, label", [
    ("zh-TW", WECHAT_UA, "線上客服", "傳送"),
    ("en", None, "Chat with us", "Send"),
])
async def test_phone_width_and_wechat_browser(shop: tuple[HostSite, Gateway], browser: Any,
                                              lang: str, ua: str | None, open_name: str,
                                              label: str) -> None:
    host, _gw = shop
    options: dict[str, Any] = {"viewport": {"width": 360, "height": 740}, "is_mobile": True,
                               "has_touch": True, "device_scale_factor": 1}
    if ua:
        options["user_agent"] = ua
    context = await browser.new_context(**options)
    try:
        page = await context.new_page()
        await page.goto(f"{host.url}/?lang={lang}")
        await page.get_by_role("button", name=open_name).click()
        await page.get_by_role("textbox", name=re.compile(".")).first.wait_for()
        await write(page, "My parcel has not arrived." if lang == "en" else "包裹還沒到。")
        number = await ticket_of(page, 1)
        assert NUMBER.match(number)
        assert await page.get_by_role("button", name=label).is_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        box = await page.locator(".iwc-panel").bounding_box()
        assert box is not None and box["x"] == 0 and box["width"] == 360
        assert await page.locator('.iwc-entry[data-seq="1"] .iwc-ticket').is_visible()
        shot = await page.screenshot(path=f"/tmp/webchat-phone-{lang}.png")
        check_screenshot(shot, width=360, phone=True)
    finally:
        await context.close()


# -- screenshots, decoded -------------------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        f, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], (prev[i - channels] if i >= channels else 0)
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        rows.append(bytes(line[i] for i in range(stride) if channels == 3 or i % 4 != 3))
    return width, height, rows


def _is_accent(px: bytes) -> bool:
    return all(abs(px[i] - ACCENT[i]) <= 6 for i in range(3))


def check_screenshot(png: bytes, *, width: int, phone: bool) -> None:
    """The open chat is there: its accent-coloured header, its light conversation area; on a
    phone the header spans the whole width at the top."""
    w, h, rows = decode_png(png)
    assert w == width
    accent_rows = [y for y, row in enumerate(rows)
                   if sum(_is_accent(row[x * 3:x * 3 + 3]) for x in range(w)) > (
                       w * 0.9 if phone else 300)]
    assert accent_rows, "no header in the widget's accent colour"
    if phone:
        assert min(accent_rows) < 10, "on a phone the chat's header is at the top"
    else:
        # Desktop: the panel sits at the right, the page's white left half is untouched.
        header = rows[accent_rows[0]]
        assert not any(_is_accent(header[x * 3:x * 3 + 3]) for x in range(w // 2))
        assert _is_accent(header[(w - 40) * 3:(w - 40) * 3 + 3])
    log_grey = bytes((0xF4, 0xF6, 0xF8))
    grey = sum(row.count(log_grey) // 1 for row in rows[h // 3: 2 * h // 3])
    assert grey > 1000, "the conversation area is missing"


async def test_without_websockets_the_widget_falls_back_to_http(
        shop: tuple[HostSite, Gateway], browser: Any) -> None:
    host, gw = shop
    context = await browser.new_context(locale="en")
    # A network that blocks WebSockets (some proxies do): the widget long-polls instead.
    await context.add_init_script("window.WebSocket = undefined;")
    try:
        page = await context.new_page()
        await page.goto(host.url + "/?lang=en")
        await page.get_by_role("button", name="Chat with us").click()
        await write(page, "Is the shop open on Sunday?")
        assert NUMBER.match(await ticket_of(page, 1))
        adapter = adapter_of(gw)
        (sid,) = [c.record.sid for c in adapter.convs._cache.values()]
        got = await adapter.deliver_reply(f"{SITE}:s:{sid}", "Yes, from 10 to 18.",
                                          reply_id="poll-1")
        assert got.status == "queued"  # no socket: the long poll takes it
        await page.locator('.iwc-entry[data-seq="2"].iwc-reply').wait_for(timeout=30_000)
        assert "Yes, from 10 to 18." in (await page.text_content(".iwc-log") or "")
        assert adapter.sockets == set()
    finally:
        await context.close()


async def test_keyboard_labels_and_an_attachment(shop: tuple[HostSite, Gateway],
                                                 browser: Any) -> None:
    host, gw = shop
    context = await browser.new_context(locale="en")
    try:
        page = await context.new_page()
        await page.goto(host.url + "/?lang=en")
        launcher = page.get_by_role("button", name="Chat with us")
        await launcher.focus()
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "iwc-text"
        # Every field has an accessible name, every button a label.
        unnamed = await page.evaluate("""() => [...document.querySelectorAll(
            '#intake-webchat input, #intake-webchat textarea, #intake-webchat button')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.textContent.trim()).map(el => el.outerHTML)""")
        assert unnamed == []
        await page.get_by_label("Name (optional)").fill("Li Wei")
        await page.locator(".iwc-file").set_input_files(
            [{"name": "router-lights.png", "mimeType": "image/png",
              "buffer": b"\x89PNG\r\n\x1a\n" + os.urandom(1024)}])
        await write(page, "The lights blink red, photo attached.")
        await ticket_of(page, 1)
        assert "router-lights.png" in (await page.text_content(
            '.iwc-entry[data-seq="1"] .iwc-attachment') or "")
        await page.keyboard.press("Escape")
        assert await page.locator(".iwc-panel").is_hidden()
        assert await page.evaluate("document.activeElement.className") == "iwc-launcher"
    finally:
        await context.close()
    async with aiohttp.ClientSession() as http, \
            http.get(gw.url + "/v1/events", params={"after": "0"}) as resp:
        events = [e["event"] for e in (await resp.json())["events"]]
    (created,) = [e for e in events if e["type"] == "ticket.created"]
    message = created["data"]["message"]
    assert [a["name"] for a in message["attachments"]] == ["router-lights.png"]
    assert created["data"]["contact"]["name"] == "Li Wei"

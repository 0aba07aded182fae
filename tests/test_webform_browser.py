"""A person fills the web form in headless Chromium: Chinese, English, and with no JavaScript."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.services import unavailable

CHROMIUM = "/usr/bin/chromium"
NUMBER = re.compile(r"^CX-\d{8}-\d{5}-\d$")
SCREENSHOT = "/tmp/webform.png"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, closed after the test."""
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


async def created_events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, \
            http.get(gw.url + "/v1/events", params={"after": "0"}) as resp:
        body = await resp.json()
    return [e["event"] for e in body["events"] if e["event"]["type"] == "ticket.created"]


async def test_person_fills_the_form_in_chinese(gateway: Gateway, browser: Any) -> None:
    photo = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)
    context = await browser.new_context(locale="zh-CN")
    try:
        page = await context.new_page()
        await page.goto(gateway.url + "/form")
        assert await page.get_attribute("html", "lang") == "zh-CN"
        await page.get_by_label("姓名或昵称").fill("王小明")
        await page.get_by_label("电子邮箱").fill("wang.xm@example.com")
        await page.get_by_label("手机号码").fill("138 0013 8000")
        await page.get_by_label("客户类型").select_option(label="老客户")
        await page.get_by_label("问题类型").select_option(label="故障")
        await page.get_by_label("订单号").fill("DD20261122001")
        await page.get_by_label("设备型号").fill("华为 AX3 Pro")
        await page.get_by_label("主题").fill("路由器频繁重启")
        await page.get_by_label("问题描述").fill("路由器每小时重启一次，指示灯闪红色。")
        await page.get_by_label("附件").set_input_files(
            [{"name": "故障照片.png", "mimeType": "image/png", "buffer": photo}])
        await page.get_by_role("button", name="提交").click()
        await page.wait_for_selector("#ticket-number")
        number = (await page.text_content("#ticket-number") or "").strip()
        assert NUMBER.match(number)
        due = await page.text_content("#due") or ""
        assert re.fullmatch(r"我们将在\d{1,2}月\d{1,2}日（星期.）\d\d:\d\d（北京时间）前答复您。",
                            due)
        assert "工单编号" in (await page.text_content("main") or "")
    finally:
        await context.close()
    (event,) = await created_events(gateway)
    msg = event["data"]["message"]
    assert event["subject"] == number
    assert msg["locale"] == "zh-CN"
    assert msg["text"] == "路由器每小时重启一次，指示灯闪红色。"
    assert msg["device_model"] == "华为 AX3 Pro"
    assert msg["attachments"] == [{"name": "故障照片.png", "content_type": "image/png",
                                   "size": len(photo),
                                   "sha256": hashlib.sha256(photo).hexdigest()}]
    assert event["data"]["contact"]["phone"] == "+8613800138000"
    assert event["data"]["ticket"]["kind"] == "fault"


async def test_person_fills_the_form_in_english(gateway: Gateway, browser: Any) -> None:
    context = await browser.new_context(locale="en-GB", viewport={"width": 900, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(gateway.url + "/form")
        assert await page.get_attribute("html", "lang") == "en"
        await page.get_by_label("Your name").fill("Emma Clarke")
        await page.get_by_label("Email").fill("emma@example.co.uk")
        await page.get_by_label("Type of request").select_option(label="Suggestion")
        await page.get_by_label("Your message").fill("Please add a dark mode to the app.")
        await page.get_by_label("Attachments").set_input_files(
            [{"name": "mockup.txt", "mimeType": "text/plain", "buffer": b"dark mode mockup"},
             {"name": "notes.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 x"}])
        await page.screenshot(path=SCREENSHOT, full_page=True)
        await page.get_by_role("button", name="Send").click()
        await page.wait_for_selector("#ticket-number")
        assert NUMBER.match((await page.text_content("#ticket-number") or "").strip())
        due = await page.text_content("#due") or ""
        assert re.fullmatch(r"We will answer by [A-Z][a-z]+day \d{1,2} [A-Z][a-z]+, \d\d:\d\d "
                            r"\(China Standard Time\)\.", due)
    finally:
        await context.close()
    (event,) = await created_events(gateway)
    assert len(event["data"]["message"]["attachments"]) == 2


async def test_the_form_works_without_javascript(gateway: Gateway, browser: Any) -> None:
    context = await browser.new_context(java_script_enabled=False, locale="zh-CN")
    try:
        page = await context.new_page()
        await page.goto(gateway.url + "/form")
        # The language switch is a plain link.
        await page.get_by_role("link", name="English").click()
        await page.wait_for_url("**/form?lang=en")
        assert await page.get_attribute("html", "lang") == "en"
        # Forgetting the contact: the form comes back with the text kept and the error shown.
        await page.get_by_label("Your message").fill("Invoice 1234 is wrong.")
        await page.get_by_role("button", name="Send").click()
        await page.wait_for_selector("#e-contact")
        assert await page.input_value("#f-message") == "Invoice 1234 is wrong."
        assert await page.get_attribute("#f-email", "aria-invalid") == "true"
        await page.get_by_label("Phone").fill("+44 20 7946 0958")
        await page.get_by_role("button", name="Send").click()
        await page.wait_for_selector("#ticket-number")
        assert NUMBER.match((await page.text_content("#ticket-number") or "").strip())
        assert "We will answer by" in (await page.text_content("#due") or "")
    finally:
        await context.close()
    (event,) = await created_events(gateway)
    assert event["data"]["contact"]["phone"] == "+442079460958"
    assert event["data"]["message"]["locale"] == "en"

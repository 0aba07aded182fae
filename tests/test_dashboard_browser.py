"""The dashboard in headless Chromium, at desktop and phone width: the charts are drawn with
the data (read back from the screenshot's pixels and the SVG), and the page updates live."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from gateway.dashboard.charts import CHANNEL_COLOURS
from gateway.runtime import Gateway
from gateway.testing.drivers import Customer, WebformDriver
from gateway.testing.drivers_mail import SmtpDriver
from gateway.testing.screenshots import chromium, decode_png, hex_rgb
from tests.conftest import MakeGateway

API_MESSAGES = [
    ("+8613912345678", "投诉：路由器每小时重启", "AX3 Pro"),
    ("+8613800138000", "宕机了，全部断网", "AX3 Pro"),
    ("+8615012345678", "How do I change the Wi-Fi password?", "BE7000"),
    ("+8602087654321", "发票抬头写错了", None),
    ("+442079460958", "Please add a dark mode", "AX3 Pro"),
]
WIDTHS = {"desktop": (1280, 1000), "phone": (390, 844)}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def seeded(make_gateway: MakeGateway) -> tuple[Gateway, int]:
    """A gateway that took messages on three channels, with a repeat complainer by mail."""
    smtp = SmtpDriver()
    gw = await make_gateway(smtp.config_toml() + WebformDriver().config_toml()
                            + '[dashboard]\nrefresh = 0.5\nat_risk_within = "3h"\n')
    sent = 0
    async with aiohttp.ClientSession() as http:
        for i, (phone, text, device) in enumerate(API_MESSAGES):
            body: dict[str, Any] = {"contact": {"phone": phone}, "text": text}
            if device:
                body["device_model"] = device
            async with http.post(f"{gw.url}/v1/messages", json=body,
                                 headers={"Idempotency-Key": f"seed-{i}"}) as resp:
                assert resp.status in (200, 201)
            sent += 1
        form = WebformDriver()
        for i in range(3):
            got = await form.send(http, gw.url, customer=Customer(f"form{i}"),
                                  text=f"Question number {i} about my bill",
                                  delivery_id=f"f{i}x" * 6)
            assert got.status == 200
            sent += 1
        # The same complaint three times from one verified sender: two duplicates.
        for i in range(3):
            got = await smtp.send(http, gw.url, customer=Customer("angry"),
                                  text="The router has been broken for a week!",
                                  delivery_id=f"dup-{i}")
            assert got.status == 200
            sent += 1
        got = await smtp.send(http, gw.url, customer=Customer("calm"), text="Thanks, works now",
                              delivery_id="calm-1")
        assert got.status == 200
        sent += 1
    return gw, sent


def _bar_values(svg_values: list[tuple[str, str]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for series, value in svg_values:
        totals[series] = totals.get(series, 0) + int(value)
    return totals


@pytest.mark.parametrize("width", list(WIDTHS))
async def test_dashboard_draws_the_charts_with_data(seeded: tuple[Gateway, int], browser: Any,
                                                    width: str) -> None:
    gw, sent = seeded
    w, h = WIDTHS[width]
    context = await browser.new_context(viewport={"width": w, "height": h},
                                        device_scale_factor=1)
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{gw.url}/dashboard")
        # The hour chart's bars add up to what was sent, per channel.
        bars = await page.eval_on_selector_all(
            "#chart-hour rect.bar", "els => els.map(e => [e.dataset.series, e.dataset.value])")
        assert _bar_values(bars) == {"api": 5, "webform": 3, "smtp": 4}
        assert sent == 12
        assert (await page.text_content("#kpi-day b") or "").strip() == "12"
        # Every chart panel has bars; the mixes name what the messages said.
        for panel in ("chart-day", "chart-outcomes", "chart-priorities", "chart-kinds",
                      "chart-regions", "chart-areas", "chart-devices"):
            assert await page.locator(f"#{panel} rect.bar").count() >= 1, panel
        regions = await page.eval_on_selector_all(
            "#chart-regions rect.bar", "els => els.map(e => e.dataset.series)")
        assert {"江苏省 Jiangsu", "北京市 Beijing", "广东省 Guangdong", "英国 GB"} <= set(regions)
        devices = _bar_values(await page.eval_on_selector_all(
            "#chart-devices rect.bar", "els => els.map(e => [e.dataset.series, e.dataset.value])"))
        assert devices == {"AX3 Pro": 3, "BE7000": 1}
        outcomes = _bar_values(await page.eval_on_selector_all(
            "#chart-outcomes rect.bar", "els => els.map(e => [e.dataset.series, e.dataset.value])"))
        assert outcomes["created"] == 10 and outcomes["duplicate"] == 2
        # The high-priority complaint and outage are at risk within 3 h; the repeat complainer
        # shows masked.
        risk = await page.text_content("#at-risk") or ""
        assert risk.count("high") >= 2
        repeat = await page.text_content("#repeat") or ""
        assert "a…@c…" in repeat and "angry@customers.example.org" not in repeat
        # No sideways scrolling at phone width: every panel fits the screen.
        assert await page.evaluate("document.documentElement.scrollWidth") <= w
        png = await page.screenshot(path=f"/tmp/dashboard-{width}.png", full_page=True)
        shot = decode_png(png)
        assert shot.width == w
        # The page is not blank: chart ink covers a real part of it.
        assert shot.saturated_share() > 0.01, f"{shot.saturated_share():.4f} of the page coloured"
        for panel in ("#chart-hour", "#chart-day"):
            # Cut from the same screenshot: the live update may swap the element meanwhile.
            box = await page.evaluate(
                f"(() => {{ const r = document.querySelector('{panel}').getBoundingClientRect();"
                " return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()")
            chart = shot.crop(*(int(v) for v in box))
            assert chart.width > 200 and chart.height > 100
            for channel in ("api", "webform", "smtp"):
                share = chart.share(hex_rgb(CHANNEL_COLOURS[channel]), 6)
                assert share > 0.001, f"{panel}: {channel} covers only {share:.5f}"
        assert not errors, errors
    finally:
        await context.close()


async def test_dashboard_updates_live(seeded: tuple[Gateway, int], browser: Any) -> None:
    gw, sent = seeded
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(f"{gw.url}/dashboard")
        assert (await page.text_content("#kpi-day b") or "").strip() == str(sent)
        async with aiohttp.ClientSession() as http, \
                http.post(f"{gw.url}/v1/messages",
                          json={"contact": {"phone": "+8613812345678"},
                                "text": "live update, please"}) as resp:
            assert resp.status in (200, 201)
        # No reload: the page's own refresh brings the new count and the new bar.
        # (expect polls from outside the page: the page's CSP forbids evaluated strings, which
        # is also what proves the live update runs under that CSP.)
        await expect(page.locator("#kpi-day b")).to_have_text(str(sent + 1), timeout=15_000)
        assert int(await page.evaluate("document.body.dataset.updates")) >= 1
        bars = await page.eval_on_selector_all(
            "#chart-hour rect.bar", "els => els.map(e => [e.dataset.series, e.dataset.value])")
        assert _bar_values(bars)["api"] == 6
        assert re.fullmatch(r"\d{1,2}:\d\d:\d\d.*", (await page.text_content("#updated") or ""))
    finally:
        await context.close()

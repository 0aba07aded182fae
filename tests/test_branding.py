"""The form and its result page carry the organisation's name, logo, privacy notice, contact
hours and accent colour from config, in zh-CN, zh-TW and en, and still work without JavaScript."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.errors import ConfigError
from gateway.testing.screenshots import chromium, decode_png, hex_rgb
from tests.conftest import MakeGateway

ACCENT = "#c2185b"
LOGO_COLOUR = "#2e7d32"
NUMBER = re.compile(r"^CX-\d{8}-\d{5}-\d$")
SCREENSHOT = "/tmp/webform-branded.png"

NAMES = {"zh-CN": "示例科技客户服务中心", "zh-TW": "示例科技客戶服務中心",
         "en": "Example Tech Customer Care"}
HOURS = {"zh-CN": "周一至周五 9:00–18:00", "zh-TW": "週一至週五 9:00–18:00",
         "en": "Mon–Fri 9:00–18:00"}


def _logo(tmp_path: Path) -> Path:
    logo = tmp_path / "logo.svg"
    logo.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="160" height="48" '
                    f'viewBox="0 0 160 48"><rect width="160" height="48" fill="{LOGO_COLOUR}"/>'
                    "</svg>")
    return logo


def _toml(logo: Path, **extra: str) -> str:
    keys = {"organisation": "{ " + ", ".join(f'"{k}" = "{v}"' for k, v in NAMES.items()) + " }",
            "contact_hours": "{ " + ", ".join(f'"{k}" = "{v}"' for k, v in HOURS.items()) + " }",
            "privacy_url": '{ en = "https://example.com/privacy", '
                           '"zh-CN" = "https://example.com/zh/privacy" }',
            "accent_color": f'"{ACCENT}"', "logo_file": f'"{logo}"', **extra}
    return "[adapters.webform]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.mark.parametrize("locale", ["zh-CN", "zh-TW", "en"])
async def test_branded_form_and_result_page_without_javascript(
        make_gateway: MakeGateway, browser: Any, tmp_path: Path, locale: str) -> None:
    gw = await make_gateway(_toml(_logo(tmp_path)))
    context = await browser.new_context(java_script_enabled=False,
                                        viewport={"width": 800, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(f"{gw.url}/form?lang={locale}")
        assert (await page.text_content("#brand-name") or "").strip() == NAMES[locale]
        assert NAMES[locale] in await page.title()
        assert HOURS[locale] in (await page.text_content("#contact-hours") or "")
        # zh-TW has no privacy URL of its own: the nearest language's (zh-CN) is linked.
        want = {"en": "https://example.com/privacy"}.get(locale, "https://example.com/zh/privacy")
        assert await page.get_attribute("#privacy-link", "href") == want
        assert await page.get_attribute("#brand-logo", "src") == "/form/logo"
        # The logo really loaded and the accent really paints the button: read the pixels.
        shot = decode_png(await page.screenshot(path=SCREENSHOT if locale == "en" else None))
        assert shot.share(hex_rgb(LOGO_COLOUR), 8) > 0.005, "logo not drawn"
        button = decode_png(await page.locator("button[type=submit]").screenshot())
        assert button.share(hex_rgb(ACCENT), 8) > 0.5, "button not in the accent colour"
        await page.fill("#f-email", "brand.test@example.com")
        await page.fill("#f-message", "The invoice for order 1234 is wrong.")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#ticket-number")
        assert NUMBER.match((await page.text_content("#ticket-number") or "").strip())
        assert (await page.text_content("#brand-name") or "").strip() == NAMES[locale]
        assert HOURS[locale] in (await page.text_content("#contact-hours") or "")
        assert await page.get_attribute("#privacy-link", "href") == want
        ticket = decode_png(await page.locator("#ticket-number").screenshot())
        assert ticket.share(hex_rgb(ACCENT), 16) > 0.01, "ticket frame not in the accent colour"
    finally:
        await context.close()


async def test_logo_is_served_locked_down_and_only_it_may_load(
        make_gateway: MakeGateway, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await make_gateway(_toml(_logo(tmp_path)))
    async with http.get(f"{gw.url}/form/logo") as resp:
        assert resp.status == 200
        assert resp.content_type == "image/svg+xml"
        assert "sandbox" in resp.headers["Content-Security-Policy"]
        assert (await resp.read()).startswith(b"<svg")
    async with http.get(f"{gw.url}/form") as resp:
        csp = resp.headers["Content-Security-Policy"]
    assert "img-src 'self'" in csp and "default-src 'none'" in csp


async def test_unbranded_form_loads_no_image_and_shows_no_brand(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway()
    async with http.get(f"{gw.url}/form?lang=en") as resp:
        page = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert "img-src" not in csp
    assert 'id="brand"' not in page and 'id="privacy-link"' not in page
    assert "--accent:#0b57d0" in page
    async with http.get(f"{gw.url}/form/logo") as resp:
        assert resp.status == 404


@pytest.mark.parametrize("extra, word", [
    ({"accent_color": '"red;}body{display:none"'}, "accent_color"),
    ({"accent_color": '"#12345"'}, "accent_color"),
    ({"privacy_url": '"javascript:alert(1)"'}, "privacy_url"),
    ({"privacy_url": '"//evil.example/x"'}, "privacy_url"),
    ({"organisation": '{ fr = "Exemple" }'}, "organisation"),
    ({"contact_hours": '""'}, "contact_hours"),
])
async def test_bad_branding_fails_at_start_naming_the_key(
        make_gateway: MakeGateway, tmp_path: Path, extra: dict[str, str], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        await make_gateway(_toml(_logo(tmp_path), **extra))


async def test_a_logo_that_is_no_image_fails_at_start(make_gateway: MakeGateway,
                                                      tmp_path: Path) -> None:
    fake = tmp_path / "logo.png"
    fake.write_bytes(b"MZ\x90\x00 not an image")
    with pytest.raises(ConfigError, match="logo_file"):
        await make_gateway(_toml(fake))

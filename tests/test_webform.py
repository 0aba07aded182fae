"""The web form over real HTTP: languages, labels, the four outcomes, limits and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import html
import itertools
import re
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from intake_adapters.webform import FIELD_LIMITS, ClientRateLimiter, negotiate_locale

NUMBER = re.compile(r"CX-\d{8}-\d{5}-\d")
TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


class FormInventory(HTMLParser):
    """The form controls of a page and the labels that point at them."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
        if tag in ("input", "select", "textarea"):
            self.controls.append({"tag": tag, **a})


async def fetch_form(http: aiohttp.ClientSession, gw: Gateway, *, lang: str | None = None,
                     accept: str | None = None) -> tuple[str, str]:
    params = {"lang": lang} if lang else {}
    headers = {"Accept-Language": accept} if accept else {}
    async with http.get(gw.url + "/form", params=params, headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    token = TOKEN.search(page)
    assert token is not None
    return page, token.group(1)


def form(token: str | None = None, *, files: list[tuple[str, bytes, str]] = (),  # type: ignore[assignment]
         **fields: str) -> aiohttp.FormData:
    """A multipart body as a browser sends it: text fields, then the files."""
    data = aiohttp.FormData(default_to_multipart=True)
    values = {"lang": "en", "message": "My router keeps rebooting every hour.",
              "email": "li.wei@example.com", **fields}
    if token is not None:
        values["form_token"] = token
    for name, value in values.items():
        data.add_field(name, value)
    for name, content, ctype in files:
        data.add_field("attachments", content, filename=name, content_type=ctype)
    return data


async def post(http: aiohttp.ClientSession, gw: Gateway, body: Any, *, lang: str = "en",
               headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, str]:
    async with http.post(gw.url + "/form", params={"lang": lang}, data=body,
                         headers=headers or {}) as resp:
        return resp, await resp.text()


async def events(http: aiohttp.ClientSession, gw: Gateway) -> list[dict[str, Any]]:
    async with http.get(gw.url + "/v1/events", params={"after": "0"}) as resp:
        assert resp.status == 200
        return [e["event"] for e in (await resp.json())["events"]]


def created(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == "ticket.created"]


def numbers_in(page: str) -> set[str]:
    return set(NUMBER.findall(page))


# -- the page --------------------------------------------------------------------------------


async def test_form_in_chinese_by_accept_language(gateway: Gateway,
                                                   http: aiohttp.ClientSession) -> None:
    page, _ = await fetch_form(http, gateway, accept="zh-CN,zh;q=0.9,en;q=0.8")
    assert '<html lang="zh-CN">' in page
    for word in ("问题描述", "电子邮箱", "手机号码", "咨询", "投诉", "故障", "建议", "新客户",
                 "老客户", "订单号", "设备型号", "已有工单编号", "附件", "此栏请留空"):
        assert word in page
    assert 'href="/form?lang=en"' in page  # the switch to English


async def test_form_in_english_by_accept_language(gateway: Gateway,
                                                   http: aiohttp.ClientSession) -> None:
    page, _ = await fetch_form(http, gateway, accept="en-GB,en;q=0.9,zh-CN;q=0.5")
    assert '<html lang="en">' in page
    for word in ("Your message", "Consultation", "Complaint", "Fault", "Suggestion",
                 "Existing customer", "Leave this field empty",
                 "Give an email address or a phone number"):
        assert word in page
    assert 'href="/form?lang=zh-CN"' in page


async def test_lang_parameter_wins_over_accept_language(gateway: Gateway,
                                                        http: aiohttp.ClientSession) -> None:
    page, _ = await fetch_form(http, gateway, lang="en", accept="zh-CN")
    assert '<html lang="en">' in page
    page, _ = await fetch_form(http, gateway, lang="zh-CN", accept="en")
    assert '<html lang="zh-CN">' in page and "问题描述" in page
    page, _ = await fetch_form(http, gateway, lang="zh-TW", accept="en")
    assert '<html lang="zh-TW">' in page and "問題描述" in page
    # An unknown language falls back to Accept-Language, then the gateway's default.
    page, _ = await fetch_form(http, gateway, lang="xx", accept="en")
    assert '<html lang="en">' in page
    page, _ = await fetch_form(http, gateway)
    assert '<html lang="zh-CN">' in page


@pytest.mark.parametrize("lang", ["en", "zh-CN", "zh-TW"])
async def test_every_control_has_a_label(gateway: Gateway, http: aiohttp.ClientSession,
                                         lang: str) -> None:
    page, _ = await fetch_form(http, gateway, lang=lang)
    inv = FormInventory()
    inv.feed(page)
    visible = [c for c in inv.controls if c.get("type") != "hidden"]
    names = {c["name"] for c in visible}
    assert names == {"name", "email", "phone", "customer_type", "kind", "order_number",
                     "device_model", "subject", "message", "ticket_number", "attachments",
                     "website"}
    for control in visible:
        assert control.get("id") in inv.label_for, control
    hidden = {c["name"] for c in inv.controls if c.get("type") == "hidden"}
    assert hidden == {"lang", "form_token"}
    by_name = {c["name"]: c for c in inv.controls}
    assert "required" in by_name["message"]
    assert "multiple" in by_name["attachments"] and by_name["attachments"]["accept"]
    honeypot = by_name["website"]
    assert honeypot["tabindex"] == "-1" and honeypot["autocomplete"] == "off"
    # aria-describedby only names elements that exist.
    for control in visible:
        for ref in (control.get("aria-describedby") or "").split():
            assert ref in inv.ids, (control["name"], ref)


async def test_every_render_has_a_fresh_token_and_no_cache(gateway: Gateway,
                                                           http: aiohttp.ClientSession) -> None:
    _, first = await fetch_form(http, gateway)
    _, second = await fetch_form(http, gateway)
    assert first != second
    async with http.get(gateway.url + "/form") as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


# -- outcomes --------------------------------------------------------------------------------


async def test_submission_shows_ticket_and_due_time(gateway: Gateway,
                                                    http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway, lang="en")
    resp, page = await post(http, gateway, form(token, name="Li Wei", phone="13800138000",
                                                 customer_type="vip", kind="fault",
                                                 order_number="SO-1001",
                                                 device_model="AX-3000",
                                                 subject="Router reboots"))
    assert resp.status == 200
    (number,) = numbers_in(page)
    assert f'data-ticket-number="{number}">{number}<' in page
    assert re.search(r"We will answer by (Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|"
                     r"Sunday) \d{1,2} [A-Z][a-z]+, \d\d:\d\d \(China Standard Time\)\.", page)
    assert "Your request has been registered under ticket number" in page  # the ack text
    (event,) = created(await events(http, gateway))
    assert event["subject"] == number
    data = event["data"]
    assert data["message"]["channel"] == "webform"
    assert data["message"]["locale"] == "en"
    assert data["message"]["order_number"] == "SO-1001"
    assert data["message"]["device_model"] == "AX-3000"
    assert data["message"]["subject"] == "Router reboots"
    assert data["contact"]["email"] == "li.wei@example.com"
    assert data["contact"]["phone"] == "+8613800138000"
    assert data["contact"]["name"] == "Li Wei"
    assert data["ticket"]["kind"] == "fault"


async def test_same_form_sent_twice_is_the_same_ticket(gateway: Gateway,
                                                       http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    _, first = await post(http, gateway, form(token))
    _, again = await post(http, gateway, form(token))
    assert numbers_in(first) == numbers_in(again) and len(numbers_in(first)) == 1
    # A double click: both requests in flight at once.
    _, token = await fetch_form(http, gateway)
    body = {"message": "Double click on the send button", "email": "dc@example.com"}
    pages = await asyncio.gather(*(post(http, gateway, form(token, **body)) for _ in range(2)))
    assert numbers_in(pages[0][1]) == numbers_in(pages[1][1])
    assert len(created(await events(http, gateway))) == 2


async def test_same_form_edited_after_back_is_not_swallowed(gateway: Gateway,
                                                            http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    _, first = await post(http, gateway, form(token, message="The screen is black."))
    _, edited = await post(http, gateway, form(token, message="Also, the fan is loud."))
    assert numbers_in(first) != numbers_in(edited)
    assert len(created(await events(http, gateway))) == 2


async def test_a_repeat_from_the_form_never_shows_the_first_number(
        gateway: Gateway, http: aiohttp.ClientSession) -> None:
    # A typed address is a claim: the second sender may be a stranger who typed it.
    _, t1 = await fetch_form(http, gateway)
    _, first = await post(http, gateway, form(t1))
    _, t2 = await fetch_form(http, gateway)
    resp, second = await post(http, gateway, form(t2))
    assert resp.status == 200
    assert numbers_in(second) and not numbers_in(second) & numbers_in(first)
    assert "We already have this request" not in second


async def test_followup_is_added_to_the_ticket(gateway: Gateway,
                                               http: aiohttp.ClientSession) -> None:
    _, t1 = await fetch_form(http, gateway)
    _, first = await post(http, gateway, form(t1))
    (number,) = numbers_in(first)
    _, t2 = await fetch_form(http, gateway)
    resp, second = await post(http, gateway, form(t2, ticket_number=number.lower(),
                                                  message="It happened again at noon."))
    assert resp.status == 200
    assert numbers_in(second) == {number}
    assert f"We have added your message to ticket {number}." in second
    types = [e["type"] for e in await events(http, gateway)]
    assert types.count("ticket.created") == 1 and "ticket.message_added" in types


async def test_mistyped_ticket_number_is_pointed_out(gateway: Gateway,
                                                     http: aiohttp.ClientSession) -> None:
    _, t1 = await fetch_form(http, gateway)
    (number,) = numbers_in((await post(http, gateway, form(t1)))[1])
    typo = number[:-1] + str((int(number[-1]) + 1) % 10)
    _, t2 = await fetch_form(http, gateway)
    resp, page = await post(http, gateway, form(t2, ticket_number=typo, message="More info"))
    assert resp.status == 400
    assert 'id="e-ticket_number"' in page and "This ticket number is not valid" in page
    assert f'value="{typo}"' in page


async def test_chinese_round_trips(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    text = "您好！我的路由器每小时重启一次，指示灯闪红色。\n型号：华为 AX3 Pro「测试」😀"
    _, token = await fetch_form(http, gateway, accept="zh-CN")
    resp, page = await post(http, gateway, form(token, lang="zh-CN", name="王小明",
                                                 subject="路由器故障", message=text),
                            lang="zh-CN")
    assert resp.status == 200
    assert '<html lang="zh-CN">' in page
    assert "您的工单编号" in page
    assert re.search(r"我们将在\d{1,2}月\d{1,2}日（星期.）\d\d:\d\d（北京时间）前答复您", page)
    (event,) = created(await events(http, gateway))
    assert event["data"]["message"]["text"] == text
    assert event["data"]["message"]["subject"] == "路由器故障"
    assert event["data"]["message"]["locale"] == "zh-CN"
    assert event["data"]["contact"]["name"] == "王小明"


async def test_browser_newlines_become_plain_newlines(gateway: Gateway,
                                                      http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    await post(http, gateway, form(token, message="line one\r\nline two\r\n"))
    (event,) = created(await events(http, gateway))
    assert event["data"]["message"]["text"] == "line one\nline two\n"


async def test_urlencoded_post_works_too(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    body = {"form_token": token, "lang": "en", "email": "script@example.com",
            "message": "Sent by a script, 100% urlencoded & fine"}
    resp, page = await post(http, gateway, body)
    assert resp.status == 200 and len(numbers_in(page)) == 1
    (event,) = created(await events(http, gateway))
    assert event["data"]["message"]["text"] == body["message"]


# -- attachments -----------------------------------------------------------------------------


async def test_attachment_is_stored(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    note = "备注：第二个文件".encode()
    _, token = await fetch_form(http, gateway)
    resp, _ = await post(http, gateway, form(token, files=[("router.png", photo, "image/png"),
                                                            ("备注.txt", note, "text/plain")]))
    assert resp.status == 200
    (event,) = created(await events(http, gateway))
    stored = {a["sha256"]: a for a in event["data"]["message"]["attachments"]}
    png = stored[hashlib.sha256(photo).hexdigest()]
    assert png == {"name": "router.png", "content_type": "image/png", "size": len(photo),
                   "sha256": hashlib.sha256(photo).hexdigest()}
    assert stored[hashlib.sha256(note).hexdigest()]["name"] == "备注.txt"


async def test_no_file_chosen_is_no_attachment(gateway: Gateway,
                                               http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    # What a browser sends for an empty file input: a part with an empty file name.
    resp, _ = await post(http, gateway, form(token, files=[("", b"", "application/octet-stream")]))
    assert resp.status == 200
    (event,) = created(await events(http, gateway))
    assert "attachments" not in event["data"]["message"]


async def test_oversized_attachment_is_413_with_input_kept(make_gateway: Any,
                                                           http: aiohttp.ClientSession) -> None:
    gw = await make_gateway("[adapters.webform]\nmax_attachment_bytes = 100000")
    _, token = await fetch_form(http, gw)
    resp, page = await post(http, gw, form(token, message="See the big photo",
                                           files=[("big.jpg", b"\xff" * 300_000, "image/jpeg")]))
    assert resp.status == 413
    assert "text/html" in resp.headers["Content-Type"]
    assert "The file “big.jpg” is larger than 97.7 KB" in page
    assert ">\nSee the big photo</textarea>" in page
    assert 'value="li.wei@example.com"' in page
    assert created(await events(http, gw)) == []


async def test_too_many_attachments_is_413(make_gateway: Any,
                                           http: aiohttp.ClientSession) -> None:
    gw = await make_gateway("[adapters.webform]\nmax_attachments = 2")
    _, token = await fetch_form(http, gw)
    files = [(f"f{i}.txt", f"file {i}".encode(), "text/plain") for i in range(3)]
    resp, page = await post(http, gw, form(token, files=files))
    assert resp.status == 413
    assert "Please attach at most 2 files." in page
    assert created(await events(http, gw)) == []


# -- bots, limits and bad input --------------------------------------------------------------


async def test_honeypot_thanks_without_submitting(gateway: Gateway,
                                                  http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    resp, page = await post(http, gateway, form(token, website="http://spam.example"))
    assert resp.status == 200
    assert "Thank you, we have received your message" in page
    assert numbers_in(page) == set()
    assert await events(http, gateway) == []


async def test_rate_limit_answers_429_with_retry_after(make_gateway: Any,
                                                       http: aiohttp.ClientSession) -> None:
    gw = await make_gateway("[adapters.webform]\nrate_limit = 2")
    for i in range(2):
        _, token = await fetch_form(http, gw)
        resp, _ = await post(http, gw, form(token, message=f"message {i}"))
        assert resp.status == 200
    _, token = await fetch_form(http, gw)
    resp, page = await post(http, gw, form(token, message="the third one"))
    assert resp.status == 429
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert "Too many submissions from your network. Please wait 1 minute" in page
    assert ">\nthe third one</textarea>" in page
    assert len(created(await events(http, gw))) == 2
    # The message speaks the person's language.
    resp, page = await post(http, gw, form(token, lang="zh-CN"), lang="zh-CN")
    assert resp.status == 429 and "您所在网络的提交次数过多，请等待1分钟后再提交" in page


async def test_forwarded_for_is_used_only_when_trusted(make_gateway: Any,
                                                       http: aiohttp.ClientSession) -> None:
    trusted = await make_gateway("[adapters.webform]\nrate_limit = 1\n"
                                 "trust_forwarded_for = true")
    for i, client in enumerate(("203.0.113.7", "203.0.113.8")):
        resp, _ = await post(http, trusted, form(message=f"from {client}"),
                             headers={"X-Forwarded-For": f"10.9.9.9, {client}"})
        assert resp.status == 200, i
    resp, _ = await post(http, trusted, form(message="again"),
                         headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.7"})
    assert resp.status == 429
    untrusted = await make_gateway("[adapters.webform]\nrate_limit = 1")
    resp, _ = await post(http, untrusted, form(message="one"),
                         headers={"X-Forwarded-For": "203.0.113.7"})
    assert resp.status == 200
    resp, _ = await post(http, untrusted, form(message="two"),
                         headers={"X-Forwarded-For": "203.0.113.99"})
    assert resp.status == 429


async def test_missing_email_and_phone_is_400_near_the_field(gateway: Gateway,
                                                             http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    text = "Please <call> me & \"soon\"\n\nThanks"
    resp, page = await post(http, gateway, form(token, email="", name="Zhang San", message=text,
                                                 files=[("a.txt", b"hello", "text/plain")]))
    assert resp.status == 400
    assert "text/html" in resp.headers["Content-Type"]
    error = re.search(r'<p class="error" id="e-contact">([^<]+)</p>', page)
    assert error is not None and "email address or a phone number" in error.group(1)
    # The error sits inside the contact fieldset, before the email input that refers to it.
    assert page.index('id="e-contact"') < page.index('id="f-email"')
    assert re.search(r'<input id="f-email"[^>]*aria-invalid="true"[^>]*'
                     r'aria-describedby="[^"]*e-contact', page)
    kept = re.search(r'<textarea id="f-message"[^>]*>\n(.*?)</textarea>', page, re.S)
    assert kept is not None and html.unescape(kept.group(1)) == text
    assert 'id="e-attachments">Your message was not sent yet: please choose your files' in page
    assert 'value="Zhang San"' in page
    assert f'value="{token}"' in page  # the same form, so a retry is still one delivery
    assert await events(http, gateway) == []


async def test_invalid_email_and_empty_message_both_reported(gateway: Gateway,
                                                             http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    resp, page = await post(http, gateway, form(token, email="not-an-address", message="  "),
                            lang="zh-CN")
    assert resp.status == 400
    assert 'id="e-email">电子邮箱格式不正确' in page
    assert 'id="e-message">请填写问题描述' in page
    assert 'value="not-an-address"' in page


async def test_unknown_choice_is_400(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp, page = await post(http, gateway, form(kind="lawsuit", customer_type="platinum"))
    assert resp.status == 400
    assert 'id="e-kind"' in page and 'id="e-customer_type"' in page


async def test_invalid_utf8_is_400_not_500(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    boundary = "----webformtest"
    body = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="email"\r\n\r\n'
            "x@example.com\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="message"\r\n\r\n').encode()
    body += b"caf\xe9 \xff\xfe broken\r\n" + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp, page = await post(http, gateway, body, headers=headers)
    assert resp.status == 400
    assert 'id="e-message"' in page and "could not be read" in page
    assert 'value="x@example.com"' in page
    # The same in a urlencoded body.
    resp, page = await post(http, gateway, b"email=x%40example.com&message=caf%E9",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400 and 'id="e-message"' in page
    assert await events(http, gateway) == []


@pytest.mark.parametrize("body,ctype", [
    (b"--nope\r\ngarbage", "multipart/form-data; boundary=other"),
    (b"{}", "application/json"),
    (b"", "multipart/form-data"),
])
async def test_malformed_bodies_are_400_pages(gateway: Gateway, http: aiohttp.ClientSession,
                                              body: bytes, ctype: str) -> None:
    resp, page = await post(http, gateway, body, headers={"Content-Type": ctype})
    assert resp.status == 400
    assert "The form could not be read" in page


async def test_overlong_field_is_413(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp, page = await post(http, gateway, form(subject="x" * 5000))
    assert resp.status == 413
    assert 'id="e-subject"' in page and "at most 200 characters" in page


async def test_script_injection_is_escaped(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    evil = '"><script>alert(1)</script>'
    resp, page = await post(http, gateway, form(name=evil, email=""))
    assert resp.status == 400
    assert "<script>" not in page
    assert "&#34;&gt;&lt;script&gt;" in page


# -- the pieces ------------------------------------------------------------------------------


def test_accept_language_weights() -> None:
    assert negotiate_locale(None, "fr-FR, en;q=0.4, zh-TW;q=0.8", "zh-CN") == "zh-TW"
    assert negotiate_locale(None, "zh-HK", "en") == "zh-TW"
    assert negotiate_locale(None, "de, fr", "en") == "en"
    assert negotiate_locale(None, "en;q=0, zh", "en") == "zh-CN"
    assert negotiate_locale(None, "en;q=abc", "zh-CN") == "zh-CN"
    assert negotiate_locale("zh-Hant", "en", "en") == "zh-TW"
    assert negotiate_locale(None, None, "zh-CN") == "zh-CN"


def test_rate_limiter_refills_and_forgets() -> None:
    now = [0.0]
    limiter = ClientRateLimiter(2, 60.0, max_clients=3, clock=lambda: now[0])
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(30.0)
    now[0] = 30.0
    assert limiter.take("a") == 0.0  # one refilled
    for key in "bcde":
        limiter.take(key)
    assert len(limiter) <= 3  # bounded: the least recently seen went first
    now[0] = 1000.0
    limiter.take("z")
    assert len(limiter) == 1  # idle a whole window: full again, forgotten


async def test_problems_in_hidden_fields_are_the_whole_forms(gateway: Gateway,
                                                             http: aiohttp.ClientSession) -> None:
    resp, page = await post(http, gateway, form("t" * 500))
    assert resp.status == 413
    assert "The form could not be read" not in page  # it was read; one field was too long
    assert '<div class="summary"' in page and 'id="e-form_token"' not in page
    resp, page = await post(http, gateway, form(website="spam " * 1000))
    assert resp.status == 200 and "Thank you, we have received your message" in page
    assert await events(http, gateway) == []


# -- the size of the whole body ----------------------------------------------------------------

BOUNDARY = "----bodylimit"
BLOCK = b"\0" * 65_536  # one block reused, so the client itself holds no body in memory
SMALL_CAPS = ("[adapters.webform]\nrate_limit = 0\nmax_attachments = 1\n"
              "max_attachment_bytes = 1000000")
BIG = 30 * 1_048_576


def part_head(name: str, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return (head + "\r\n").encode()


def text_parts(message: str = "Kept while the rest was too large") -> bytes:
    return (part_head("email") + b"li.wei@example.com\r\n"
            + part_head("message") + message.encode() + b"\r\n")


def body_blocks(prefix: bytes, size: int, suffix: bytes = f"\r\n--{BOUNDARY}--\r\n".encode(),
                ) -> Any:
    """``prefix``, then ``size`` filler bytes in blocks, then ``suffix``: generated lazily."""
    yield prefix
    left = size
    while left > 0:
        yield BLOCK[:min(left, len(BLOCK))]
        left -= len(BLOCK)
    yield suffix


class Answer:
    """What a raw client saw: the status line's code, the body, and how much it had sent."""

    def __init__(self, status: int, headers: str, body: bytes, sent: int, total: int) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.sent, self.total = sent, total


async def send_until_answered(gw: Gateway, blocks: Any, *, chunked: bool,
                              extra_headers: str = "") -> Answer:
    """POST ``blocks`` to /form over a raw socket, stopping as soon as the server answers.

    The answer is read while sending, as a browser does, so a server that refuses early is
    seen to refuse early; ``sent`` says how many body bytes had gone out by then.
    """
    parts = list(blocks) if not chunked else None
    total = sum(map(len, parts)) if parts is not None else 0
    head = (f"POST /form?lang=en HTTP/1.1\r\nHost: {gw.host}:{gw.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{extra_headers}")
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    try:
        writer.write(head.encode())
        for block in (parts if parts is not None else blocks):
            if answer.done():
                break
            writer.write(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
            sent += len(block)
            if not chunked:
                total = max(total, sent)
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.wait({answer, drain}, return_when=asyncio.FIRST_COMPLETED, timeout=20)
            if not drain.done():
                drain.cancel()
            elif drain.exception() is not None:
                break  # the server closed; its answer, if any, is in the read buffer
        else:
            if chunked:
                writer.write(b"0\r\n\r\n")
        raw_head = (await asyncio.wait_for(answer, 20)).decode("latin-1")
        status = int(raw_head.split(" ", 2)[1])
        length = re.search(r"(?im)^content-length:\s*(\d+)", raw_head)
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), 20) if length \
            else b""
    finally:
        answer.cancel()
        writer.close()
    return Answer(status, raw_head, body, sent, total if not chunked else sent)


async def test_declared_oversized_body_is_refused_before_it_is_read(
        make_gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(SMALL_CAPS)
    # The bulk in a part the form does not know: aiohttp would drain it, unseen by the handler.
    blocks = list(body_blocks(text_parts() + part_head("upload", "big.bin"), BIG))
    answer = await send_until_answered(gw, blocks, chunked=False)
    assert answer.status == 413
    page = answer.body.decode()
    assert "What you sent is too large: at most 1.16 MB in all" in page
    assert re.search(r"(?im)^connection: close", answer.headers)
    assert answer.sent < BIG // 2, "the server waited for the body it was going to refuse"
    assert created(await events(http, gw)) == []


async def test_declared_oversized_body_gets_no_100_continue(make_gateway: Any) -> None:
    gw = await make_gateway(SMALL_CAPS)
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write((f"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                  "Accept-Language: zh-CN\r\nExpect: 100-continue\r\n\r\n").encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    writer.close()
    assert head.startswith("HTTP/1.1 413"), head  # not "100 Continue": no body is wanted


def oversized_shape(shape: str) -> Any:
    """Bodies whose bulk sits where aiohttp's multipart reader skips it without the handler."""
    end = f"\r\n--{BOUNDARY}--\r\n".encode()
    if shape == "preamble":
        # Lines before the first boundary, then a proper form.
        line = b"x" * 998 + b"\r\n"
        block = line * 64
        return itertools.chain(itertools.repeat(block, BIG // len(block)),
                               (text_parts() + end[2:],))
    head = {"unknown file part": part_head("upload", "big.bin", "application/octet-stream"),
            "unknown text part": part_head("comments")}[shape]
    return body_blocks(text_parts() + head, BIG, end)


@pytest.mark.parametrize("shape", ["unknown file part", "unknown text part", "preamble"])
async def test_chunked_oversized_body_is_refused_while_it_streams(
        make_gateway: Any, http: aiohttp.ClientSession, shape: str) -> None:
    gw = await make_gateway(SMALL_CAPS)
    answer = await send_until_answered(gw, oversized_shape(shape), chunked=True)
    assert answer.status == 413, answer.body[:500]
    page = answer.body.decode()
    assert "What you sent is too large: at most 1.16 MB in all" in page
    assert answer.sent < BIG // 2, "the server read on past its limit"
    if shape != "preamble":
        assert ">\nKept while the rest was too large</textarea>" in page
        assert 'value="li.wei@example.com"' in page
    assert created(await events(http, gw)) == []


async def test_server_body_limit_caps_the_form_and_memory(make_gateway: Any,
                                                          http: aiohttp.ClientSession) -> None:
    from tests.memory_probe import peak_bytes, reset_peak, rss_bytes

    # Five 5 MB files are each within the form's limits, but the listener takes 2 MB at most.
    gw = await make_gateway("[server]\nmax_body_bytes = 2000000\n"
                            "[adapters.webform]\nrate_limit = 0")
    _, token = await fetch_form(http, gw)
    files = [(f"f{i}.bin", b"\2" * 1_500_000, "application/octet-stream") for i in range(2)]
    resp, page = await post(http, gw, form(token, files=files))  # with Content-Length
    assert resp.status == 413
    assert "at most 1.91 MB in all" in page
    measured = reset_peak()
    before = rss_bytes()
    blocks = itertools.chain([text_parts()], *(
        [part_head("attachments", f"f{i}.bin"), *itertools.repeat(BLOCK, 80), b"\r\n"]
        for i in range(5)))
    answer = await send_until_answered(gw, blocks, chunked=True)
    assert answer.status == 413
    if measured:
        # 25 MB offered; what the server may hold is its 2 MB cap plus read-ahead.
        assert peak_bytes() - before < 12 * 1_048_576
    assert created(await events(http, gw)) == []


async def test_a_full_form_at_every_limit_still_fits(make_gateway: Any,
                                                     http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(SMALL_CAPS)
    _, token = await fetch_form(http, gw)
    fields = {name: "x" * cap for name, cap in FIELD_LIMITS.items()
              if name not in ("email", "phone", "customer_type", "kind", "ticket_number",
                              "website", "lang", "form_token")}
    fields["message"] = "问" * FIELD_LIMITS["message"]  # 3 bytes a character in UTF-8
    resp, page = await post(http, gw, form(token, files=[("max.bin", b"\3" * 1_000_000,
                                                          "application/octet-stream")],
                                           **fields))
    assert resp.status == 200, page
    assert len(created(await events(http, gw))) == 1


async def test_the_receipt_page_speaks_the_pages_language(gateway: Gateway,
                                                         http: aiohttp.ClientSession) -> None:
    _, token = await fetch_form(http, gateway)
    resp, page = await post(http, gateway, form(token, message="我的路由器从昨天开始无法上网"))
    assert resp.status == 200
    assert "has been registered under ticket number" in page  # lang=en page, Chinese words

"""The acknowledgement's language: decided from the customer's own words, then the declared tag,
then the configured default; English for a language we have no template for. End to end through
the SMTP adapter (to a capture relay) and the JSON API, with the default zh-CN."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import language
from gateway.acks import SUPPORTED_LOCALES, ack_locale, pick_locale, render_ack
from gateway.language import detect_language, message_language
from gateway.runtime import Gateway
from gateway.sla import BusinessCalendar, CalendarConfig
from gateway.testing.drivers import first_number
from gateway.testing.drivers_mail import customer_mail, smtp_transaction
from gateway.testing.harness import read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.mail import SmtpAdapter
from intake_adapters.twilio import one_segment, sms_ack_text
from tests.conftest import MakeGateway

# text -> the acknowledgement's locale, with no declared tag and the default zh-CN
TEXTS = [
    # English, however short, with links, numbers and addresses around it
    ("My router has had no internet since this morning.", "en"),
    ("Hi", "en"),
    ("Where is my order SO-20251124-0042? Tracking: https://track.example.com/x/9931", "en"),
    ("Please call me back on +86 138 0013 8000 or write to li.wei@example.com", "en"),
    ("Order #88213 arrived damaged, photos attached 🙁", "en"),
    ("Please deliver to 北京市朝阳区 instead of the old address, thanks a lot", "en"),
    # Simplified and traditional Chinese, with English product names and numbers mixed in
    ("我家的宽带从昨天晚上开始断网，请尽快处理。", "zh-CN"),
    ("我的 iPhone 15 Pro 屏幕坏了，订单号 SO-1001", "zh-CN"),
    ("请问这个 app 怎么导出 PDF 发票？https://example.com/help", "zh-CN"),
    ("我家的寬頻從昨天晚上開始斷線，請盡快處理。", "zh-TW"),
    ("請問你們的 App 什麼時候支援 Apple Pay？", "zh-TW"),
    # Han that is the same in both scripts: Chinese, the default's variant
    ("故障", "zh-CN"),
    # Japanese and Korean: no templates, so English, never the Chinese default
    ("ルーターが昨日から使えません。確認をお願いします。", "en"),
    ("注文が届いていません", "en"),
    ("라우터가 어제부터 작동하지 않습니다.", "en"),
    # Other scripts we have no templates for
    ("Здравствуйте, роутер не работает", "en"),
    ("Bonjour, ma box ne fonctionne plus depuis hier.", "en"),
    # Nothing to read a language from: the default
    ("😀👍", "zh-CN"),
    ("12345", "zh-CN"),
    ("CX-20251124-00001-7", "zh-CN"),
    ("https://example.com/order/12345", "zh-CN"),
    ("", "zh-CN"),
]


@pytest.mark.parametrize(("text", "locale"), TEXTS, ids=[t[0][:24] or "empty" for t in TEXTS])
def test_the_text_decides(text: str, locale: str) -> None:
    assert ack_locale(None, text, "zh-CN") == locale


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("我家的宽带从昨天晚上开始断网", "zh-CN"),
        ("我家的寬頻從昨天晚上開始斷線", "zh-TW"),
        ("故障", "zh"),
        ("ルーターが壊れました", "ja"),
        ("라우터가 고장났어요", "ko"),
        ("Привет", "ru"),
        ("Hello", "en"),
        # A lone の in a Chinese shop name and a katakana middle dot are not Japanese.
        ("我在の店买的耳机坏了", "zh-CN"),
        ("哈利・波特的书到了吗", "zh-CN"),
        ("👍", None),
    ],
)
def test_detect_language(text: str, language: str | None) -> None:
    assert detect_language(text) == language


@pytest.mark.parametrize(
    ("declared", "text", "default", "locale"),
    [
        # A declared tag that agrees with the words refines them.
        ("zh-HK", "故障", "zh-CN", "zh-TW"),
        ("zh-Hant", "故障", "en", "zh-TW"),
        ("zh-Hans-HK", "故障", "zh-TW", "zh-CN"),
        ("zh-TW", "故障", "zh-CN", "zh-TW"),
        ("en-GB", "Where is my order?", "zh-CN", "en"),
        ("zh-hans", "我的快递显示已签收，但我没有收到", "en", "zh-CN"),
        # Bare "zh" says Chinese, not which script: the default's variant if it is Chinese.
        ("zh", "故障", "zh-TW", "zh-TW"),
        ("zh", "故障", "en", "zh-CN"),
        # A declared tag the words contradict loses: a GB2312 label or a Chinese browser on an
        # English mail, an English mail client or Telegram app on a Chinese message.
        ("zh-CN", "My router has had no internet since this morning.", "zh-CN", "en"),
        ("en-US", "我家的宽带从昨天晚上开始断网", "en", "zh-CN"),
        ("zh-CN", "我家的寬頻從昨天晚上開始斷線，請盡快處理", "zh-CN", "zh-TW"),
        ("zh-CN", "ルーターが昨日から使えません", "zh-CN", "en"),
        # With no letters to read, the declared tag decides, and only then the default.
        ("zh-TW", "👍", "zh-CN", "zh-TW"),
        ("en", "12345", "zh-CN", "en"),
        ("ja", "👍", "zh-CN", "en"),
        (None, "👍", "zh-TW", "zh-TW"),
        # Unusable tags are ignored.
        ("xx", "👍", "zh-CN", "zh-CN"),
        ("", "👍", "en", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "👍", "en", "zh-CN"),
        ("not a tag at all", "Hello", "zh-CN", "en"),
    ],
)
def test_declared_tag_and_text(declared: str | None, text: str, default: str,
                               locale: str) -> None:
    assert ack_locale(declared, text, default) == locale


def test_quoted_history_and_signatures_do_not_count() -> None:
    # A Chinese reply quoting our English acknowledgement, signed in English.
    text = ("好的，谢谢。\n\nOn Mon, 24 Nov 2025 at 10:00, Support <support@example.com> wrote:\n"
            "> Thank you for contacting us. Your request has been registered under ticket\n"
            "> number CX-20251124-00001-7. We will answer by Monday 24 November, 10:00.\n")
    assert ack_locale(None, text, "en") == "zh-CN"
    assert ack_locale(None, "谢谢\n-- \nLi Wei, Senior Network Engineer, Example Ltd", "en") \
        == "zh-CN"
    assert ack_locale(None, "收到，谢谢\n\nSent from my iPhone", "en") == "zh-CN"


def test_the_subject_counts_only_when_the_text_says_nothing() -> None:
    # A reply's subject is often our own acknowledgement's.
    assert message_language(None, "好的，谢谢", "Re: [CX-1] We have received your request") \
        == "zh-CN"
    assert message_language(None, "👍", "Router broken") == "en"
    assert message_language(None, "", "宽带断网") == "zh-CN"


@pytest.mark.parametrize(
    ("language", "default", "locale"),
    [("zh-CN", "en", "zh-CN"), ("zh-SG", "en", "zh-CN"), ("zh-TW", "en", "zh-TW"),
     ("zh-HK", "en", "zh-TW"), ("zh-MO", "en", "zh-TW"), ("yue", "zh-CN", "zh-TW"),
     ("cmn-Hant", "en", "zh-TW"), ("zh_TW", "en", "zh-TW"), ("en-US", "zh-CN", "en"),
     ("ja", "zh-CN", "en"), ("ko", "zh-TW", "en"), ("fr", "zh-CN", "en"),
     (None, "zh-TW", "zh-TW"), (None, "bogus!", "en"), ("xx", "zh-CN", "zh-CN")],
)
def test_pick_locale(language: str | None, default: str, locale: str) -> None:
    assert pick_locale(language, default) == locale


@given(declared=st.one_of(st.none(), st.text(max_size=40)), text=st.text(max_size=300),
       default=st.sampled_from([*SUPPORTED_LOCALES, "fr", ""]))
def test_always_a_supported_locale(declared: str | None, text: str, default: str) -> None:
    assert ack_locale(declared, text, default) in SUPPORTED_LOCALES


# --- the fast paths compute what the plain definitions do -------------------------------------

# The noise as one alternation, as it was first written (slow: every part at every position).
PLAIN_NOISE = re.compile(
    r"(?aim)^>.*$|^-- ?$[\s\S]*|(?:https?://|www\.)[^\s<>\"]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|[\w-]*\d[\w-]*"
)
NOISY = st.lists(st.sampled_from([*"aZ9_.+-@ \n>:/wWhH\"<é中", "http://", "https://", "www.",
                                  "WWW.", "-- ", "--\n", "a@b.co", "\n> "]),
                 max_size=20).map("".join)


@settings(max_examples=500)
@given(text=NOISY)
def test_noise_is_stripped_as_the_plain_pattern_does(text: str) -> None:
    assert language._strip_noise(text) == PLAIN_NOISE.sub(" ", text)


@pytest.mark.parametrize("text", ["see SO-1001.a@b.co", "a@b.c+d@e.fg", "ab1.x@y.zz", "x -12",
                                  "to .x@y.zz", "(+a@b.cd)", "AX3000 www.Example.com/9",
                                  "> q\n-- \nsig 9", "a-b-c9 d", "-x9"])
def test_noise_edge_cases(text: str) -> None:
    assert language._strip_noise(text) == PLAIN_NOISE.sub(" ", text)


def test_han_variant_classes_agree_with_the_codecs_for_every_han_character() -> None:
    simplified, traditional = language._han_variants()
    han = "".join("".join(map(chr, range(a, b + 1))) for a, b in language._HAN_RANGES)
    assert len(language._HAN.findall(han)) == len(han)
    got = [1 if simplified.match(ch) else -1 if traditional.match(ch) else 0 for ch in han]
    assert got == [language._han_variant(ch) for ch in han]


# --- end to end ------------------------------------------------------------------------------

SUPPORT = "support@example.com"


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def mail_config(capture: SmtpCapture) -> str:
    # The default is Chinese, so an English acknowledgement proves the text was read.
    return ('[intake]\ndefault_locale = "zh-CN"\n'
            f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n')


async def created_event(gw: Gateway, number: str, *, timeout: float = 10) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            for e in await read_events(s, gw.url):
                if e["type"] == "ticket.created" and e["subject"] == number:
                    return e
            assert asyncio.get_running_loop().time() < deadline, f"no ticket.created {number}"
            await asyncio.sleep(0.05)


MAILS = [
    # charset, Content-Language, subject, text, acknowledgement locale, recorded language
    ("us-ascii", None, "Router", "My router has had no internet since this morning.", "en",
     "en"),
    # Chinese mail clients label English text GB2312; the words win over the label.
    ("gb2312", None, "Router", "My router has had no internet since this morning.", "en",
     "en"),
    ("iso-2022-jp", None, "ルーターの故障", "ルーターが昨日から使えません。確認をお願いします。",
     "en", "ja"),
    ("utf-8", "en-US", "宽带故障", "我家的宽带从昨天晚上开始断网，请尽快处理。", "zh-CN", "zh-CN"),
    ("big5", None, "寬頻故障", "我家的寬頻從昨天晚上開始斷線，請盡快處理。", "zh-TW", "zh-TW"),
    ("utf-8", None, "👍", "👍👍", "zh-CN", None),
]


@pytest.mark.parametrize(("charset", "content_language", "subject", "text", "locale", "recorded"),
                         MAILS, ids=[f"{m[0]}-{m[4]}" for m in MAILS])
async def test_mail_is_acknowledged_in_the_language_it_is_written_in(
        make_gateway: MakeGateway, capture: SmtpCapture, charset: str,
        content_language: str | None, subject: str, text: str, locale: str,
        recorded: str | None) -> None:
    gw = await make_gateway(mail_config(capture))
    customer = f"c-{uuid.uuid4().hex[:8]}@customers.example.org"
    headers = {"Content-Language": content_language} if content_language else {}
    data = customer_mail(sender=customer, subject=subject, text=text, charset=charset,
                         message_id=f"{uuid.uuid4().hex}@customers.example.org", headers=headers)
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    reply = await asyncio.to_thread(smtp_transaction, port, sender=customer,
                                    recipients=[SUPPORT], data=data)
    assert reply.code == 250 and reply.ticket, reply
    number = reply.ticket[0]
    ack = await capture.wait_for(lambda m: customer in m.rcpt_tos)
    assert first_number(ack.subject) == number
    assert ack.message["Content-Language"] == locale
    body = ack.text()
    if locale == "en":
        assert "ticket number" in body and "(China Standard Time)" in body, body
    elif locale == "zh-CN":
        assert "工单编号" in body and "（北京时间）前答复您" in body, body
    else:
        assert "工單編號" in body and "（北京時間）前答覆您" in body, body
    # The language decided is recorded once, for the downstream systems too.
    event = await created_event(gw, number)
    assert event["data"]["message"].get("locale") == recorded


async def test_api_answer_follows_the_words_not_the_browser(
        gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async def post(body: dict[str, object], accept_language: str) -> dict:
        async with http.post(f"{gateway.url}/v1/messages", json=body,
                             headers={"Accept-Language": accept_language}) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()

    english = await post({"contact": {"email": "a@example.org"},
                          "text": "The invoice for last month is missing."}, "zh-CN,zh;q=0.9")
    assert english["acknowledgement"]["locale"] == "en"
    assert "(China Standard Time)" in english["acknowledgement"]["text"]
    japanese = await post({"contact": {"email": "b@example.org"},
                           "text": "先月の請求書が届いていません。"}, "ja")
    assert japanese["acknowledgement"]["locale"] == "en"
    chinese = await post({"contact": {"email": "c@example.org"},
                          "text": "上个月的发票还没有收到。"}, "en-US")
    assert chinese["acknowledgement"]["locale"] == "zh-CN"
    assert "（北京时间）" in chinese["acknowledgement"]["text"]
    hong_kong = await post({"contact": {"email": "d@example.org"}, "text": "故障",
                            "locale": "zh-HK"}, "en")
    assert hong_kong["acknowledgement"]["locale"] == "zh-TW"


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
@pytest.mark.parametrize("outcome", ["created", "duplicate", "followup", "replayed"])
def test_an_acknowledgement_cut_to_one_sms_keeps_the_number_and_the_zone(
        locale: str, outcome: str) -> None:
    calendar = BusinessCalendar(CalendarConfig())
    zone = {"zh-CN": "（北京时间）", "zh-TW": "（北京時間）", "en": "(China Standard Time)"}[locale]
    number = "CX-20260930-00123-4"
    # The longest dates: Wednesday 30 September in English, 12月31日（星期三） in Chinese.
    for due in (datetime(2026, 9, 30, 2, 0, tzinfo=UTC), datetime(2025, 12, 31, 2, 0, tzinfo=UTC)):
        ack = render_ack(number=number, outcome=outcome,  # type: ignore[arg-type]
                         due_at=due, locale=locale, calendar=calendar)
        assert zone in ack.text
        sms = sms_ack_text(ack)
        assert one_segment(sms)
        assert number in sms and zone in sms, sms

"""The duplicate-detection fingerprint."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.fingerprint import content_fingerprint, normalize_for_dedup

# Words without the punctuation that gives a line a meaning of its own (">", "-- ", "x:"), so
# that moving line breaks around cannot turn a word into a quote marker or a header.
LETTERS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éüÇ订单退款没有收到你好请问"
)
words = st.lists(st.text(alphabet=LETTERS, min_size=1, max_size=8), min_size=1, max_size=25)
spaces = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\u3000", " \n ", "\n\n", "\u00a0"])

QUOTED_TAILS = [
    "\n\nOn Mon, 23 Nov 2026 at 10:00, Support <support@example.com> wrote:\n> Thanks.\n> Bye",
    "\n\nOn Mon, 23 Nov 2026 at 10:00, Customer Support Team <\nsupport@example.com> wrote:\n\n> x",
    "\n在 2026年11月22日 10:00，客服 <kf@example.com> 写道：\n> 您好\n",
    "\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nSubject: hi\n\nold text",
    "\n\n------------------ 原始邮件 ------------------\n发件人: 客服\n发送时间: 2026年11月22日\n"
    "旧",
    "\n\nFrom: Support <s@example.com>\nSent: Monday, 23 November 2026 10:00\nTo: me\n\nold",
    "\n\n发件人： 客服 <kf@example.com>\n发送时间： 2026年11月22日 10:00\n收件人： 我\n\n旧的",
    "\n> quoted line\n> another quoted line",
]
SIGNATURES = [
    "\n-- \nAlice Example\nACME Ltd.\n+86 21 5555 0000",
    "\n--\nAlice",
    "\n\nSent from my iPhone",
    "\n\nSent from my Android phone\n",
    "\n\n发自我的iPhone",
    "\n发自我的华为手机",
    "\n\nGet Outlook for iOS",
]


def plain(ws: list[str]) -> str:
    """Words joined by single spaces."""
    return " ".join(ws)


def no_boilerplate(text: str) -> bool:
    """Whether random words happen to spell a signature line."""
    lowered = text.lower()
    return "sent from" not in lowered and "get outlook" not in lowered


# --- examples --------------------------------------------------------------------------------


def test_whitespace_case_and_width() -> None:
    full_width = "\uff37\uff2f\uff32\uff2c\uff24"  # "WORLD" typed with a Chinese IME
    assert (
        normalize_for_dedup(f"  Hello\u3000\u3000{full_width}\n\n again\t") == "hello world again"
    )
    assert normalize_for_dedup("zero\u200bwidth") == "zerowidth"



def test_long_texts_and_repeated_texts_normalize_alike() -> None:
    # Short texts' results are kept for a while (language detection, then the fingerprint, ask
    # for the same text); a long one is normalized afresh, the same way.
    words = "订单\u200b没有到 Order\u00ad late " * 400
    for text in (words[:100], words):
        first, again = normalize_for_dedup(text), normalize_for_dedup(text)
        assert first == again == " ".join(text.replace("\u200b", "").replace("\u00ad", "")
                                          .casefold().split())

@pytest.mark.parametrize("tail", QUOTED_TAILS + SIGNATURES)
def test_history_and_signatures_are_removed(tail: str) -> None:
    assert normalize_for_dedup("My order 42 has not arrived." + tail) == (
        "my order 42 has not arrived."
    )


def test_sent_from_my_iphone_above_the_quote() -> None:
    text = "路由器坏了\n\n发自我的iPhone\n\n在 2026年11月22日 10:00，客服 写道：\n> 你好"
    assert normalize_for_dedup(text) == "路由器坏了"


def test_own_words_that_look_like_boilerplate_stay() -> None:
    assert normalize_for_dedup("On Monday my son wrote: it broke") == (
        "on monday my son wrote: it broke"
    )
    assert (
        normalize_for_dedup("From: the shop\nthe box was empty")
        == "from: the shop the box was empty"
    )
    assert normalize_for_dedup("I sent from my account\nmore") == "i sent from my account more"
    assert normalize_for_dedup("a -- b") == "a -- b"


def test_fingerprint_is_sha256_of_the_normalized_body() -> None:
    expected = hashlib.sha256(b"my order is late").hexdigest()
    assert content_fingerprint("anything", "My  ORDER is late\n\nSent from my iPhone") == expected


@pytest.mark.parametrize(
    "subject",
    ["Hello", "Re: Hello", "RE: re: Hello", "Fwd: Re: hello", "FW: HELLO", "AW: Hello",
     "回复\uff1aHello", "回覆: Hello", "转发: 回复: Hello", "Re[2]: Hello", "  re :  hello "],
)  # fmt: skip
def test_empty_body_falls_back_to_subject_without_prefixes(subject: str) -> None:
    assert content_fingerprint(subject, "") == hashlib.sha256(b"hello").hexdigest()
    assert content_fingerprint(subject, "\n> only a quote") == content_fingerprint("hello", " ")


def test_body_wins_over_subject() -> None:
    assert content_fingerprint("A", "same body") == content_fingerprint("B", "same body")
    assert content_fingerprint("A", "") != content_fingerprint("B", "")


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=100)
@given(words, st.data())
def test_invariant_under_whitespace(ws: list[str], data: st.DataObject) -> None:
    assume(no_boilerplate(plain(ws)))
    text = data.draw(spaces) + "".join(w + data.draw(spaces) for w in ws)
    assert normalize_for_dedup(text) == normalize_for_dedup(plain(ws))
    assert content_fingerprint("", text) == content_fingerprint("", plain(ws))


@settings(max_examples=100)
@given(words)
def test_invariant_under_case_and_width(ws: list[str]) -> None:
    text = plain(ws)
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
    expected = content_fingerprint("", text)
    assert content_fingerprint("", text.upper()) == expected
    assert content_fingerprint("", text.lower()) == expected
    assert content_fingerprint("", text.swapcase()) == expected
    assert content_fingerprint("", full_width) == expected


@settings(max_examples=100)
@given(words, st.sampled_from(QUOTED_TAILS), st.text())
def test_invariant_under_appended_quoted_reply(ws: list[str], tail: str, quoted: str) -> None:
    assume(no_boilerplate(plain(ws)))
    text = plain(ws)
    if tail.endswith("> x") or tail.startswith("\n> "):
        # Plain quoted lines: whatever follows must be quoted too.
        quoted = "".join(f"\n> {line}" for line in quoted.splitlines())
    assert content_fingerprint("", text + tail + quoted) == content_fingerprint("", text)


@settings(max_examples=100)
@given(words, st.sampled_from(SIGNATURES), st.text())
def test_invariant_under_appended_signature(ws: list[str], signature: str, more: str) -> None:
    assume(no_boilerplate(plain(ws)))
    text = plain(ws)
    if signature.lstrip("\n").startswith("--"):
        signature += more  # everything after the delimiter is signature
    assert content_fingerprint("", text + signature) == content_fingerprint("", text)


@settings(max_examples=100)
@given(words, words)
def test_different_texts_differ(a: list[str], b: list[str]) -> None:
    assume(normalize_for_dedup(plain(a)) != normalize_for_dedup(plain(b)))
    assert content_fingerprint("", plain(a)) != content_fingerprint("", plain(b))


@settings(max_examples=100)
@given(words, st.text(alphabet=LETTERS, min_size=1, max_size=8))
def test_one_more_word_changes_the_fingerprint(ws: list[str], extra: str) -> None:
    assert content_fingerprint("", plain(ws)) != content_fingerprint("", plain([*ws, extra]))

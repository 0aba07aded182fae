"""What the gateway adds to a reply, per locale: the subject and the satisfaction question."""

from __future__ import annotations

import re

_SUBJECTS = {
    "en": "[{number}] Answer to your request",
    "zh-CN": "[{number}] 关于您的请求的答复",
    "zh-TW": "[{number}] 關於您的請求的答覆",
}

_SATISFACTION = {
    "en": "How satisfied are you with how we handled ticket {number}? Reply with a number "
          "from 1 (not at all) to 5 (very satisfied).",
    "zh-CN": "您对工单 {number} 的处理结果满意吗？请回复 1（很不满意）到 5（非常满意）之间的数字。",
    "zh-TW": "您對工單 {number} 的處理結果滿意嗎？請回覆 1（很不滿意）到 5（非常滿意）之間的數字。",
}

_RE = re.compile(r"^\s*(?:re|aw|sv|回复|回覆|答复)\s*[:：]\s*", re.IGNORECASE)


def reply_subject(number: str, locale: str, customer_subject: str = "") -> str:
    """``[number] Re: <the customer's subject>``, or a localized subject when they gave none.

    The ``[number]`` tag makes the customer's answer a follow-up even if their client drops
    In-Reply-To (the number is checked against the sender: gateway/decision.py)."""
    subject = " ".join(customer_subject.split())[:200]
    if subject:
        subject = _RE.sub("", subject)
        subject = subject.replace(f"[{number}]", "").strip()
    if not subject:
        return _SUBJECTS.get(locale, _SUBJECTS["en"]).format(number=number)
    return f"[{number}] Re: {subject}"


_LINK = {
    "en": " Or rate it here: {link}",
    "zh-CN": "也可在此评价：{link}",
    "zh-TW": "也可在此評價：{link}",
}


def satisfaction_question(number: str, locale: str, link: str | None = None) -> str:
    """The one-question survey a resolution carries, in the customer's language, with the
    signed link to the one-question page when there is one."""
    text = _SATISFACTION.get(locale, _SATISFACTION["en"]).format(number=number)
    if link:
        text += _LINK.get(locale, _LINK["en"]).format(link=link)
    return text


RATING_PAGE = {
    "en": ("How satisfied are you with how we handled ticket {number}?",
           "Thank you for your rating.", "This link was used already, or it has expired.",
           ("not at all", "very satisfied")),
    "zh-CN": ("您对工单 {number} 的处理结果满意吗？", "感谢您的评价。", "此链接已使用或已失效。",
              ("很不满意", "非常满意")),
    "zh-TW": ("您對工單 {number} 的處理結果滿意嗎？", "感謝您的評價。", "此連結已使用或已失效。",
              ("很不滿意", "非常滿意")),
}
"""The one-question page: the question, the thanks, the refusal, the scale's two ends."""


_RATING = re.compile(r"^\s*([1-5])\s*(?:分|星|stars?|/\s*5)?\s*[.!。！]?\s*$", re.IGNORECASE)
_FULLWIDTH = str.maketrans("１２３４５", "12345")


def parse_rating(text: str) -> int | None:
    """1 to 5 when the message is only a rating (``4``, ``５``, ``4分``, ``5 stars``), else None.

    Only the first line that is not quoted history counts (an email answer quotes our text);
    it is looked at only when short, so every message pays for a few characters at most."""
    head = text.lstrip()[:64]
    if not head or head[0] not in "12345１２３４５":
        return None
    for line in head.translate(_FULLWIDTH).splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith(">"):
            break
        m = _RATING.match(line)
        return int(m.group(1)) if m else None
    return None

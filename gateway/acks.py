"""Rendering acknowledgements: the ticket number and the expected response time, per locale."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.language import message_language
from gateway.plugin.locales import SUPPORTED_LOCALES as SUPPORTED
from gateway.plugin.locales import pick_locale
from gateway.sla import BusinessCalendar, format_due
from intake_schemas import Acknowledgement, FileNotKept, Outcome

SUPPORTED_LOCALES = SUPPORTED  # the acknowledgement languages (gateway.plugin.locales)

_SUBJECTS: dict[str, dict[str, str]] = {
    "en": {
        "created": "[{number}] We have received your request",
        "duplicate": "[{number}] We already have your request",
        "followup": "[{number}] Your message was added to your request",
        "replayed": "[{number}] We have received your request",
    },
    "zh-CN": {
        "created": "[{number}] 我们已收到您的请求",
        "duplicate": "[{number}] 您的请求已在处理中",
        "followup": "[{number}] 您的补充信息已收到",
        "replayed": "[{number}] 我们已收到您的请求",
    },
    "zh-TW": {
        "created": "[{number}] 我們已收到您的請求",
        "duplicate": "[{number}] 您的請求已在處理中",
        "followup": "[{number}] 您的補充資訊已收到",
        "replayed": "[{number}] 我們已收到您的請求",
    },
}

_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "created": "Thank you for contacting us. Your request has been registered under ticket "
                   "number {number}. We will answer by {due}. Please quote this number if you "
                   "write to us again about it.",
        # The sentence without digits last: an SMS that must be shortened drops it first.
        "duplicate": "We already have this request under ticket number {number}. We will "
                     "answer by {due}. We have not opened a new one.",
        "followup": "Your message has been added to ticket {number}. We will answer by {due}.",
    },
    "zh-CN": {
        "created": "感谢您的来信。您的请求已受理，工单编号：{number}。我们将在{due}前答复您。"
                   "如需补充，请注明此编号。",
        "duplicate": "您的请求已在处理中，工单编号：{number}。我们将在{due}前答复您。"
                     "无需重复提交。",
        "followup": "您的补充信息已加入工单 {number}。我们将在{due}前答复您。",
    },
    "zh-TW": {
        "created": "感謝您的來信。您的請求已受理，工單編號：{number}。我們將在{due}前答覆您。"
                   "如需補充，請註明此編號。",
        "duplicate": "您的請求已在處理中，工單編號：{number}。我們將在{due}前答覆您。"
                     "無需重複提交。",
        "followup": "您的補充資訊已加入工單 {number}。我們將在{due}前答覆您。",
    },
}


def ack_locale(declared: str | None, text: str, default: str, subject: str = "") -> str:
    """The locale to acknowledge a message in: its language decided from the locale the channel
    declared and its own words (:func:`gateway.language.message_language`), then
    :func:`pick_locale`. Pure; the core applies the first half once per message
    (:func:`gateway.language.with_language`), so later renderings need only ``pick_locale``.
    """
    return pick_locale(message_language(declared, text, subject), default)


_NOT_KEPT: dict[str, dict[str, str]] = {
    "en": {
        "too_large": "{name} (larger than {size})",
        "too_many": "{name} (more than {count} files in one message)",
        "type": "{name} (a kind of file we cannot accept)",
        "unavailable": "{name} (we could not fetch it)",
        "sentence": "These files did not reach us: {files}. Please send them again as a link, "
                    "or in smaller parts.",
    },
    "zh-CN": {
        "too_large": "{name}（超过 {size}）",
        "too_many": "{name}（单条消息超过 {count} 个文件）",
        "type": "{name}（不支持的文件类型）",
        "unavailable": "{name}（无法获取）",
        "sentence": "以下文件未能收到：{files}。请以链接形式或拆分后重新发送。",
    },
    "zh-TW": {
        "too_large": "{name}（超過 {size}）",
        "too_many": "{name}（單則訊息超過 {count} 個檔案）",
        "type": "{name}（不支援的檔案類型）",
        "unavailable": "{name}（無法取得）",
        "sentence": "以下檔案未能收到：{files}。請以連結形式或拆分後重新傳送。",
    },
}
_MAX_NAMED_FILES = 5


def _megabytes(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1_048_576:.3g} MB" if n >= 1_048_576 else f"{max(1, n // 1024)} KB"


def not_kept_sentence(files: Sequence[FileNotKept], locale: str) -> str:
    """One sentence naming the files that did not arrive and why; empty for none."""
    if not files:
        return ""
    t = _NOT_KEPT.get(locale, _NOT_KEPT["en"])
    sep = ", " if locale == "en" else "、"
    named = [t[f.reason].format(name=f.name[:80], size=_megabytes(f.limit), count=f.limit or "?")
             for f in files[:_MAX_NAMED_FILES]]
    if len(files) > _MAX_NAMED_FILES:
        named.append(f"+{len(files) - _MAX_NAMED_FILES}")
    return t["sentence"].format(files=sep.join(named))


def render_ack(*, number: str, outcome: Outcome, due_at: datetime, locale: str,
               calendar: BusinessCalendar,
               not_kept: Sequence[FileNotKept] = ()) -> Acknowledgement:
    """The acknowledgement text for one receipt; ``replayed`` repeats the ``created`` text.

    Files that did not reach us are named after the due time (nothing is dropped silently);
    an SMS cut to one segment keeps the number and the due time first.
    """
    loc = locale if locale in _TEXTS else "en"
    key = "created" if outcome == "replayed" else outcome
    due = format_due(due_at, loc, calendar)
    text = _TEXTS[loc][key].format(number=number, due=due)
    if notice := not_kept_sentence(not_kept, loc):
        text = f"{text}{' ' if loc == 'en' else ''}{notice}"
    return Acknowledgement(
        ticket_number=number, outcome=outcome, due_at=due_at, locale=loc,
        subject=_SUBJECTS[loc][outcome].format(number=number), text=text,
    )

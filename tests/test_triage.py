"""Triage: kind, area, priority and escalation."""

# Chinese customers write full-width punctuation (U+FF0C, U+FF1A ...); the tests must too.

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.triage import TriageConfig, Triager, TriageResult, TriageRule, triage
from schemas.message import Contact, InboundMessage

CONFIG = TriageConfig()
TRIAGER = Triager(CONFIG)
RANK = {"low": 0, "medium": 1, "high": 2}


def message(text: str, *, subject: str = "", **fields: object) -> InboundMessage:
    """A minimal inbound message."""
    return InboundMessage(
        channel=str(fields.pop("channel", "api")),
        received_at=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        contact=Contact(email="a@example.org"),
        subject=subject,
        text=text,
        **fields,  # type: ignore[arg-type]
    )


def classify(text: str, **fields: object) -> TriageResult:
    """Triage ``text`` with the built-in rules."""
    return TRIAGER.classify(message(text, **fields))


# --- kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "priority"),
    [
        ("我要投诉你们的服务，太不负责任了", "complaint", "high"),
        ("This is unacceptable, I want to file a complaint.", "complaint", "high"),
        ("路由器坏了，指示灯一直闪红", "fault", "medium"),
        ("The router is not working since yesterday", "fault", "medium"),
        ("My phone keeps crashing", "fault", "medium"),
        ("建议增加夜间模式", "suggestion", "low"),
        ("Feature request: it would be nice to export as CSV", "suggestion", "low"),
        ("请问你们周末营业吗？", "consultation", "medium"),
        ("What are your opening hours?", "consultation", "medium"),
    ],
)
def test_kinds(text: str, kind: str, priority: str) -> None:
    result = classify(text)
    assert (result.kind, result.priority) == (kind, priority)
    assert result.escalated == (priority == "high")


# --- areas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "area"),
    [
        ("上个月的账单扣费两次，请退款", "billing"),
        ("I was charged twice, please refund the payment", "billing"),
        ("忘记密码，无法登录", "technical"),
        ("I cannot log in to the website", "technical"),
        ("The app shows a blank page", "technical"),
        ("产品质量太差", "product"),
        ("The device has a defect", "product"),
        ("快递三天了还没配送", "service"),
        ("Your support staff never answered", "service"),
        ("Hello there", "other"),
        ("你好", "other"),
    ],
)
def test_areas(text: str, area: str) -> None:
    assert classify(text).area == area


def test_subject_counts_too() -> None:
    result = classify("see subject", subject="Invoice question")
    assert result.area == "billing"


# --- priority --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "建议：充电器冒烟了，是否安全？",
        "I suggest you look into this: the charger gave me an electric shock",
        "系统宕机了",
        "Your site is down for everyone",
        "There was a fire",
        "We think there was a data breach",
    ],
)
def test_safety_and_outage_force_high(text: str) -> None:
    result = classify(text)
    assert result.priority == "high"
    assert result.escalated
    assert "safety" in result.matched


def test_vip_is_at_least_medium() -> None:
    assert classify("建议增加夜间模式").priority == "low"
    result = classify("建议增加夜间模式", customer_type="vip")
    assert result.kind == "suggestion"
    assert result.priority == "medium"
    assert result.matched == ("suggestion", "vip")


def test_customer_chosen_kind_wins() -> None:
    result = classify("我要投诉！", kind="suggestion")
    assert result.kind == "suggestion"
    assert result.priority == "low"
    assert "complaint" in result.matched
    assert classify("Just a question", kind="complaint").priority == "high"


# --- keyword matching ------------------------------------------------------------------------


def test_latin_keywords_match_whole_words_only() -> None:
    assert classify("I am very happy with it").area == "other"
    assert classify("Approved, thanks").area == "other"
    assert classify("The APP, again").area == "technical"
    assert classify("用app登不上").area == "technical"  # no spaces around it in Chinese text
    assert classify("a billing question").area == "billing"
    assert classify("the billboard fell").area == "other"


def test_phrases_span_line_breaks_and_typographic_apostrophes() -> None:
    assert classify("it is not\n   working").kind == "fault"
    assert classify("it doesn\u2019t work").kind == "fault"
    assert classify("it is not, working").kind == "consultation"


def test_full_width_and_case() -> None:
    assert classify("\uff21\uff30\uff30闪退").area == "technical"  # full-width "APP"
    assert classify("COMPLAINT").kind == "complaint"


def test_overlapping_chinese_keywords_are_all_found() -> None:
    rules = [
        TriageRule(name="long", keywords=["无法登录"], set_area="technical"),
        TriageRule(name="short", keywords=["无法"], set_kind="fault"),
        TriageRule(name="inner", keywords=["登录"], min_priority="high"),
    ]
    result = Triager(TriageConfig(rules=rules)).classify(message("我无法登录"))
    assert result.matched == ("long", "short", "inner")
    assert (result.kind, result.area, result.priority) == ("fault", "technical", "high")


# --- rule conditions -------------------------------------------------------------------------


def test_conditions() -> None:
    rules = [
        TriageRule(name="sms-outage", keywords=["down"], channels=["twilio"], min_priority="high"),
        TriageRule(name="new-billing", customer_types=["new"], set_area="billing"),
        TriageRule(name="fault-kind", keywords=["broken"], set_kind="fault"),
        TriageRule(name="faults-are-technical", kinds=["fault"], set_area="technical"),
    ]
    triager = Triager(TriageConfig(rules=rules))
    assert triager.classify(message("site down", channel="twilio")).priority == "high"
    assert triager.classify(message("site down", channel="api")).priority == "medium"
    assert triager.classify(message("hi", customer_type="new")).area == "billing"
    assert triager.classify(message("hi", customer_type="vip")).area == "other"
    broken = triager.classify(message("it is broken"))
    assert broken.matched == ("fault-kind", "faults-are-technical")
    assert broken.area == "technical"
    assert triager.classify(message("it is broken", kind="complaint")).area == "other"


def test_first_match_wins_for_kind_and_area() -> None:
    result = classify("投诉：设备故障，退款！")
    assert result.kind == "complaint"
    assert result.area == "billing"
    assert result.matched[:2] == ("complaint", "fault")


def test_partial_kind_priority_keeps_the_rest() -> None:
    config = msgspec.convert({"kind_priority": {"suggestion": "medium"}}, TriageConfig)
    triager = Triager(config)
    assert triager.classify(message("建议增加夜间模式")).priority == "medium"
    assert triager.classify(message("投诉")).priority == "high"


def test_escalation_is_configurable() -> None:
    config = TriageConfig(escalate=["high", "medium"])
    assert triage(message("你好"), config).escalated
    assert not triage(message("你好"), CONFIG).escalated


def test_triage_convenience_matches_triager() -> None:
    msg = message("The app is broken and I want a refund")
    assert triage(msg, CONFIG) == TRIAGER.classify(msg)
    assert triage(msg, CONFIG) == triage(msg, CONFIG)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"kind_priority": {"question": "high"}}, "triage.kind_priority"),
        ({"rules": [{"name": "a"}, {"name": "a"}]}, r"triage\.rules\[1\]\.name"),
        ({"rules": [{"name": " "}]}, r"triage\.rules\[0\]\.name"),
        ({"rules": [{"name": "a", "keywords": ["ok", "  "]}]}, r"triage\.rules\[0\]\.keywords"),
    ],
)
def test_invalid_config(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        msgspec.convert(raw, TriageConfig)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="keyword"):
        msgspec.convert({"rules": [{"name": "a", "keyword": ["x"]}]}, TriageConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"rules": [{"name": "a", "set_kind": "question"}]}, TriageConfig)


def test_built_in_rule_names() -> None:
    assert [rule.name for rule in CONFIG.rules] == [
        "safety", "complaint", "fault", "suggestion",
        "billing", "technical", "product", "service", "vip",
    ]  # fmt: skip


# --- properties ------------------------------------------------------------------------------

KEYWORDS = sorted({keyword for rule in CONFIG.rules for keyword in rule.keywords})
fragments = st.one_of(st.sampled_from(KEYWORDS), st.text(max_size=12))


@settings(max_examples=100)
@given(
    st.lists(fragments, max_size=8),
    st.sampled_from([None, "new", "existing", "vip"]),
    st.sampled_from([None, "consultation", "complaint", "fault", "suggestion"]),
    st.sampled_from(["api", "webform", "twilio"]),
)
def test_priority_is_never_below_the_kinds(
    parts: list[str], customer_type: str | None, kind: str | None, channel: str
) -> None:
    result = TRIAGER.classify(
        message(" ".join(parts), customer_type=customer_type, kind=kind, channel=channel)
    )
    assert RANK[result.priority] >= RANK[CONFIG.kind_priority[result.kind]]
    if kind is not None:
        assert result.kind == kind
    if customer_type == "vip":
        assert result.priority != "low"
    assert result.escalated == (result.priority == "high")

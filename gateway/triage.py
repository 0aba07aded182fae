"""Triage: the kind, area and priority of a new ticket, decided by ordered keyword rules.

Rules are tried in order against the message's subject and text (NFKC-normalized and casefolded,
so full-width letters and any case match). A rule *matches* when every non-empty condition holds:
one of its ``keywords`` occurs, the channel is one of ``channels``, the customer type is one of
``customer_types``, and the kind decided so far is one of ``kinds``. Then:

- kind: the customer's own choice if the channel asked for one; else the ``set_kind`` of the first
  matching rule that has one; else ``default_kind``;
- area: the ``set_area`` of the first matching rule that has one; else ``default_area``;
- priority: the highest of ``kind_priority[kind]`` and every matching rule's ``min_priority``;
- escalated: the priority is one of ``escalate``.

Keywords containing Chinese, Japanese or Korean characters match as substrings (those scripts do
not separate words); others match whole words only, so ``app`` does not match "happy". A space in
a keyword matches any run of whitespace.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final, get_args

import msgspec

from gateway.errors import ConfigError
from schemas.message import Area, CustomerType, InboundMessage, Kind, Priority

__all__ = ["TriageConfig", "TriageResult", "TriageRule", "Triager", "triage"]

_KINDS: Final = frozenset(get_args(Kind))
_AREAS: Final = frozenset(get_args(Area))
_PRIORITIES: Final = frozenset(get_args(Priority))
_CUSTOMER_TYPES: Final = frozenset(get_args(CustomerType))
_RANK: Final[dict[str, int]] = {"low": 0, "medium": 1, "high": 2}
_DEFAULT_KIND_PRIORITY: Final[dict[str, Priority]] = {
    "complaint": "high",
    "fault": "medium",
    "consultation": "medium",
    "suggestion": "low",
}


class TriageRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule: conditions (empty list = any) and what a match sets."""

    name: str
    """Reported in :attr:`TriageResult.matched`; unique within a config."""
    keywords: list[str] = []
    """Any one occurring in subject or text satisfies the condition (case-insensitive)."""
    channels: list[str] = []
    """Adapter kinds, e.g. ``email``, ``webform``."""
    customer_types: list[CustomerType] = []
    kinds: list[Kind] = []
    """The kind decided so far (see :func:`triage`) must be one of these."""
    set_kind: Kind | None = None
    set_area: Area | None = None
    min_priority: Priority | None = None


def _rules(*specs: tuple[str, dict[str, object]]) -> list[TriageRule]:
    """Build the built-in rule list."""
    return [msgspec.convert({"name": name, **spec}, TriageRule) for name, spec in specs]


def _default_rules() -> list[TriageRule]:
    """The built-in rules: safety and outages first, then kinds, areas, VIP customers."""
    return _rules(
        (
            "safety",
            {
                "keywords": [
                    "安全", "火灾", "起火", "着火", "冒烟", "爆炸", "漏电", "触电", "受伤",
                    "中毒", "宕机", "停电", "断网", "大面积", "全部用户", "所有用户",
                    "fire", "smoke", "smoking", "explosion", "exploded", "electric shock",
                    "injury", "injured", "outage", "down for everyone", "data breach",
                    "safety", "unsafe",
                ],
                "min_priority": "high",
            },
        ),
        (
            "complaint",
            {
                "keywords": [
                    "投诉", "不满", "差评", "欺诈", "骗", "太差", "恶劣",
                    "complain", "complains", "complained", "complaint", "complaints",
                    "unacceptable", "disgusted", "disgusting", "scam", "fraud", "outrageous",
                ],
                "set_kind": "complaint",
            },
        ),
        (
            "fault",
            {
                "keywords": [
                    "故障", "坏了", "无法", "不能用", "用不了", "报错", "失败", "死机", "闪退",
                    "broken", "not working", "doesn't work", "does not work", "error", "errors",
                    "crash", "crashes", "crashed", "crashing", "fails", "failed", "failing",
                    "faulty", "stopped working", "won't start", "won't turn on",
                ],
                "set_kind": "fault",
            },
        ),
        (
            "suggestion",
            {
                "keywords": [
                    "建议", "希望能", "能不能增加", "能否增加", "希望增加",
                    "suggest", "suggestion", "suggestions", "feature request",
                    "would be nice", "it would be great",
                ],
                "set_kind": "suggestion",
            },
        ),
        (
            "billing",
            {
                "keywords": [
                    "账单", "费用", "扣费", "退款", "发票", "收费", "付款", "支付",
                    "bill", "billing", "invoice", "charge", "charged", "refund", "payment",
                ],
                "set_area": "billing",
            },
        ),
        (
            "technical",
            {
                "keywords": [
                    "登录", "登陆", "密码", "网络", "系统", "软件",
                    "app", "login", "log in", "password", "bug", "website", "api",
                ],
                "set_area": "technical",
            },
        ),
        (
            "product",
            {
                "keywords": [
                    "产品", "质量", "设备", "product", "device", "quality", "defect",
                    "defective",
                ],
                "set_area": "product",
            },
        ),
        (
            "service",
            {
                "keywords": [
                    "服务", "客服", "态度", "快递", "配送", "物流",
                    "service", "staff", "delivery", "support",
                ],
                "set_area": "service",
            },
        ),
        ("vip", {"customer_types": ["vip"], "min_priority": "medium"}),
    )  # fmt: skip


class TriageConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The triage rules and defaults. Validated at construction; errors name ``triage.<field>``."""

    rules: list[TriageRule] = msgspec.field(default_factory=_default_rules)
    """Tried in order; the first ``set_kind`` / ``set_area`` wins, every ``min_priority`` counts."""
    default_kind: Kind = "consultation"
    default_area: Area = "other"
    kind_priority: dict[str, Priority] = msgspec.field(
        default_factory=lambda: dict(_DEFAULT_KIND_PRIORITY)
    )
    """Base priority per kind; kinds left out keep the built-in value (complaints are high)."""
    escalate: list[Priority] = msgspec.field(default_factory=lambda: ["high"])
    """Priorities escalated at once."""

    def __post_init__(self) -> None:
        _check(self.default_kind, _KINDS, "triage.default_kind")
        _check(self.default_area, _AREAS, "triage.default_area")
        for kind, priority in self.kind_priority.items():
            _check(kind, _KINDS, "triage.kind_priority")
            _check(priority, _PRIORITIES, f"triage.kind_priority.{kind}")
        for priority in self.escalate:
            _check(priority, _PRIORITIES, "triage.escalate")
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            key = f"triage.rules[{i}]"
            if not rule.name.strip():
                raise ConfigError(f"{key}.name: must not be empty")
            if rule.name in seen:
                raise ConfigError(f"{key}.name: duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            if any(not _fold(keyword).strip() for keyword in rule.keywords):
                raise ConfigError(f"{key}.keywords: keywords must not be empty")
            for kind in rule.kinds:
                _check(kind, _KINDS, f"{key}.kinds")
            for customer_type in rule.customer_types:
                _check(customer_type, _CUSTOMER_TYPES, f"{key}.customer_types")
            if rule.set_kind is not None:
                _check(rule.set_kind, _KINDS, f"{key}.set_kind")
            if rule.set_area is not None:
                _check(rule.set_area, _AREAS, f"{key}.set_area")
            if rule.min_priority is not None:
                _check(rule.min_priority, _PRIORITIES, f"{key}.min_priority")


def _check(value: str, allowed: frozenset[str], key: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(sorted(allowed))}")


class TriageResult(msgspec.Struct, frozen=True, kw_only=True):
    """What triage decided for one message."""

    kind: Kind
    area: Area
    priority: Priority
    escalated: bool
    matched: tuple[str, ...]
    """Names of the rules that matched, in rule order."""


# Full-width ASCII and the ideographic space, as NFKC maps them, plus typographic apostrophes
# (U+2019 in "doesn't"), which NFKC leaves alone. Replacing just these is cheap and usually
# leaves Chinese text NFKC-normal, so the slow full normalization is rarely needed.
_NARROW = {"\u3000": " ", "\u2018": "'", "\u2019": "'", "\u02bc": "'"} | {
    chr(code): chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)
}
_WIDE = re.compile(f"[{''.join(_NARROW)}]")


def _fold(text: str) -> str:
    """NFKC and casefold, so full-width and upper-case text match lower-case keywords."""
    text = text.casefold()
    if text.isascii():
        return text
    text = _WIDE.sub(lambda match: _NARROW[match.group()], text)
    if not unicodedata.is_normalized("NFKC", text):
        text = _WIDE.sub(lambda match: _NARROW[match.group()], unicodedata.normalize("NFKC", text))
        text = text.casefold()
    return text


# Scripts written without spaces between words (Han, kana, Hangul): their keywords match as
# substrings. Unicode counts them as word characters, so they are cut out of Latin-script words.
_CJK_RANGES = (
    "\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\uff66-\uffdc\U00020000-\U0003134f"
)
_CJK = re.compile(f"[{_CJK_RANGES}]")
# A word of a space-separated script: letters, digits, combining marks. "用app登录" holds the
# word "app"; "happy" does not.
_WORD_CHAR = f"[^\\W_{_CJK_RANGES}]"
_WORD = re.compile(f"{_WORD_CHAR}+")


class Triager:
    """Triage compiled from one :class:`TriageConfig`; build once, call :meth:`classify` often."""

    def __init__(self, config: TriageConfig) -> None:
        self.config = config
        self._kind_priority: dict[str, Priority] = {
            **_DEFAULT_KIND_PRIORITY,
            **config.kind_priority,
        }
        self._escalate = frozenset(config.escalate)
        self._keyword_rules = [bool(rule.keywords) for rule in config.rules]
        # Each keyword maps to a bit mask of the rules that list it, in one of three tables,
        # chosen so that a message costs a few C-level operations rather than one regex
        # alternation of every keyword (which `re` tries keyword by keyword at every position):
        # - single Latin-script words: looked up in the set of the message's words;
        # - Latin-script phrases ("not working", "doesn't"): substring test, then word edges;
        # - keywords with CJK characters: substring test only.
        self._words: dict[str, int] = {}
        phrases: dict[str, int] = {}
        substrings: dict[str, int] = {}
        for index, rule in enumerate(config.rules):
            for keyword in rule.keywords:
                folded = " ".join(_fold(keyword).split())
                if _CJK.search(folded):
                    table = substrings
                elif _WORD.fullmatch(folded):
                    table = self._words
                else:
                    table = phrases
                table[folded] = table.get(folded, 0) | (1 << index)
        self._phrases = [
            (phrase, re.compile(f"(?<!{_WORD_CHAR}){re.escape(phrase)}(?!{_WORD_CHAR})"), mask)
            for phrase, mask in phrases.items()
        ]
        # One alternation over the CJK keywords, longest first, so a match at a position is the
        # longest keyword there; the shorter ones that also match there are its prefixes, whose
        # rules are folded into its mask. Searching again from one past each match start visits
        # every position where some keyword begins, so overlapping keywords are all found.
        self._substrings: re.Pattern[str] | None = None
        self._substring_masks: dict[str, int] = {}
        if substrings:
            ordered = sorted(substrings, key=len, reverse=True)
            self._substrings = re.compile("|".join(map(re.escape, ordered)))
            for keyword in ordered:
                self._substring_masks[keyword] = 0
                for other, mask in substrings.items():
                    if keyword.startswith(other):
                        self._substring_masks[keyword] |= mask
        self._substring_rules = 0
        for mask in substrings.values():
            self._substring_rules |= mask

    def classify(self, message: InboundMessage) -> TriageResult:
        """Triage one message; see the module docstring for the rules."""
        hits = self._keyword_hits(_fold(f"{message.subject}\n{message.text}"))
        kind: Kind | None = message.kind
        area: Area | None = None
        rank = -1
        matched: list[str] = []
        for index, rule in enumerate(self.config.rules):
            if self._keyword_rules[index] and not (hits >> index) & 1:
                continue
            if rule.channels and message.channel not in rule.channels:
                continue
            if rule.customer_types and message.customer_type not in rule.customer_types:
                continue
            if rule.kinds and (kind or self.config.default_kind) not in rule.kinds:
                continue
            matched.append(rule.name)
            if kind is None and rule.set_kind is not None:
                kind = rule.set_kind
            if area is None and rule.set_area is not None:
                area = rule.set_area
            if rule.min_priority is not None:
                rank = max(rank, _RANK[rule.min_priority])
        kind = kind or self.config.default_kind
        rank = max(rank, _RANK[self._kind_priority[kind]])
        priority: Priority = ("low", "medium", "high")[rank]
        return TriageResult(
            kind=kind,
            area=area or self.config.default_area,
            priority=priority,
            escalated=priority in self._escalate,
            matched=tuple(matched),
        )

    def _keyword_hits(self, text: str) -> int:
        """Bit mask of the rules with at least one keyword in ``text`` (already folded)."""
        hits = 0
        for word in self._words.keys() & set(_WORD.findall(text)):
            hits |= self._words[word]
        # Keywords hold single spaces; this lets "not working" match across a line break.
        text = " ".join(text.split())
        for phrase, edges, mask in self._phrases:
            if mask & ~hits and phrase in text and edges.search(text):
                hits |= mask
        if self._substrings is not None and not text.isascii():
            pos = 0
            while self._substring_rules & ~hits and (match := self._substrings.search(text, pos)):
                hits |= self._substring_masks[match.group()]
                pos = match.start() + 1
        return hits


# The last few configs' Triagers, so that `triage()` compiles each config once. Keyed by identity
# (configs hold lists, so they are not hashable); the entry keeps its config alive, which keeps
# the id from being reused by another object.
_CACHE: dict[int, tuple[TriageConfig, Triager]] = {}
_CACHE_SIZE = 8


def triage(message: InboundMessage, config: TriageConfig) -> TriageResult:
    """Triage one message with ``config``: kind, area, priority, escalation, matched rules.

    A convenience over :class:`Triager` that compiles each config once and reuses it.
    """
    entry = _CACHE.get(id(config))
    if entry is None or entry[0] is not config:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        entry = _CACHE[id(config)] = (config, Triager(config))
    return entry[1].classify(message)

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
from intake_schemas.message import Area, CustomerType, InboundMessage, Kind, Priority

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
                    "中毒", "全部用户", "所有用户",
                    "fire", "smoke", "smoking", "explosion", "exploded", "electric shock",
                    "injury", "injured", "data breach", "safety", "unsafe",
                ],
                "min_priority": "high",
            },
        ),
        (
            # Before complaints: "the service is down again, unacceptable" is first a fault
            # that many customers have, and it is high priority either way.
            "outage",
            {
                "keywords": [
                    "宕机", "停电", "断网", "大面积", "服务中断", "网络中断", "瘫痪",
                    "服务器挂了", "网站挂了", "系统挂了", "都连不上", "全部连不上", "整栋楼",
                    "整个小区",
                    "outage", "outages", "down for everyone", "is down", "are down",
                    "was down", "been down", "goes down", "service down", "site down",
                    "server down", "servers down", "system down", "network down",
                    "internet down", "everything is down", "none of our users",
                    "none of our customers", "all our users", "all of our users",
                    "nobody can connect", "no one can connect", "nobody can log in",
                    "no one can log in", "whole building", "entire building",
                ],
                "set_kind": "fault",
                "min_priority": "high",
            },
        ),
        (
            "complaint",
            {
                "keywords": [
                    "投诉", "不满", "差评", "欺诈", "骗", "太差", "恶劣", "态度差", "态度很差",
                    "敷衍", "失望", "气愤", "愤怒", "生气", "不负责任", "没人回复", "没有人回复",
                    "没人理", "不理人", "没人接", "没人打电话", "没有任何答复", "没答复",
                    "最差", "说法", "擅自", "不专业", "乱收费", "多收", "一团糟", "拒绝处理",
                    "换别家", "根本没来", "说好", "答应",
                    "受够", "过分", "不客气", "赔偿", "道歉", "再也不", "大吼", "吼", "没人回",
                    "踢皮球", "谁都不管", "没人管", "浪费时间", "黑心", "坑人", "无语", "曝光",
                    "12315", "消协",
                    "没有任何通知", "没有通知", "封号", "封了",
                    "complain", "complains", "complained", "complaint", "complaints",
                    "unacceptable", "disgusted", "disgusting", "scam", "fraud", "outrageous",
                    "rude", "terrible", "awful", "appalling", "worst", "disappointed",
                    "disappointing", "dissatisfied", "not satisfied", "unhappy", "furious",
                    "angry", "ridiculous", "unprofessional", "hung up", "lied", "lying",
                    "misled", "nobody has replied", "no one has replied", "nobody replied",
                    "no one replied", "nobody called", "no one called", "nobody would",
                    "nobody will", "never showed up", "didn't show up", "no-show",
                    "speak to a manager", "talk to a manager", "overcharged",
                    "business elsewhere", "poor service", "on hold", "without warning",
                    "refuses to", "refused to", "never asked for", "you promised",
                    "was promised", "were promised",
                    "fed up", "compensation", "compensate", "apologise", "apologize",
                    "apologised", "apologized", "apology", "disrespect", "disrespectful",
                    "shouting", "shouted", "yelled", "nobody returned", "no one returned",
                    "never returned", "transferred from", "shameful", "disgrace", "horrible",
                    "useless", "incompetent", "waste of time", "last time i",
                ],
                "set_kind": "complaint",
            },
        ),
        (
            "fault",
            {
                "keywords": [
                    "故障", "坏了", "无法", "不能用", "用不了", "报错", "失败", "死机", "闪退",
                    "连不上", "连接不上", "上不了网", "上不去", "没网", "没有网", "掉线", "断线",
                    "打不开", "开不了", "黑屏", "白屏", "卡死", "卡住", "卡顿", "没有信号",
                    "没信号", "无信号", "发不出去", "收不到验证码", "漏水", "超时",
                    "加载不出来", "出不来", "一直在加载", "错误", "失灵", "异常", "挂断",
                    "很慢", "特别慢", "太慢", "网速慢", "一直重启", "没反应", "没有反应",
                    "乱码",
                    "不了", "没法", "不启动", "启动不了", "没电", "耗电", "拒绝连接", "一直闪",
                    "过热", "发烫", "没声音", "收不到",
                    "broken", "not working", "doesn't work", "does not work", "error", "errors",
                    "crash", "crashes", "crashed", "crashing", "fails", "failed", "failing",
                    "faulty", "stopped working", "won't start", "won't turn on",
                    "can't connect", "cannot connect", "can not connect", "unable to connect",
                    "couldn't connect", "could not connect", "won't connect", "not connecting",
                    "can't log in", "cannot log in", "can't login", "cannot login",
                    "unable to log in", "unable to login", "can't sign in", "cannot sign in",
                    "no internet", "no signal", "no connection", "no network", "offline",
                    "disconnect", "disconnects", "disconnected", "disconnecting",
                    "keeps dropping", "dropping", "drops", "timed out", "timeout", "freezes",
                    "freezing", "frozen", "froze", "stuck", "won't load", "not loading",
                    "doesn't load", "loading forever", "keeps loading", "won't open",
                    "doesn't open", "won't print", "won't charge", "not charging", "leaking",
                    "leaks", "black screen", "stays black", "blank page", "returns 500",
                    "500 error", "error 500", "bad gateway", "not responding", "unresponsive",
                    "keeps rebooting", "keeps restarting", "very slow", "extremely slow",
                    "too slow", "so slow", "bug", "bugs", "glitch", "defective",
                    "not being delivered", "bounced",
                    "has stopped", "have stopped", "stopped accepting", "stopped responding",
                    "stopped sending", "stopped receiving", "doesn't come on", "won't come on",
                    "doesn't respond", "does not respond", "not respond", "no longer works",
                    "connection refused", "refused to connect", "drains", "draining",
                    "overheating", "overheats", "flickering", "flickers", "beeping",
                    "error message",
                    "calls drop", "call drops", "calls keep dropping",
                ],
                "set_kind": "fault",
            },
        ),
        (
            "suggestion",
            {
                "keywords": [
                    "建议", "希望", "能不能增加", "能否增加", "能否推出", "能否支持",
                    "可以增加", "可以加", "加一个", "加个", "增加一个", "就好了", "就更好了",
                    "最好能", "提个想法", "提个建议", "方便很多", "更方便", "要是有", "如果能",
                    "好主意", "为什么不", "可以考虑", "不妨", "就方便了", "快很多", "能不能也",
                    "suggest", "suggestion", "suggestions", "feature request",
                    "would be nice", "it would be great", "would be great", "would love",
                    "i'd love", "would help", "would be useful", "would be helpful",
                    "would be appreciated", "would make", "would be better",
                    "wouldn't it be better", "could you add", "can you add", "please add",
                    "please consider", "would you consider", "consider adding",
                    "consider offering", "you should offer", "you should add", "just an idea",
                    "an idea", "i recommend", "please make", "maybe you could",
                    "would be handy", "would be good", "it'd be good", "it'd be nice",
                    "it'd be great", "good idea", "why not", "have you thought",
                    "have you considered", "you could", "could you also", "please let us",
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
        # chosen so that a message costs a few C-level operations per keyword it may hold, not
        # per keyword of the config (and not one regex alternation of every keyword, which `re`
        # tries keyword by keyword at every position):
        # - single Latin-script words: looked up in the set of the message's words;
        # - Latin-script phrases ("not working", "doesn't"), indexed by their first word:
        #   substring test, then word edges, for those whose first word the message has;
        # - keywords with CJK characters, indexed by their first character: substring test,
        #   for those whose first character the message has.
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
        # Phrases by their first word: a phrase can only occur where a word of the message
        # begins (its edges say so), so only those whose first word the message has are tested.
        # A phrase that starts with a non-word character ("-abc") is tested always.
        self._phrases: dict[str, list[tuple[str, re.Pattern[str], int]]] = {}
        self._phrases_anywhere: list[tuple[str, re.Pattern[str], int]] = []
        for phrase, mask in phrases.items():
            edges = re.compile(f"(?<!{_WORD_CHAR}){re.escape(phrase)}(?!{_WORD_CHAR})")
            first = _WORD.match(phrase)
            if first is None:
                self._phrases_anywhere.append((phrase, edges, mask))
            else:
                self._phrases.setdefault(first.group(), []).append((phrase, edges, mask))
        # CJK keywords by their first character: only those whose first character occurs in the
        # message are tested, each with one substring test.
        self._substrings: dict[str, list[tuple[str, int]]] = {}
        for keyword, mask in substrings.items():
            self._substrings.setdefault(keyword[0], []).append((keyword, mask))

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
        # Keywords hold single spaces; this lets "not working" match across a line break. It
        # changes no word: whitespace is never a word character.
        text = " ".join(text.split())
        words = set(_WORD.findall(text))
        for word in self._words.keys() & words:
            hits |= self._words[word]
        for first in self._phrases.keys() & words:
            for phrase, edges, mask in self._phrases[first]:
                if mask & ~hits and phrase in text and edges.search(text):
                    hits |= mask
        for phrase, edges, mask in self._phrases_anywhere:
            if mask & ~hits and phrase in text and edges.search(text):
                hits |= mask
        if self._substrings and not text.isascii():
            for first in self._substrings.keys() & set(text):
                for keyword, mask in self._substrings[first]:
                    if mask & ~hits and keyword in text:
                        hits |= mask
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

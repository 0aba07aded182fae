"""Which language a message is written in: the script of its own words, refined by a declared tag.

Adapters set ``InboundMessage.locale`` from whatever the channel declares (the form's language
switch, Telegram's ``language_code``, ``Content-Language``, ``Accept-Language``, a charset), and
those declarations are often about the customer's software rather than their words: an English
mail sent from a Chinese mail client is labelled GB2312, a Chinese message typed in an English
Telegram app says ``en``. The core therefore decides once, in :func:`message_language`:

1. the text's script decides the language (:func:`detect_language`): Latin letters, Han
   (simplified or traditional), kana, Hangul, Cyrillic, ...;
2. a declared tag is kept when it agrees with that script, so it refines what script alone
   cannot tell (``zh-HK`` for Han text, ``fr`` for Latin text, ``ja`` for kanji-only text);
3. a declared tag decides alone when the text has no letters at all (emoji, an order number);
4. with neither, the language is unknown (``None``) and the configured default answers.

Script counts, not a statistical detector: our customers write Chinese, English and their
neighbours' languages, which scripts tell apart, and a detector model would be large and still
unsure on a two-word SMS. Tags are parsed with ``langcodes`` (``zh-Hans-HK`` is simplified).
"""

from __future__ import annotations

import re
from functools import lru_cache

import langcodes
import msgspec

from gateway.fingerprint import normalize_for_dedup
from intake_schemas import InboundMessage

__all__ = [
    "chinese_script",
    "detect_language",
    "detect_script",
    "is_language_tag",
    "message_language",
    "with_language",
]

# What the customer wrote first decides: signatures, legal disclaimers and quoted history come
# later, and a Chinese customer's English disclaimer must not turn the answer into English.
_PREFIX_CHARS = 600
# Noise that is written in Latin letters whatever the language: links, addresses, order and
# ticket numbers, model names with digits (AX3, SO-1001), quoted lines and signatures. ASCII
# classes (?a): a Chinese word next to a number ("订单12345号") is not noise.
#
# That is one alternation, r"(?aim)^>.*$|^-- ?$[\s\S]*|(?:https?://|www\.)[^\s<>\"]+|"
# r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|[\w-]*\d[\w-]*", but `re` would try every part of it at
# every position and rescan each word from every letter in it. So the parts a text cannot hold
# (no ">", no "@", no digit ...) are left out of the pattern used for it, and an address or a
# number is only tried where a word starts (\b), or at a "-" / "." / "+": inside a word, where
# the character before is a letter or digit too, it cannot start unless it started a character
# earlier, which was tried first (and no match ends inside a word). Removes exactly the same.
_NOISE_PARTS = (
    r"^>.*$",
    r"^-- ?$[\s\S]*",
    r"(?:https?://|www\.)[^\s<>\"]+",
    r"\b[\w.+-]++@[\w-]+(?:\.[\w-]+)+|[.+-][\w.+-]*+@[\w-]+(?:\.[\w-]+)+",
    r"\b[A-Za-z_-]*+\d[\w-]*+|-[A-Za-z_-]*+\d[\w-]*+",
)
_DIGIT = re.compile("[0-9]")
_WWW = re.compile(r"(?ai)www\.")


@lru_cache(maxsize=2 ** len(_NOISE_PARTS))
def _noise(parts: int) -> re.Pattern[str]:
    """The noise pattern of the parts whose bit is set in ``parts``, in their order."""
    chosen = [part for i, part in enumerate(_NOISE_PARTS) if parts >> i & 1]
    return re.compile("(?aim)" + "|".join(chosen))


def _strip_noise(text: str) -> str:
    """``text`` with every noise match replaced by a space."""
    parts = (
        (">" in text)
        | ("--" in text) << 1
        | ("://" in text or _WWW.search(text) is not None) << 2
        | ("@" in text) << 3
        | (_DIGIT.search(text) is not None) << 4
    )
    return _noise(parts).sub(" ", text) if parts else text


_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]+")
_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Hiragana and katakana without the middle dot (U+30FB) and the long-vowel mark (U+30FC),
# which Chinese text borrows ("哈利・波特").
_KANA_CHARS = ("\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fd-\u30ff\u31f0-\u31ff"
               "\uff66-\uff6f\uff71-\uff9d")
_KANA = re.compile(f"[{_KANA_CHARS}]")
_HANGUL_CHARS = "\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e"
_HANGUL = re.compile(f"[{_HANGUL_CHARS}]")
# Other scripts, each written in space-separated words, and the language its words most
# likely are; a declared tag in the same script refines it (uk for Cyrillic, fa for Arabic).
_WORD_SCRIPT_CHARS = (
    ("Cyrl", "ru", "\u0400-\u04ff"),
    ("Grek", "el", "\u0370-\u03ff\u1f00-\u1fff"),
    ("Arab", "ar", "\u0620-\u064a\u066e-\u06d3\u06fa-\u06ff"),
    ("Hebr", "he", "\u05d0-\u05ea"),
    ("Deva", "hi", "\u0900-\u097f"),
)
_WORD_SCRIPTS: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (script, language, re.compile(f"[{chars}]+")) for script, language, chars in _WORD_SCRIPT_CHARS
)
_THAI_CHARS = "\u0e01-\u0e3a\u0e40-\u0e4e"
_THAI = re.compile(f"[{_THAI_CHARS}]")
# Any letter of those scripts, kana, Hangul or Thai: most non-Latin text is Han alone, and one
# search tells that the other counts are all zero.
_OTHER_SCRIPTS = re.compile(
    f"[{_KANA_CHARS}{_HANGUL_CHARS}{_THAI_CHARS}{''.join(c for _, _, c in _WORD_SCRIPT_CHARS)}]"
)
# A word of Chinese is about two characters, of Korean about three syllables; kana-and-kanji
# Japanese about three characters. These weights make a Han character count as half a Latin
# word, so "my 宽带 is broken" is English and "我的 iPhone 屏幕坏了" is Chinese.
_HAN_PER_WORD = 2
_JA_PER_WORD = 3
_HANGUL_PER_WORD = 3
_THAI_PER_WORD = 4

_LANGUAGE_OF_SCRIPT = {"Latn": "en", "Hans": "zh-CN", "Hant": "zh-TW", "Hani": "zh",
                       "Jpan": "ja", "Kore": "ko", "Thai": "th"}
_LANGUAGE_OF_SCRIPT |= {script: language for script, language, _ in _WORD_SCRIPTS}


def _encodable(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeError:
        return False
    return True


@lru_cache(maxsize=8192)
def _han_variant(ch: str) -> int:
    """+1 for a simplified-only character, -1 for a traditional-only one, 0 for both or neither.

    GB2312 holds only simplified forms and Big5 only traditional ones, so a character that only
    one of them can encode tells the variant; the many characters both share tell nothing.
    """
    gb, big5 = _encodable(ch, "gb2312"), _encodable(ch, "big5")
    return (gb and not big5) - (big5 and not gb)


_ENCODED_PAIR = re.compile(rb"[\x80-\xff][\x00-\xff]")


@lru_cache(maxsize=1)
def _han_variants() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Classes of the Han characters :func:`_han_variant` calls simplified and traditional.

    Built once, on the first Han text (some 10 ms), from one encoding of every Han character
    per codec rather than two encodings per character: each one encodes to two bytes, the first
    of them 0x80 or above, or, with ``errors="replace"``, to one "?". Neither codec reaches
    beyond the Basic Multilingual Plane, so the supplementary ranges are in neither class. A
    test checks the classes against :func:`_han_variant` for every Han character.
    """
    han = "".join("".join(map(chr, range(first, last + 1)))
                  for first, last in _HAN_RANGES if last <= 0xFFFF)
    flags = 0
    for bit, codec in ((1, "gb2312"), (2, "big5")):
        encoded = _ENCODED_PAIR.sub(b"\x01", han.encode(codec, "replace")).replace(b"?", b"\x00")
        if len(encoded) != len(han):  # not the codec the docstring describes: ask each one
            encoded = bytes(_encodable(ch, codec) for ch in han)
        flags |= int.from_bytes(encoded, "big") * bit
    table = flags.to_bytes(len(han), "big")  # per character: 1 GB2312 only, 2 Big5 only, 3 both

    def chars(only: bytes) -> re.Pattern[str]:
        runs = (f"{han[m.start()]}-{han[m.end() - 1]}" for m in re.finditer(only + b"+", table))
        return re.compile(f"[{''.join(runs)}]")  # Han characters need no escaping

    return chars(b"\x01"), chars(b"\x02")


def detect_script(text: str) -> str | None:
    """The ISO 15924 script most of ``text``'s words are written in, or None if it has none.

    ``Hans`` / ``Hant`` for Han text whose characters tell simplified from traditional, ``Hani``
    when they do not (``故障``); ``Jpan`` for Han with kana; ``Kore`` for Hangul.
    """
    text = _strip_noise(text[: _PREFIX_CHARS * 4])[:_PREFIX_CHARS]
    scores: dict[str, float] = {}
    if latin := len(_LATIN_WORD.findall(text)):
        scores["Latn"] = latin
    if not text.isascii():
        han = len(_HAN.findall(text))
        others = _OTHER_SCRIPTS.search(text) is not None
        kana = len(_KANA.findall(text)) if others else 0
        # Japanese writes kana between its kanji; a lone の in a Chinese shop name is not that.
        if kana >= 2 and kana * 5 >= han:
            scores["Jpan"] = (kana + han) / _JA_PER_WORD
        elif han:
            simplified, traditional = _han_variants()
            variant = len(simplified.findall(text)) - len(traditional.findall(text))
            script = "Hans" if variant > 0 else "Hant" if variant < 0 else "Hani"
            scores[script] = han / _HAN_PER_WORD
        if others:
            if hangul := len(_HANGUL.findall(text)):
                scores["Kore"] = hangul / _HANGUL_PER_WORD
            if thai := len(_THAI.findall(text)):
                scores["Thai"] = thai / _THAI_PER_WORD
            for script, _, pattern in _WORD_SCRIPTS:
                if words := len(pattern.findall(text)):
                    scores[script] = words
    if not scores:
        return None
    # Ties go to the script listed first (Latin): dict order, and max keeps the first maximum.
    return max(scores, key=lambda s: scores[s])


def detect_language(text: str) -> str | None:
    """The language ``text`` is most likely written in, from its script alone, or None.

    ``en`` for Latin letters (we answer every Latin-script language in English), ``zh-CN`` /
    ``zh-TW`` for simplified / traditional Han, ``zh`` for Han that could be either, ``ja``,
    ``ko``, ``ru``, ``el``, ``ar``, ``he``, ``hi``, ``th``. None when there are no letters.
    """
    script = detect_script(text)
    return None if script is None else _LANGUAGE_OF_SCRIPT[script]


class _Tag(msgspec.Struct, frozen=True):
    language: str
    script: str
    """Maximized ISO 15924 script: ``Hans`` for ``zh``, ``Hant`` for ``zh-HK``, ``Latn`` for
    ``en``; ``Hani`` for a bare ``zh`` / ``cmn`` (either variant)."""


@lru_cache(maxsize=1024)
def _parse(tag: str) -> _Tag | None:
    """A declared BCP 47 tag (or the first of an Accept-Language list), or None if unusable."""
    first = tag.split(",", 1)[0].split(";", 1)[0].strip().replace("_", "-")
    if not first or len(first) > 64:
        return None
    try:
        parsed = langcodes.Language.get(first).prefer_macrolanguage()
    except (langcodes.LanguageTagError, ValueError):
        return None
    if parsed.language in (None, "und") or not parsed.is_valid():
        return None
    script = parsed.maximize().script or ""
    if parsed.language == "zh" and parsed.script is None and parsed.territory is None:
        script = "Hani"  # "zh" alone says nothing about simplified or traditional
    return _Tag(language=parsed.language, script=script)


def is_language_tag(tag: str) -> bool:
    """Whether ``tag`` (or an Accept-Language list's first tag) names a real language."""
    return _parse(tag) is not None


def chinese_script(tag: str | None) -> str | None:
    """``Hans`` / ``Hant`` for a Chinese tag that says which, ``Hani`` for bare ``zh``, else None.

    ``zh-TW``, ``zh-HK``, ``zh-Hant``, ``yue`` are traditional; ``zh-CN``, ``zh-SG``,
    ``zh-Hans-HK`` simplified.
    """
    parsed = _parse(tag) if tag else None
    if parsed is None or parsed.script not in ("Hans", "Hant", "Hani"):
        return None
    return parsed.script


def _agrees(declared: _Tag, script: str) -> bool:
    """Whether a declared language is one written in the script the text was detected in."""
    if script in ("Hans", "Hant"):
        # The characters themselves say which variant; a declared tag of the same variant (or
        # Japanese, whose kanji can look like either) may stay.
        return declared.script in (script, "Hani") or declared.language == "ja"
    if script == "Hani":
        return declared.script in ("Hans", "Hant", "Hani") or declared.language == "ja"
    return declared.script == script


def message_language(declared: str | None, text: str, subject: str = "") -> str | None:
    """The language to record for a message and answer it in; see the module docstring.

    The script is read from the words the customer wrote in ``text`` (quoted replies, reply
    attributions, signatures and "Sent from my iPhone" cut, as for duplicate detection), and
    from ``subject`` only when those have no letters: a reply's subject is often our own
    acknowledgement's. Returns ``declared`` unchanged (as the channel spelled it) when it agrees
    with that script or there are no letters at all; otherwise the detected language; None when
    neither says anything.
    """
    tag = _parse(declared) if declared else None
    script = detect_script(normalize_for_dedup(text[: _PREFIX_CHARS * 4]))
    if script is None and subject:
        script = detect_script(subject)
    if script is None:
        return declared.strip() if tag is not None and declared else None
    if tag is not None and declared and _agrees(tag, script):
        return declared.strip()
    return _LANGUAGE_OF_SCRIPT[script]


def with_language(message: InboundMessage) -> InboundMessage:
    """``message`` with ``locale`` set by :func:`message_language` from its text and subject."""
    locale = message_language(message.locale, message.text, message.subject)
    if locale == message.locale:
        return message
    return msgspec.structs.replace(message, locale=locale)

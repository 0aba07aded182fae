"""Bytes to text for whatever charset a mail declares: right, wrong, bogus or missing.

Contract: :func:`decode_bytes` and :func:`decode_encoded_words` never raise. They return the best
reading of the bytes they can find and fall back to U+FFFD replacement characters only when no
decoder reads the bytes cleanly, so valid Chinese, Japanese or Korean text never turns into
question marks.

How a charset label is read (:func:`codec_chain`):

- Labels name *families*, tried as superset chains: ``gb2312`` → ``gbk`` → ``gb18030``; ``big5`` →
  ``big5hkscs`` → ``cp950``; ``ks_c_5601-1987`` / ``euc-kr`` → ``cp949``; ``shift_jis`` →
  ``cp932``; ``iso-2022-jp`` → ``iso2022_jp_ext`` → ``iso2022_jp_2``...; ``iso-8859-1`` →
  ``cp1252`` (what the senders really use); Microsoft's ``unicodebig`` / ``unicode`` → UTF-16.
- Names Python does not know (``x-mac-cyrillic``) are mapped; bogus names with a real charset
  at the front (``windows-1252http-equivContent-Type``) are salvaged; unknown names, ``none``
  and ``unknown-8bit`` mean "detect".
- A ``us-ascii`` label on 8-bit bytes is a lie: UTF-8 is tried, then the message's other
  charsets, then statistical detection (charset-normalizer).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
from collections.abc import Iterable

from charset_normalizer import from_bytes

_ASCII: tuple[str, ...] = ("ascii",)
_DETECT: tuple[str, ...] = ()

_GB = ("gbk", "gb18030")
_BIG5 = ("big5hkscs", "cp950")
_KOREAN = ("cp949",)
_SHIFT_JIS = ("cp932", "shift_jis_2004")
_EUC_JP = ("euc_jp", "euc_jis_2004")
_ISO2022_JP = ("iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3")
_WESTERN = ("cp1252", "latin-1")

# Label (normalized: lower case, '_' and ' ' as '-') -> codecs to try in order.
_FAMILIES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (_GB, ("gb2312", "gb-2312", "gb-2312-80", "csgb2312", "euc-cn", "euccn", "x-euc-cn",
           "chinese", "iso-ir-58", "gbk", "x-gbk", "cp936", "ms936", "windows-936")),
    (("gb18030",), ("gb18030", "gb-18030")),
    (_BIG5, ("big5", "big-5", "csbig5", "x-x-big5", "cn-big5", "x-big5", "big5-hkscs",
             "big5hkscs", "cp950", "ms950", "windows-950")),
    (_KOREAN, ("ks-c-5601-1987", "ks-c-5601", "ksc5601", "ksc-5601", "ks-x-1001", "euc-kr",
               "euckr", "korean", "cp949", "ms949", "windows-949", "uhc", "csksc56011987",
               "iso-ir-149", "cseuckr")),
    (_SHIFT_JIS, ("shift-jis", "shiftjis", "sjis", "x-sjis", "ms-kanji", "csshiftjis",
                  "windows-31j", "cp932", "ms932", "x-ms-cp932")),
    (_EUC_JP, ("euc-jp", "eucjp", "x-euc-jp", "cseucpkdfmtjapanese")),
    (_ISO2022_JP, ("iso-2022-jp", "csiso2022jp", "iso-2022-jp-1", "iso-2022-jp-2",
                   "iso-2022-jp-3", "iso-2022-jp-2004", "iso-2022-jp-ext", "cp50220", "cp50221",
                   "cp50222")),
    (("utf-16-be",), ("unicodebig", "unicodefffe", "utf-16be", "ucs-2be")),
    (("utf-16-le",), ("unicode", "unicodelittle", "utf-16le", "ucs-2", "ucs-2le", "csunicode")),
    (("utf-16",), ("utf-16", "utf16")),
    (("utf-8-sig",), ("utf-8", "utf8", "x-utf8", "x-utf-8", "unicode-1-1-utf-8",
                      "unicode-2-0-utf-8")),
    (("utf-7",), ("utf-7", "utf7", "unicode-1-1-utf-7", "x-unicode-2-0-utf-7",
                  "csunicode11utf7")),
    (("mac-cyrillic",), ("x-mac-cyrillic", "mac-cyrillic", "maccyrillic", "x-mac-ukrainian")),
    (("mac-roman",), ("x-mac-roman", "macintosh", "mac", "csmacintosh", "macroman")),
    (("mac-latin2",), ("x-mac-ce", "x-mac-centraleurroman", "mac-ce")),
    (("mac-greek",), ("x-mac-greek",)),
    (("mac-turkish",), ("x-mac-turkish",)),
    (("mac-iceland",), ("x-mac-icelandic",)),
    (_WESTERN, ("iso-8859-1", "iso8859-1", "iso-8859-1:1987", "latin1", "latin-1", "l1",
                "cp819", "ibm819", "csisolatin1", "iso-ir-100", "windows-1252", "cp1252",
                "x-cp1252", "ansi")),
    (("cp1254", "iso8859-9"), ("iso-8859-9", "iso8859-9", "latin5", "l5", "windows-1254",
                               "cp1254")),
    (("cp874",), ("tis-620", "iso-8859-11", "windows-874", "cp874", "x-windows-874")),
    (("iso8859-8",), ("iso-8859-8-i", "iso-8859-8-e", "logical", "visual")),
    (("iso8859-6",), ("iso-8859-6-i", "iso-8859-6-e")),
    (_ASCII, ("us-ascii", "ascii", "ansi-x3.4-1968", "ansi-x3.4-1986", "iso646-us", "us",
              "cp367", "ibm367", "csascii", "iso-ir-6", "iso-646.irv:1991", "7bit")),
    (_DETECT, ("unknown-8bit", "x-unknown", "unknown", "none", "default", "x-user-defined",
               "charset", "8bit", "binary")),
)
_ALIASES: dict[str, tuple[str, ...]] = {
    label: chain for chain, labels in _FAMILIES for label in labels
}

# Text codecs Python has that are not charsets and must never read mail: they interpret
# backslashes (unicode-escape), always fail (undefined) or are for host names (idna).
_NOT_CHARSETS = frozenset(
    {"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode", "charmap"}
)

# A real charset name at the front of (or inside) a bogus label.
_SALVAGE = re.compile(
    r"windows-?(?:125\d|874|93[26]|949|950)|cp-?\d{3,5}|iso-?8859-?\d{1,2}|iso-?2022-?(?:jp|kr)"
    r"|utf-?(?:8|7|16|32)(?:-?[bl]e)?|gb-?2312|gbk|gb-?18030|big-?5(?:-?hkscs)?|shift-?jis"
    r"|euc-?(?:jp|kr|cn)|koi8-?[ru]|ks-c-5601(?:-1987)?|us-ascii|latin-?[1-9]"
)

# Codecs whose single bytes are not characters: a failure with them is not a hint that the
# text is UTF-8, and strict success with them is meaningful evidence.
_MULTIBYTE_PREFIXES = ("utf", "iso2022", "gb", "big5", "cp93", "cp94", "cp95", "euc", "shift",
                       "hz", "johab")
_WIDE_PREFIXES = ("utf-16", "utf-32", "utf-7")

_ISO2022_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(I", b"\x1b$(D", b"\x1b$(Q")

# Enough non-ASCII bytes for a strict UTF-8 success to outweigh a declared legacy charset,
# and enough bytes for statistical detection to beat replacement characters.
_UTF8_EVIDENCE_BYTES = 6
_DETECT_MIN_BYTES = 32
_DETECT_SAMPLE = 64 * 1024

_LOCALES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gbk", "gb18030", "gb2312", "hz"), "zh-CN"),
    (("big5", "big5hkscs", "cp950"), "zh-TW"),
    (("cp932", "shift_jis", "shift_jis_2004", "euc_jp", "euc_jis_2004", "iso2022_jp",
      "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3"), "ja"),
    (("cp949", "euc_kr", "iso2022_kr", "johab"), "ko"),
    (("koi8-r",), "ru"),
    (("koi8-u",), "uk"),
)


def _label(declared: str) -> str:
    label = declared.strip().strip("\"'").strip().lower()
    # RFC 2231 allows a language after '*' in encoded-words: =?utf-8*en?Q?...?=
    label = label.split("*", 1)[0]
    return label.replace("_", "-").replace(" ", "-")[:64]


def _python_codec(label: str) -> str | None:
    try:
        name = codecs.lookup(label).name
        # bytes.decode refuses bytes-to-bytes codecs (base64, zlib, rot13...) with LookupError.
        b"a".decode(name)
    except (LookupError, ValueError, UnicodeError):
        return None
    return None if name in _NOT_CHARSETS else name


@functools.lru_cache(maxsize=512)
def codec_chain(declared: str | None) -> tuple[str, ...]:
    """Python codecs to try, in order, for a declared charset label.

    ``()`` means "unknown: detect"; ``("ascii",)`` means the label claims US-ASCII.
    """
    if not declared:
        return _DETECT
    label = _label(declared)
    if not label:
        return _DETECT
    if label in _ALIASES:
        return _ALIASES[label]
    codec = _python_codec(label)
    if codec is not None:
        return _ALIASES.get(codec.replace("_", "-"), (codec,))
    match = _SALVAGE.search(label)
    if match is not None and match.group(0) != label:
        return codec_chain(match.group(0))
    return _DETECT


def locale_for_charset(declared: str | None) -> str | None:
    """The BCP 47 locale a charset implies, when it implies one (``gb2312`` → ``zh-CN``)."""
    chain = codec_chain(declared)
    if not chain:
        return None
    first = codecs.lookup(chain[0]).name
    for names, locale in _LOCALES:
        if first in names:
            return locale
    return None


def _is_multibyte(codec: str) -> bool:
    return codec.replace("_", "-").startswith(_MULTIBYTE_PREFIXES)


def _is_wide(codec: str) -> bool:
    return codec.replace("_", "-").startswith(_WIDE_PREFIXES)


def _try(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError, ValueError):
        return None


def _try_chain(data: bytes, chain: Iterable[str]) -> str | None:
    for codec in chain:
        text = _try(data, codec)
        if text is not None:
            return text
    return None


def _non_ascii_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, bytes(range(0x80, 0x100))))


# Short inputs (a raw 8-bit header, a file name) are too short for statistics: candidates
# are scored by how many of their characters are ones people actually write.
_SHORT_INPUT_BYTES = 64
_SHORT_CANDIDATES = ("cp1252", "gbk", "big5hkscs", "cp932", "euc_jp", "cp949", "cp1250",
                     "cp1251", "koi8-r", "cp1253")
_TYPOGRAPHY = frozenset("€–—‘’“”•…«»°©®™·§")


_COMMON_HAN_LEADS = (("gb2312", 0xB0, 0xD7), ("big5", 0xA4, 0xC6), ("shift_jis", 0x88, 0x98))


def _common_han(ch: str) -> bool:
    # GB2312 level 1, Big5 "frequently used" and JIS level 1: the characters of everyday text.
    for codec, low, high in _COMMON_HAN_LEADS:
        try:
            lead = ch.encode(codec)[0]
        except UnicodeError:
            continue
        if low <= lead <= high:
            return True
    return False


def _is_common(text: str, i: int) -> bool:
    ch = text[i]
    code = ord(ch)
    if 0x3040 <= code <= 0x30FF or 0x3000 <= code <= 0x303F or 0xFF01 <= code <= 0xFF5E:
        return True
    if 0xAC00 <= code <= 0xD7A3:
        try:
            ch.encode("euc_kr")  # the 2,350 syllables of KS X 1001; mojibake lands outside
        except UnicodeError:
            return False
        return True
    if 0x4E00 <= code <= 0x9FFF:
        return _common_han(ch)
    before = text[i - 1] if i > 0 else ""
    after = text[i + 1] if i + 1 < len(text) else ""
    if 0x0370 <= code <= 0x04FF:
        # Greek and Cyrillic words are written in their own letters, not mixed with Latin.
        return ch.isalpha() and (_is_greek_or_cyrillic(before) or _is_greek_or_cyrillic(after))
    if code <= 0x024F and ch.isalpha():
        # An accented Latin letter next to a plain one ("ção"); runs of them are mojibake.
        return (before.isascii() and before.isalpha()) or (after.isascii() and after.isalpha())
    return ch in _TYPOGRAPHY


def _is_greek_or_cyrillic(ch: str) -> bool:
    return bool(ch) and 0x0370 <= ord(ch) <= 0x04FF and ch.isalpha()


def _plausibility(text: str) -> float:
    positions = [i for i, ch in enumerate(text) if ord(ch) >= 0x80]
    if not positions:
        return 1.0
    return sum(_is_common(text, i) for i in positions) / len(positions)


def _guess_short(data: bytes) -> str | None:
    best: tuple[float, str] | None = None
    # One 8-bit byte cannot be a CJK character on its own (it would borrow an ASCII letter).
    single_byte_only = _non_ascii_count(data) < 2
    for codec in _SHORT_CANDIDATES:
        if single_byte_only and _is_multibyte(codec):
            continue
        text = _try(data, codec)
        if text is None:
            continue
        score = _plausibility(text)
        if best is None or score > best[0]:
            best = (score, text)
    return best[1] if best is not None and best[0] > 0 else None


def _mostly_utf8(data: bytes) -> str | None:
    # UTF-8 with a stray or truncated byte (a header cut mid-character) is still UTF-8.
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = sum(1 for ch in text if ord(ch) >= 0x80) - bad
    return text if good >= 2 and bad * 4 <= good else None


def _is_cjk(chain: tuple[str, ...]) -> bool:
    return bool(chain) and _is_multibyte(chain[0]) and not chain[0].startswith(("utf", "hz"))


_CP10007_TO_PYTHON = {ord(char): bytes([code]).decode("mac-cyrillic")
                      for char, code in (("¢", 0xA2), ("∂", 0xB6), ("¤", 0xFF))}


def _repair_utf8_read_as(text: str, chain: tuple[str, ...]) -> str:
    """UTF-8 read as the declared single-byte charset, then re-encoded as UTF-8: undo it.

    A newsletter tool that read UTF-8 Cyrillic ("Текущий") as x-mac-cyrillic and wrote the
    result out again as UTF-8 turns every letter into a dash and a symbol. Each run of non-ASCII
    characters is repaired on its own (the same mail may have a genuine "©"); legitimate text
    essentially never re-encodes into valid multi-byte UTF-8, so success is proof.
    """
    if not chain or _is_multibyte(chain[0]) or chain in (_ASCII, _WESTERN):
        return text
    codec = chain[0]

    def repair(match: re.Match[str]) -> str:
        run = match.group(0)
        if codec == "mac-cyrillic":
            # Windows' x-mac-cyrillic (cp10007) predates the Apple table Python follows.
            run = run.translate(_CP10007_TO_PYTHON)
        try:
            return run.encode(codec).decode("utf-8")
        except (UnicodeError, LookupError):
            return match.group(0)

    return _NON_ASCII_RUN.sub(repair, text)


_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]{2,}")


def _repair_double_encoding(text: str, hints: list[tuple[str, ...]]) -> str:
    """CJK bytes read as Latin-1 and re-encoded as UTF-8 ("¤j®a" for Big5): undo it."""
    wide = [ch for ch in text if ord(ch) >= 0x80]
    if len(wide) < 4 or any(ord(ch) > 0xFF for ch in wide):
        return text
    if not re.search(r"[\x80-\xff]{2}", text):
        return text
    raw = text.encode("latin-1")
    for chain in hints:
        if _is_cjk(chain):
            repaired = _try_chain(raw, chain)
            if repaired is not None:
                return repaired
    return text


def _detect(data: bytes) -> str | None:
    try:
        best = from_bytes(data[:_DETECT_SAMPLE]).best()
    except Exception:  # a detector bug must not lose the mail; fall back to replacement
        return None
    if best is None or not best.encoding:
        return None
    chain = codec_chain(best.encoding) or (best.encoding,)
    return _try_chain(data, chain)


def _decode(data: bytes, declared: str | None, fallbacks: tuple[str | None, ...]) -> str:
    if not data:
        return ""
    text = _decode_once(data, declared, fallbacks)
    if not text.isascii():
        chain = codec_chain(declared)
        text = _repair_utf8_read_as(text, chain)
        text = _repair_double_encoding(text, [chain, *(codec_chain(f) for f in fallbacks)])
    return text


def _decode_once(data: bytes, declared: str | None, fallbacks: tuple[str | None, ...]) -> str:
    chain = codec_chain(declared)
    claims_ascii = chain in (_ASCII, _DETECT)
    if data.isascii():
        if claims_ascii:
            # ISO-2022-JP is 7-bit: unlabelled or "us-ascii" Japanese mail is common.
            if b"\x1b" in data and any(esc in data for esc in _ISO2022_ESCAPES):
                text = _try_chain(data, _ISO2022_JP)
                if text is not None:
                    return text
            return data.decode("ascii")
        text = _try_chain(data, chain)
        if text is not None:
            return text
        return data.decode(chain[0], "replace")

    if not claims_ascii:
        if not _is_wide(chain[0]):
            # Valid UTF-8 with enough multi-byte sequences is UTF-8 whatever the label says:
            # legacy text almost never happens to be valid UTF-8, mislabelled UTF-8 often is
            # valid GBK or Latin-1 (mojibake without an error).
            utf8 = _try(data, "utf-8-sig")
            if utf8 is not None and (
                not _is_multibyte(chain[0]) or _non_ascii_count(data) >= _UTF8_EVIDENCE_BYTES
            ):
                return utf8
        text = _try_chain(data, chain)
        if text is not None:
            return text
        if _is_wide(chain[0]) or len(data) < _DETECT_MIN_BYTES:
            # Too little to second-guess the label: keep what decodes, mark what does not.
            return data.decode(chain[0], "replace")

    text = _try(data, "utf-8-sig")
    if text is not None:
        return text
    text = _mostly_utf8(data)
    if text is not None:
        return text
    for fallback in fallbacks:
        fallback_chain = codec_chain(fallback)
        if fallback_chain in (_ASCII, _DETECT) or _is_wide(fallback_chain[0]):
            continue
        text = _try_chain(data, fallback_chain)
        if text is not None:
            return text
    short = _non_ascii_count(data) < _SHORT_INPUT_BYTES
    text = _guess_short(data) if short else _detect(data)
    if text is not None:
        return text
    return data.decode(chain[0] if not claims_ascii else "utf-8", "replace")


def decode_bytes(
    data: bytes, declared: str | None, *, fallbacks: Iterable[str | None] = ()
) -> str:
    """Decode ``data`` declared as ``declared`` (a MIME charset label, or None); never raises.

    ``fallbacks`` are other charsets the same message declares; they are tried before
    statistical detection when the declared label is missing, ``us-ascii`` or fails.
    """
    try:
        return _decode(bytes(data), declared, tuple(fallbacks))
    except Exception:  # the contract is "never raises": a bug here must not lose a mail
        try:
            return bytes(data).decode("utf-8", "replace")
        except Exception:
            return ""


def to_raw_bytes(text: str) -> bytes:
    """The bytes behind a header string from a bytes parser (8-bit bytes as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def has_raw_bytes(text: str) -> bool:
    """True when ``text`` carries undecoded 8-bit bytes (surrogate escapes)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def _decode_word_bytes(encoding: str, text: str) -> bytes:
    if encoding in "qQ":
        raw = to_raw_bytes(text).replace(b"_", b" ")
        return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    # Lenient base64: drop junk and padding, then re-pad; a lone trailing sextet is noise.
    cleaned = _NOT_BASE64.sub("", text)
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned)
    except (binascii.Error, ValueError):
        return b""


def _decode_literal(text: str, fallbacks: tuple[str | None, ...]) -> str:
    if has_raw_bytes(text):
        return decode_bytes(to_raw_bytes(text), None, fallbacks=fallbacks)
    return text


def decode_encoded_words(value: str, *, fallbacks: Iterable[str | None] = ()) -> str:
    """Decode a header value: RFC 2047 encoded-words and raw 8-bit bytes; never raises.

    Adjacent encoded-words in the same charset are joined as bytes before decoding, so a
    multi-byte character (or an ISO-2022-JP escape sequence) split across words survives.
    Whitespace between encoded-words is dropped (RFC 2047 section 6.2); raw 8-bit bytes are
    read as UTF-8, then as the message's ``fallbacks`` charsets, then by detection.
    """
    try:
        return _decode_words(value, tuple(fallbacks))
    except Exception:  # the contract is "never raises"
        return to_raw_bytes(value).decode("utf-8", "replace") if isinstance(value, str) else ""


def _decode_words(value: str, fallbacks: tuple[str | None, ...]) -> str:
    text = _FOLD.sub("", value)
    out: list[str] = []
    run_charset: str | None = None
    run_bytes = bytearray()
    position = 0

    def flush() -> None:
        nonlocal run_charset
        if run_charset is not None:
            out.append(decode_bytes(bytes(run_bytes), run_charset, fallbacks=fallbacks))
            run_bytes.clear()
            run_charset = None

    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        position = match.end()
        if gap and not (run_charset is not None and gap.isspace()):
            flush()
            out.append(_decode_literal(gap, fallbacks))
        charset = _label(match.group(1))
        if run_charset is not None and charset != run_charset:
            flush()
        run_charset = charset
        run_bytes += _decode_word_bytes(match.group(2), match.group(3))
    flush()
    out.append(_decode_literal(text[position:], fallbacks))
    return "".join(out)

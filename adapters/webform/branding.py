"""The organisation's name, logo, privacy notice, contact hours and accent colour on the form.

Every value comes from ``[adapters.webform]`` and is checked once at start: texts are a string
for every language or a table by locale (``zh-CN``, ``zh-TW``, ``en``), the accent colour is a
hex colour (it is written into the page's style sheet, so nothing else may pass), links are
``https://``, ``http://`` or a path on this site, and the logo is a small image file read into
memory and served by the form itself (no third-party request from a customer's browser).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from gateway.errors import ConfigError
from gateway.plugin.locales import SUPPORTED_LOCALES

Localized = str | dict[str, str]
"""One text for every language, or ``{"zh-CN": ..., "zh-TW": ..., "en": ...}``."""

MAX_LOGO_BYTES = 262_144
DEFAULT_ACCENT = "#0b57d0"
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_LINK = re.compile(r"^(?:https?://[^\s\"'<>]+|/(?!/)[^\s\"'<>]*)$")
_FALLBACK = {"zh-TW": ("zh-CN", "en"), "zh-CN": ("zh-TW", "en"), "en": ("zh-CN", "zh-TW")}


class Logo(msgspec.Struct, frozen=True):
    data: bytes
    content_type: str


class Brand(msgspec.Struct, frozen=True, kw_only=True):
    """The checked branding, as the templates read it (``brand.text("name", locale)``)."""

    texts: dict[str, dict[str, str]]
    """Field -> locale -> text, only the fields that were configured."""
    accent: str
    accent_dark: str
    on_accent: str
    """Text colour on the accent: white or near-black, whichever contrasts more."""
    accent_tint: str
    logo: Logo | None

    def text(self, field: str, locale: str) -> str | None:
        """The field in ``locale``, else in the nearest configured language; None if unset."""
        table = self.texts.get(field)
        if not table:
            return None
        for loc in (locale, *_FALLBACK.get(locale, ())):
            if loc in table:
                return table[loc]
        return next(iter(table.values()))


def _localized(value: Localized | None, key: str) -> dict[str, str] | None:
    if value is None:
        return None
    table = {loc: value for loc in SUPPORTED_LOCALES} if isinstance(value, str) else dict(value)
    for loc, text in table.items():
        if loc not in SUPPORTED_LOCALES:
            raise ConfigError(f"adapters.webform.{key}: unknown locale {loc!r}; use "
                              f"{', '.join(SUPPORTED_LOCALES)}")
        if not text.strip() or len(text) > 500:
            raise ConfigError(f"adapters.webform.{key}.{loc}: give 1 to 500 characters")
    return table or None


def _rgb(color: str) -> tuple[int, int, int]:
    h = color[1:]
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{max(0, min(255, round(c))):02x}" for c in rgb)


def _luminance(rgb: tuple[int, int, int]) -> float:
    def lin(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return (hi + 0.05) / (lo + 0.05)


def accent_palette(color: str) -> tuple[str, str, str, str]:
    """(accent, a darker shade for hover, the text colour on it, a light tint for panels)."""
    if not _HEX.match(color):
        raise ConfigError(f"adapters.webform.accent_color: expected a hex colour like "
                          f"'#0b57d0', got {color!r}")
    rgb = _rgb(color)
    lum = _luminance(rgb)
    on = "#ffffff" if _contrast(lum, 1.0) >= _contrast(lum, _luminance((27, 31, 36))) \
        else "#1b1f24"
    dark = _hex(tuple(c * 0.8 for c in rgb))  # type: ignore[arg-type]
    tint = _hex(tuple(255 - (255 - c) * 0.1 for c in rgb))  # type: ignore[arg-type]
    return _hex(rgb), dark, on, tint


def read_logo(path: str) -> Logo:
    """The logo file, recognised by its first bytes (PNG, JPEG, GIF, WebP or SVG)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"adapters.webform.logo_file: cannot read {path}: "
                          f"{exc.strerror}") from exc
    if not data or len(data) > MAX_LOGO_BYTES:
        raise ConfigError(f"adapters.webform.logo_file: {path} must be 1 byte to "
                          f"{MAX_LOGO_BYTES // 1024} KiB")
    head = data[:512]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "image/png"
    elif head.startswith(b"\xff\xd8\xff"):
        kind = "image/jpeg"
    elif head.startswith((b"GIF87a", b"GIF89a")):
        kind = "image/gif"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "image/webp"
    elif b"<svg" in head.lower():
        kind = "image/svg+xml"
    else:
        raise ConfigError(f"adapters.webform.logo_file: {path} is not a PNG, JPEG, GIF, WebP "
                          "or SVG image")
    return Logo(data, kind)


def build_brand(*, organisation: Localized | None, contact_hours: Localized | None,
                privacy_url: Localized | None, accent_color: str,
                logo_file: str | None) -> Brand:
    """Check the configured values once (ConfigError naming the key) and prepare them."""
    texts: dict[str, dict[str, str]] = {}
    for key, value in (("organisation", organisation), ("contact_hours", contact_hours),
                       ("privacy_url", privacy_url)):
        table = _localized(value, key)
        if table is not None:
            texts[key] = table
    for loc, url in texts.get("privacy_url", {}).items():
        if not _LINK.match(url):
            raise ConfigError(f"adapters.webform.privacy_url ({loc}): give an https:// URL or a "
                              f"path on this site, got {url!r}")
    accent, dark, on, tint = accent_palette(accent_color)
    return Brand(texts=texts, accent=accent, accent_dark=dark, on_accent=on, accent_tint=tint,
                 logo=read_logo(logo_file) if logo_file else None)

"""The acknowledgement languages the core has, and which of them a language tag reads best.

For adapters that choose a page's language themselves (the web form's ``?lang=`` and
``Accept-Language``) before any message exists; :meth:`Intake.render_ack` and
:meth:`Intake.format_due` apply the same choice to any tag they are given.
"""

from __future__ import annotations

from gateway.language import chinese_script, is_language_tag

__all__ = ["SUPPORTED_LOCALES", "pick_locale"]

SUPPORTED_LOCALES = ("zh-CN", "zh-TW", "en")
"""The languages acknowledgements are written in."""


def pick_locale(language: str | None, default: str) -> str:
    """The acknowledgement locale for a message's language (a BCP 47 tag, or an Accept-Language
    value's first tag): ``zh-CN``, ``zh-TW`` or ``en``.

    Chinese tags go by script (``zh-HK``, ``zh-Hant``, ``yue`` are traditional, ``zh-Hans-HK``
    simplified; a bare ``zh`` takes the default's variant if the default is Chinese). English
    answers English and every other language we have no template for, since a reader of
    Japanese or French is likelier to read English than Chinese. Only when ``language`` is
    missing or unusable does ``default`` decide (and an unusable default gives English).
    """
    for tag in (language, default):
        if not tag or not is_language_tag(tag):
            continue
        script = chinese_script(tag)
        if script == "Hani":
            return "zh-TW" if chinese_script(default) == "Hant" else "zh-CN"
        if script is not None:
            return "zh-TW" if script == "Hant" else "zh-CN"
        return "en"
    return "en"


"""Where a customer writes from, as far as the phone number says: province for Chinese numbers,
country elsewhere (``phonenumbers``' own geocoder data: Chinese mobile prefixes name a city).
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import geocoder

UNKNOWN = "no phone number"
_PROVINCE = re.compile(r"^(.+?(?:特别行政区|自治区|省|市))")


@lru_cache(maxsize=4096)
def region_of(phone: str | None) -> str:
    """``"+8613912345678"`` -> ``"江苏省 Jiangsu"``; ``"+442079460958"`` -> ``"英国 GB"``."""
    if not phone:
        return UNKNOWN
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return "unreadable number"
    code = phonenumbers.region_code_for_number(number) or "?"
    if code == "CN":
        zh = geocoder.description_for_number(number, "zh")
        en = geocoder.description_for_number(number, "en")
        match = _PROVINCE.match(zh)
        if match:
            # "Changzhou, Jiangsu" -> "Jiangsu"; "Beijing" stays.
            return f"{match.group(1)} {en.rsplit(', ', 1)[-1]}".strip()
        return "中国 CN (province unknown)"
    country = geocoder.country_name_for_number(number, "zh") or code
    return f"{country} {code}"

"""Normalising contact identities so one person is one contact across channels."""

from __future__ import annotations

import re

import phonenumbers

from gateway.errors import RejectedInput

_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\".]{2,}$")


def normalize_email(text: str, *, field: str = "email") -> str:
    """Trimmed, lower-cased address; RejectedInput when it cannot be an address."""
    value = text.strip().lower()
    if len(value) > 254 or not _EMAIL.match(value):
        raise RejectedInput("the email address is not valid, e.g. name@example.com", field=field)
    return value


def normalize_phone(text: str, *, default_region: str | None, field: str = "phone") -> str:
    """E.164 (``+8613800138000``); national numbers are read in ``default_region``."""
    value = text.strip()
    if value.startswith("00"):
        value = "+" + value[2:]
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else default_region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        example = "+8613800138000" if default_region == "CN" else "+14155550123"
        raise RejectedInput(f"the phone number is not valid; write it with the country code, "
                            f"e.g. {example}", field=field)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

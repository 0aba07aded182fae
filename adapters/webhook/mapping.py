"""Paths into a JSON payload (``data.review.body``, ``messages[0].text``) and reading them."""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import ConfigError, RejectedInput

_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)$")
_INDEX = re.compile(r"\[(\d+)\]")


class PayloadMismatch(RejectedInput):
    """The payload does not fit the source's mapping: HTTP 422, ``field`` names the path."""

    status = 422


class Path:
    """One parsed path: keys of objects and indexes of lists, applied in order."""

    def __init__(self, text: str, *, key: str) -> None:
        self.text = text
        self.steps: list[str | int] = []
        for segment in text.split("."):
            match = _SEGMENT.match(segment)
            if not match:
                raise ConfigError(f"{key}: {text!r} is not a path; write keys joined by dots, "
                                  "with [n] for list items, e.g. \"data.items[0].text\"")
            self.steps.append(match.group(1))
            self.steps.extend(int(i) for i in _INDEX.findall(match.group(2)))

    def find(self, payload: Any) -> Any:
        """The value at this path, or None when any step is absent (or JSON null)."""
        value = payload
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(value, list) or step >= len(value):
                    return None
            elif not isinstance(value, dict) or step not in value:
                return None
            value = value[step]
        return value

    def read(self, payload: Any, *, field: str, limit: int | None = None) -> str | None:
        """The value at this path as text: strings as they are, integers in decimal.

        Absent or null is None; any other kind of value, or text over ``limit`` characters, is
        a :class:`PayloadMismatch` naming the path.
        """
        value = self.find(payload)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise PayloadMismatch(f"`{self.text}` (mapped to {field}) must be a string, not "
                                  f"{_kind(value)}", field=self.text)
        text = value if isinstance(value, str) else str(value)
        if limit is not None and len(text) > limit:
            raise PayloadMismatch(f"`{self.text}` (mapped to {field}) is longer than {limit} "
                                  "characters", field=self.text)
        return text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number" if isinstance(value, float) else type(value).__name__

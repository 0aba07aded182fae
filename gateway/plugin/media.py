"""Provider media fetched as input: only from allowed origins, never past a limit, never partial.

Media URLs, redirects, file paths and sizes come from the provider's answers, and a provider (or
whoever speaks for it) can be hostile: a redirect to ``127.0.0.1`` or a cloud metadata address, a
body without a declared size that never ends, a body cut short and passed off as whole. Adapters
that download media check every URL against a :class:`MediaHosts` allow-list (the first one and
every redirect hop), read bodies with :func:`read_limited`, and record a
:class:`MediaRefused` reason next to the message instead of storing anything doubtful.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec

from gateway.errors import ConfigError, TooLarge
from intake_schemas import FileNotKept

NotKeptReason = Literal["too_large", "too_many", "type", "unavailable"]

__all__ = ["IDENTITY", "MediaHosts", "MediaRefused", "file_not_kept", "read_limited"]

IDENTITY = {"Accept-Encoding": "identity"}
"""Headers asking for the bytes as stored: the declared length is then the length received."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 65_536


class MediaRefused(Exception):
    """A media item that is not stored; ``reason`` says why (safe to record with the message).

    ``kind`` and ``limit`` say it to the customer (:func:`file_not_kept`): ``too_large`` with
    the limit in bytes, ``type``, or ``unavailable``."""

    def __init__(self, reason: str, *, kind: NotKeptReason = "unavailable",
                 limit: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: NotKeptReason = kind
        self.limit = limit


def file_not_kept(name: str, exc: BaseException) -> FileNotKept:
    """What the acknowledgement tells the customer about a file that ``exc`` kept out."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MediaRefused):
            return FileNotKept(name=name, reason=seen.kind, limit=seen.limit)
        if isinstance(seen, TooLarge):
            return FileNotKept(name=name, reason="too_large", limit=seen.limit)
        seen = seen.__cause__
    return FileNotKept(name=name, reason="unavailable")


class _Origin(msgspec.Struct, frozen=True):
    scheme: str
    host: str
    """Lower-case; ``*.example.com`` matches every subdomain of example.com (not itself)."""
    port: int
    path: str
    """Prefix the URL's path must start with; ``/`` allows every path."""

    def allows(self, scheme: str, host: str, port: int, path: str) -> bool:
        if scheme != self.scheme or port != self.port or not path.startswith(self.path):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


class MediaHosts:
    """The origins media may be fetched from.

    Each entry is ``host`` or ``*.domain`` (any subdomain), optionally followed by a path prefix
    (``s3-external-1.amazonaws.com/media.twiliocdn.com/``): fetched over https on port 443
    only. An entry with a scheme (``http://127.0.0.1:8080``) allows exactly that scheme, host and
    port, which is how tests point an adapter at a local fake; plain http is never allowed
    implicitly, and loopback is no exception.
    """

    def __init__(self, entries: Iterable[str], *, key: str) -> None:
        self._origins: list[_Origin] = []
        for entry in entries:
            text = entry.strip()
            if "://" not in text:
                text = "https://" + text
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
            try:
                port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
            except ValueError:
                port = 0
            if (parts.scheme not in _DEFAULT_PORTS or not host or not port or parts.username
                    or parts.query or parts.fragment or host.count("*") > int(
                        host.startswith("*."))):
                raise ConfigError(f"{key}: {entry!r} is not a host, *.domain or "
                                  "scheme://host[:port] entry")
            self._origins.append(_Origin(parts.scheme, host, port, parts.path or "/"))

    def allows(self, url: str) -> bool:
        """Whether ``url`` may be fetched: an allowed origin and path, and no user info."""
        parts = urlsplit(url)
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        if not host or parts.username is not None or "@" in parts.netloc:
            return False
        return any(o.allows(parts.scheme, host, port, parts.path or "/") for o in self._origins)


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``response``, or :class:`MediaRefused`.

    Refused: a declared ``Content-Length`` above ``limit``; a body that grows past ``limit``
    while it streams (counted, whatever was declared); a body shorter than declared. A
    connection that breaks mid-body raises aiohttp's ``ClientPayloadError`` instead.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        raise MediaRefused(f"larger than {limit} bytes", kind="too_large", limit=limit)
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise MediaRefused(f"larger than {limit} bytes", kind="too_large", limit=limit)
    # A decoded (gzip) body is longer than the declared, encoded length: only identity counts.
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if declared is not None and len(body) != declared and encoding in ("", "identity"):
        raise MediaRefused(f"cut short: {len(body)} of {declared} bytes arrived")
    return bytes(body)

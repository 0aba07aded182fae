"""The signature schemes a source may choose, each verifying the raw body before it is parsed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

import msgspec

from gateway.errors import ConfigError, Forbidden, Unauthorized

SCHEMES = ("standard-webhooks", "hmac-sha256-hex", "hmac-sha256-base64")
"""The names ``signature`` accepts."""

_DEFAULT_HEADER = {"hmac-sha256-hex": "X-Hub-Signature-256",
                   "hmac-sha256-base64": "X-Shopify-Hmac-Sha256"}
_DEFAULT_PREFIX = {"hmac-sha256-hex": "sha256=", "hmac-sha256-base64": ""}
_MAX_ID = 200


class Verified(msgspec.Struct, frozen=True, kw_only=True):
    """What a valid signature tells besides "authentic"."""

    delivery_id: str | None = None
    """The scheme's own id of the event (``webhook-id``), if it has one."""
    replay_key: str | None = None
    """What identifies this signed request, for the replay guard; None when the scheme signs
    no timestamp (a byte-identical redelivery is then absorbed by idempotency alone)."""
    ttl: float = 0.0
    """How long ``replay_key`` must be remembered: until its timestamp leaves the window."""


class StandardWebhooks:
    """Standard Webhooks 1.0: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

    The secret is ``whsec_`` + base64 of the key (the prefix is optional, as in the reference
    libraries); the signature header may list several signatures (key rotation), any ``v1``
    one may match.
    """

    def __init__(self, secret: str, *, tolerance: float, key: str) -> None:
        encoded = secret.removeprefix("whsec_")
        try:
            self.key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{key}: a Standard Webhooks secret is whsec_ followed by base64 "
                              "(as the platform shows it)") from exc
        if not self.key:
            raise ConfigError(f"{key}: the Standard Webhooks secret is empty")
        self.tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> Verified:
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        if not (msg_id and stamp and signatures):
            raise Unauthorized("Standard Webhooks requires the webhook-id, webhook-timestamp "
                               "and webhook-signature headers")
        # The signed content is dot-delimited: an id with a dot could shift the boundary.
        if not (msg_id.isascii() and msg_id.isprintable() and "." not in msg_id
                and len(msg_id) <= _MAX_ID):
            raise Unauthorized(f"webhook-id must be 1 to {_MAX_ID} printable ASCII characters "
                               "without a dot")
        # Digits of a sane length: int() of a 400-digit string is slow and overflows floats.
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise Unauthorized("webhook-timestamp must be Unix seconds")
        if abs(now - int(stamp)) > self.tolerance:
            raise Unauthorized("webhook-timestamp is outside the accepted tolerance; check the "
                               "sender's clock (each attempt is signed afresh)")
        expected = hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + body,
                            hashlib.sha256).digest()
        if not any(_matches_v1(entry, expected) for entry in signatures.split()):
            raise Forbidden("no webhook-signature matches the body")
        ttl = max(int(stamp) + self.tolerance - now, 0.0) + 1.0
        return Verified(delivery_id=msg_id, replay_key=f"{msg_id}.{stamp}", ttl=ttl)


def _matches_v1(entry: str, expected: bytes) -> bool:
    version, _, value = entry.partition(",")
    if version != "v1" or not value.isascii():
        return False  # v1a (asymmetric) and future versions are not ours to check
    try:
        given = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected)


class BodyHmac:
    """HMAC-SHA256 of the raw body in one header: hex (GitHub's ``X-Hub-Signature-256:
    sha256=<hex>``) or base64 (Shopify's ``X-Shopify-Hmac-Sha256``). No timestamp is signed,
    so there is no window and no replay guard: a redelivery carries the same signature, and
    idempotency answers it with the first receipt."""

    def __init__(self, scheme: str, secret: str, *, header: str | None,
                 prefix: str | None) -> None:
        self.scheme = scheme
        self.key = secret.encode()
        self.header = header or _DEFAULT_HEADER[scheme]
        self.prefix = _DEFAULT_PREFIX[scheme] if prefix is None else prefix

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float) -> Verified:
        value = headers.get(self.header, "").strip()
        if not value:
            raise Unauthorized(f"this webhook requires the {self.header} header")
        if not (value.isascii() and value.startswith(self.prefix)):
            raise Forbidden(f"{self.header} must be {self.prefix}<{self._encoding}>")
        digest = hmac.new(self.key, body, hashlib.sha256).digest()
        given = value[len(self.prefix):]
        expected = (digest.hex() if self.scheme == "hmac-sha256-hex"
                    else base64.b64encode(digest).decode())
        # Hex digests are case-insensitive; base64 is not.
        if self.scheme == "hmac-sha256-hex":
            given = given.lower()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Forbidden(f"the {self.header} signature does not match the body")
        return Verified()

    @property
    def _encoding(self) -> str:
        return "hex" if self.scheme == "hmac-sha256-hex" else "base64"


Scheme = StandardWebhooks | BodyHmac

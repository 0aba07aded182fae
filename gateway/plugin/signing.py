"""Signed HTTP requests: HMAC-SHA256 over ``"{timestamp}." + body``, each signature used once.

The signed JSON API (``POST /v1/messages``) and the replies endpoint
(``POST /v1/tickets/{number}/replies``) authenticate the same way, through this one class:

- ``X-Intake-Timestamp``: Unix seconds, within ``window`` of our clock on either side;
- ``X-Intake-Signature``: ``sha256=`` + the hex HMAC-SHA256 of ``"{timestamp}." + body``;
- each signature is accepted once (the replay guard, durable across restarts): a byte-identical
  repeat is refused with 409, so a client retries by signing afresh with the same
  ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping

from gateway.errors import Forbidden, RejectedInput, Unauthorized


def sign_request(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Intake-Signature`` value: ``sha256=`` + hex HMAC over ``"{timestamp}." + body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class SignatureReplayed(RejectedInput):
    """A byte-identical signed request seen before: HTTP 409, the client must sign afresh."""

    status = 409
    smtp_code = 550


FirstUse = Callable[..., Awaitable[bool]]
"""``first_use(scope, key, *, ttl=seconds)``: :meth:`gateway.plugin.Intake.first_use`."""


class RequestSigner:
    """Verifies signed requests with one secret; see the module docstring."""

    def __init__(self, secret: str, *, window: float, scope: str) -> None:
        self.secret = secret
        self.window = window
        self.scope = scope
        """The replay guard's scope (``api:signature``): endpoints with one secret share it."""

    async def verify(self, headers: Mapping[str, str], body: bytes, *, now: float,
                     first_use: FirstUse) -> None:
        """Raise 401/403/409 (:class:`Unauthorized`, :class:`Forbidden`,
        :class:`SignatureReplayed`) unless the request is signed, fresh and new."""
        ts = headers.get("X-Intake-Timestamp", "")
        sig = headers.get("X-Intake-Signature", "")
        if not ts or not sig:
            raise Unauthorized("this API requires X-Intake-Timestamp and X-Intake-Signature "
                               "headers (HMAC-SHA256 over \"{timestamp}.{body}\")")
        # ASCII digits of a sane length (int("1" + "0" * 400) overflows the float below); a
        # header byte that is not UTF-8 arrives as a surrogate, which cannot be encoded.
        if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
            raise Unauthorized("X-Intake-Timestamp must be Unix seconds")
        if abs(now - int(ts)) > self.window:
            raise Unauthorized("X-Intake-Timestamp is outside the accepted window; check the "
                               "client's clock and sign each request afresh")
        if not sig.isascii() or not hmac.compare_digest(
                sig.encode("ascii"), sign_request(self.secret, ts, body).encode()):
            raise Forbidden("the signature does not match the body")
        # Kept until the timestamp leaves the window on its far side, across restarts.
        ttl = max(int(ts) + self.window - now, 0.0) + 1.0
        if not await first_use(self.scope, sig, ttl=ttl):
            raise SignatureReplayed(
                "this exact signed request was accepted already (replay guard); to retry, "
                "sign it afresh with a new X-Intake-Timestamp and keep the same "
                "Idempotency-Key, which makes the retry return the first answer")

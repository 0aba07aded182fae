"""Visitor session tokens (signed, expiring, revocable) and the sites' signed identities.

A token is ``v1.<site key>.<session id>.<issued at>.<signature>``: the signature is HMAC-SHA256
with the gateway's session secret over everything before it, so a token is bound to its site and
cannot be forged or moved to another site. Revocation is durable: the session's
record is marked revoked in ``AdapterContext.state`` and every later use is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from gateway.errors import Forbidden, Unauthorized

_SID = re.compile(r"^[A-Za-z0-9_-]{22}$")
_SITE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
SITE_KEY = _SITE
"""What a site key may be."""


def new_session_id() -> str:
    """128 random bits, URL-safe: the session's identity and the key of its history."""
    return secrets.token_urlsafe(16)


def _mac(secret: bytes, site: str, sid: str, issued: int) -> str:
    mac = hmac.new(secret, f"v1.{site}.{sid}.{issued}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issue_token(secret: bytes, site: str, sid: str, issued: int) -> str:
    """The token the visitor keeps (the widget stores it in ``localStorage``)."""
    return f"v1.{site}.{sid}.{issued}.{_mac(secret, site, sid, issued)}"


def read_token(secret: bytes, token: str, *, now: float, ttl: float) -> tuple[str, str]:
    """The site key and session id a token names, after checking its form, signature and age.

    Raises :class:`Unauthorized` for a token that is malformed, forged or expired (the visitor
    starts a new session). Revocation is checked by the caller, against the session's record.
    """
    parts = token.split(".") if 0 < len(token) <= 300 and token.isascii() else []
    if (len(parts) != 5 or parts[0] != "v1" or not _SITE.match(parts[1])
            or not _SID.match(parts[2]) or not parts[3].isdigit() or len(parts[3]) > 12):
        raise Unauthorized("the session token is malformed")
    site, sid, issued = parts[1], parts[2], int(parts[3])
    if not hmac.compare_digest(parts[4].encode(), _mac(secret, site, sid, issued).encode()):
        raise Unauthorized("the session token's signature does not match")
    if issued > now + 300 or now - issued > ttl:
        raise Unauthorized("the session token has expired; start a new session")
    return site, sid


def identity_signature(secret: bytes, user_id: str, email: str) -> str:
    """What the site's server computes for a logged-in user: hex HMAC-SHA256 of
    ``"<user id>\\n<email>"`` with the site's identity secret (email as the site knows it)."""
    return hmac.new(secret, f"{user_id}\n{email}".encode(), hashlib.sha256).hexdigest()


def check_identity(secret: bytes | None, user_id: str, email: str, signature: str) -> None:
    """Refuse an identity whose signature does not match (403), or a site without a secret."""
    if secret is None:
        raise Forbidden("this site accepts no signed identities (no identity secret is set)")
    expected = identity_signature(secret, user_id, email)
    if not (signature.isascii()
            and hmac.compare_digest(signature.lower().encode(), expected.encode())):
        raise Forbidden("the identity signature does not match the user id and email")

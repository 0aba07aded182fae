"""Session tokens and signed identities of the chat, as pure functions."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import Forbidden, Unauthorized
from intake_adapters.webchat.session import (
    check_identity,
    identity_signature,
    issue_token,
    new_session_id,
    read_token,
)

SECRET = b"k" * 32
NOW = 1_800_000_000
DAY = 86_400.0
sites = st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True)


@given(site=sites)
def test_a_token_names_its_site_and_session(site: str) -> None:
    sid = new_session_id()
    token = issue_token(SECRET, site, sid, NOW)
    assert read_token(SECRET, token, now=NOW + 10, ttl=DAY) == (site, sid)


@given(site=sites, data=st.data())
def test_any_changed_character_is_refused(site: str, data: st.DataObject) -> None:
    token = issue_token(SECRET, site, new_session_id(), NOW)
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("A0_-.xZ"))
    changed = token[:i] + c + token[i + 1:]
    if changed != token:
        with pytest.raises(Unauthorized):
            read_token(SECRET, changed, now=NOW, ttl=DAY)


@given(garbage=st.text(max_size=400))
def test_garbage_is_unauthorized_never_a_crash(garbage: str) -> None:
    with pytest.raises(Unauthorized):
        read_token(SECRET, garbage, now=NOW, ttl=DAY)


def test_expiry_other_secret_and_moved_site() -> None:
    sid = new_session_id()
    token = issue_token(SECRET, "site-aaaa", sid, NOW)
    with pytest.raises(Unauthorized, match="expired"):
        read_token(SECRET, token, now=NOW + DAY + 1, ttl=DAY)
    with pytest.raises(Unauthorized, match="expired"):  # issued in the future
        read_token(SECRET, token, now=NOW - 1000, ttl=DAY)
    with pytest.raises(Unauthorized):
        read_token(b"x" * 32, token, now=NOW, ttl=DAY)
    moved = token.replace("site-aaaa", "site-bbbb")
    with pytest.raises(Unauthorized):
        read_token(SECRET, moved, now=NOW, ttl=DAY)


def test_identity_signature_is_the_documented_hmac() -> None:
    # docs/webchat.md: hex(HMAC-SHA256(secret, user_id + "\n" + email)), computed here again.
    expected = hmac.new(b"site-secret", b"42\nli@example.com", hashlib.sha256).hexdigest()
    assert identity_signature(b"site-secret", "42", "li@example.com") == expected
    check_identity(b"site-secret", "42", "li@example.com", expected.upper())
    for args in (("43", "li@example.com", expected), ("42", "li@example.org", expected),
                 ("42", "li@example.com", "é" * 64), ("42", "li@example.com", "")):
        with pytest.raises(Forbidden):
            check_identity(b"site-secret", *args)
    with pytest.raises(Forbidden, match="no identity secret"):
        check_identity(None, "42", "li@example.com", expected)

"""Schemathesis hooks for tests/test_openapi_fuzz.py: sign what the providers would sign.

With a valid signature the fuzzer reaches what lies behind it (Twilio's form fields, WeChat's
XML) instead of stopping at the 403. The secrets come from the test through the environment;
a case whose body cannot be signed as sent (not a form of strings) goes out unsigned and is
refused, which the run also checks.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import schemathesis
from twilio.request_validator import RequestValidator


def _wechat_signature(token: str, timestamp: str, nonce: str) -> str:
    # WeChat's plain-mode signature, as its documentation defines it (an oracle written apart
    # from adapters/wechat/protocol.py).
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    base = os.environ["FUZZ_BASE_URL"]
    if path.startswith("/wechat"):
        query = dict(case.query or {})
        stamp, nonce = str(int(time.time())), secrets.token_hex(8)
        query.update(timestamp=stamp, nonce=nonce,
                     signature=_wechat_signature(os.environ["FUZZ_WECHAT_TOKEN"], stamp, nonce))
        case.query = query
    elif path.startswith("/twilio/") and isinstance(case.body, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in case.body.items()):
        url = base + case.formatted_path
        if case.query:
            url += "?" + urlencode(case.query, doseq=True)
        signature = RequestValidator(os.environ["FUZZ_TWILIO_TOKEN"]).compute_signature(
            url, case.body)
        case.headers = {**(case.headers or {}), "X-Twilio-Signature": signature}

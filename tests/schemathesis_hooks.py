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
    elif path == "/webchat/v1/sessions" and isinstance(case.body, dict) \
            and isinstance(case.body.get("site"), str):
        # The configured site, so that sessions get opened and what follows is fuzzed; a
        # generated site key would only ever be 404.
        case.body = {**case.body, "site": os.environ["FUZZ_WEBCHAT_SITE"]}
    elif path == "/webchat/v1/messages" and isinstance(case.body, dict):
        # Upload ids the fuzzer makes up name no upload, and a message needs words or a file
        # (a rule across fields the schema does not state): both are 400 before the message is
        # taken. Valid values made so, the message itself is taken and its entry checked
        # against the document; invalid ones are left as generated, to be refused.
        body = dict(case.body)
        if isinstance(body.get("attachments"), list) and all(
                isinstance(a, str) for a in body["attachments"]):
            body["attachments"] = []
        if isinstance(body.get("text"), str) and not body["text"].strip():
            body["text"] = "Where is my parcel?"
        case.body = body
    elif path == "/v1/messages" and case.operation.method.lower() == "post" \
            and isinstance(case.body, dict) and isinstance(case.body.get("text"), str) \
            and not case.body["text"].strip() and not case.body.get("attachments"):
        # The same cross-field rule ("text or a file"): which generated bodies happen to meet it
        # depends on every other operation in the document under the fixed seed.
        case.body = {**case.body, "text": "My router has no internet."}

"""``intake-gateway reply NUMBER --text …``: a reply from a shell, through the running
gateway's own endpoint (so it is signed, routed and recorded exactly as a downstream's)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from gateway.config import Config
from gateway.plugin import resolve_secret, sign_request


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("number", help="the ticket number")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="what the customer reads")
    text.add_argument("--text-file", metavar="FILE", help="read the text from FILE ('-': stdin)")
    p.add_argument("--channel", choices=["email", "sms", "whatsapp", "telegram", "wechat"],
                   help="another identity of the ticket's contact (default: the channel of "
                        "its latest message)")
    p.add_argument("--resolution", action="store_true",
                   help="this reply resolves the ticket and asks for a rating")
    p.add_argument("--key", help="Idempotency-Key (default: a new one, printed; pass it again "
                                 "to retry without sending twice)")
    p.add_argument("--url", help="the gateway's base URL (default: server.public_url, else "
                                 "http://<server.listen>)")


def run(config: Config, args: argparse.Namespace) -> int:
    """Post the reply; print the answer (JSON) and return 0 on 202, 1 when refused, 3 when the
    gateway cannot be reached."""
    if args.text_file:
        with open(0 if args.text_file == "-" else args.text_file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.text
    body: dict[str, object] = {"text": text}
    if args.channel:
        body["channel"] = args.channel
    if args.resolution:
        body["resolution"] = True
    raw = json.dumps(body, ensure_ascii=False).encode()
    key = args.key or uuid.uuid4().hex
    if not args.key:
        print(f"Idempotency-Key: {key}", file=sys.stderr)
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    secret = resolve_secret(config.replies.secret_env, config.replies.secret_file,
                            key="replies.secret")
    if secret is None and config.replies.secret_env is None and config.replies.secret_file \
            is None:
        api = config.adapters.get("api", {})
        secret = resolve_secret(api.get("secret_env"), api.get("secret_file"),
                                key="adapters.api.secret")
    base = (args.url or config.server.public_url or f"http://{config.server.listen}").rstrip("/")
    url = f"{base}/v1/tickets/{urllib.parse.quote(args.number, safe='')}/replies"
    for attempt in range(2):
        if secret is not None:
            ts = str(int(time.time()))
            headers |= {"X-Intake-Timestamp": ts,
                        "X-Intake-Signature": sign_request(secret, ts, raw)}
        request = urllib.request.Request(url, data=raw, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                print(resp.read().decode())
                return 0
        except urllib.error.HTTPError as exc:
            if exc.code == 409 and attempt == 0 and secret is not None:
                # The same body signed in the same second is the same signature, which the
                # replay guard takes once: sign afresh in the next second (same key).
                time.sleep(1.05 - time.time() % 1)
                continue
            print(f"intake-gateway: the reply was refused ({exc.code}): "
                  f"{exc.read().decode(errors='replace')}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as exc:
            print(f"intake-gateway: cannot reach the gateway at {base}: {exc}", file=sys.stderr)
            return 3
    return 1

"""A gateway configuration that serves every HTTP route there is, for the OpenAPI tests."""

from __future__ import annotations

from pathlib import Path

TELEGRAM_SECRET = "telegram-secret-token"
SECRETS = {"twilio": "twilio-auth-token", "telegram": "123456:bot-token",
           "telegram-secret": TELEGRAM_SECRET, "wechat": "wechat-token", "hook": "hook-secret",
           "api": "api-secret", "webchat": "webchat-session-secret-for-the-openapi-tests"}
WEBCHAT_SITE = "openapi-site"


def every_route_config(secrets: Path, *, head: str = "", form_rate_limit: int = 5) -> str:
    """TOML enabling every adapter with HTTP routes; secrets written as files under ``secrets``.

    ``head`` is TOML put first (a ``[server]`` table)."""
    secrets.mkdir(parents=True, exist_ok=True)
    for name, value in SECRETS.items():
        (secrets / name).write_text(value)
    return head + f"""
[adapters.webform]
rate_limit = {form_rate_limit}
[adapters.smtp]
enabled = false
[adapters.imap]
enabled = false
[adapters.mailer]
enabled = false
[adapters.twilio]
enabled = true
account_sid = "AC{"0" * 32}"
auth_token_file = "{secrets / "twilio"}"
sms_from = "+8613800000000"
[adapters.telegram]
enabled = true
mode = "webhook"
token_file = "{secrets / "telegram"}"
secret_token_file = "{secrets / "telegram-secret"}"
register_webhook = false
api_base_url = "http://127.0.0.1:9"
[adapters.wechat]
enabled = true
token_file = "{secrets / "wechat"}"
[adapters.webhook]
enabled = true
[[adapters.webhook.sources]]
name = "reviews"
signature = "hmac-sha256-hex"
secret_file = "{secrets / "hook"}"
mapping = {{ text = "body", email = "email" }}
[adapters.webchat]
enabled = true
session_secret_file = "{secrets / "webchat"}"
session_rate = 100000
message_rate = 100000
ip_message_rate = 100000
[[adapters.webchat.sites]]
key = "{WEBCHAT_SITE}"
allow_apps = true
allowed_origins = ["http://127.0.0.1"]
"""

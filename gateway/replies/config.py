"""``[replies]``: how downstream replies are authenticated, sent, retried and limited."""

from __future__ import annotations

from typing import Literal

import msgspec


class ReplyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[replies]``; every key is documented in ``deploy/gateway.example.toml``."""

    enabled: bool = True
    secret_env: str | None = None
    """Environment variable with the HMAC-SHA256 secret requests are signed with (as the signed
    API's: ``X-Intake-Timestamp``, ``X-Intake-Signature``). Required off loopback; unset, the
    signed API's secret (``adapters.api.secret_env``) is used when there is one."""
    secret_file: str | None = None
    replay_window: str = "5m"
    max_text_chars: int = 20_000
    max_attempts: int = 8
    """Transient failures before a reply is given up (``reply.failed``)."""
    max_backoff: float = 300.0
    per_recipient_limit: int = 30
    """Most replies one recipient gets per window: the last line against a looping consumer."""
    per_recipient_window: float = 3600.0
    window_fallback: Literal["template", "sms", "template_then_sms", "none"] = \
        "template_then_sms"
    """Outside WhatsApp's 24 h or WeChat's 48 h customer-service window: the approved template
    the adapter is configured with, or SMS to the contact's phone, or both in that order."""
    quiet_hours: bool = True
    """SMS outside the business calendar (``[calendar]``) waits for the next opening, unless
    the ticket is high priority."""
    satisfaction: bool = True
    """A ``resolution`` reply asks for a rating 1 to 5; the answer becomes ``ticket.rated``."""
    rating_link: bool = True
    """The question also carries a signed link to a one-question page (``/v1/ratings/…``), when
    replies have a signing secret (the link's key is derived from it)."""
    rating_window: float = 604_800.0
    """Seconds after a resolution within which a bare 1 to 5 from the contact is its rating."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_backoff <= 0 or self.per_recipient_limit < 1:
            raise ValueError("replies: max_attempts >= 1, max_backoff > 0, "
                             "per_recipient_limit >= 1")

"""``[adapters.webchat]``: the sites that embed the widget, limits, push senders."""

from __future__ import annotations

import msgspec


class SiteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[adapters.webchat.sites]]``: one website or app that embeds the chat."""

    key: str
    """The public site key written in the ``<script>`` tag (8-64 of ``A-Z a-z 0-9 _ -``)."""
    name: str = ""
    """Shown in the widget's header."""
    allowed_origins: list[str] = []
    """Origins (``https://shop.example.com``) whose pages may open the chat. A browser request
    from any other origin is refused with 403."""
    allow_apps: bool = False
    """Accept requests that carry no ``Origin`` header: mobile apps and servers. Browsers always
    send one, so this does not open the chat to other websites."""
    identity_secret_env: str | None = None
    """The site's secret for signed identities (HMAC-SHA256 of user id and email)."""
    identity_secret_file: str | None = None
    color: str = "#1f6feb"
    """The widget's accent colour (``#rrggbb``)."""


class PushConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.webchat.push]``: app notifications for acknowledgements and replies."""

    webhook_url: str | None = None
    """The operator's push service: events POSTed as signed Standard Webhooks."""
    webhook_secret_env: str | None = None
    """``whsec_<base64>`` secret the webhook is signed with."""
    webhook_secret_file: str | None = None
    fcm_project_id: str | None = None
    """Firebase project: FCM HTTP v1 is used for devices registered as ``fcm``."""
    fcm_credentials_file: str | None = None
    """The service account JSON (``client_email``, ``private_key``, ``token_uri``)."""
    fcm_api_base: str = "https://fcm.googleapis.com"
    timeout: float = 10.0


class WebchatConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.webchat]``."""

    enabled: bool = False
    """Off until a site is configured."""
    path: str = "/webchat"
    session_secret_env: str | None = None
    """The key visitor session tokens are signed with (at least 32 bytes)."""
    session_secret_file: str | None = None
    session_ttl: str = "30d"
    sites: list[SiteConfig] = []
    max_message_chars: int = 4000
    max_frame_bytes: int = 65_536
    """Largest WebSocket frame and JSON body taken (a message with its fields)."""
    max_upload_bytes: int = 10_485_760
    max_attachments: int = 5
    message_rate: int = 20
    """Messages per ``rate_window`` from one session."""
    ip_message_rate: int = 120
    """Messages per ``rate_window`` from one client address (an IPv6 /64)."""
    session_rate: int = 10
    """New sessions per ``rate_window`` from one client address."""
    rate_window: str = "1m"
    max_connections_per_ip: int = 50
    auth_timeout: str = "10s"
    """A WebSocket that has not authenticated within this is closed."""
    heartbeat: str = "30s"
    history_limit: int = 500
    """Entries kept per conversation (the oldest are dropped)."""
    reply_fallback_delay: str = "10m"
    """A reply not seen in the chat within this goes to the visitor's email or phone."""
    reply_fallback: list[str] = msgspec.field(default_factory=lambda: ["email", "sms"])
    """The channels an unseen reply is forwarded on, tried in order: each where the visitor
    gave that address in this session's pre-chat (or the site signed the email) and an
    enabled adapter sends replies on it. ``[]`` turns the forward off (the push webhook's
    ``webchat.reply.fallback`` remains, when configured)."""
    trust_forwarded_for: bool = False
    """Count the last ``X-Forwarded-For`` hop (only behind our own reverse proxy)."""
    default_region: str = "CN"
    push: PushConfig = PushConfig()

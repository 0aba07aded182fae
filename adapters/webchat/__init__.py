"""Live chat on the company's own site and app: widget, session tokens, WebSocket + HTTP."""

from intake_adapters.webchat.adapter import DeliveryResult, ReplyFallback, WebchatAdapter
from intake_adapters.webchat.config import PushConfig, SiteConfig, WebchatConfig

__all__ = ["DeliveryResult", "PushConfig", "ReplyFallback", "SiteConfig", "WebchatAdapter",
           "WebchatConfig"]

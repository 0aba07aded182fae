"""The public web form (``adapters.webform:WebformAdapter``); its pages and texts: templates/."""

from intake_adapters.webform.adapter import (
    FIELD_LIMITS,
    ClientRateLimiter,
    WebformAdapter,
    WebformConfig,
    client_key,
    negotiate_locale,
)

__all__ = ["FIELD_LIMITS", "ClientRateLimiter", "WebformAdapter", "WebformConfig", "client_key",
           "negotiate_locale"]

"""The generic signed JSON webhook (``adapters.webhook:WebhookAdapter``).

Configured per platform in ``[[adapters.webhook.sources]]``: a signature scheme
(:mod:`adapters.webhook.signatures`), an idempotency path and a mapping of payload paths onto
the schema (:mod:`adapters.webhook.mapping`). The worked example of ``docs/integrators.md``.
"""

from intake_adapters.webhook.adapter import SignatureReplayed, Source, WebhookAdapter
from intake_adapters.webhook.config import MappingConfig, SourceConfig, WebhookConfig
from intake_adapters.webhook.mapping import Path, PayloadMismatch
from intake_adapters.webhook.signatures import SCHEMES, BodyHmac, StandardWebhooks, Verified

__all__ = ["SCHEMES", "BodyHmac", "MappingConfig", "Path", "PayloadMismatch",
           "SignatureReplayed", "Source", "SourceConfig", "StandardWebhooks", "Verified",
           "WebhookAdapter", "WebhookConfig"]

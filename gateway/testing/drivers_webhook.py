"""Contract-suite driver of the generic signed JSON webhook (``adapters.webhook``).

It posts as a Standard Webhooks sender does: ``webhook-id`` (the delivery id, the same on every
attempt), ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``"{id}.{timestamp}.{body}"`` with the key inside the ``whsec_`` secret. The signing is written
here again, independently of the adapter's, so that the suite checks the adapter against the
specification rather than against itself. The secret is put into the environment under an
``INTAKE_CONTRACT_*`` name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from typing import ClassVar

import aiohttp

from gateway.testing.drivers import Customer, Delivery

__all__ = ["WebhookDriver", "standard_webhooks_headers"]

_KEY = b"contract-webhook-signing-key-32by"
SECRET = "whsec_" + base64.b64encode(_KEY).decode()
"""The source's secret as a Standard Webhooks platform shows it."""


def standard_webhooks_headers(secret: str, msg_id: str, timestamp: int,
                              body: bytes) -> dict[str, str]:
    """The three headers a Standard Webhooks sender adds to ``body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json"}


class WebhookDriver:
    """A review platform's ``message.created`` events, posted to ``/webhooks/contract``."""

    kind: ClassVar[str] = "webhook"
    verified: ClassVar[bool] = True
    """The source keeps the default ``identities_verified = true``."""
    path: ClassVar[str] = "/webhooks/contract"

    def __init__(self) -> None:
        self._attempts: dict[str, int] = {}

    def config_toml(self) -> str:
        os.environ["INTAKE_CONTRACT_WEBHOOK_SECRET"] = SECRET
        return ("[adapters.webhook]\nenabled = true\n"
                "[[adapters.webhook.sources]]\n"
                'name = "contract"\n'
                'secret_env = "INTAKE_CONTRACT_WEBHOOK_SECRET"\n'
                'signature = "standard-webhooks"\n'
                "[adapters.webhook.sources.mapping]\n"
                'text = "data.message.body"\n'
                'name = "data.author.name"\n'
                'email = "data.author.email"\n'
                'ticket_number = "data.message.ticket"\n')

    async def _post(self, session: aiohttp.ClientSession, base_url: str, body: bytes,
                    msg_id: str) -> tuple[int, dict[str, object]]:
        # Each attempt is signed afresh with its own timestamp, as the spec asks of retries
        # (a second attempt within the same second would otherwise repeat the signature).
        attempt = self._attempts.get(msg_id, 0)
        self._attempts[msg_id] = attempt + 1
        headers = standard_webhooks_headers(SECRET, msg_id, int(time.time()) - attempt, body)
        async with session.post(base_url + self.path, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        message: dict[str, object] = {"body": text}
        if ticket_number:
            message["ticket"] = ticket_number
        body = json.dumps({"type": "message.created", "data": {
            "message": message, "author": {"name": customer.key, "email": customer.email}}})
        status, answer = await self._post(session, base_url, body.encode(), delivery_id)
        number = answer.get("ticket_number")
        return Delivery(status=status, ticket_number=number if isinstance(number, str) else None)

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        # Correctly signed, but the event carries no data.message.body.
        body = json.dumps({"type": "message.created",
                           "data": {"author": {"email": "someone@example.org"}}})
        status, _ = await self._post(session, base_url, body.encode(), f"malformed-{time.time()}")
        return status

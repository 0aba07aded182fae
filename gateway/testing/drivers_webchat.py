"""Contract-suite driver of the live chat (``adapters.webchat``), over its HTTP fallback.

Each test customer is one anonymous visitor session (``POST /webchat/v1/sessions``), opened the
first time the customer writes; each message is ``POST /webchat/v1/messages`` with the delivery
id as the message's ``client_id``, and the ticket number is read from the entry the chat shows.
A ticket number to follow up on is typed into the text, as a visitor would.

As for the other chat channels, ``[intake] chat_followup_window = "0s"``: with a window the
suite's "same content again is a duplicate" would be a follow-up (the window is tested in
``tests/test_webchat.py``). The session secret is put into the environment.
"""

from __future__ import annotations

import os
from typing import ClassVar

import aiohttp

from gateway.testing.drivers import Customer, Delivery

__all__ = ["SITE", "WebchatDriver", "webchat_toml"]

SITE = "contract-site"
SESSION_SECRET = "contract-webchat-session-secret-0123456789"


def webchat_toml(*, site: str = SITE, extra: str = "", site_extra: str = "") -> str:
    """An ``[adapters.webchat]`` table with one site that accepts app (no-Origin) requests."""
    os.environ["INTAKE_CONTRACT_WEBCHAT_SECRET"] = SESSION_SECRET
    return ("[adapters.webchat]\nenabled = true\n"
            'session_secret_env = "INTAKE_CONTRACT_WEBCHAT_SECRET"\n' + extra +
            f'[[adapters.webchat.sites]]\nkey = "{site}"\nallow_apps = true\n'
            'allowed_origins = ["http://127.0.0.1"]\n' + site_extra)


class WebchatDriver:
    """A mobile app speaking the webchat protocol over HTTP."""

    kind: ClassVar[str] = "webchat"
    verified: ClassVar[bool] = True
    """The only identity of an anonymous visitor is its session's own id, which the adapter
    minted and vouches for (``webchat-session``); what the visitor types is never an identity."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def config_toml(self) -> str:
        return '[intake]\nchat_followup_window = "0s"\n' + webchat_toml()

    async def _token(self, session: aiohttp.ClientSession, base_url: str,
                     customer: Customer) -> str:
        token = self._tokens.get(customer.key)
        if token is None:
            async with session.post(f"{base_url}/webchat/v1/sessions", json={
                    "site": SITE, "locale": "en", "name": customer.key,
                    "email": customer.email}) as resp:
                resp.raise_for_status()
                token = str((await resp.json())["token"])
            self._tokens[customer.key] = token
        return token

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        token = await self._token(session, base_url, customer)
        if ticket_number:
            text = f"{text} ({ticket_number})"
        async with session.post(f"{base_url}/webchat/v1/messages",
                                json={"client_id": delivery_id, "text": text},
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            data = await resp.json()
            entry = data.get("entry") or {}
            number = entry.get("ticket_number")
            return Delivery(status=resp.status,
                            ticket_number=number if isinstance(number, str) else None)

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        token = await self._token(session, base_url, Customer(key="malformed"))
        async with session.post(f"{base_url}/webchat/v1/messages", data=b'{"client_id": 5',
                                headers={"Authorization": f"Bearer {token}",
                                         "Content-Type": "application/json"}) as resp:
            return resp.status

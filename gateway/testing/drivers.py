"""Channel drivers: how the contract suite speaks to each adapter as a customer would.

A driver is registered under the ``intake_gateway.drivers`` entry-point group with the same kind
as its adapter. It knows its channel's wire protocol and nothing of the gateway's internals.
"""

from __future__ import annotations

import hashlib
import re
from typing import ClassVar, Protocol

import aiohttp
import msgspec

from gateway.numbering import NumberingConfig, TicketNumbering


class Customer(msgspec.Struct, frozen=True):
    """A test customer; drivers derive the identity their channel uses from ``key``."""

    key: str

    @property
    def email(self) -> str:
        return f"{self.key}@customers.example.org"

    @property
    def phone(self) -> str:
        digits = int(hashlib.sha256(self.key.encode()).hexdigest(), 16) % 10**8
        return f"+86139{digits:08d}"


class Delivery(msgspec.Struct, frozen=True):
    """What the customer saw: the provider's status and the ticket number they were told."""

    status: int
    ticket_number: str | None


class ChannelDriver(Protocol):
    """The contract suite's view of one channel."""

    kind: ClassVar[str]
    verified: ClassVar[bool]
    """True when the channel vouches for the customer's identity (a signed webhook, the mail
    sender); False when it only carries what the customer typed (``Contact.verified_by`` None).
    Claims never learn another ticket's number: the suite expects their repeats to open a ticket
    of their own that names the first in ``hinted_tickets``."""

    def config_toml(self) -> str:
        """Config the gateway under test needs for this adapter (enabled, fake secrets...)."""
        ...

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        """Deliver one message as the provider would; ``delivery_id`` is the provider's id."""
        ...

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        """Deliver something broken; return the status the provider got (must be 4xx)."""
        ...


_numbers = TicketNumbering(NumberingConfig())


def first_number(text: str) -> str | None:
    """The first valid ticket number (default mask) in ``text``."""
    found = _numbers.find_in(text)
    return found[0] if found else None


class ApiDriver:
    """``POST /v1/messages`` with an Idempotency-Key."""

    kind: ClassVar[str] = "api"
    verified: ClassVar[bool] = False

    def config_toml(self) -> str:
        return ""

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        body = {"contact": {"email": customer.email}, "text": text}
        if ticket_number:
            body["ticket_number"] = ticket_number
        async with session.post(f"{base_url}/v1/messages", json=body,
                                headers={"Idempotency-Key": delivery_id}) as resp:
            data = await resp.json()
            return Delivery(status=resp.status, ticket_number=data.get("ticket_number"))

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        async with session.post(f"{base_url}/v1/messages", data=b'{"contact": {"email": 5}',
                                headers={"Content-Type": "application/json"}) as resp:
            return resp.status


class WebformDriver:
    """The web form, posted as a browser without JavaScript would."""

    kind: ClassVar[str] = "webform"
    verified: ClassVar[bool] = False

    def config_toml(self) -> str:
        return "[adapters.webform]\nrate_limit = 1000\n"

    async def send(self, session: aiohttp.ClientSession, base_url: str, *, customer: Customer,
                   text: str, delivery_id: str, ticket_number: str | None = None) -> Delivery:
        form = aiohttp.FormData()
        for name, value in (("lang", "en"), ("form_token", delivery_id), ("name", customer.key),
                            ("email", customer.email), ("message", text),
                            ("ticket_number", ticket_number or ""), ("website", "")):
            form.add_field(name, value)
        async with session.post(f"{base_url}/form", data=form) as resp:
            page = await resp.text()
            return Delivery(status=resp.status, ticket_number=_number_on_page(page))

    async def send_malformed(self, session: aiohttp.ClientSession, base_url: str) -> int:
        form = aiohttp.FormData()
        form.add_field("lang", "en")
        form.add_field("message", "no way to reach me")
        async with session.post(f"{base_url}/form", data=form) as resp:
            return resp.status


def _number_on_page(page: str) -> str | None:
    # The receipt page marks the number; fall back to the first valid number in the text.
    marked = re.search(r'data-ticket-number="([^"]+)"', page)
    return marked.group(1) if marked else first_number(page)

"""The adapter contract suite: every registered adapter must pass it.

Each test is written once against :class:`~gateway.testing.drivers.ChannelDriver` and runs for
every adapter registered under ``intake_gateway.adapters`` (its driver is found under
``intake_gateway.drivers`` by the same kind). An integrator who installs an adapter and its driver
runs the suite unchanged::

    # tests/test_my_adapter_contract.py
    from gateway.testing.adapter_contract import *  # noqa: F403

What it checks, through the adapter's real wire protocol and the gateway's event feed: a new
message makes one ticket and one ``ticket.created``; a re-delivery is answered with the same
number and writes nothing; the same content again is a duplicate of the first ticket; a ticket
number from its own contact is a follow-up and from anyone else opens a new ticket (a channel
whose identities are only claims repeats into a ticket of its own, naming the first); malformed
input gets a 4xx and writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path

import aiohttp
import pytest

from gateway.plugin import ADAPTER_GROUP, DRIVER_GROUP
from gateway.runtime import Gateway
from gateway.testing.drivers import ChannelDriver, Customer
from gateway.testing.harness import read_events, running_gateway

__all__ = [
    "contract_gateway",
    "driver",
    "test_every_adapter_has_a_driver",
    "test_malformed_input_is_refused_and_writes_nothing",
    "test_new_message_creates_one_ticket",
    "test_redelivery_is_replayed",
    "test_same_content_again_is_a_duplicate",
    "test_ticket_number_from_a_stranger_opens_a_new_ticket",
    "test_ticket_number_from_its_contact_is_a_followup",
    "test_ticket_number_in_the_text_from_its_contact_is_a_followup",
]


def _adapter_kinds() -> list[str]:
    # Adapters that only send (``receives = False``, e.g. an outgoing mail relay) take no input.
    return sorted({ep.name for ep in entry_points(group=ADAPTER_GROUP)
                   if ep.load().receives})


def _drivers() -> dict[str, type[ChannelDriver]]:
    return {ep.name: ep.load() for ep in entry_points(group=DRIVER_GROUP)}


@pytest.fixture(params=_adapter_kinds())
def driver(request: pytest.FixtureRequest) -> ChannelDriver:
    """The driver of one registered adapter."""
    cls = _drivers().get(request.param)
    if cls is None:
        pytest.fail(f"adapter {request.param!r} has no driver in {DRIVER_GROUP}")
    return cls()


@pytest.fixture
async def contract_gateway(driver: ChannelDriver, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway configured as the driver asks."""
    async with running_gateway(driver.config_toml(), tmp_path / "gw") as gw:
        yield gw


def _id() -> str:
    return uuid.uuid4().hex


async def _events(gw: Gateway) -> list[dict[str, object]]:
    """The ticket events; ``ack.*`` events of outbox channels are not what the suite counts."""
    async with aiohttp.ClientSession() as s:
        events = await read_events(s, gw.url, token=gw.events_token)
    return [e for e in events if str(e["type"]).startswith("ticket.")]


def test_every_adapter_has_a_driver() -> None:
    """An adapter without a driver cannot be checked, so it fails the suite."""
    missing = set(_adapter_kinds()) - set(_drivers())
    assert not missing, f"adapters without a driver: {sorted(missing)}"


async def test_new_message_creates_one_ticket(driver: ChannelDriver,
                                              contract_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        got = await driver.send(s, contract_gateway.url, customer=Customer(key=_id()),
                                text="My router has no internet since this morning.",
                                delivery_id=_id())
    assert got.status < 300, got
    assert got.ticket_number and contract_gateway.intake.numbering.parse(got.ticket_number)
    events = await _events(contract_gateway)
    assert [(e["type"], e["subject"]) for e in events] == [("ticket.created", got.ticket_number)]


async def test_redelivery_is_replayed(driver: ChannelDriver, contract_gateway: Gateway) -> None:
    customer, delivery = Customer(key=_id()), _id()
    async with aiohttp.ClientSession() as s:
        first = await driver.send(s, contract_gateway.url, customer=customer,
                                  text="Please cancel order 1234.", delivery_id=delivery)
        again = await driver.send(s, contract_gateway.url, customer=customer,
                                  text="Please cancel order 1234.", delivery_id=delivery)
    assert again.status < 300 and again.ticket_number == first.ticket_number
    assert len(await _events(contract_gateway)) == 1, "a re-delivery must write nothing"


async def test_same_content_again_is_a_duplicate(driver: ChannelDriver,
                                                 contract_gateway: Gateway) -> None:
    customer = Customer(key=_id())
    async with aiohttp.ClientSession() as s:
        first = await driver.send(s, contract_gateway.url, customer=customer,
                                  text="The invoice for May is wrong.", delivery_id=_id())
        again = await driver.send(s, contract_gateway.url, customer=customer,
                                  text="  the INVOICE for May   is wrong. ", delivery_id=_id())
    events = await _events(contract_gateway)
    if driver.verified:
        assert again.ticket_number == first.ticket_number
        assert [e["type"] for e in events] == ["ticket.created", "ticket.duplicate_received"]
        return
    # A claim could be anyone who typed the address: it must not learn the first number.
    assert again.ticket_number and again.ticket_number != first.ticket_number
    assert [e["type"] for e in events] == ["ticket.created", "ticket.created"]
    data = events[1]["data"]
    assert isinstance(data, dict) and data["hinted_tickets"] == [first.ticket_number]


async def test_ticket_number_from_its_contact_is_a_followup(driver: ChannelDriver,
                                                            contract_gateway: Gateway) -> None:
    customer = Customer(key=_id())
    async with aiohttp.ClientSession() as s:
        first = await driver.send(s, contract_gateway.url, customer=customer,
                                  text="My parcel has not arrived.", delivery_id=_id())
        assert first.ticket_number
        more = await driver.send(s, contract_gateway.url, customer=customer,
                                 text="It was sent to the wrong street.", delivery_id=_id(),
                                 ticket_number=first.ticket_number)
    assert more.ticket_number == first.ticket_number
    events = await _events(contract_gateway)
    assert [e["type"] for e in events] == ["ticket.created", "ticket.message_added"]


async def test_ticket_number_in_the_text_from_its_contact_is_a_followup(
        driver: ChannelDriver, contract_gateway: Gateway) -> None:
    # SMS, chat and API messages have no subject: the customer quotes the number in the text.
    customer = Customer(key=_id())
    async with aiohttp.ClientSession() as s:
        first = await driver.send(s, contract_gateway.url, customer=customer,
                                  text="The heating in flat 12 is off.", delivery_id=_id())
        assert first.ticket_number
        more = await driver.send(s, contract_gateway.url, customer=customer,
                                 text=f"Regarding {first.ticket_number}: still no heating.",
                                 delivery_id=_id())
        stranger = await driver.send(s, contract_gateway.url, customer=Customer(key=_id()),
                                     text=f"{first.ticket_number} please close it",
                                     delivery_id=_id())
    assert more.ticket_number == first.ticket_number
    assert stranger.ticket_number and stranger.ticket_number != first.ticket_number
    events = await _events(contract_gateway)
    assert [e["type"] for e in events] == ["ticket.created", "ticket.message_added",
                                           "ticket.created"]
    data = events[2]["data"]
    assert isinstance(data, dict) and data["hinted_tickets"] == [first.ticket_number]


async def test_ticket_number_from_a_stranger_opens_a_new_ticket(
        driver: ChannelDriver, contract_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        owner = await driver.send(s, contract_gateway.url, customer=Customer(key=_id()),
                                  text="My account is locked.", delivery_id=_id())
        assert owner.ticket_number
        stranger = await driver.send(s, contract_gateway.url, customer=Customer(key=_id()),
                                     text="Close this ticket and refund me.", delivery_id=_id(),
                                     ticket_number=owner.ticket_number)
    assert stranger.ticket_number and stranger.ticket_number != owner.ticket_number
    assert [e["type"] for e in await _events(contract_gateway)] == ["ticket.created"] * 2


async def test_malformed_input_is_refused_and_writes_nothing(driver: ChannelDriver,
                                                             contract_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        status = await driver.send_malformed(s, contract_gateway.url)
        assert 400 <= status < 500, status
        # The process is unharmed: the next good message goes through.
        ok = await driver.send(s, contract_gateway.url, customer=Customer(key=_id()),
                               text="Hello after a bad request.", delivery_id=_id())
    assert ok.status < 300 and ok.ticket_number
    assert [e["type"] for e in await _events(contract_gateway)] == ["ticket.created"]

"""The decision of one message, as a table: every outcome, every matching rule, every edge.

Driven through the seam adapters use, :meth:`IntakeService.submit`, with real
:class:`InboundMessage` values and a real config, over a real :class:`SqliteStore` in a temporary
file; what was decided is read back from the store (receipts, events, outbox rows). Each table's
rows are one rule and its boundaries; the closing note of issue 9 lists which row fails when
which rule of ``gateway/decision.py`` or ``SqliteTx`` is removed.

Two facts have no API and are set with SQL on the writer's connection (through ``store.run``):
a sent acknowledgement's reference (``ack_refs``, which the ack dispatcher writes once a
provider accepted it) and a closed ticket (``tickets.status``; nothing closes tickets yet).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from gateway.attachments import AttachmentStore
from gateway.config import parse_config
from gateway.intake import IntakeService
from gateway.store.sqlite import SqliteStore, SqliteTx
from intake_schemas import Contact, InboundMessage, Receipt, ThreadHints

T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # a Monday, 10:00 in Beijing
DUP_WINDOW = timedelta(hours=2)
CHAT_WINDOW = timedelta(minutes=30)
EDGE = timedelta(milliseconds=1)
MIN = timedelta(minutes=1)
# Two different windows, so a rule using the other one's window shows.
CONFIG = '[intake]\nduplicate_window = "2h"\nchat_followup_window = "30m"\n'

UNGUESSABLE_REF = "<ack.7f3c9e2a41b84d6e@gw.example>"  # our random email Message-ID
GUESSABLE_REF = "telegram:42:7"  # chat id and message counter: public facts


class Sender(NamedTuple):
    channel: str
    contact: Contact
    conversational: bool = False


OWNER_MAIL = Sender("smtp", Contact(email="owner@example.org", verified_by="smtp"))
OWNER_API = Sender("api", Contact(email="owner@example.org", verified_by="api-signature"))
OWNER_CLAIM = Sender("webform", Contact(email="owner@example.org"))  # typed, not proven
STRANGER_MAIL = Sender("smtp", Contact(email="stranger@example.org", verified_by="smtp"))
STRANGER_CLAIM = Sender("webform", Contact(email="stranger@example.org"))
OWNER_CHAT = Sender("telegram", Contact(chat_ids={"telegram": "42"}, verified_by="telegram"),
                    conversational=True)
OWNER_CHAT_CLAIM = Sender("api", Contact(chat_ids={"telegram": "42"}), conversational=True)
OWNER_CHAT_NOT_CONVERSATIONAL = OWNER_CHAT._replace(conversational=False)
STRANGER_CHAT = Sender("telegram", Contact(chat_ids={"telegram": "43"}, verified_by="telegram"),
                       conversational=True)

FIRST_TEXT = "My invoice for March charges the router twice."
OTHER_TEXT = "Any news? I am still waiting for an answer."


def message(sender: Sender, text: str, *, at: datetime = T0, subject: str = "",
            provider_id: str | None = None, scope: str = "", in_reply_to: str | None = None,
            ticket_number: str | None = None, auto: bool = False) -> InboundMessage:
    return InboundMessage(
        channel=sender.channel, provider_message_id=provider_id, delivery_scope=scope,
        received_at=at, contact=sender.contact, subject=subject, text=text, locale="en",
        thread=ThreadHints(in_reply_to=in_reply_to, ticket_number=ticket_number),
        conversational=sender.conversational, auto_submitted=auto)


class World:
    """A store and the intake in front of it, and the few reads the tables assert on."""

    def __init__(self, store: SqliteStore, intake: IntakeService) -> None:
        self.store = store
        self.intake = intake

    async def submit(self, msg: InboundMessage) -> Receipt:
        return await self.intake.submit(msg)

    async def sql(self, statement: str, *params: object) -> None:
        def run(tx: SqliteTx) -> None:
            tx.conn.execute(statement, params)
        await self.store.run(run)

    async def add_ref(self, number: str, ref: str, *, unguessable: bool) -> None:
        """What the ack dispatcher records once a provider took our acknowledgement."""
        await self.sql("INSERT INTO ack_refs(ref, ticket_id, unguessable)"
                       " SELECT ?, id, ? FROM tickets WHERE number = ?",
                       ref, int(unguessable), number)

    async def close(self, number: str) -> None:
        await self.sql("UPDATE tickets SET status = 'closed' WHERE number = ?", number)

    async def events(self) -> list[dict[str, Any]]:
        bodies = await self.store.read(
            lambda c: [bytes(b) for (b,) in c.execute("SELECT body FROM events ORDER BY seq")])
        return [msgspec.json.decode(b) for b in bodies]

    async def event_of(self, receipt: Receipt) -> dict[str, Any]:
        [event] = [e for e in await self.events()
                   if e["data"]["message"]["id"] == receipt.message_id]
        return event

    async def outbox_of(self, receipt: Receipt) -> list[tuple[str, str]]:
        uid = receipt.message_id
        return await self.store.read(lambda c: [tuple(r) for r in c.execute(
            "SELECT channel, recipient FROM acks WHERE message_uid = ? ORDER BY id", (uid,))])


async def open_world(path: Path, *, ack_channels: frozenset[str]) -> tuple[SqliteStore, World]:
    store = SqliteStore(path / "intake.sqlite3")
    await store.open()
    intake = IntakeService(parse_config(CONFIG), store,
                           AttachmentStore(path / "files", max_bytes=1 << 20),
                           ack_channels=ack_channels)
    return store, World(store, intake)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """Email and SMS senders configured: a claim's owner can be told at their address."""
    store, w = await open_world(tmp_path, ack_channels=frozenset({"email", "sms"}))
    yield w
    await store.close()


@pytest.fixture
async def world_without_senders(tmp_path: Path) -> AsyncIterator[World]:
    """No acknowledgement sender: nobody can tell a ticket's owner of a claim's follow-up."""
    store, w = await open_world(tmp_path, ack_channels=frozenset())
    yield w
    await store.close()


# -- 1. threading: references and ticket numbers -------------------------------------------

def wrong_check_digit(number: str) -> str:
    last = number[-1]
    return number[:-1] + str((int(last) + 1) % 10)


def pointing(world: World, sender: Sender, how: str, number: str) -> InboundMessage:
    """The second message: ``sender`` points at the first ticket (``number``) by ``how``."""
    at = T0 + 10 * MIN
    if how == "ref-unguessable":
        return message(sender, OTHER_TEXT, at=at, in_reply_to=UNGUESSABLE_REF)
    if how == "ref-guessable":
        return message(sender, OTHER_TEXT, at=at, in_reply_to=GUESSABLE_REF)
    if how == "ref-unknown":
        return message(sender, OTHER_TEXT, at=at, in_reply_to="<someone-else@mail.example>")
    if how == "number-subject":
        return message(sender, OTHER_TEXT, at=at, subject=f"Re: [{number}] invoice")
    if how == "number-field":
        return message(sender, OTHER_TEXT, at=at, ticket_number=number)
    if how == "number-text":
        return message(sender, f"About {number}: {OTHER_TEXT}", at=at)
    if how == "number-wrong-check-digit":
        return message(sender, OTHER_TEXT, at=at, subject=f"Re: [{wrong_check_digit(number)}]")
    assert how == "number-unknown"
    # A valid number (right check digit) that no ticket has: the same day, sequence 999.
    numbering = world.intake.numbering
    unknown = numbering.format(T0.astimezone(world.intake.calendar.tz).date(), 999)
    assert unknown != number and numbering.parse(unknown) == unknown
    return message(sender, OTHER_TEXT, at=at, subject=f"Re: [{unknown}]")


THREADING = [
    # sender,        points by,                  outcome,    matched_by,      hint,  owner told
    (OWNER_MAIL,     "ref-unguessable",          "followup", "reply_header",  False, False),
    (STRANGER_MAIL,  "ref-unguessable",          "followup", "reply_header",  False, False),
    (STRANGER_CLAIM, "ref-unguessable",          "followup", "reply_header",  False, False),
    (OWNER_MAIL,     "ref-guessable",            "followup", "reply_header",  False, False),
    (STRANGER_MAIL,  "ref-guessable",            "created",  None,            True,  False),
    (OWNER_CLAIM,    "ref-guessable",            "followup", "reply_header",  False, True),
    (STRANGER_CLAIM, "ref-guessable",            "created",  None,            True,  False),
    (OWNER_MAIL,     "ref-unknown",              "created",  None,            False, False),
    (OWNER_MAIL,     "number-subject",           "followup", "ticket_number", False, False),
    (OWNER_MAIL,     "number-field",             "followup", "ticket_number", False, False),
    (OWNER_API,      "number-text",              "followup", "ticket_number", False, False),
    (OWNER_MAIL,     "number-wrong-check-digit", "created",  None,            False, False),
    (OWNER_MAIL,     "number-unknown",           "created",  None,            False, False),
    (STRANGER_MAIL,  "number-subject",           "created",  None,            True,  False),
    (STRANGER_MAIL,  "number-text",              "created",  None,            True,  False),
    (OWNER_CLAIM,    "number-field",             "followup", "ticket_number", False, True),
    (STRANGER_CLAIM, "number-field",             "created",  None,            True,  False),
]


def _name(sender: Sender) -> str:
    for name, value in globals().items():
        if value is sender and name.isupper():
            return name.lower().replace("_", "-")
    raise AssertionError(sender)


@pytest.mark.parametrize(
    ("sender", "how", "outcome", "matched_by", "hinted", "owner_told"),
    [pytest.param(*row, id=f"{_name(row[0])}:{row[1]}") for row in THREADING])
async def test_threading(world: World, sender: Sender, how: str, outcome: str,
                         matched_by: str | None, hinted: bool, owner_told: bool) -> None:
    first = await world.submit(message(OWNER_MAIL, FIRST_TEXT))
    assert first.outcome == "created" and first.ticket_number
    await world.add_ref(first.ticket_number, UNGUESSABLE_REF, unguessable=True)
    await world.add_ref(first.ticket_number, GUESSABLE_REF, unguessable=False)

    second = await world.submit(pointing(world, sender, how, first.ticket_number))

    assert second.outcome == outcome
    event = await world.event_of(second)
    if outcome == "followup":
        assert second.ticket_number == first.ticket_number
        assert event["type"] == "ticket.message_added"
        assert event["data"]["matched_by"] == matched_by
    else:
        assert second.ticket_number not in (None, first.ticket_number)
        assert event["type"] == "ticket.created"
        assert event["data"].get("hinted_tickets", []) == ([first.ticket_number] if hinted else [])
    # A claim joins only with the owner told, at the owner's own address.
    told = [("email", "owner@example.org")] if owner_told else []
    assert await world.outbox_of(second) == told


@pytest.mark.parametrize(("sender", "how"), [
    pytest.param(OWNER_CLAIM, "ref-guessable", id="owner-claim:ref-guessable"),
    pytest.param(OWNER_CLAIM, "number-field", id="owner-claim:number-field"),
])
async def test_a_claim_joins_nothing_when_the_owner_cannot_be_told(
        world_without_senders: World, sender: Sender, how: str) -> None:
    world = world_without_senders
    first = await world.submit(message(OWNER_MAIL, FIRST_TEXT))
    assert first.ticket_number
    await world.add_ref(first.ticket_number, GUESSABLE_REF, unguessable=False)
    second = await world.submit(pointing(world, sender, how, first.ticket_number))
    assert second.outcome == "created" and second.ticket_number != first.ticket_number
    event = await world.event_of(second)
    assert event["data"].get("hinted_tickets", []) == [first.ticket_number]
    assert await world.outbox_of(second) == []


# -- 2. duplicates: fingerprint, window, contact, claims -----------------------------------

SAME_WORDS = "  MY INVOICE for  march charges the router twice.  "  # case and spacing

DUPLICATES = [
    # case, first, second, text, after, outcome, hint
    ("same-text", OWNER_MAIL, OWNER_MAIL, FIRST_TEXT, MIN, "duplicate", 0),
    ("window-just-inside", OWNER_MAIL, OWNER_MAIL, FIRST_TEXT, DUP_WINDOW - EDGE, "duplicate", 0),
    ("window-just-outside", OWNER_MAIL, OWNER_MAIL, FIRST_TEXT, DUP_WINDOW + EDGE, "created", 0),
    ("same-words", OWNER_MAIL, OWNER_MAIL, SAME_WORDS, MIN, "duplicate", 0),
    ("other-text", OWNER_MAIL, OWNER_MAIL, OTHER_TEXT, MIN, "created", 0),
    ("other-channel", OWNER_MAIL, OWNER_API, FIRST_TEXT, MIN, "duplicate", 0),
    ("other-contact", OWNER_MAIL, STRANGER_MAIL, FIRST_TEXT, MIN, "created", 0),
    ("claim-repeats-claim", OWNER_CLAIM, OWNER_CLAIM, FIRST_TEXT, MIN, "created", 1),
    ("claim-repeats-owner", OWNER_MAIL, OWNER_CLAIM, FIRST_TEXT, MIN, "created", 1),
    ("chat-same-text", OWNER_CHAT, OWNER_CHAT, FIRST_TEXT, MIN, "duplicate", 0),
]


@pytest.mark.parametrize(
    ("first_sender", "sender", "text", "after", "outcome", "hinted"),
    [pytest.param(*row[1:], id=row[0]) for row in DUPLICATES])
async def test_duplicates(world: World, first_sender: Sender, sender: Sender, text: str,
                          after: timedelta, outcome: str, hinted: int) -> None:
    first = await world.submit(message(first_sender, FIRST_TEXT))
    second = await world.submit(message(sender, text, at=T0 + after))

    assert second.outcome == outcome
    event = await world.event_of(second)
    if outcome == "duplicate":
        assert second.ticket_number == first.ticket_number
        assert event["type"] == "ticket.duplicate_received"
        assert event["data"]["first_message_id"] == first.message_id
        assert second.acknowledgement is not None  # "we already have it"
    else:
        assert second.ticket_number not in (None, first.ticket_number)
        assert event["data"].get("hinted_tickets", []) == ([first.ticket_number] if hinted else [])


# -- 3. the chat window ----------------------------------------------------------------------

CHAT = [
    # case,                  second sender,                  after,              closed, outcome
    ("within",               OWNER_CHAT,                     MIN,                False, "followup"),
    ("window-just-inside",   OWNER_CHAT,                     CHAT_WINDOW - EDGE, False, "followup"),
    ("window-just-outside",  OWNER_CHAT,                     CHAT_WINDOW + EDGE, False, "created"),
    ("closed-ticket",        OWNER_CHAT,                     MIN,                True,  "created"),
    ("other-contact",        STRANGER_CHAT,                  MIN,                False, "created"),
    ("claim",                OWNER_CHAT_CLAIM,               MIN,                False, "created"),
    ("not-conversational",   OWNER_CHAT_NOT_CONVERSATIONAL,  MIN,                False, "created"),
]


@pytest.mark.parametrize(
    ("sender", "after", "closed", "outcome"),
    [pytest.param(*row[1:], id=row[0]) for row in CHAT])
async def test_chat_window(world: World, sender: Sender, after: timedelta, closed: bool,
                           outcome: str) -> None:
    first = await world.submit(message(OWNER_CHAT, FIRST_TEXT))
    assert first.ticket_number
    if closed:
        await world.close(first.ticket_number)
    second = await world.submit(message(sender, OTHER_TEXT, at=T0 + after))

    assert second.outcome == outcome
    event = await world.event_of(second)
    if outcome == "followup":
        assert second.ticket_number == first.ticket_number
        assert event["data"]["matched_by"] == "chat_window"
    else:
        assert second.ticket_number not in (None, first.ticket_number)
        assert event["data"].get("hinted_tickets", []) == []


async def test_the_chat_window_runs_from_the_last_message_not_the_first(world: World) -> None:
    first = await world.submit(message(OWNER_CHAT, FIRST_TEXT))
    later = await world.submit(message(OWNER_CHAT, OTHER_TEXT, at=T0 + CHAT_WINDOW - MIN))
    third = await world.submit(message(OWNER_CHAT, "Hello?", at=T0 + 2 * CHAT_WINDOW - 2 * MIN))
    assert (later.outcome, third.outcome) == ("followup", "followup")
    assert third.ticket_number == first.ticket_number


# -- 4. replays: the delivery key ------------------------------------------------------------

LATER = DUP_WINDOW * 10

REPLAYS = [
    # case, first, second, id, scope, text, after, outcome
    ("same-delivery", OWNER_MAIL, OWNER_MAIL, "m-1", "", FIRST_TEXT, MIN, "replayed"),
    ("same-id-other-words", OWNER_MAIL, OWNER_MAIL, "m-1", "", OTHER_TEXT, MIN, "replayed"),
    ("same-delivery-later", OWNER_MAIL, OWNER_MAIL, "m-1", "", FIRST_TEXT, LATER, "replayed"),
    ("other-sender", OWNER_MAIL, STRANGER_MAIL, "m-1", "", FIRST_TEXT, MIN, "created"),
    ("other-scope", OWNER_MAIL, OWNER_MAIL, "m-1", "box2", FIRST_TEXT, MIN, "duplicate"),
    ("other-channel", OWNER_MAIL, OWNER_API, "m-1", "", FIRST_TEXT, MIN, "duplicate"),
    ("other-id", OWNER_MAIL, OWNER_MAIL, "m-2", "", FIRST_TEXT, MIN, "duplicate"),
    ("no-id", OWNER_MAIL, OWNER_MAIL, None, "", FIRST_TEXT, MIN, "duplicate"),
    ("claim-same-delivery", OWNER_CLAIM, OWNER_CLAIM, "m-1", "", FIRST_TEXT, MIN, "replayed"),
    ("claim-other-words", OWNER_CLAIM, OWNER_CLAIM, "m-1", "", OTHER_TEXT, MIN, "created"),
    ("claim-other-sender", STRANGER_CLAIM, OWNER_CLAIM, "m-1", "", FIRST_TEXT, MIN, "created"),
]


@pytest.mark.parametrize(
    ("first_sender", "sender", "provider_id", "scope", "text", "after", "outcome"),
    [pytest.param(*row[1:], id=row[0]) for row in REPLAYS])
async def test_replays(world: World, first_sender: Sender, sender: Sender,
                       provider_id: str | None, scope: str, text: str, after: timedelta,
                       outcome: str) -> None:
    first = await world.submit(message(first_sender, FIRST_TEXT, provider_id="m-1"))
    events_before = len(await world.events())
    second = await world.submit(message(sender, text, at=T0 + after, provider_id=provider_id,
                                        scope=scope))

    assert second.outcome == outcome
    if outcome == "replayed":
        # The first receipt again, and nothing new written.
        assert (second.ticket_number, second.message_id, second.due_at) == (
            first.ticket_number, first.message_id, first.due_at)
        assert len(await world.events()) == events_before
        return
    assert second.message_id != first.message_id
    event = await world.event_of(second)
    if outcome == "duplicate":
        assert second.ticket_number == first.ticket_number
    else:
        # Another sender's key is theirs: no receipt, no number of the first sender's ticket.
        assert second.ticket_number != first.ticket_number
        assert event["type"] == "ticket.created"


# -- 5. robots: automated --------------------------------------------------------------------

AUTOMATED = [
    # case, sender, points by, text, outcome, matched_by
    ("owner-no-thread",            OWNER_MAIL,    None,              OTHER_TEXT, "automated", None),
    ("stranger-no-thread",         STRANGER_MAIL, None,              OTHER_TEXT, "automated", None),
    ("repeats-the-ticket",         OWNER_MAIL,    None,              FIRST_TEXT, "automated", None),
    ("stranger-ref-guessable",     STRANGER_MAIL, "ref-guessable",   OTHER_TEXT, "automated", None),
    ("stranger-ref-unguessable",   STRANGER_MAIL, "ref-unguessable", OTHER_TEXT, "followup",
     "reply_header"),
    ("owner-number-subject",       OWNER_MAIL,    "number-subject",  OTHER_TEXT, "followup",
     "ticket_number"),
]


@pytest.mark.parametrize(
    ("sender", "how", "text", "outcome", "matched_by"),
    [pytest.param(*row[1:], id=row[0]) for row in AUTOMATED])
async def test_automated(world: World, sender: Sender, how: str | None, text: str,
                         outcome: str, matched_by: str | None) -> None:
    first = await world.submit(message(OWNER_MAIL, FIRST_TEXT))
    assert first.ticket_number
    await world.add_ref(first.ticket_number, UNGUESSABLE_REF, unguessable=True)
    await world.add_ref(first.ticket_number, GUESSABLE_REF, unguessable=False)
    at = T0 + 10 * MIN
    thread = {"ref-guessable": {"in_reply_to": GUESSABLE_REF},
              "ref-unguessable": {"in_reply_to": UNGUESSABLE_REF},
              "number-subject": {"subject": f"Auto: [{first.ticket_number}]"}}.get(how or "", {})
    second = await world.submit(message(sender, text, at=at, auto=True, **thread))

    assert second.outcome == outcome
    assert second.acknowledgement is None  # robots are never answered
    assert await world.outbox_of(second) == []
    event = await world.event_of(second)
    if outcome == "automated":
        assert (second.ticket_number, second.priority, second.due_at) == (None, None, None)
        assert event["type"] == "message.automated"
        tickets = await world.store.read(
            lambda c: c.execute("SELECT count(*) FROM tickets").fetchone()[0])
        assert tickets == 1
    else:
        assert second.ticket_number == first.ticket_number
        assert event["data"]["matched_by"] == matched_by


async def test_created_is_numbered_acknowledged_and_published(world: World) -> None:
    receipt = await world.submit(message(OWNER_MAIL, FIRST_TEXT))
    assert receipt.outcome == "created"
    assert receipt.ticket_number and world.intake.numbering.parse(
        receipt.ticket_number) == receipt.ticket_number
    assert receipt.due_at is not None and receipt.due_at > T0
    assert receipt.acknowledgement is not None
    assert receipt.ticket_number in receipt.acknowledgement.text
    event = await world.event_of(receipt)
    assert event["type"] == "ticket.created" and event["subject"] == receipt.ticket_number

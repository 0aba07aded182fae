"""Start a real gateway in-process for tests: ``async with running_gateway(toml, dir) as gw``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec

from gateway.config import parse_config
from gateway.runtime import Gateway


@contextlib.asynccontextmanager
async def running_gateway(toml: str, data_dir: Path) -> AsyncIterator[Gateway]:
    """A gateway listening on a free loopback port with its data in ``data_dir``."""
    gw = Gateway(parse_config(toml), data_dir, listen="127.0.0.1:0")
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


class EventLine(msgspec.Struct, frozen=True):
    """One entry of ``GET /v1/events``: its sequence and the raw CloudEvent."""

    seq: int
    event: msgspec.Raw


class EventPage(msgspec.Struct, frozen=True):
    next: int
    events: list[EventLine]


async def read_events(session: aiohttp.ClientSession, base_url: str, *, after: int = 0,
                      token: str | None = None) -> list[dict[str, object]]:
    """Every event after ``after`` from the embedded feed, decoded to dicts, oldest first."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: list[dict[str, object]] = []
    while True:
        async with session.get(f"{base_url}/v1/events", params={"after": after, "limit": 1000},
                               headers=headers) as resp:
            resp.raise_for_status()
            page = msgspec.json.decode(await resp.read(), type=EventPage)
        out.extend(msgspec.json.decode(line.event) for line in page.events)
        if not page.events:
            return out
        after = page.next


async def outbox_settled(gw: Gateway, *, timeout: float = 10.0) -> None:
    """Wait until no acknowledgement is pending in the outbox (each is sent, failed or suppressed).

    The condition to wait on before asserting that something was *not* sent: the dispatcher
    marks a row only after its provider took it (or refused it), so once nothing is pending
    every acknowledgement that will ever go out already has, and a retry scheduled for later
    keeps its row pending (this then times out, which is the right failure).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await gw.store.next_ack_attempt() is not None:  # None: no row is pending
        assert loop.time() < deadline, f"acknowledgements still pending after {timeout} s"
        await asyncio.sleep(0.02)

"""Many visitors at once on the chat's WebSocket: every message answered with a ticket number.

The default suite runs a small crowd (``INTAKE_WEBCHAT_LOAD_VISITORS``, default 60, three
messages each) in a few seconds; ``bench/webchat_load.py`` runs 1,000 against a separate gateway
process and measures memory per idle connection and CPU per message.
"""

from __future__ import annotations

import os

from gateway.testing.drivers_webchat import Visitors, load_toml
from gateway.testing.harness import read_events
from tests.conftest import MakeGateway

VISITORS = int(os.environ.get("INTAKE_WEBCHAT_LOAD_VISITORS", "60"))
MESSAGES = 3


async def test_a_crowd_of_visitors_is_answered(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(
        f"[server]\nmax_connections = {VISITORS + 100}\n" + load_toml(VISITORS))
    async with Visitors(gw.url, VISITORS) as crowd:
        await crowd.open_sessions()
        await crowd.connect()
        result = await crowd.chat(MESSAGES)
        assert crowd.http is not None
        events = await read_events(crowd.http, gw.url)
    assert result.errors == []
    assert result.sent == result.answered == VISITORS * MESSAGES
    # Each visitor's first message opens its ticket and the next ones follow up on it.
    assert result.tickets == VISITORS
    kinds = [e["type"] for e in events if not str(e["type"]).startswith("ack.")]
    assert kinds.count("ticket.created") == VISITORS
    assert kinds.count("ticket.message_added") == VISITORS * (MESSAGES - 1)

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

import asyncio
import os
import uuid
from typing import ClassVar

import aiohttp
import msgspec

from gateway.testing.drivers import Customer, Delivery

__all__ = ["SITE", "LoadResult", "Visitors", "WebchatDriver", "load_toml", "webchat_toml"]

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


# -- load: many visitors at once, over the WebSocket ---------------------------------------------


class LoadResult(msgspec.Struct, kw_only=True):
    """What :func:`chat_load` saw: every message must be answered with a ticket number."""

    visitors: int
    sent: int = 0
    answered: int = 0
    errors: list[str] = []
    tickets: int = 0
    """Distinct ticket numbers told (a visitor's later messages follow up on its first)."""


class Visitors:
    """``n`` visitors of ``site`` with a session each and, after :meth:`connect`, an open and
    authenticated WebSocket each; :meth:`chat` has each send ``k`` messages one after another,
    waiting for the answer to each."""

    def __init__(self, base_url: str, n: int, *, site: str = SITE) -> None:
        self.base_url, self.n, self.site = base_url, n, site
        self.tokens: list[str] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Visitors:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    async def open_sessions(self, concurrency: int = 50) -> None:
        assert self.http is not None
        http = self.http
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> str:
            async with gate, http.post(f"{self.base_url}/webchat/v1/sessions", json={
                    "site": self.site, "locale": "en", "name": f"visitor {i}"}) as resp:
                resp.raise_for_status()
                return str((await resp.json())["token"])

        self.tokens = list(await asyncio.gather(*(one(i) for i in range(self.n))))

    async def connect(self, concurrency: int = 50) -> None:
        assert self.http is not None
        http = self.http
        gate = asyncio.Semaphore(concurrency)

        async def one(token: str) -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await http.ws_connect(f"{self.base_url}/webchat/v1/ws?site={self.site}",
                                           heartbeat=None, autoping=True)
                await ws.send_json({"type": "auth", "token": token})
                ready = await ws.receive_json(timeout=30)
                if ready.get("type") != "ready":
                    raise RuntimeError(f"not ready: {ready}")
                return ws

        self.sockets = list(await asyncio.gather(*(one(t) for t in self.tokens)))

    async def chat(self, k: int, *, timeout: float = 120.0) -> LoadResult:
        result = LoadResult(visitors=len(self.sockets))
        told: set[str] = set()

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            for m in range(k):
                cid = f"load-{i:06d}-{m:04d}-{uuid.uuid4().hex[:8]}"
                await ws.send_json({"type": "message", "client_id": cid,
                                    "text": f"Visitor {i} asks question {m}: is order "
                                            f"{100000 + i} on its way?"})
                result.sent += 1
                while True:
                    frame = await ws.receive_json(timeout=timeout)
                    if frame.get("type") == "ack" and frame.get("client_id") == cid:
                        number = (frame.get("entry") or {}).get("ticket_number")
                        if isinstance(number, str):
                            result.answered += 1
                            told.add(number)
                        else:
                            result.errors.append(f"{cid}: no ticket number")
                        break
                    if frame.get("type") == "error":
                        result.errors.append(f"{cid}: {frame}")
                        break

        outcomes = await asyncio.wait_for(asyncio.gather(
            *(one(i, ws) for i, ws in enumerate(self.sockets)), return_exceptions=True),
            timeout)
        result.errors += [repr(o) for o in outcomes if isinstance(o, BaseException)]
        result.tickets = len(told)
        return result


def load_toml(n: int) -> str:
    """The webchat table for ``n`` visitors from one address (limits far above the load)."""
    return webchat_toml(extra=(
        f"message_rate = 1000\nip_message_rate = {100 * n + 100}\n"
        f"session_rate = {n + 100}\nmax_connections_per_ip = {n + 100}\n"))

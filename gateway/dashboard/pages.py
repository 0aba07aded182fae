"""The dashboard's routes: the page, its live-updated panels, JSON, sign-in and the buttons."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from aiohttp import web

from gateway.config import DashboardConfig
from gateway.dashboard.access import DashboardAccess
from gateway.dashboard.charts import CHANNEL_COLOURS, PALETTE, hbars, stacked_bars
from gateway.dashboard.summary import OUTCOMES, Quarantined, Snapshot, take_snapshot
from gateway.errors import RejectedInput
from gateway.plugin import AdapterBase
from gateway.store.protocols import DashboardReads, DeadLetters

_TEMPLATES = Path(__file__).parent / "templates"
OUTCOME_COLOURS = {"created": "#2ca02c", "followup": "#1f77b4", "duplicate": "#ff7f0e",
                   "replayed": "#7f7f7f", "automated": "#9467bd"}
PRIORITY_COLOURS = {"high": "#d62728", "medium": "#ff7f0e", "low": "#2ca02c"}


class Dashboard:
    """The operators' view of one gateway (``[dashboard]``)."""

    def __init__(self, config: DashboardConfig, *, reads: DashboardReads, letters: DeadLetters,
                 adapters: Sequence[AdapterBase], relay_backend: str, relay_active: bool,
                 replay_dead_letters: Callable[[], Awaitable[str]], token: str | None,
                 secure_cookie: bool, at_risk_within: float,
                 timezone: str = "UTC") -> None:
        self.config = config
        self.path = config.path.rstrip("/")
        self.reads = reads
        self.letters = letters
        self.adapters = list(adapters)
        self.relay_backend = relay_backend
        self.relay_active = relay_active
        self._replay_dead_letters = replay_dead_letters
        self.access = DashboardAccess(token, path=self.path, secure_cookie=secure_cookie)
        self.at_risk_within = at_risk_within
        self.timezone = timezone
        """Chart labels read in the business calendar's time zone (the team's clock)."""
        self.notes: deque[str] = deque(maxlen=5)
        """What the last button presses did, newest first."""
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES),
                                      autoescape=True, undefined=jinja2.StrictUndefined,
                                      trim_blocks=True, lstrip_blocks=True)

    def routes(self) -> list[web.AbstractRouteDef]:
        p = self.path
        routes: list[web.AbstractRouteDef] = [
                  web.get(p, self.page), web.get(f"{p}/panels", self.panels),
                  web.get(f"{p}/data.json", self.data),
                  web.post(f"{p}/dead-letters/replay", self.replay_dead_letters),
                  web.post(f"{p}/quarantine/replay", self.replay_quarantined)]
        if self.access.token is not None:  # without one there is nobody to sign in
            routes += [web.get(f"{p}/login", self.login_page), web.post(f"{p}/login", self.login),
                       web.post(f"{p}/logout", self.logout)]
        return routes

    # -- reading -------------------------------------------------------------------------

    async def _quarantine(self) -> list[Quarantined]:
        found = []
        for adapter in self.adapters:
            for item, where, reason in await adapter.quarantined():
                found.append(Quarantined(adapter=adapter.kind, id=item, where=where,
                                         reason=reason))
        return found

    async def snapshot(self) -> Snapshot:
        return await take_snapshot(
            self.reads, self.letters, relay_backend=self.relay_backend,
            relay_active=self.relay_active, quarantine=self._quarantine,
            at_risk_within=self.at_risk_within, repeat_min=self.config.repeat_min_duplicates,
            timezone=self.timezone)

    def _charts(self, snap: Snapshot) -> dict[str, str]:
        return {
            "hour": stacked_bars(snap.hour.by_channel, snap.hour.labels,
                                 title="messages per channel, last hour (5-minute bars)"),
            "day": stacked_bars(snap.day.by_channel, snap.day.labels,
                                title="messages per channel, last 24 hours (hourly bars)"),
            "outcomes": hbars([(o, snap.outcomes.get(o, 0)) for o in OUTCOMES],
                              title="outcomes", colours=OUTCOME_COLOURS),
            "priorities": hbars([(p, snap.priorities.get(p, 0)) for p in ("high", "medium",
                                                                          "low")],
                                title="priorities", colours=PRIORITY_COLOURS),
            "kinds": hbars(list(snap.kinds.items()), title="kinds", colour=PALETTE[4]),
            "areas": hbars(list(snap.areas.items()), title="areas", colour=PALETTE[9]),
            "regions": hbars(snap.regions, title="regions", colour=PALETTE[0]),
            "devices": hbars(snap.devices, title="device models", colour=PALETTE[5]),
        }

    def _render(self, template: str, who: str, **values: Any) -> str:
        return self.env.get_template(template).render(
            path=self.path, csrf=self.access.csrf(who), notes=list(self.notes),
            signed_in=who not in ("loopback", "bearer"), refresh=self.config.refresh,
            channel_colours=CHANNEL_COLOURS, **values)

    def _html(self, body: str, nonce: str | None = None, status: int = 200) -> web.Response:
        script = f" script-src 'nonce-{nonce}'; connect-src 'self';" if nonce else ""
        resp = web.Response(text=body, status=status, content_type="text/html")
        resp.headers.update({
            "Cache-Control": "no-store",
            "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce or 'x'}'"
                                        f";{script} form-action 'self'; base-uri 'none'; "
                                        "frame-ancestors 'none'"),
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})
        return resp

    def _who(self, request: web.Request) -> str:
        who = self.access.who(request)
        if who is None:
            if request.path.endswith((".json", "/panels")):
                raise web.HTTPUnauthorized(text="sign in at " + self.path + "/login")
            raise web.HTTPSeeOther(f"{self.path}/login")
        return who

    async def page(self, request: web.Request) -> web.Response:
        """The whole dashboard; a small script swaps in fresh panels every ``refresh`` s."""
        who = self._who(request)
        snap = await self.snapshot()
        nonce = secrets.token_urlsafe(12)
        return self._html(self._render("dashboard.html", who, snap=snap,
                                       charts=self._charts(snap), nonce=nonce), nonce)

    async def panels(self, request: web.Request) -> web.Response:
        """Only the panels, for the live update."""
        who = self._who(request)
        snap = await self.snapshot()
        return self._html(self._render("panels.html", who, snap=snap,
                                       charts=self._charts(snap)))

    async def data(self, request: web.Request) -> web.Response:
        """The snapshot as JSON (counts, ticket numbers, masked contacts)."""
        self._who(request)
        return web.Response(body=msgspec.json.encode(await self.snapshot()),
                            content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    # -- signing in ------------------------------------------------------------------------

    async def login_page(self, request: web.Request, *, failed: bool = False) -> web.Response:
        if self.access.token is None:
            raise web.HTTPSeeOther(self.path)
        nonce = secrets.token_urlsafe(12)
        body = self.env.get_template("login.html").render(path=self.path, failed=failed,
                                                          nonce=nonce)
        return self._html(body, nonce, status=401 if failed else 200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        resp = web.HTTPSeeOther(self.path)
        if self.access.sign_in(request, str(form.get("token", "")), resp):
            raise resp
        return await self.login_page(request, failed=True)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        who = self._who(request)
        form = await _form(request)
        self.access.check_csrf(who, str(form.get("csrf", "")))
        resp = web.HTTPSeeOther(f"{self.path}/login" if self.access.token else self.path)
        self.access.sign_out(request, resp)
        raise resp

    # -- buttons ---------------------------------------------------------------------------

    async def _checked_form(self, request: web.Request) -> Any:
        who = self._who(request)
        form = await _form(request)
        self.access.check_csrf(who, str(form.get("csrf", "")))
        return form

    async def replay_dead_letters(self, request: web.Request) -> web.StreamResponse:
        await self._checked_form(request)
        self.notes.appendleft(await self._replay_dead_letters())
        raise web.HTTPSeeOther(self.path)

    async def replay_quarantined(self, request: web.Request) -> web.StreamResponse:
        form = await self._checked_form(request)
        kind, item = str(form.get("adapter", "")), str(form.get("id", ""))
        adapter = next((a for a in self.adapters if a.kind == kind), None)
        if adapter is None:
            raise RejectedInput("no such adapter")
        result = await adapter.replay_quarantined(item)
        self.notes.appendleft(f"{kind} {item}: {result}")
        raise web.HTTPSeeOther(self.path)


async def _form(request: web.Request) -> Any:
    """The posted form; a body that is no form (a broken multipart, say) is a 400, not a 500."""
    if request.content_type not in ("", "application/x-www-form-urlencoded",
                                    "multipart/form-data"):
        raise RejectedInput("post the dashboard's form (application/x-www-form-urlencoded)")
    try:
        return await request.post()
    except (ValueError, AssertionError, UnicodeError) as exc:  # aiohttp's parse errors
        raise RejectedInput(f"the form could not be read: {type(exc).__name__}") from None

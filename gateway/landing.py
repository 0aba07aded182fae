"""What a newcomer meets first: the URLs printed once listening, and the page at ``/``.

On loopback (a developer's or an operator's own machine) ``/`` is a short page linking the form,
the dashboard, the API description, the metrics and the health checks. Off loopback the same
address is what customers type, so ``/`` sends them to the form and names no operator page.
"""

from __future__ import annotations

import html
import sys
from typing import TextIO

from aiohttp import web

from gateway.plugin.openapi import Answer, Body, Operation, refused

# (label, candidate paths): the first path the application serves is the one shown.
_PAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dashboard", ("/dashboard",)),
    ("API docs", ("/docs", "/v1/docs", "/openapi.json", "/v1/openapi.json")),
    ("metrics", ("/metrics",)),
    ("readiness", ("/readyz",)),
)


def useful_links(app: web.Application, form_path: str | None,
                 dashboard_path: str = "/dashboard") -> list[tuple[str, str]]:
    """(label, path) of the pages that matter, only those ``app`` really serves."""
    served = {resource.canonical for resource in app.router.resources()}
    links: list[tuple[str, str]] = []
    if form_path and form_path in served:
        links.append(("web form", form_path))
    pages = [(label, (dashboard_path,) if label == "dashboard" else paths)
             for label, paths in _PAGES]
    for label, paths in pages:
        for path in paths:
            if path in served:
                links.append((label, path))
                break
    return links


def announce(base_url: str, links: list[tuple[str, str]], out: TextIO | None = None) -> None:
    """Print the URLs once the listener is up: the first thing ``make run`` shows."""
    out = out or sys.stderr
    width = max((len(label) for label, _ in links), default=0)
    lines = [f"intake-gateway is listening on {base_url}"]
    lines += [f"  {label:<{width}}  {base_url}{path}" for label, path in links]
    lines.append("  (Ctrl-C stops it)")
    print("\n".join(lines), file=out, flush=True)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>intake-gateway</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem}}
li{{margin:.4rem 0}}code{{background:#f2f4f7;padding:0 .25rem}}</style></head>
<body><h1>intake-gateway</h1>
<p>This gateway listens on loopback, so this page lists its operator pages too.</p>
<ul>{items}</ul>
<p>JSON API: <code>POST /v1/messages</code>; events: <code>intake-gateway tail --follow</code>.</p>
</body></html>
"""


LANDING_OPERATIONS: tuple[Operation, ...] = (
    Operation(method="get", path="/", tag="health", summary="Where to go from here",
              description="On a loopback listener, links to the form, the dashboard, the API "
                          "docs and the metrics; elsewhere a redirect to the form.",
              answers=(Answer(status=200, description="The links page.",
                              body=Body(media_type="text/html")),
                       Answer(status=302, description="To the form (not loopback).",
                              headers=("Location",)),
                       refused(404, "Not loopback, and no form."))),
)


def landing_routes(*, loopback: bool, form_path: str | None,
                   dashboard_path: str = "/dashboard") -> list[web.AbstractRouteDef]:
    """``GET /``: the links page on loopback; elsewhere a redirect to the form (or 404)."""

    async def landing(request: web.Request) -> web.StreamResponse:
        if not loopback:
            if form_path:
                raise web.HTTPFound(form_path)
            raise web.HTTPNotFound()
        links = useful_links(request.app, form_path, dashboard_path)
        items = "".join(f'<li><a href="{html.escape(path)}">{html.escape(label)}</a> '
                        f"<code>{html.escape(path)}</code></li>" for label, path in links)
        return web.Response(text=_PAGE.format(items=items), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    return [web.get("/", landing)]

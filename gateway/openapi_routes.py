"""``GET /openapi.json`` and ``GET /docs``: the running gateway's OpenAPI document and a page
that reads it, rendered on the server (no script, nothing fetched from elsewhere)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import jinja2
import msgspec
from aiohttp import web

from gateway.plugin.openapi import Answer, Body, Operation

DOCS_OPERATIONS: tuple[Operation, ...] = (
    Operation(method="get", path="/openapi.json", tag="docs", summary="This OpenAPI document",
              description="The operations of this gateway's configuration.",
              answers=(Answer(status=200, description="OpenAPI 3.1.",
                              body=Body(schema={"type": "object"})),)),
    Operation(method="get", path="/docs", tag="docs", summary="The API reference, as a page",
              answers=(Answer(status=200, description="HTML.",
                              body=Body(media_type="text/html")),)),
)

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}
section{margin:1.2rem 0;padding:.6rem 1rem;border-left:4px solid #8ab}
code,.path{font-family:ui-monospace,monospace}
.method{display:inline-block;min-width:4rem;font-weight:bold;text-transform:uppercase}
table{border-collapse:collapse}td,th{padding:.15rem .6rem;text-align:left;vertical-align:top}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

_PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ doc.info.title }}</title><style>{{ style }}</style></head>
<body>
<h1>{{ doc.info.title }} <small>{{ doc.info.version }}</small></h1>
<p>{{ doc.info.description }}</p>
<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI {{ doc.openapi }}).</p>
<nav><ul>{% for tag in tags %}<li><a href="#{{ tag }}">{{ tag }}</a></li>{% endfor %}</ul></nav>
{% for tag, ops in tags.items() %}
<h2 id="{{ tag }}">{{ tag }}</h2>
{% for path, method, op in ops %}
<section id="{{ op.operationId }}">
<h3><span class="method">{{ method }}</span> <span class="path">{{ path }}</span></h3>
<p><strong>{{ op.summary }}</strong>{% if op.description %}. {{ op.description }}{% endif %}</p>
{% if op.security %}<p>Authentication: {% for s in op.security %}{% for name in s %}
<code>{{ name }}</code>{% if schemes.get(name) %} ({{ schemes[name].description }}){% endif %}
{% endfor %}{% if not loop.last %} or {% endif %}{% endfor %}</p>{% endif %}
{% if op.parameters %}<table><tr><th>parameter</th><th>in</th><th></th></tr>
{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code>{% if p.required %} *{% endif %}</td>
<td>{{ p.in }}</td><td>{{ p.description }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}<p>Body: {% for media in op.requestBody.content %}<code>{{ media }}</code>
{% if op.requestBody.content[media].schema %}{{ describe(op.requestBody.content[media].schema) }}
{% endif %}{% endfor %}</p>{% endif %}
<table><tr><th>status</th><th>answer</th></tr>
{% for status, r in op.responses.items() %}<tr><td>{{ status }}</td><td>{{ r.description }}
{% for media in r.get("content", {}) %}<code>{{ media }}</code>{% endfor %}</td></tr>
{% endfor %}</table>
</section>
{% endfor %}{% endfor %}
</body></html>
""")


def _describe(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return f"({ref.rsplit('/', 1)[-1]})" if ref else ""


def render_docs(doc: dict[str, Any]) -> str:
    """The reference page of ``doc``, operations grouped by tag."""
    tags: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            tags.setdefault(op["tags"][0], []).append((path, method, op))
    return _PAGE.render(doc=doc, tags=tags, style=_STYLE, describe=_describe,
                        schemes=doc["components"].get("securitySchemes", {}))


def openapi_routes(doc: dict[str, Any]) -> list[web.RouteDef]:
    """The two routes, serving ``doc`` (encoded and rendered once)."""
    body = msgspec.json.encode(doc)
    page = render_docs(doc).encode()
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers={
            **headers, "Content-Security-Policy":
                f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; frame-ancestors 'none'"})

    return [web.get("/openapi.json", openapi_json), web.get("/docs", docs)]

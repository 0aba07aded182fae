"""The OpenAPI 3.1 document of every HTTP endpoint, assembled from the route modules' declarations.

Each route module declares its operations next to its routes (:mod:`gateway.plugin.openapi`):
adapters through ``AdapterBase.http_operations(config)``, core modules through a tuple listed in
:data:`CORE_ROUTE_MODULES` below. A new route module (the dashboard API, the replies endpoint)
adds its tuple there with one line. The document is committed as ``schemas/json/openapi.json``
(``intake-gateway schema``; the default configuration, every adapter) and served at
``/openapi.json`` for the running configuration (gateway/openapi_routes.py).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from gateway.http import MAX_SEQ
from gateway.message_fetch import MESSAGE_OPERATIONS
from gateway.openapi_routes import DOCS_OPERATIONS
from gateway.plugin import ADAPTER_GROUP, AdapterBase
from gateway.plugin.openapi import (
    COMMON_REFUSALS,
    ERROR_SCHEMA,
    SECURITY_SCHEMES,
    Answer,
    Body,
    Operation,
    Param,
    refused,
)
from gateway.registry import load_plugins
from intake_schemas.events import Event

API_VERSION = "1.0.0"
"""The HTTP interface's version: the minor part grows with every added operation or field."""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /healthz``."""

    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /readyz``: ``ready``, or ``not ready`` with the failed checks by name."""

    status: str
    problems: dict[str, str] = {}


class EventRow(msgspec.Struct, frozen=True, kw_only=True):
    """One committed event and its position in the log."""

    seq: int
    event: Event


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/events``: pass ``next`` as ``after`` to continue."""

    next: int
    events: list[EventRow]


_unauthorized = refused(401, "The bearer token is missing or wrong.")

HTTP_OPERATIONS: tuple[Operation, ...] = (
    Operation(method="get", path="/healthz", tag="health", summary="Liveness",
              description="The process answers.",
              answers=(Answer(status=200, description="Alive.", body=Body(schema=Health)),)),
    Operation(method="get", path="/readyz", tag="health", summary="Readiness",
              description="A real write to the store and the disk, no stuck relay, no "
                          "listener down. Take the replica out of the load balancer on 503.",
              answers=(Answer(status=200, description="Ready.", body=Body(schema=Readiness)),
                       Answer(status=503, description="Not ready; `problems` names each "
                              "failed check (store, disk, relay, an adapter's kind).",
                              body=Body(schema=Readiness)))),
    Operation(method="get", path="/metrics", tag="health", summary="Prometheus metrics",
              answers=(Answer(status=200, description="Prometheus text exposition.",
                              body=Body(media_type="text/plain")),)),
    Operation(method="get", path="/v1/events", tag="events", summary="The embedded event log",
              description="Committed events after `after`, oldest first, long-polled with "
                          "`wait`. At least once: deduplicate on the event's `id`.",
              params=(Param(name="after", where="query",
                            schema={"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                            description="The `next` of an earlier answer (0: from the start)."),
                      Param(name="limit", where="query",
                            schema={"type": "integer", "minimum": 1, "maximum": 1000},
                            description="Events at most (clamped to 1..1000)."),
                      Param(name="wait", where="query",
                            schema={"type": "number", "minimum": 0, "maximum": 60},
                            description="Seconds to hold the request until an event "
                                        "arrives.")),
              security=("eventsToken",),
              answers=(Answer(status=200, description="A page of events.",
                              body=Body(schema=EventPage)),
                       refused(400, "after, limit or wait is not a number."),
                       _unauthorized)),
)
"""The routes of gateway/http.py (kept here so that shared module stays small)."""

CORE_ROUTE_MODULES: tuple[tuple[Operation, ...], ...] = (
    HTTP_OPERATIONS,
    MESSAGE_OPERATIONS,
    DOCS_OPERATIONS,
)
"""Every core route module's operations; a new module adds its tuple here."""


def adapter_operations(adapters: Iterable[tuple[type[AdapterBase], Any]]) -> list[Operation]:
    """The operations of these adapters, each under its config."""
    return [op for cls, config in adapters for op in cls.http_operations(config)]


def reference_adapters() -> list[tuple[type[AdapterBase], Any]]:
    """Every installed adapter under its default config: what the committed document shows."""
    return [(cls, cls.Config()) for cls in load_plugins(ADAPTER_GROUP).values()]


def openapi_document(operations: Sequence[Operation], *, version: str = API_VERSION,
                     not_in_force: Iterable[str] = ()) -> dict[str, Any]:
    """OpenAPI 3.1: the core's operations and ``operations`` (the adapters').

    ``not_in_force`` names security schemes this gateway does not require (no events token on
    a loopback listener): they are left out, so the document says the routes are open.
    """
    off = set(not_in_force)
    every = [dataclasses.replace(op, security=tuple(s for s in op.security if s not in off))
             for module in CORE_ROUTE_MODULES for op in module] + list(operations)
    types: list[Any] = []

    def ref(schema: Any) -> Any:
        if schema is None or isinstance(schema, dict):
            return schema
        types.append(schema)
        return len(types) - 1  # replaced by the generated $ref below

    paths: dict[str, dict[str, Any]] = {}
    refs: list[tuple[dict[str, Any], int]] = []

    def content(bodies: Sequence[Body]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for body in bodies:
            entry: dict[str, Any] = {}
            schema = ref(body.schema)
            if isinstance(schema, int):
                refs.append((entry, schema))
            elif schema is not None:
                entry["schema"] = schema
            out[body.media_type] = entry
        return out

    for op in every:
        item: dict[str, Any] = {"operationId": op.operation_id or _operation_id(op),
                                "summary": op.summary, "tags": [op.tag]}
        if op.description:
            item["description"] = op.description
        params = [Param(name=name, where="path", required=True, description=f"The {name}.")
                  for name in re.findall(r"\{(\w+)\}", op.path)
                  if not any(p.name == name and p.where == "path" for p in op.params)]
        params += list(op.params)
        if params:
            item["parameters"] = [
                {"name": p.name, "in": p.where, "description": p.description,
                 "required": p.required or p.where == "path", "schema": p.schema}
                for p in params]
        if op.body is not None:
            bodies = op.body if isinstance(op.body, tuple) else (op.body,)
            item["requestBody"] = {"required": True, "content": content(bodies)}
        answers = list(op.answers)
        if op.body is not None:
            answers += [a for a in COMMON_REFUSALS if all(a.status != b.status for b in answers)]
        item["responses"] = {
            str(a.status): {
                "description": a.description,
                **({"content": content((a.body,))} if a.body is not None else {}),
                **({"headers": {h: {"schema": {"type": "string"}} for h in a.headers}}
                   if a.headers else {}),
            } for a in sorted(answers, key=lambda a: a.status)}
        if op.security:
            item["security"] = [{name: []} for name in op.security]
        paths.setdefault(op.path, {})[op.method] = item

    refs_of, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    for entry, index in refs:
        entry["schema"] = refs_of[index]
    schemes = sorted({name for op in every for name in op.security})
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "intake-gateway HTTP API",
            "version": version,
            "description": (
                "Every HTTP endpoint of the gateway: the integrators' message API, the web "
                "form, the providers' webhooks (Twilio, Telegram, WeChat, signed JSON "
                "webhooks), the embedded event feed and the by-reference message routes, and "
                "health. Bad input is answered 4xx with `{\"error\": ...}`, never 5xx; 503 "
                "means retry after `Retry-After`. The event stream itself is described by "
                "schemas/json/asyncapi.json."),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **dict(sorted(components.items()))},
            "securitySchemes": {name: SECURITY_SCHEMES[name] for name in schemes},
        },
    }


def _operation_id(op: Operation) -> str:
    return op.method + "_" + (re.sub(r"[^A-Za-z0-9]+", "_", op.path).strip("_") or "root")


def configured_operations(*, landing: bool, dashboard_path: str | None, dashboard_token: bool,
                          replies: bool, replies_signed: bool, rating_page: bool
                          ) -> list[Operation]:
    """The core's routes that depend on the configuration: ``/``, the dashboard, the replies."""
    from gateway.dashboard.openapi import dashboard_operations
    from gateway.landing import LANDING_OPERATIONS
    from gateway.replies.openapi import reply_operations

    ops: list[Operation] = list(LANDING_OPERATIONS) if landing else []
    if dashboard_path is not None:
        ops += dashboard_operations(dashboard_path, token=dashboard_token)
    if replies:
        ops += reply_operations(signed=replies_signed, rating_page=rating_page)
    return ops


def committed_document() -> dict[str, Any]:
    """``schemas/json/openapi.json``: the defaults, every installed adapter enabled, the
    dashboard behind its token, replies signed with their signed rating page."""
    return openapi_document(
        adapter_operations(reference_adapters())
        + configured_operations(landing=True, dashboard_path="/dashboard", dashboard_token=True,
                                replies=True, replies_signed=True, rating_page=True))


def served_document(adapters: Iterable[AdapterBase], *, events_token: bool = True,
                    configured: Sequence[Operation] = ()) -> dict[str, Any]:
    """``/openapi.json``: the core and the enabled adapters, under their running config;
    ``events_token`` says whether the events routes require one; ``configured`` are the
    core's configuration-dependent routes (:func:`configured_operations`)."""
    return openapi_document(adapter_operations((type(a), a.config) for a in adapters)
                            + list(configured),
                            not_in_force=() if events_token else ("eventsToken",))

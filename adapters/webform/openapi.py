"""The OpenAPI description of the form's two routes (gateway/plugin/openapi.py)."""

from __future__ import annotations

from typing import get_args

from gateway.plugin import Answer, Body, Operation, Param, refused
from intake_schemas import CustomerType, Kind

_HTML = Body(media_type="text/html")


def form_operations(path: str, field_limits: dict[str, int]) -> list[Operation]:
    """GET shows the form, POST takes it; both answer pages in the customer's language."""
    fields: dict[str, dict[str, object]] = {
        name: {"type": "string", "maxLength": limit} for name, limit in field_limits.items()}
    fields["kind"] = {"enum": list(get_args(Kind))}
    fields["customer_type"] = {"enum": list(get_args(CustomerType))}
    fields["message"]["description"] = "The customer's words (required)."
    # Any value is "accepted" (a thank-you page, nothing stored): bots must not learn of it.
    fields["website"] = {"type": "string", "description": "A honeypot: left empty by people."}
    fields["attachments"] = {"type": "array", "items": {"type": "string",
                                                        "contentMediaType":
                                                            "application/octet-stream"}}
    schema = {"type": "object", "required": ["message"], "properties": fields,
              "description": "An email or a phone number is required to answer."}
    lang = Param(name="lang", where="query", description="The page's language (zh-CN, en, ...).")
    return [
        Operation(method="get", path=path, tag="webform", summary="The web form",
                  params=(lang,),
                  answers=(Answer(status=200, description="The form, in the customer's "
                                  "language.", body=_HTML),)),
        Operation(method="post", path=path, tag="webform", summary="Submit the web form",
                  description="Answers the receipt page with the ticket number and the "
                              "expected response time, or the form again with each problem "
                              "next to its field.",
                  params=(lang,),
                  body=(Body(media_type="multipart/form-data", schema=schema),
                        Body(media_type="application/x-www-form-urlencoded", schema=schema)),
                  answers=(Answer(status=200, description="The receipt page.", body=_HTML),
                           Answer(status=400, description="The form again, with the problems.",
                                  body=_HTML),
                           Answer(status=413, description="The form again: the files are "
                                  "larger than the limit.", body=_HTML),
                           Answer(status=429, description="The form again: too many "
                                  "submissions from this address.", body=_HTML,
                                  headers=("Retry-After",)),
                           refused(503, "Temporarily unable to store it: retry."))),
    ]

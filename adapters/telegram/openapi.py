"""The OpenAPI description of the Telegram webhook (gateway/plugin/openapi.py)."""

from __future__ import annotations

from gateway.plugin import Answer, Body, Operation, refused


def telegram_operations(path: str, mode: str) -> list[Operation]:
    """One POST route in webhook mode; none when polling."""
    if mode != "webhook":
        return []
    return [Operation(
        method="post", path="/" + path.strip("/"), tag="telegram",
        summary="An update from the Bot API (setWebhook)",
        description="Answered 200 once the message is stored; the acknowledgement is sent as "
                    "a reply in the chat.",
        body=Body(schema={"type": "object", "required": ["update_id"],
                          "properties": {"update_id": {"type": "integer"}},
                          "description": "A Telegram Update object. Kinds of update and "
                                         "fields we do not read are ignored (200): Telegram "
                                         "would retry a refusal for ever."}),
        security=("telegramSecret",),
        answers=(Answer(status=200, description="Taken (or ignored: not a private chat)."),
                 refused(400, "Not a Telegram update."),
                 refused(403, "X-Telegram-Bot-Api-Secret-Token is missing or wrong."),
                 refused(413, "Larger than any update.")))]

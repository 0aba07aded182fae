"""The OpenAPI description of Twilio's webhooks (gateway/plugin/openapi.py)."""

from __future__ import annotations

from gateway.plugin import Answer, Body, Operation, refused

_TWIML = Body(media_type="text/xml")
_SIGNED = ("twilioSignature",)
_REFUSED = (refused(400, "A required parameter is missing or malformed."),
            refused(403, "X-Twilio-Signature is missing or does not match, or another "
                         "account's webhook."),
            refused(413, "Larger than any Twilio webhook."))


def _form(description: str, required: list[str], **fields: str) -> Body:
    props = {name: {"type": "string", "description": text} for name, text in fields.items()}
    return Body(media_type="application/x-www-form-urlencoded", schema={
        "type": "object", "description": description, "required": required,
        "properties": {"AccountSid": {"type": "string", "description": "The account (AC...)."},
                       **props},
        "additionalProperties": {"type": "string"}})


def twilio_operations(path: str) -> list[Operation]:
    """Five POST routes under ``path``, answered in TwiML or empty, as Twilio expects."""
    p = "/" + path.strip("/")
    return [
        Operation(method="post", path=f"{p}/sms", tag="twilio",
                  summary="An incoming SMS, MMS or WhatsApp message",
                  description="Answered in TwiML: the acknowledgement, or nothing.",
                  body=_form("Twilio's messaging webhook.", ["MessageSid", "From"],
                             MessageSid="The message's id.", From="The sender.",
                             To="Our number.", Body="The text.", NumMedia="Media items."),
                  security=_SIGNED,
                  answers=(Answer(status=200, description="TwiML.", body=_TWIML), *_REFUSED)),
        Operation(method="post", path=f"{p}/status", tag="twilio",
                  summary="Delivery status of an SMS we sent",
                  body=_form("Twilio's status callback.", ["MessageSid"],
                             MessageSid="Our message's id.",
                             MessageStatus="queued, sent, delivered, undelivered, failed.",
                             ErrorCode="Twilio's error code."),
                  security=_SIGNED,
                  answers=(Answer(status=200, description="Recorded.", body=_TWIML),
                           Answer(status=204, description="Recorded."), *_REFUSED)),
        Operation(method="post", path=f"{p}/voice", tag="twilio", summary="An incoming call",
                  description="TwiML that plays the prompt and records voice mail.",
                  body=_form("Twilio's voice webhook.", ["CallSid"], CallSid="The call's id.",
                             From="The caller.", To="Our number."),
                  security=_SIGNED,
                  answers=(Answer(status=200, description="TwiML.", body=_TWIML), *_REFUSED)),
        Operation(method="post", path=f"{p}/voice/recording", tag="twilio",
                  summary="A voice mail recording is ready",
                  body=_form("Twilio's recording callback.", ["CallSid"],
                             CallSid="The call's id.", RecordingUrl="Where to fetch it.",
                             RecordingDuration="Seconds."),
                  security=_SIGNED,
                  answers=(Answer(status=200, description="TwiML.", body=_TWIML), *_REFUSED)),
        Operation(method="post", path=f"{p}/voice/transcription", tag="twilio",
                  summary="A voice mail transcription is ready",
                  body=_form("Twilio's transcription callback.", ["CallSid"],
                             CallSid="The call's id.", TranscriptionText="The words.",
                             TranscriptionStatus="completed or failed."),
                  security=_SIGNED,
                  answers=(Answer(status=200, description="TwiML.", body=_TWIML), *_REFUSED)),
    ]

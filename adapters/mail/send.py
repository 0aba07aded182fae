"""Composing the acknowledgement email: multipart text + HTML, threaded, marked auto-replied.

Contract:

- :func:`compose_ack` turns an :class:`~schemas.Acknowledgement` (subject and text already
  localised by :mod:`gateway.acks`) into the bytes of one RFC 5322 message and its Message-ID.
  It does no I/O; sending is the ``mailer`` adapter's job.
- The text part and the HTML part come from ``templates/ack.<locale>.txt|html`` (zh-CN, zh-TW,
  en; anything else falls back to en). The HTML is built from the same text, autoescaped, and
  loads nothing remote.
- Headers: our own ``Message-ID`` (``<uuid@domain>``), ``In-Reply-To`` and ``References`` naming
  the customer's mail when its id is known, the ticket number as a ``[number]`` subject tag,
  ``Auto-Submitted: auto-replied`` (RFC 3834) and ``X-Auto-Response-Suppress: All`` (Exchange)
  so that other robots do not answer us, ``Content-Language``.
- The returned ``message_id`` has no angle brackets: it is what the ack dispatcher stores in
  ``ack_refs``, and what the customer's reply names in ``In-Reply-To``.
- Invalid addresses or ids (line breaks, missing ``@``...) raise ``ValueError``: a header must
  never be injectable through data that came from a mail.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from pathlib import Path

import jinja2
import msgspec

from gateway.plugin import OutgoingReply
from intake_schemas import Acknowledgement

TEMPLATE_LOCALES = ("zh-CN", "zh-TW", "en")
_TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)

# An addr-spec as we accept it for sending: no spaces, brackets, quotes or line breaks. Anything
# stranger is refused rather than quoted: acknowledgements go to addresses the parser produced.
_ADDRESS = re.compile(r"^[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+$")
_MSG_ID = re.compile(r"^[^\s<>]+$")
_MIME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$")


class ComposedAck(msgspec.Struct, frozen=True, kw_only=True):
    """One acknowledgement email, ready for the relay."""

    message_id: str
    """Our Message-ID without angle brackets."""
    data: bytes
    """The message, CRLF line ends; 7-bit clean (RFC 2047 headers, base64 bodies) unless the
    recipient's address is not ASCII (then ``needs_smtputf8``)."""
    needs_smtputf8: bool = False


def check_address(address: str) -> str:
    """Return ``address`` if it is a plain addr-spec we are willing to send to; else ValueError."""
    if not _ADDRESS.match(address):
        raise ValueError("not a plain email address")
    return address


def compose_ack(ack: Acknowledgement, *, to: str, sender: str, sender_name: str | None = None,
                in_reply_to: str | None = None, domain: str | None = None,
                now: datetime | None = None) -> ComposedAck:
    """Build the acknowledgement mail for ``ack`` to ``to``; see the module docstring."""
    check_address(to)
    check_address(sender)
    if in_reply_to is not None and not _MSG_ID.match(in_reply_to):
        raise ValueError("not a Message-ID")
    locale = ack.locale if ack.locale in TEMPLATE_LOCALES else "en"
    id_domain = domain or sender.rpartition("@")[2]
    message_id = f"{uuid.uuid4().hex}@{id_domain}"
    values = {"text": ack.text, "subject": ack.subject, "number": ack.ticket_number,
              "locale": locale}

    # An internationalised address (RFC 6531) cannot be written in 7-bit headers; such a mail
    # can only travel with SMTPUTF8, so it is written in UTF-8 throughout.
    msg = EmailMessage(policy=SMTP if to.isascii() else SMTPUTF8)
    msg["From"] = Address(display_name=sender_name or "", addr_spec=sender)
    msg["To"] = to
    msg["Subject"] = ack.subject
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
        msg["References"] = f"<{in_reply_to}>"
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(_env.get_template(f"ack.{locale}.txt").render(values), subtype="plain",
                    charset="utf-8")
    msg.add_alternative(_env.get_template(f"ack.{locale}.html").render(values), subtype="html",
                        charset="utf-8")
    # After the body: set_content() drops every Content-* header set before it.
    msg["Content-Language"] = locale
    return ComposedAck(message_id=message_id, data=msg.as_bytes(),
                       needs_smtputf8=not to.isascii())


def compose_reply(reply: OutgoingReply, *, to: str, sender: str, sender_name: str | None = None,
                  in_reply_to: str | None = None, domain: str | None = None,
                  now: datetime | None = None) -> ComposedAck:
    """A downstream reply as one mail: threaded to the customer's mail, the ticket number in the
    subject (``reply.subject`` carries it), text and optional sanitized HTML, its files attached.

    Not marked ``Auto-Submitted``: it is a person's answer, and the customer's own auto-reply
    to it is recognised by the loop policy on the way in."""
    check_address(to)
    check_address(sender)
    if in_reply_to is not None and not _MSG_ID.match(in_reply_to):
        raise ValueError("not a Message-ID")
    message_id = f"{uuid.uuid4().hex}@{domain or sender.rpartition('@')[2]}"
    msg = EmailMessage(policy=SMTP if to.isascii() else SMTPUTF8)
    msg["From"] = Address(display_name=sender_name or "", addr_spec=sender)
    msg["To"] = to
    msg["Subject"] = reply.subject
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
        msg["References"] = f"<{in_reply_to}>"
    msg.set_content(reply.text, subtype="plain", charset="utf-8")
    if reply.html:
        msg.add_alternative(reply.html, subtype="html", charset="utf-8")
    for f in reply.files:
        # A type as the downstream wrote it, only when it is a plain type/subtype token pair:
        # anything else (parameters, line breaks) would be written into the header.
        maintype, subtype = (f.content_type.lower().split("/") if _MIME.fullmatch(f.content_type)
                              else ["application", "octet-stream"])
        msg.add_attachment(f.data, maintype=maintype, subtype=subtype,
                           filename=f.name.replace("\r", " ").replace("\n", " ")[:200])
    msg["Content-Language"] = reply.locale
    return ComposedAck(message_id=message_id, data=msg.as_bytes(),
                       needs_smtputf8=not to.isascii())

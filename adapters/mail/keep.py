"""What an incoming mail carries, kept in the attachment store: its attachments and its bytes.

Shared by the ``smtp`` and ``imap`` adapters. Neither function raises for size: what exceeds
the attachment limits is left out and said so in the message's ``metadata`` (``extra``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import TooLarge
from intake_schemas import FileNotKept

if TYPE_CHECKING:
    from gateway.plugin import Intake
    from intake_adapters.mail.parse import ParsedEmail
    from intake_schemas import Attachment


async def store_mail_attachments(intake: Intake, parsed: ParsedEmail, extra: dict[str, str]
                                 ) -> tuple[list[Attachment], list[FileNotKept]]:
    """Store every attachment the parser kept; list the ones left out in ``extra``.

    Returns the stored ones and those the store refused (for the acknowledgement)."""
    stored: list[Attachment] = []
    dropped: list[str] = []
    not_kept: list[FileNotKept] = []
    for att in parsed.attachments:
        try:
            stored.append(await intake.store_attachment(
                att.data, name=att.name, content_type=att.content_type))
        except TooLarge as exc:
            dropped.append(exc.reason)
            not_kept.append(FileNotKept(name=att.name, reason="too_large", limit=exc.limit))
    if dropped:
        extra["dropped_attachments"] = "; ".join([*parsed.dropped, *dropped])
    return stored, not_kept


async def keep_raw(intake: Intake, raw: bytes, extra: dict[str, str]) -> None:
    """Keep the mail's bytes for replay; ``extra["raw_sha256"]`` names them."""
    try:
        kept = await intake.store_attachment(raw, name="message.eml",
                                             content_type="message/rfc822")
    except TooLarge:
        extra["raw_kept"] = "no: larger than the attachment limit"
        return
    extra["raw_sha256"] = kept.sha256

"""Email: the ``smtp`` and ``imap`` adapters that take mail, the ``mailer`` that acknowledges by
mail, and the parsing they share (``adapters.mail:SmtpAdapter``, ``:ImapAdapter``,
``:MailerAdapter``).

The shared modules touch neither the network, the store nor the clock. The ``smtp`` and ``imap``
adapters call :func:`adapters.mail.parse.parse_email` on the bytes they received, ask
:func:`adapters.mail.loop_policy.classify` whether the mail is a human's, and build the schema
message with :func:`adapters.mail.parse.to_inbound`.

Modules:

- ``charsets``: bytes to text for any declared (or mis-declared) charset, and RFC 2047 words.
- ``parse``: the MIME walk, sanitized HTML, safe attachment names and size limits.
- ``loop_policy``: human mail versus auto-replies, bounces, read receipts, lists, complaints.
- ``keep``: the raw mail and its attachments into the attachment store.
- ``send``: acknowledgements composed from ``templates/`` (text and HTML).
- ``smtp``, ``imap``, ``mailer``: the three adapters.
"""

from intake_adapters.mail.imap import ImapAdapter, ImapConfig
from intake_adapters.mail.mailer import MailerAdapter, MailerConfig
from intake_adapters.mail.smtp import SmtpAdapter, SmtpConfig

__all__ = ["ImapAdapter", "ImapConfig", "MailerAdapter", "MailerConfig", "SmtpAdapter",
           "SmtpConfig"]

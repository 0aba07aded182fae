"""Pure email parsing: raw RFC 5322 bytes in, a ``ParsedEmail`` and a loop-policy verdict out.

Nothing here touches the network, the store or the clock. The ``smtp`` and ``imap`` adapters call
:func:`gateway.mail.parse.parse_email` on the bytes they received, ask
:func:`gateway.mail.loop_policy.classify` whether the mail is a human's, and build the schema
message with :func:`gateway.mail.parse.to_inbound`.

Modules:

- ``charsets``: bytes to text for any declared (or mis-declared) charset, and RFC 2047 words.
- ``parse``: the MIME walk, sanitized HTML, safe attachment names and size limits.
- ``loop_policy``: human mail versus auto-replies, bounces, read receipts, lists, complaints.
"""

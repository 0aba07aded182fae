"""Replies out: the downstream answers the customer on the customer's own channel.

- :mod:`gateway.replies.config`: ``[replies]`` (signing, retries, limits, windows, quiet hours);
- :mod:`gateway.replies.routing`: which channel, recipient and thread a reply takes (pure);
- :mod:`gateway.replies.texts`: subjects and the satisfaction question per locale (pure);
- :mod:`gateway.replies.service`: ``POST /v1/tickets/{number}/replies`` and ``accept``;
- :mod:`gateway.replies.dispatch`: sends queued replies through the channels' senders.
"""

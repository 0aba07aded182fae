"""Moved to :mod:`gateway.plugin.limits` (the plug-in contract); kept while callers move."""

from gateway.plugin.limits import (  # noqa: F401
    CONNECTIONS_OPEN,
    CONNECTIONS_REFUSED,
    ConnectionGate,
    TokenBuckets,
    peer_key,
    raise_open_file_limit,
)

"""Moved to :mod:`gateway.plugin.limits` (the plug-in contract); kept while callers move."""

from gateway.plugin.limits import CONNECTIONS_OPEN, CONNECTIONS_REFUSED, ConnectionGate, TokenBuckets, peer_key, raise_open_file_limit  # noqa: F401

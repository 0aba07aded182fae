"""Moved to :mod:`gateway.plugin.media` (the plug-in contract); kept while callers move."""

from gateway.plugin.media import IDENTITY, MediaHosts, MediaRefused, file_not_kept, read_limited  # noqa: F401

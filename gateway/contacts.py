"""Moved to :mod:`gateway.plugin.contacts` (the plug-in contract); kept while callers move."""

from gateway.plugin.contacts import normalize_email, normalize_phone  # noqa: F401

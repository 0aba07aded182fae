"""Downstream publishers, one file per broker, each registered under its kind by entry point."""

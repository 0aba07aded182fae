"""The intake gateway's core: everything that is not one channel."""

__version__ = "0.1.0"

"""The store contract suite (gateway/testing/store_contract.py) on every store kind."""

from gateway.testing.store_contract import *  # noqa: F403

"""Every registered adapter passes the contract suite shipped in gateway.testing."""

from gateway.testing.adapter_contract import *  # noqa: F403

"""The store contract suite (gateway/testing/store_contract.py) on every store kind."""

import gateway.testing.store_contract as suite
from gateway.testing.store_contract import *  # noqa: F403


def test_every_contract_test_is_exported() -> None:
    # A test missing from the suite's __all__ would silently never run here (nor for a
    # third party's store).
    tests = {name for name in vars(suite) if name.startswith("test_")}
    assert tests <= set(suite.__all__), sorted(tests - set(suite.__all__))

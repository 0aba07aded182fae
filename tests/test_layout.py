"""The tree keeps its shape: the import contracts cover every module, and no SQL leaks out."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_TO_ADAPTERS = {"gateway.plugin", "gateway.errors"}
"""What an adapter may import of the core (issue 10: the contract, the errors, the schema)."""


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def test_adapters_are_kept_from_every_module_of_the_core_but_the_contract() -> None:
    # import-linter cannot say "only these": the contract lists what is forbidden, and this
    # test fails when a new module of the core is missing from that list.
    (rule,) = [c for c in _contracts() if c["name"].startswith("adapters import only")]
    forbidden = set(rule["forbidden_modules"])
    core = {f"gateway.{m.name}" for m in pkgutil.iter_modules(gateway.__path__)}
    assert core - forbidden == ALLOWED_TO_ADAPTERS, sorted(core - forbidden)
    assert forbidden <= core, sorted(forbidden - core)


def test_every_adapter_package_is_in_the_independence_contract() -> None:
    (rule,) = [c for c in _contracts() if c["name"] == "adapters never import each other"]
    packages = {f"intake_adapters.{p.name}"
                for p in pkgutil.iter_modules([str(ROOT / "adapters")])}
    assert set(rule["modules"]) == packages

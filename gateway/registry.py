"""Finding plug-ins through entry points; built-ins are registered exactly like a third party's."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from gateway.errors import ConfigError
from gateway.plugin import ADAPTER_GROUP, PUBLISHER_GROUP, check_adapter, check_publisher


def load_plugins(group: str) -> dict[str, type[Any]]:
    """Every plug-in class of ``group`` by kind.

    Two distributions registering the same kind is a ConfigError (which one would win is an
    accident of install order). A plug-in whose optional dependency is missing raises a
    ConfigError naming the extra to install.
    """
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise ConfigError(f"two plug-ins claim the kind {ep.name!r} in {group}: "
                              f"{other.value} and {ep.value}")
        found[ep.name] = ep
    return {name: _load(ep) for name, ep in sorted(found.items())}


def load_plugin(group: str, kind: str) -> type[Any]:
    """One plug-in class by kind; ConfigError listing the installed kinds when absent."""
    eps = {ep.name: ep for ep in entry_points(group=group)}
    if kind not in eps:
        raise ConfigError(f"no plug-in of kind {kind!r} is installed in {group}; "
                          f"installed: {', '.join(sorted(eps)) or 'none'}")
    return _load(eps[kind])


def _load(ep: EntryPoint) -> type[Any]:
    try:
        cls = ep.load()
    except ModuleNotFoundError as exc:
        if exc.name and ep.module.startswith(exc.name):
            raise ConfigError(f"entry point {ep.name!r} in {ep.group} names {ep.value}, whose "
                              "module does not exist: reinstall the distribution") from exc
        raise ConfigError(f"the {ep.name!r} plug-in needs the package {exc.name!r}: "
                          f"pip install 'intake-gateway[{ep.name}]'") from exc
    if getattr(cls, "kind", None) != ep.name:
        raise ConfigError(f"entry point {ep.name!r} loads {ep.value}, whose kind is "
                          f"{getattr(cls, 'kind', None)!r}: they must agree")
    # What a plug-in declares is checked once, here, so the host can rely on it afterwards.
    checker = _CHECKS.get(ep.group)
    if checker is not None:
        checker(cls)
    return cls


_CHECKS: dict[str, Callable[[type[Any]], None]] = {
    ADAPTER_GROUP: check_adapter,
    PUBLISHER_GROUP: check_publisher,
}

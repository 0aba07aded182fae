"""The store contract suite: what every store (SQLite, and PostgreSQL for replicas) must do.

Written once against the store's protocols and parametrized over store factories, so a second
store runs it unchanged: add a factory to ``STORES`` (or override the ``store_factory``
fixture) and import the tests::

    from gateway.testing.store_contract import *  # noqa: F403

Each test opens a store, uses it through its public methods, and for durability closes it and
opens a new one on the same data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.store.sqlite import SqliteStore

__all__ = [
    "STORES",
    "store_factory",
    "test_a_probe_write_commits",
    "test_adapter_state_is_durable_and_scoped_per_adapter",
    "test_adapter_state_lists_by_prefix",
    "test_replay_guard_refuses_a_key_until_it_expires",
    "test_replay_guard_survives_a_restart",
]

StoreFactory = Callable[[], Awaitable[Any]]
"""Opens a store on this test's data (the same data each call): reopening it is a restart."""


def _sqlite(tmp: Path) -> StoreFactory:
    async def open_store() -> SqliteStore:
        store = SqliteStore(tmp / "intake.sqlite3")
        await store.open()
        return store
    return open_store


STORES: dict[str, Callable[[Path], StoreFactory]] = {"sqlite": _sqlite}
"""Store kinds the suite runs on, by name: each takes the test's temporary directory."""


@pytest.fixture(params=sorted(STORES))
async def store_factory(request: pytest.FixtureRequest,
                        tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores of one kind on one test's data; closes every one it opened."""
    opened: list[Any] = []

    async def open_store() -> Any:
        store = await STORES[request.param](tmp_path)()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def test_adapter_state_is_durable_and_scoped_per_adapter(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    twilio, imap = store.adapter_state("twilio"), store.adapter_state("imap")
    await twilio.put("optout:sms:+8613800000000", b"1")
    await imap.put("optout:sms:+8613800000000", b"other adapter")
    await twilio.put("gone", b"x")
    await twilio.delete("gone")
    await twilio.delete("never-there")
    await store.close()
    again = (await store_factory()).adapter_state("twilio")
    assert await again.get("optout:sms:+8613800000000") == b"1"
    assert await again.get("gone") is None
    assert await (await store_factory()).adapter_state("imap").get(
        "optout:sms:+8613800000000") == b"other adapter"
    with pytest.raises(ValueError):
        await again.put("", b"keys are not empty")


async def test_adapter_state_lists_by_prefix(store_factory: StoreFactory) -> None:
    state = (await store_factory()).adapter_state("imap")
    for key in ("box:b", "box:a", "boxer", "other"):
        await state.put(key, key.encode())
    await state.put("box:a", b"replaced")
    assert await state.items("box:") == [("box:a", b"replaced"), ("box:b", b"box:b")]
    assert [k for k, _ in await state.items()] == ["box:a", "box:b", "boxer", "other"]


async def test_replay_guard_refuses_a_key_until_it_expires(store_factory: StoreFactory) -> None:
    store = await store_factory()
    assert await store.first_use("api:signature", "sig-1", ttl=300)
    assert not await store.first_use("api:signature", "sig-1", ttl=300)
    assert await store.first_use("wechat:nonce", "sig-1", ttl=300), "scopes are separate"
    assert await store.first_use("api:signature", "short", ttl=0.05)
    deadline = asyncio.get_running_loop().time() + 5
    while not await store.first_use("api:signature", "short", ttl=0.05):
        assert asyncio.get_running_loop().time() < deadline, "an expired key is usable again"
        await asyncio.sleep(0.02)


async def test_replay_guard_survives_a_restart(store_factory: StoreFactory) -> None:
    store = await store_factory()
    assert await store.first_use("api:signature", "captured", ttl=300)
    await store.close()
    assert not await (await store_factory()).first_use("api:signature", "captured", ttl=300)


async def test_a_probe_write_commits(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.probe_write()
    await store.probe_write()

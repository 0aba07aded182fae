"""Fixtures shared by the test suite: a real gateway on a free port, with its own data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway

MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[MakeGateway]:
    """Start gateways from TOML text; each gets ``tmp_path/<n>`` unless ``data_dir`` is given."""
    started: list[Gateway] = []

    async def make(toml: str = "", *, data_dir: Path | None = None) -> Gateway:
        config = parse_config(toml)
        # Same construction as gateway.testing.harness.running_gateway, kept open for the test.
        gw = Gateway(config, data_dir or tmp_path / f"gw{len(started)}", listen="127.0.0.1:0")
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in reversed(started):
        await gw.stop()


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Gateway:
    """A gateway with the embedded defaults."""
    return await make_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session

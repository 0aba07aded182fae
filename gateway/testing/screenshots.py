"""Headless Chromium for page tests, and a PNG reader to check what a screenshot really shows.

A screenshot test that only checks a file exists passes on a blank page. These helpers decode
Chromium's PNG (8-bit RGB or RGBA, non-interlaced: what it writes) with the standard library and
count pixels near a colour, so a test can require "the chart's colour covers at least 1% of
the image".
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.testing.services import unavailable

CHROMIUM = "/usr/bin/chromium"


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium through playwright, headless; the test is skipped (or fails under
    ``INTAKE_REQUIRE_SERVICES=1``) when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        unavailable("chromium not installed: apt-get install chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        try:
            yield browser
        finally:
            await browser.close()


class Image:
    """Decoded pixels: ``width``, ``height`` and ``pixels`` (RGB triples, row by row)."""

    def __init__(self, width: int, height: int, pixels: list[tuple[int, int, int]]) -> None:
        self.width = width
        self.height = height
        self.pixels = pixels

    def share(self, rgb: tuple[int, int, int], tolerance: int = 24) -> float:
        """The fraction of pixels within ``tolerance`` (per channel) of ``rgb``."""
        r0, g0, b0 = rgb
        near = sum(1 for r, g, b in self.pixels
                   if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance
                   and abs(b - b0) <= tolerance)
        return near / max(1, len(self.pixels))

    def crop(self, x: int, y: int, width: int, height: int) -> Image:
        """The rectangle at (x, y) (clipped to the image)."""
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + width), min(self.height, y + height)
        rows = [self.pixels[r * self.width + x0:r * self.width + x1] for r in range(y0, y1)]
        return Image(max(0, x1 - x0), max(0, y1 - y0), [p for row in rows for p in row])

    def saturated_share(self, spread: int = 80) -> float:
        """The fraction of clearly coloured pixels (not white, grey or black): chart ink."""
        return sum(1 for p in self.pixels if max(p) - min(p) >= spread) / max(1, len(self.pixels))

    def distinct_colours(self) -> int:
        return len(set(self.pixels))


def decode_png(data: bytes) -> Image:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (alpha dropped)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG")
    pos, idat = 8, bytearray()
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", chunk)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    prev = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        pixels.extend((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        prev = line
    return Image(width, height, pixels)


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``"#c2185b"`` -> (194, 24, 91)."""
    h = colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)

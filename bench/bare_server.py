"""The baseline: a bare aiohttp server with one POST handler that reads the body, answers 200.

``python bench/bare_server.py --listen 127.0.0.1:PORT``. Same aiohttp, same event loop, no access
log, like the gateway; everything the gateway does beyond this is what ``api_intake.py`` measures.
"""

from __future__ import annotations

import argparse

from aiohttp import web

_ANSWER = b'{"outcome":"ok"}'


async def handle(request: web.Request) -> web.Response:
    """Read the whole body (as the gateway must), answer a small JSON."""
    await request.read()
    return web.Response(body=_ANSWER, content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:8099", metavar="HOST:PORT")
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")
    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()

"""Local fakes of the messaging providers, speaking their real HTTP protocols.

Point the real client library at a fake and test an adapter end to end, offline::

    async with FakeTelegram(token) as fake:
        bot = Bot(token, base_url=f"{fake.url}/bot", base_file_url=f"{fake.url}/file/bot")

    async with FakeTwilio(account_sid, auth_token) as fake:
        client = Client(account_sid, auth_token)
        client.api.base_url = fake.url

    async with FakeFcm(project_id) as fcm:  # FCM HTTP v1 and its OAuth token endpoint
        fcm.write_service_account(path)

    async with FakeWeChat(token) as wechat:  # a sender: it posts pushes to *your* URL
        reply = await wechat.push(url, {"MsgType": "text", "Content": "hi", ...})

:class:`FakeServer` is the shared base: an aiohttp app on ``127.0.0.1``, port 0, used as an
async context manager. Each fake records what it received, for assertions. The fakes are imported
lazily, so using one does not require the client libraries of the others.
"""

from __future__ import annotations

import importlib
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from aiohttp import web

if TYPE_CHECKING:
    from gateway.testing.fakes.fcm import FakeFcm
    from gateway.testing.fakes.telegram import FakeTelegram
    from gateway.testing.fakes.twilio import FakeTwilio, signed_webhook
    from gateway.testing.fakes.wechat import FakeWeChat
    from gateway.testing.fakes.wechat_api import FakeWeChatApi

__all__ = ["Delivery", "FakeFcm", "FakeServer", "FakeTelegram", "FakeTwilio", "FakeWeChat",
           "FakeWeChatApi",
           "serve_body", "signed_webhook"]

_LAZY = {
    "FakeFcm": "gateway.testing.fakes.fcm",
    "FakeTelegram": "gateway.testing.fakes.telegram",
    "FakeTwilio": "gateway.testing.fakes.twilio",
    "signed_webhook": "gateway.testing.fakes.twilio",
    "FakeWeChat": "gateway.testing.fakes.wechat",
    "FakeWeChatApi": "gateway.testing.fakes.wechat_api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


class FakeServer:
    """A provider fake served on ``127.0.0.1`` with an OS-chosen port.

    Subclasses implement :meth:`build_app`. ``url`` (``http://127.0.0.1:PORT``, no trailing
    slash) is set once the server has started.
    """

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.url = ""

    def build_app(self) -> web.Application:
        """Return the aiohttp application with the provider's routes."""
        raise NotImplementedError

    async def start(self) -> Self:
        """Start serving; returns ``self``."""
        # A short shutdown timeout: a long poll still open at close must not hold the test 60 s.
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        """Stop serving; pending long polls are cancelled."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


Delivery = Literal["whole", "chunked", "short"]
"""How a fake serves a file: ``whole`` with its Content-Length; ``chunked`` streamed with no
declared size (as CDNs do); ``short`` declaring twice its length, then closing the connection
after the real bytes: a hostile or broken provider."""


async def serve_body(request: web.Request, data: bytes, content_type: str,
                     delivery: Delivery = "whole") -> web.StreamResponse:
    """Answer ``request`` with ``data`` the way ``delivery`` says."""
    if delivery == "whole":
        # headers=, not content_type=: aiohttp refuses a content_type that carries parameters
        return web.Response(body=data, headers={"Content-Type": content_type})
    headers = {"Content-Type": content_type}
    if delivery == "short":
        headers["Content-Length"] = str(2 * len(data) + 1)
    response = web.StreamResponse(headers=headers)
    if delivery == "chunked":
        response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(data), 16_384):
        await response.write(data[start:start + 16_384])
    if delivery == "short" and request.transport is not None:
        request.transport.close()  # the rest never comes
        return response
    await response.write_eof()
    return response

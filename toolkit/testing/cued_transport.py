"""The real httpx transport with a cue before each request, to time a real network fault.

A test puts a :class:`~toolkit.testing.tcp_proxy.TcpProxy` between a client and a real server and gives
the client this transport: the cue runs just before each request goes out, so the test can switch the
proxy (``down``, ``drop_replies``, ``forward``) at the moment a given request is sent. Every request
still goes to the real server through the real proxy; nothing here answers or fails on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

Cue = Callable[[httpx.Request], Awaitable[None]]


class CuedTransport(httpx.AsyncBaseTransport):
    def __init__(self, cue: Cue | None = None) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self._cue = cue
        self.sent: list[httpx.Request] = []  # every request, in the order it went out

    def sent_to(self, method: str, path_suffix: str) -> list[httpx.Request]:
        return [r for r in self.sent if r.method == method and r.url.path.endswith(path_suffix)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if self._cue is not None:
            await self._cue(request)
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()

"""A TCP proxy for tests that puts a real network fault between a client and a real server.

It runs its own asyncio loop in a thread (so blocking and async tests can both drive it) and forwards
``127.0.0.1:<port>`` to an upstream address. The fault is switched while connections are open:

- ``forward``: bytes flow both ways (the default).
- ``drop_replies``: what the client sends still reaches the server, but every answer is swallowed.
  A call that lands but whose reply is lost; a later call that hangs (a timeout, not a refusal).
- ``down``: every open connection is closed and new ones are closed at once (an outage).

Independently of the mode, :meth:`TcpProxy.throttle_replies` slows what the server sends back to a given
rate per connection (a slow download), and :meth:`TcpProxy.transport` gives an httpx transport that
sends a client's requests for the upstream through the proxy while the URLs keep naming the upstream
(so a Parse File URL, which names Parse's own address, goes through the proxy too).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Literal

import httpx

from toolkit.testing.ports import free_port

Mode = Literal["forward", "drop_replies", "down"]
_CHUNK = 65_536
# A throttled reply is written in slices this big, each after the pause its size costs at the rate.
_THROTTLE_SLICE = 4_096


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.mode: Mode = "forward"
        self.reply_bytes_per_s: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_mode(self, mode: Mode) -> None:
        """Switch the fault. ``down`` cuts every open connection; so does leaving ``drop_replies``,
        whose connections lost bytes mid-stream and could only hand the client garbage."""
        cut = mode == "down" or (self.mode == "drop_replies" and mode != "drop_replies")
        self.mode = mode
        if cut:
            asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop).result(10)

    def throttle_replies(self, bytes_per_s: float | None) -> None:
        """Send what the server answers at most this fast, per connection (None: full speed)."""
        self.reply_bytes_per_s = bytes_per_s

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that connects to the proxy for every request addressed to the upstream."""
        return _ThroughProxy(self)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside the proxy's loop ---------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()

    async def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer, replies=False),
            self._pipe(upstream_reader, client_writer, replies=True),
            return_exceptions=True,
        )
        for writer in (client_writer, upstream_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        while True:
            data = await reader.read(_CHUNK)
            if not data or self.mode == "down":
                writer.transport.abort()
                return
            if replies and self.mode == "drop_replies":
                continue
            rate = self.reply_bytes_per_s if replies else None
            if rate is None:
                writer.write(data)
                await writer.drain()
                continue
            for start in range(0, len(data), _THROTTLE_SLICE):
                piece = data[start : start + _THROTTLE_SLICE]
                await asyncio.sleep(len(piece) / rate)
                writer.write(piece)
                await writer.drain()


class _ThroughProxy(httpx.AsyncBaseTransport):
    """Requests to the proxy's upstream go to the proxy instead; the URL and Host header stay the same."""

    def __init__(self, proxy: TcpProxy) -> None:
        self._proxy = proxy
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host, port = self._proxy.upstream
        if (request.url.host, request.url.port) == (host, port):
            request.url = request.url.copy_with(host="127.0.0.1", port=self._proxy.port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()

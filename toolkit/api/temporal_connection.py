"""The API's one Temporal client, connected lazily: the API starts (and answers 503) without Temporal."""

from __future__ import annotations

import asyncio
import logging
import time

from temporalio.client import Client
from temporalio.service import RPCError

from toolkit.settings import Settings
from toolkit.temporal.client import connect

log = logging.getLogger(__name__)

# What a failed connect or RPC raises when the server is not there.
TEMPORAL_CONNECT_ERRORS = (RuntimeError, OSError, TimeoutError, RPCError)


class TemporalUnavailable(Exception):
    pass


class TemporalConnection:
    """Connects on first use; after a failure, waits ``retry_interval_s`` before trying again.

    The pause keeps an outage cheap: requests in the meantime get the remembered error at once
    instead of each paying a connect timeout.
    """

    def __init__(
        self, settings: Settings, *, connect_timeout_s: float = 5.0, retry_interval_s: float = 1.0
    ) -> None:
        self._settings = settings
        self._connect_timeout_s = connect_timeout_s
        self._retry_interval_s = retry_interval_s
        self._client: Client | None = None
        self._last_failure: tuple[float, str] | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is not None:
                return self._client
            if self._last_failure and time.monotonic() - self._last_failure[0] < self._retry_interval_s:
                raise TemporalUnavailable(self._last_failure[1])
            try:
                self._client = await asyncio.wait_for(connect(self._settings), self._connect_timeout_s)
            except TEMPORAL_CONNECT_ERRORS as exc:
                reason = f"Temporal at {self._settings.temporal_target} is unreachable: {_short(exc)}"
                # Logged here, once per connect attempt; the API answers a generic 503.
                log.warning("%s", reason)
                self._last_failure = (time.monotonic(), reason)
                raise TemporalUnavailable(reason) from exc
            self._last_failure = None
            return self._client

    def connect_in_background(self) -> None:
        """Try once at startup so the first request does not pay for the connection."""

        async def attempt() -> None:
            try:
                await self.client()
            except TemporalUnavailable:
                log.info("no Temporal at start-up; will retry on the first request")

        self._background = asyncio.get_running_loop().create_task(attempt())

    async def aclose(self) -> None:
        if self._background is not None and not self._background.done():
            self._background.cancel()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"

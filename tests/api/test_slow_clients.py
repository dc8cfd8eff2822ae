"""A client that stops sending its body part-way is refused with 408, and nothing is stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from toolkit.parse import ParseClient
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer

IDLE_TIMEOUT_S = 1.0


async def _stalled_submit(url: str, token: str) -> bytes:
    """Send the headers and the start of a body, then nothing; return the whole answer (the client waits
    up to 30 s). The server closes the connection after it, so the answer is read to the end: one read
    may return the status line and headers without the body (seen in make test on a loaded machine)."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    head = (
        "POST /v1/memory/batch HTTP/1.1\r\n"
        f"Host: {address.netloc}\r\n"
        f"X-Parse-Session-Token: {token}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"memories": [{"content": "the start of a')
    await writer.drain()
    try:
        # The answer closes the connection: read to the end (headers and body may come in two reads).
        answer = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    return answer


async def test_a_stalled_body_is_refused_with_408_and_stores_nothing(
    start_api: Callable[..., ApiServer], user: ParseUser, parse: ParseClient
) -> None:
    api = start_api(BODY_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S))
    answer = await _stalled_submit(api.url, user.session_token)

    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"request body stalled" in answer
    stored = await parse.find(
        BATCH_MEMORY_REQUEST,
        {"user": {"__type": "Pointer", "className": "_User", "objectId": user.object_id}},
        master=True,
    )
    assert stored == []

"""Syntax errors in a streamed body, and bodies that start with a UTF-8 byte-order mark (issue 17).

The body is parsed as it arrives, one memory at a time. A decode error used to be taken for "not all
of it has arrived yet" until the body ended, so a malformed memory followed by more than 8 MiB of body
answered 413 ("memory N over 8 MiB") instead of 422 naming the memory.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
import pytest

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

GOOD = {"content": "a memory", "type": "text", "metadata": {}}


@pytest.fixture
async def reference_path(set_flags: FlagSetter) -> None:
    await set_flags(enabled=True, percent=100)


async def _post(api: ApiServer, user: ParseUser, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120.0) as http:
        return await http.post(
            f"{api.url}/v1/memory/batch",
            content=body,
            headers={"X-Parse-Session-Token": user.session_token, "Content-Type": "application/json"},
        )


async def _requests_of(parse: ParseClient, user: ParseUser) -> int:
    where = {"user": {"__type": "Pointer", "className": "_User", "objectId": user.object_id}}
    return await parse.count(BATCH_MEMORY_REQUEST, where, master=True)


@pytest.mark.parametrize(
    ("malformed", "message"),
    [
        (b'{"content": "x",, "type": "text"}', "Expecting property name enclosed in double quotes"),
        (b'{"content": "x" "type": "text"}', "Expecting ',' delimiter"),
        (b'{"content": "x", "metadata": {"n": tru}}', "Expecting value"),
        (b'{"content": "line\x01break"}', "Invalid control character at"),
    ],
    ids=["double comma", "missing comma", "bad literal", "control character"],
)
async def test_a_malformed_memory_followed_by_a_big_body_is_422_naming_it(
    unpolled_api: ApiServer,
    parse: ParseClient,
    user: ParseUser,
    reference_path: None,
    malformed: bytes,
    message: str,
) -> None:
    # 20 MB of valid memories after the malformed one: the parser took the error for a memory not yet
    # fully arrived and read on, until it held more than its 8 Mi-character guard for one memory.
    tail = b"".join(
        b"," + json.dumps({"content": f"memory {i} " + "y" * 5_000}).encode() for i in range(4_000)
    )
    assert len(tail) > 2 * 8 * 1024 * 1024
    body = b'{"memories": [' + json.dumps(GOOD).encode() + b"," + malformed + tail + b"]}"
    response = await _post(unpolled_api, user, body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"]) == ("json_invalid", ["body", "memories", 1]), error
    assert error["ctx"]["error"].startswith(message), error
    assert await _requests_of(parse, user) == 0


async def test_a_body_with_a_utf8_byte_order_mark_is_accepted(
    unpolled_api: ApiServer, parse: ParseClient, user: ParseUser, reference_path: None
) -> None:
    body = (
        "\ufeff".encode()
        + json.dumps({"memories": [GOOD, {"content": "é, ü, 😀"}]}, ensure_ascii=False).encode()
    )
    response = await _post(unpolled_api, user, body)
    assert response.status_code == 202, response.text
    request = await store.find_batch_request(parse, response.json()["batch_id"])
    assert request is not None and request.object_id is not None
    stored = await store.fetch_batch_memory_request_from_parse(
        parse, unpolled_api.settings, request.object_id
    )
    assert stored is not None and stored.memories is not None
    assert [m.content for m in stored.memories] == ["a memory", "é, ü, 😀"]
    await store.delete_batch_request(parse, request.object_id)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"memories": [GOOD]}).encode("utf-16"),  # with its own byte-order mark
        json.dumps({"memories": [GOOD]}).encode("utf-16-le"),
        b"\xef\xbb\xbf\xef\xbb\xbf" + json.dumps({"memories": [GOOD]}).encode(),  # a second mark is text
    ],
    ids=["utf-16", "utf-16-le", "two marks"],
)
async def test_a_body_in_another_encoding_is_422(
    unpolled_api: ApiServer, parse: ParseClient, user: ParseUser, reference_path: None, body: bytes
) -> None:
    response = await _post(unpolled_api, user, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert await _requests_of(parse, user) == 0

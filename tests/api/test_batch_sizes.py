"""One file or chunks, decided on the memories' real bytes; a 202 batch can always be stored and read back.

Issue 17: the decision used to estimate a memory as its content length + 256 bytes, ignoring metadata,
while the chunk writer splits on real bytes. Document-sized memories that fit one chunk answered 500,
and memories with large metadata became one file too big to upload or to inflate. Here both cases go
through a real API process at their real sizes; the batch is then read back with the worker's own
readers (no worker polls the API's task queue, so nothing is written to Parse as Memory objects).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.codec import ChunkHeader, chunk_line
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

# Parse Server's default maxUploadSize ("20mb"); the local stack allows more, production may not.
PARSE_DEFAULT_UPLOAD_LIMIT = 20 * 1024 * 1024


@pytest.fixture
async def reference_path(set_flags: FlagSetter) -> None:
    await set_flags(enabled=True, percent=100)


@pytest.fixture
async def temporal(settings: Settings) -> AsyncIterator[Client]:
    yield await connect(settings)


def _auth(user: ParseUser) -> dict[str, str]:
    return {"X-Parse-Session-Token": user.session_token, "Content-Type": "application/json"}


def document(index: int, chars: int) -> dict[str, Any]:
    """A memory of exactly ``chars`` ASCII characters of content (words of a seeded generator)."""
    rng = random.Random(index)
    words = " ".join(rng.choice(("memory", "batch", "parse", "temporal", "chunk")) for _ in range(chars // 4))
    return {"content": (words + "x" * chars)[:chars], "type": "document", "metadata": {"index": index}}


def annotated(index: int, metadata_chars: int) -> dict[str, Any]:
    """A short memory with ~``metadata_chars`` of metadata (an attached document, as clients send)."""
    paragraph = f"paragraph of memory {index}: " + "lorem ipsum dolor sit amet " * 40
    text = (paragraph * (metadata_chars // len(paragraph) + 1))[:metadata_chars]
    return {"content": f"memory {index}", "type": "text", "metadata": {"index": index, "attachment": text}}


async def streamed(make: Callable[[int], dict[str, Any]], count: int) -> AsyncIterator[bytes]:
    """``{"memories": [...]}`` in pieces of ~1 MB, never built whole."""
    yield b'{"memories": ['
    piece: list[bytes] = []
    size = 0
    for index in range(count):
        line = (b"," if index else b"") + json.dumps(make(index), ensure_ascii=False).encode()
        piece.append(line)
        size += len(line)
        if size > 1 << 20:
            yield b"".join(piece)
            piece, size = [], 0
    yield b"".join(piece) + b"]}"


def encoded_size(memories: Iterator[dict[str, Any]]) -> int:
    """The memories' JSON as files store it: compact UTF-8, one line each."""
    return sum(len(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode()) + 1 for m in memories)


async def _submit(api: ApiServer, user: ParseUser, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=900.0) as http:
        return await http.post(f"{api.url}/v1/memory/batch", content=body, headers=_auth(user))


async def _discard(parse: ParseClient, temporal: Client, accepted: dict[str, Any]) -> None:
    await temporal.get_workflow_handle(accepted["workflow_id"]).terminate("test done")
    request = await store.find_batch_request(parse, accepted["batch_id"])
    assert request is not None and request.object_id is not None
    await store.delete_batch_request(parse, request.object_id)


@pytest.mark.timeout(600)
async def test_document_sized_memories_that_fit_one_chunk_are_one_file(
    unpolled_api: ApiServer,
    parse: ParseClient,
    temporal: Client,
    settings: Settings,
    user: ParseUser,
    reference_path: None,
) -> None:
    count, chars = 4_000, 4_000
    size = encoded_size(document(i, chars) for i in range(count))
    # The premise: the old estimate (content + 256 each) said "over one chunk"; the real bytes fit.
    assert count * (chars + 256) > settings.batch_chunk_max_bytes >= size, size
    response = await _submit(unpolled_api, user, streamed(lambda i: document(i, chars), count))
    assert response.status_code == 202, response.text
    accepted = response.json()
    request = await store.find_batch_request(parse, accepted["batch_id"])
    assert request is not None and request.object_id is not None
    assert request.batch_data_file is not None and not request.batch_chunk_files, "one file, not chunks"

    # Read back exactly as the worker reads it.
    stored = await store.fetch_batch_memory_request_from_parse(parse, settings, request.object_id)
    assert stored is not None and stored.memories is not None
    assert [m.model_dump(mode="json") for m in stored.memories] == [document(i, chars) for i in range(count)]
    await _discard(parse, temporal, accepted)


@pytest.mark.timeout(900)
async def test_memories_with_large_metadata_are_chunked_on_their_real_bytes_and_read_back(
    unpolled_api: ApiServer,
    parse: ParseClient,
    temporal: Client,
    settings: Settings,
    user: ParseUser,
    reference_path: None,
) -> None:
    count, metadata_chars = 4_000, 150_000
    response = await _submit(unpolled_api, user, streamed(lambda i: annotated(i, metadata_chars), count))
    assert response.status_code == 202, response.text
    accepted = response.json()
    request = await store.find_batch_request(parse, accepted["batch_id"])
    assert request is not None and request.batch_metadata is not None
    assert request.batch_data_file is None
    files = request.batch_chunk_files or []
    assert len(files) >= 2 and request.batch_metadata.total_chunks == len(files)
    raw_bytes = request.batch_metadata.total_size_bytes
    print(f"\n{count:,} memories, {raw_bytes:,} bytes of JSON: {len(files)} chunks")

    # Every chunk file fits Parse's default upload limit, inflates within the worker's limits, and holds
    # exactly the memories sent, in order (read with the worker's own chunk reader).
    next_index = 0
    for chunk_num in range(len(files)):
        chunk = store.chunk_of(request, chunk_num)
        assert chunk.header == ChunkHeader(request.batch_id, chunk_num, next_index)
        data = await store.download_chunk(parse, request, chunk)
        assert len(data) <= PARSE_DEFAULT_UPLOAD_LIMIT
        inflated = len(gzip.decompress(data))
        assert inflated <= settings.batch_chunk_max_bytes, (chunk_num, inflated)
        for index, memory in store.chunk_memories(data, chunk, settings, start=next_index):
            assert memory.model_dump(mode="json") == annotated(index, metadata_chars)
            next_index += 1
    assert next_index == count
    await _discard(parse, temporal, accepted)


@pytest.mark.timeout(300)
async def test_a_memory_at_the_limit_is_accepted_and_written(
    api: ApiServer, parse: ParseClient, settings: Settings, user: ParseUser, reference_path: None
) -> None:
    """The per-memory limit leaves room for what the writer adds, even with a 64-character org id."""
    limit = store.max_memory_bytes(settings)
    memory: dict[str, Any] = {"content": "at the limit", "type": "text", "metadata": {"pad": ""}}
    memory["metadata"]["pad"] = "p" * (limit - len(chunk_line(memory)))
    assert len(chunk_line(memory)) == limit
    body = json.dumps({"memories": [memory], "organization_id": "o" * 64}).encode()
    response = await _submit(api, user, body)
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]
    async with httpx.AsyncClient(timeout=30.0) as http:
        for _ in range(600):
            status = (await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=_auth(user))).json()
            if status["status"] in ("completed", "partial", "failed"):
                break
            await asyncio.sleep(0.2)
    assert (status["status"], status["successful"], status["errors"]) == ("completed", 1, []), status
    assert await count_memories(parse, batch_id) == 1


async def test_a_memory_too_big_for_one_write_is_413_naming_it_and_nothing_is_stored(
    unpolled_api: ApiServer, parse: ParseClient, user: ParseUser, reference_path: None
) -> None:
    # 2.2 million 4-byte characters: under the parser's 8 Mi-character guard, 8.8 MB as stored JSON,
    # more than one write to Parse may carry (the writer would refuse it after the 202).
    big = {"content": "too big", "metadata": {"emoji": "\U0001f600" * 2_200_000}}
    body = json.dumps({"memories": [{"content": "fine"}, big]}, ensure_ascii=False).encode()
    key = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=120.0) as http:
        response = await http.post(
            f"{unpolled_api.url}/v1/memory/batch",
            content=body,
            headers={**_auth(user), "Idempotency-Key": key},
        )
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert detail.startswith("memory 1 is 8,800,"), detail
    assert "bytes per memory" in detail, detail
    where = {"user": {"__type": "Pointer", "className": "_User", "objectId": user.object_id}}
    assert await parse.count(BATCH_MEMORY_REQUEST, where, master=True) == 0

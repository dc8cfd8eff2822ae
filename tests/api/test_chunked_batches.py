"""Chunked batches through the API (issue 10): streamed in, stored as chunk files, written per chunk.

A real API process and a real worker process (both running the code under test, on a task queue of
their own) take a batch sent with chunked transfer encoding, so the API never learns its size up
front. The peak resident memory (``VmHWM``) of both processes is read from ``/proc``.

``CHUNKED_TEST_MEMORIES`` (default 20,000) sets the size of the big batch; the 100,000-memory run is
``CHUNKED_TEST_MEMORIES=100000 pytest tests/api/test_chunked_batches.py -k through_the_api -s``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from temporalio.client import Client

from tests.fixtures.worker_process import start_worker_process, wait_until
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.cleanup import local_files_dir
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

BIG = int(os.environ.get("CHUNKED_TEST_MEMORIES", "20000"))
# Wait bounds, not timing assertions.
WAIT_S = 1800.0
RSS_LIMIT_BYTES = 300 * 1024 * 1024
HISTORY_LIMIT_BYTES = 50 * 1024


def _auth(user: ParseUser) -> dict[str, str]:
    return {"X-Parse-Session-Token": user.session_token}


def memory_line(index: int) -> dict[str, Any]:
    """A memory of ~300 bytes whose content names its index (so a mix-up could never pass unseen)."""
    return {
        "content": f"memory {index:07d} " + "lorem ipsum dolor sit amet " * 10,
        "type": "text",
        "metadata": {"i": index, "source": "chunked-test"},
    }


async def streamed_body(
    count: int, *, tail: bytes = b"]}", make: Callable[[int], Any] = memory_line
) -> AsyncIterator[bytes]:
    """The body in pieces of ~64 KB (chunked transfer encoding: no Content-Length), never built whole."""
    yield b'{"memories": ['
    piece: list[bytes] = []
    size = 0
    for index in range(count):
        line = (b"," if index else b"") + json.dumps(make(index)).encode()
        piece.append(line)
        size += len(line)
        if size > 64 * 1024:
            yield b"".join(piece)
            piece, size = [], 0
    yield b"".join(piece) + tail


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.fixture(scope="module")
def queue() -> str:
    return f"chunked-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def chunk_api(start_api: Callable[..., ApiServer], queue: str) -> ApiServer:
    """The API with the default chunk settings, starting workflows on this module's task queue."""
    return start_api(TEMPORAL_TASK_QUEUE=queue)


@pytest.fixture(scope="module")
def tiny_chunk_api(start_api: Callable[..., ApiServer], queue: str) -> ApiServer:
    """Chunks of 5 memories and at most 12 memories a batch: the streaming path with small bodies."""
    return start_api(TEMPORAL_TASK_QUEUE=queue, BATCH_CHUNK_MEMORIES="5", MAX_BATCH_MEMORIES="12")


@pytest.fixture(scope="module")
def worker_process(
    settings: Settings, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    import dataclasses

    log = tmp_path_factory.mktemp("chunked") / "worker.log"
    proc, ready = start_worker_process(dataclasses.replace(settings, temporal_task_queue=queue), log)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.1)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
async def temporal(settings: Settings) -> AsyncIterator[Client]:
    yield await connect(settings)


@pytest.fixture
async def reference_path(set_flags: FlagSetter) -> None:
    """Every user on the reference path (chunking is the reference path's; legacy batches are whole)."""
    await set_flags(enabled=True, percent=100)


async def _wait_finished(
    http: httpx.AsyncClient, api: ApiServer, user: ParseUser, batch_id: str
) -> dict[str, Any]:
    last: dict[str, Any] = {}
    seen: list[int] = []

    async def finished() -> bool:
        nonlocal last
        response = await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=_auth(user))
        assert response.status_code == 200, response.text
        last = response.json()
        seen.append(last["processed"])
        return last["status"] in ("completed", "partial", "failed")

    await wait_until(finished, WAIT_S, f"batch {batch_id}")
    # Progress from all chunks only ever adds up: it never goes back.
    assert seen == sorted(seen), seen
    return last


def _files_of(settings: Settings, batch_id: str) -> list[str]:
    directory = local_files_dir(settings)
    assert directory is not None
    return [path.name for path in directory.iterdir() if batch_id in path.name]


@pytest.mark.timeout(WAIT_S + 600)
async def test_big_batch_through_the_api_completes_exactly_in_bounded_memory(
    chunk_api: ApiServer,
    worker_process: subprocess.Popen[bytes],
    temporal: Client,
    parse: ParseClient,
    user: ParseUser,
    settings: Settings,
    reference_path: None,
) -> None:
    chunk = chunk_api.settings.batch_chunk_memories
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=600.0) as http:
        response = await http.post(
            f"{chunk_api.url}/v1/memory/batch",
            content=streamed_body(BIG),
            headers={"Content-Type": "application/json", **_auth(user)},
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        submitted_s = time.monotonic() - started
        assert (accepted["storage"], accepted["total_memories"]) == ("reference", BIG)
        status = await _wait_finished(http, chunk_api, user, accepted["batch_id"])
    elapsed_s = time.monotonic() - started
    assert (status["status"], status["processed"], status["successful"], status["failed"]) == (
        "completed",
        BIG,
        BIG,
        0,
    )
    batch_id = accepted["batch_id"]
    assert await count_memories(parse, batch_id) == BIG

    request = await store.find_batch_request(parse, batch_id)
    assert request is not None and request.batch_metadata is not None
    chunks = math.ceil(BIG / chunk)
    assert request.batch_metadata.total_chunks == chunks
    assert request.batch_metadata.chunk_memory_counts == [chunk] * (chunks - 1) + [BIG - chunk * (chunks - 1)]
    assert request.batch_data_file is None and len(request.batch_chunk_files or []) == chunks
    # Each chunk's counters, and their sum, are exact.
    progress = request.chunk_progress or {}
    assert sorted(progress) == sorted(f"c{k}" for k in range(chunks))
    assert sum(entry["processed"] for entry in progress.values()) == BIG

    description = await temporal.get_workflow_handle(accepted["workflow_id"]).describe()
    info = description.raw_description.workflow_execution_info
    worker_rss = vm_hwm_bytes(worker_process.pid)
    api_rss = vm_hwm_bytes(chunk_api.process.pid)
    print(
        f"\n{BIG:,} memories in {chunks} chunks of {chunk:,}: submitted in {submitted_s:.1f} s, "
        f"completed in {elapsed_s:.1f} s ({BIG / elapsed_s:,.0f} memories/s); history "
        f"{info.history_size_bytes:,} bytes / {info.history_length} events; peak RSS API "
        f"{api_rss / 2**20:.0f} MiB, worker {worker_rss / 2**20:.0f} MiB"
    )
    assert info.history_size_bytes < HISTORY_LIMIT_BYTES
    # Per chunk: its activity's three events and the workflow task that collects it (three more),
    # plus a fixed few: the history grows with chunks, not memories.
    assert info.history_length <= 6 * chunks + 30
    assert api_rss < RSS_LIMIT_BYTES, f"API peak RSS {api_rss:,} bytes"
    assert worker_rss < RSS_LIMIT_BYTES, f"worker peak RSS {worker_rss:,} bytes"
    await store.delete_batch_file(parse, request.object_id or "")
    assert _files_of(settings, batch_id) == []


async def test_small_chunks_stream_in_and_complete(
    tiny_chunk_api: ApiServer,
    worker_process: subprocess.Popen[bytes],
    parse: ParseClient,
    user: ParseUser,
    settings: Settings,
    reference_path: None,
) -> None:
    key = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=60.0) as http:
        response = await http.post(
            f"{tiny_chunk_api.url}/v1/memory/batch",
            content=streamed_body(12),
            headers={"Content-Type": "application/json", "Idempotency-Key": key, **_auth(user)},
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]
        assert batch_id == idempotent_batch_id(user.object_id, key)
        status = await _wait_finished(http, tiny_chunk_api, user, batch_id)
        # The same key again: the first answer, nothing stored twice (decided at the first full chunk).
        again = await http.post(
            f"{tiny_chunk_api.url}/v1/memory/batch",
            content=streamed_body(12),
            headers={"Content-Type": "application/json", "Idempotency-Key": key, **_auth(user)},
        )
        assert again.status_code == 202 and again.json()["batch_id"] == batch_id
        assert again.headers.get("Idempotent-Replayed") == "true"
    assert (status["status"], status["successful"]) == ("completed", 12)
    request = await store.find_batch_request(parse, batch_id)
    assert request is not None and request.batch_metadata is not None
    assert request.batch_metadata.chunk_memory_counts == [5, 5, 2]
    assert len(_files_of(settings, batch_id)) == 3
    assert await count_memories(parse, batch_id) == 12
    where = {"batchId": batch_id}
    assert await parse.count(BATCH_MEMORY_REQUEST, where, master=True) == 1
    await store.delete_batch_request(parse, request.object_id or "")
    assert _files_of(settings, batch_id) == []


def _invalid_at_8(index: int) -> dict[str, Any]:
    return {"content": 42} if index == 8 else memory_line(index)


# Refused bodies that passed the first chunk (5 memories), so chunk files were uploaded already.
REFUSED = [
    ("malformed after two chunks", dict(count=11, tail=b",{oops"), 422, ["body", "memories", 11]),
    ("body ends inside the list", dict(count=11, tail=b""), 422, ["body", None]),
    ("invalid memory 8", dict(count=11, make=_invalid_at_8), 422, ["body", "memories", 8, "content"]),
    ("too many memories", dict(count=20), 413, "too many memories: 20; the limit is 12 per batch"),
    ("unknown field after the memories", dict(count=11, tail=b'], "bogus": 1}'), 422, ["body", "bogus"]),
]


@pytest.mark.parametrize(("case", "body", "code", "expected"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_refused_streamed_body_names_the_fault_and_leaves_no_file(
    tiny_chunk_api: ApiServer,
    parse: ParseClient,
    user: ParseUser,
    settings: Settings,
    reference_path: None,
    case: str,
    body: dict[str, Any],
    code: int,
    expected: Any,
) -> None:
    key = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=60.0) as http:
        response = await http.post(
            f"{tiny_chunk_api.url}/v1/memory/batch",
            content=streamed_body(**body),
            headers={"Content-Type": "application/json", "Idempotency-Key": key, **_auth(user)},
        )
    assert response.status_code == code, response.text
    detail = response.json()["detail"]
    if code == 413:
        assert detail == expected
    else:
        locs = [error["loc"] for error in detail]
        if expected[1] is None:  # a JSON error: its place in the body, as a character offset
            assert any(loc[0] == "body" and isinstance(loc[1], int) for loc in locs), detail
        else:
            assert expected in locs, detail
    batch_id = idempotent_batch_id(user.object_id, key)
    assert await parse.count(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, master=True) == 0
    assert _files_of(settings, batch_id) == [], f"{case}: chunk files left behind"

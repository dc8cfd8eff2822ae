"""Failure paths: missing objects, unusable files (not retryable), Parse unreachable (retryable), no orphans.

Files are broken for real (garbage uploaded to Parse, a file deleted, a tiny decompression limit); network
faults are real too: a TcpProxy in front of Parse refuses or swallows the chosen request, switched by a
cue as it goes out (toolkit/testing/cued_transport.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.fixtures.parse_proxy import via_proxy
from tests.fixtures.worker_process import wait_until
from toolkit.parse import ParseClient, ParseUnavailable
from toolkit.parse import batch_requests as store
from toolkit.parse.cleanup import local_files_dir
from toolkit.parse.models import MemoryItem
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.testing.cued_transport import CuedTransport
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import chitchat_memories

CreateBatch = Callable[..., Awaitable[str]]


def _items(memories: list[dict[str, Any]]) -> list[MemoryItem]:
    return [MemoryItem.model_validate(m) for m in memories]


async def _attach(parse: ParseClient, request_id: str, data: bytes, unique: str) -> None:
    """Upload ``data`` as a Parse File and make it the request's batch file (the original is deleted)."""
    await store.delete_batch_file(parse, request_id)
    uploaded = await parse.upload_file(f"bad{unique}.json.gz", data, "application/gzip", master=True)
    await parse.update_object(
        "BatchMemoryRequest",
        request_id,
        {"batchDataFile": {"__type": "File", "name": uploaded["name"]}},
        master=True,
    )


async def test_missing_object_gives_none(parse: ParseClient, settings: Settings, unique: str) -> None:
    assert await store.fetch_batch_memory_request_from_parse(parse, settings, f"none{unique}") is None
    assert (
        await store.fetch_batch_memory_request_from_parse(
            parse, settings, f"none{unique}", with_memories=False
        )
        is None
    )
    with pytest.raises(ValueError):  # an id that would change the URL path is refused, not looked up
        await store.fetch_batch_memory_request_from_parse(parse, settings, "../classes/_User")


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x00\x01 definitely not gzip \xff" * 10, id="not-gzip"),
        pytest.param(gzip.compress(b"{not json")[:-9], id="truncated-gzip"),
        pytest.param(gzip.compress(b'{"version": 1, "memories": [{"content": 5}]}'), id="invalid-memory"),
        pytest.param(gzip.compress(b'{"version": 99, "memories": []}'), id="wrong-version"),
    ],
)
async def test_a_corrupt_file_is_a_batch_file_error(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch, unique: str, garbage: bytes
) -> None:
    request_id = await create_batch()
    await _attach(parse, request_id, garbage, unique)

    with pytest.raises(store.BatchFileError) as caught:
        await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)
    assert request_id in str(caught.value)
    # Without the memories the request is still readable (e.g. to mark it failed).
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and request.memories is None


async def test_a_file_over_the_decompression_limit_is_a_batch_file_error(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch(chitchat_memories(200))
    tiny = dataclasses.replace(settings, max_decompressed_bytes=4_096)

    with pytest.raises(store.BatchFileError) as caught:
        await store.fetch_batch_memory_request_from_parse(parse, tiny, request_id)
    assert "decompression limit" in str(caught.value)
    assert "4,096" in str(caught.value)
    # The same file under the real limit is fine.
    request = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)
    assert request is not None and request.memories is not None and len(request.memories) == 200


async def test_a_gzip_bomb_is_refused_at_the_limit(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch, unique: str
) -> None:
    # 64 MiB of one repeated byte inside a valid batch document: ~64 KiB on the wire.
    bomb = gzip.compress(b'{"version":1,"memories":[{"content":"' + b"a" * (64 << 20) + b'"}]}')
    request_id = await create_batch()
    await _attach(parse, request_id, bomb, unique)
    with pytest.raises(store.BatchFileError, match="decompression limit"):
        await store.fetch_batch_memory_request_from_parse(
            parse, dataclasses.replace(settings, max_decompressed_bytes=1 << 20), request_id
        )


async def test_a_deleted_file_is_a_batch_file_error(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and request.batch_data_file is not None
    await parse.delete_file(request.batch_data_file.name)

    with pytest.raises(store.BatchFileError, match="missing"):
        await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)


async def test_a_reference_request_without_a_file_is_a_batch_file_error(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    assert await store.delete_batch_file(parse, request_id) is True
    with pytest.raises(store.BatchFileError, match="no batch file"):
        await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)


async def test_a_finished_request_whose_file_was_cleaned_up_reads_without_memories(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    # A retried activity re-reads a request that already completed: it must see "completed", not an error.
    request_id = await create_batch()
    await store.update_batch_request_completion(
        parse, request_id, status="completed", completed_at=datetime.now(UTC), processing_duration_ms=1
    )
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and request.batch_data_file is not None
    await parse.delete_file(request.batch_data_file.name)  # the file is gone, the reference stays
    request = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)
    assert request is not None and request.status == "completed" and request.memories is None

    await store.delete_batch_file(parse, request_id)  # the reference goes too
    request = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)
    assert request is not None and request.batch_data_file is None and request.memories is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_parse_unreachable_is_parse_unavailable(
    settings: Settings, user: ParseUser, unique: str
) -> None:
    down = dataclasses.replace(settings, parse_server_url=f"http://127.0.0.1:{_closed_port()}/parse")
    async with ParseClient(down, retry_delays_s=()) as client:
        with pytest.raises(ParseUnavailable):
            await store.fetch_batch_memory_request_from_parse(client, down, "someRequest1")
        with pytest.raises(ParseUnavailable):
            await store.create_batch_memory_request_in_parse(
                client,
                down,
                batch_id=f"down{unique}",
                submission=store.Submission(user.object_id),
                memories=_items(chitchat_memories(3)),
            )
        with pytest.raises(ParseUnavailable):
            await store.update_batch_request_progress(
                client, "someRequest1", processed=1, successful=1, failed=0
            )
        with pytest.raises(ParseUnavailable):
            await store.find_batch_request(client, f"down{unique}")


async def test_parse_unavailable_names_no_address_and_logs_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The message reaches users (a batch-level failure, a chunk's "not processed" errors): the address
    of the Parse Server stays in the log."""
    port = _closed_port()
    down = dataclasses.replace(settings, parse_server_url=f"http://127.0.0.1:{port}/parse")
    async with ParseClient(down, retry_delays_s=()) as client:
        with pytest.raises(ParseUnavailable) as unreachable:
            await client.get_object("BatchMemoryRequest", "someRequest1", master=True)
        with pytest.raises(ParseUnavailable) as download:
            await client.download(f"http://127.0.0.1:{port}/parse/files/{down.parse_app_id}/x.json.gz")
    for error in (unreachable.value, download.value):
        assert str(error) == "Parse Server unreachable (ConnectError)"
    assert f"Parse Server at http://127.0.0.1:{port}/parse unreachable: ConnectError" in caplog.text


async def test_a_download_that_cannot_connect_is_retryable_not_a_file_error(
    settings: Settings, create_batch: CreateBatch, parse_proxy: TcpProxy
) -> None:
    request_id = await create_batch()

    async def cue(request: httpx.Request) -> None:
        # The object is read; its file's host refuses the connection (the proxy goes down for it).
        downloading = request.method == "GET" and "/files/" in request.url.path
        parse_proxy.set_mode("down" if downloading else "forward")

    transport = CuedTransport(cue)
    async with ParseClient(
        via_proxy(settings, parse_proxy), transport=transport, retry_delays_s=(0.01,)
    ) as client:
        with pytest.raises(ParseUnavailable):
            await store.fetch_batch_memory_request_from_parse(client, settings, request_id)
    assert len([r for r in transport.sent if "/files/" in r.url.path]) == 2  # the download and its retry


def _batch_files(settings: Settings, batch_id: str) -> list[str]:
    directory = local_files_dir(settings)
    assert directory is not None, "the local stack's files directory must exist"
    return [path.name for path in directory.iterdir() if batch_id in path.name]


async def test_a_create_that_cannot_connect_leaves_no_orphan_file(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str, parse_proxy: TcpProxy
) -> None:
    """The upload goes through; the create's connection is refused (the proxy is down for that one
    request). The create never reached Parse, so the uploaded file must be deleted.

    A create that Parse itself refuses (a schema drift, error 111) is in the fault suite
    (tests/faults/test_store_faults.py): it changes the schema, so it runs on a stack of its own."""
    batch_id = f"orphan{unique}"
    files_at_create: list[list[str]] = []

    async def cue(request: httpx.Request) -> None:
        creating = request.method == "POST" and request.url.path.endswith(f"/classes/{BATCH_MEMORY_REQUEST}")
        if creating:
            files_at_create.append(_batch_files(settings, batch_id))
        parse_proxy.set_mode("down" if creating else "forward")

    async with ParseClient(
        via_proxy(settings, parse_proxy), transport=CuedTransport(cue), retry_delays_s=()
    ) as client:
        with pytest.raises(ParseUnavailable):
            await store.create_batch_memory_request_in_parse(
                client,
                settings,
                batch_id=batch_id,
                submission=store.Submission(user.object_id),
                memories=_items(chitchat_memories(10)),
            )
    assert [len(names) for names in files_at_create] == [1], "the file was uploaded before the create"
    assert _batch_files(settings, batch_id) == []
    assert await parse.count(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, master=True) == 0


async def test_a_create_whose_answer_was_lost_keeps_its_file_and_returns_the_request(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str, parse_proxy: TcpProxy
) -> None:
    """Parse stores the request but its answer is swallowed; the proxy cuts the waiting connection once
    the request exists (as a dying load balancer would). The store must find the request it created."""
    batch_id = f"lost{unique}"
    memories = _items(chitchat_memories(10))
    cut: list[asyncio.Task[None]] = []

    async def cut_once_created() -> None:
        async def created() -> bool:
            return await parse.count(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, master=True) == 1

        await wait_until(created, 60, "the request stored behind the lost answer")
        parse_proxy.set_mode("forward")  # leaving drop_replies cuts the connection that waits

    async def cue(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith(f"/classes/{BATCH_MEMORY_REQUEST}"):
            parse_proxy.set_mode("drop_replies")
            cut.append(asyncio.create_task(cut_once_created()))

    async with ParseClient(
        via_proxy(settings, parse_proxy), transport=CuedTransport(cue), retry_delays_s=()
    ) as client:
        request_id = await store.create_batch_memory_request_in_parse(
            client,
            settings,
            batch_id=batch_id,
            submission=store.Submission(user.object_id),
            memories=memories,
        )
    await asyncio.gather(*cut)
    try:
        assert len(cut) == 1, "the create's answer was not lost"
        request = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)
        assert request is not None and request.batch_id == batch_id
        assert request.memories == memories
        assert await parse.count(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, master=True) == 1
        assert len(_batch_files(settings, batch_id)) == 1
    finally:
        await store.delete_batch_request(parse, request_id)

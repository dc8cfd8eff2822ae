"""A chunk that gives up makes its batch ``partial``, counted exactly from Parse (issue 10).

Before, one chunk exhausting its retries failed the whole batch, even when every other chunk had
written all of its memories. Here a real worker runs a four-chunk batch in which one chunk holds an
invalid memory half way (the file is damaged after part of the chunk is written) and another chunk's
file is gone; the two healthy chunks complete, and the totals match the Memory objects in Parse.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchSummary
from toolkit.temporal.starter import start_batch_workflow_with_reference
from toolkit.temporal.worker import build_worker
from toolkit.validation.workloads import synthetic_memories

CHUNK = 100
CHUNKS = 4
BROKEN_AT = 160  # chunk 1, its 61st memory: content that is not a string
GONE_CHUNK = 2


@pytest.mark.timeout(300)
async def test_a_chunk_that_gives_up_leaves_a_partial_batch_counted_from_parse(
    temporal: Client, parse: ParseClient, worker_settings: Settings, user: ParseUser
) -> None:
    # Serial writes of 10: the damaged chunk writes its first memories before it reaches the bad one.
    settings = dataclasses.replace(
        worker_settings, batch_chunk_memories=CHUNK, writer_batch_size=10, writer_concurrency=1
    )
    batch_id = uuid.uuid4().hex
    writer = store.ChunkedBatchWriter(parse, settings, batch_id)
    for index, memory in enumerate(synthetic_memories(CHUNK * CHUNKS, content_bytes=100)):
        plain = MemoryItem.model_validate(memory).model_dump(mode="json")
        if index == BROKEN_AT:
            plain["content"] = 12345  # the API never stores this; a damaged file can hold it
        await writer.add(plain)
    chunks = await writer.finish()
    assert len(chunks) == CHUNKS
    request_id = await store.create_chunked_batch_memory_request(
        parse, settings, batch_id=batch_id, submission=store.Submission(user.object_id), chunks=chunks
    )
    await parse.delete_file(chunks[GONE_CHUNK].file.name)

    async with build_worker(temporal, settings, parse):
        workflow_id = await start_batch_workflow_with_reference(
            temporal, parse, settings, request_id=request_id, batch_id=batch_id
        )
        handle = temporal.get_workflow_handle(workflow_id, result_type=BatchSummary)
        summary = await handle.result()

    written = await count_memories(parse, batch_id)
    damaged_written = written - 2 * CHUNK  # chunks 0 and 3 are whole
    assert 0 < damaged_written <= BROKEN_AT - CHUNK, f"{damaged_written} of the damaged chunk written"
    assert (summary.status, summary.total, summary.successful, summary.failed) == (
        "partial",
        CHUNK * CHUNKS,
        written,
        CHUNK * CHUNKS - written,
    )

    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None
    assert (request.status, request.processed_count, request.success_count, request.fail_count) == (
        "partial",
        CHUNK * CHUNKS,
        written,
        CHUNK * CHUNKS - written,
    )
    # One error per memory not written, each naming the chunk that gave up; none for a written one.
    errors = []
    while page := await store.find_batch_errors(parse, batch_id, offset=len(errors), limit=100):
        errors.extend(page)
    assert request.error_count == len(errors) == CHUNK * CHUNKS - written
    by_index = {e.index: e.error for e in errors}
    assert set(by_index) == set(range(CHUNK + damaged_written, 3 * CHUNK))
    assert by_index[BROKEN_AT].startswith("not processed: chunk 1 gave up")
    assert "CorruptBatchFile" in by_index[BROKEN_AT]
    assert by_index[GONE_CHUNK * CHUNK].startswith("not processed: chunk 2 gave up")
    assert "12345" not in by_index[BROKEN_AT], "error texts carry no memory content"

    # The history records the patch, so a replay of this run takes the same branch.
    history = await handle.fetch_history()
    markers = [
        e.marker_recorded_event_attributes.SerializeToString()
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]
    assert any(b"chunk-failure-partial-v1" in marker for marker in markers), markers
    await store.delete_batch_request(parse, request_id)

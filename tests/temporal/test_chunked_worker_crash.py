"""Chunked batches under faults (issues 10, 11): a worker killed mid-batch; progress never goes back.

The kill test stores a 2,000-memory batch as four chunk files and runs it on worker processes of its
own; the first is SIGKILLed while chunk activities are half way, a second one finishes the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from tests.fixtures.long_ago import LONG_AGO, days_since_2001
from tests.fixtures.parse_proxy import parse_url_via
from tests.fixtures.worker_process import start_worker_process, wait_until
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.memory_writer import MemoryWriter, count_memories
from toolkit.parse.models import MemoryItem
from toolkit.parse.schema import BATCH_MEMORY_REQUEST, MEMORY
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.activities import BatchActivities
from toolkit.temporal.batch_types import BatchReference, BatchSummary
from toolkit.temporal.starter import start_batch_workflow_with_reference
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import synthetic_memories

TOTAL = 2000
CHUNK = 500


# Small serial writes, so a chunk lasts long enough for the test to see it 100 memories in and hold it
# there (a chunk of 500 takes ~100 writes). Two chunks at a time.
SLOW_WRITES = {"WRITER_BATCH_SIZE": "5", "WRITER_CONCURRENCY": "1", "BATCH_CHUNK_WINDOW": "2"}


async def store_chunked(
    parse: ParseClient, settings: Settings, user: ParseUser, count: int
) -> tuple[str, str]:
    """Store ``count`` memories as a chunked batch of CHUNK-memory chunks; (request id, batch id)."""
    batch_id = uuid.uuid4().hex
    writer = store.ChunkedBatchWriter(
        parse, dataclasses.replace(settings, batch_chunk_memories=CHUNK), batch_id
    )
    for memory in synthetic_memories(count, content_bytes=300):
        await writer.add(MemoryItem.model_validate(memory).model_dump(mode="json"))
    chunks = await writer.finish()
    request_id = await store.create_chunked_batch_memory_request(
        parse, settings, batch_id=batch_id, submission=store.Submission(user.object_id), chunks=chunks
    )
    return request_id, batch_id


@pytest.mark.timeout(1200)
async def test_killed_worker_mid_chunked_batch_loses_and_duplicates_nothing(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    user: ParseUser,
    tmp_path: Path,
    parse_proxy: TcpProxy,
) -> None:
    # The first worker reaches Parse through a real proxy, so the test can hold its writes mid-chunk.
    proxied = {"PARSE_SERVER_URL": parse_url_via(worker_settings, parse_proxy)}
    first, ready = start_worker_process(worker_settings, tmp_path / "first.log", **SLOW_WRITES, **proxied)

    async def first_ready() -> bool:
        return ready.exists()

    await wait_until(first_ready, 60, "the first worker")
    request_id, batch_id = await store_chunked(parse, worker_settings, user, TOTAL)
    workflow_id = await start_batch_workflow_with_reference(
        temporal, parse, worker_settings, request_id=request_id, batch_id=batch_id
    )
    handle = temporal.get_workflow_handle(workflow_id, result_type=BatchSummary)

    async def chunk_checkpoints() -> list[int]:
        description = await handle.describe()
        return [
            json.loads(pending.heartbeat_details.payloads[0].data).get("next", 0)
            for pending in description.raw_description.pending_activities
            if pending.heartbeat_details.payloads
        ]

    async def a_chunk_100_in() -> bool:
        for chunk in range(TOTAL // CHUNK):
            where = {"batchId": batch_id, "index": {"$gte": chunk * CHUNK, "$lt": (chunk + 1) * CHUNK}}
            if 100 <= await parse.count(MEMORY, where, master=True) < CHUNK:
                return True
        return False

    async def inside_a_chunk() -> bool:
        # A chunk checkpoint 100 memories past its chunk's start: the kill lands mid-chunk.
        return any(next_index % CHUNK >= 100 for next_index in await chunk_checkpoints())

    # Wait for the event, not for the speed of the writes: once a chunk is 100 memories in, hold every
    # write of the worker. Its chunks stop where they are, and their heartbeats (which go to Temporal,
    # not through the proxy) bring the server a checkpoint inside the chunk within a second or two.
    await wait_until(a_chunk_100_in, 120, "a chunk 100 memories in")
    parse_proxy.set_mode("drop_replies")
    await wait_until(inside_a_chunk, 60, "a chunk checkpoint 100 memories into its chunk")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    written_at_kill = await count_memories(parse, batch_id)
    assert 0 < written_at_kill < TOTAL, "the kill must land in the middle of the batch"

    second_log = tmp_path / "second.log"
    second, _ = start_worker_process(worker_settings, second_log, **SLOW_WRITES)  # straight to Parse
    try:
        # A bound, not a timing assertion: on a loaded 2-core box the serial writes take minutes.
        summary = await asyncio.wait_for(handle.result(), timeout=900)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert (summary.status, summary.total, summary.successful, summary.failed) == (
        "completed",
        TOTAL,
        TOTAL,
        0,
    )
    assert await count_memories(parse, batch_id) == TOTAL
    request = await store.fetch_batch_memory_request_from_parse(
        parse, worker_settings, request_id, with_memories=False
    )
    assert request is not None
    assert (request.status, request.processed_count, request.success_count) == ("completed", TOTAL, TOTAL)

    history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) >= 2, "a chunk activity must have been retried"
    resumed = re.findall(r"chunk (\d+): attempt \d+ resumes at memory (\d+)", second_log.read_text())
    assert resumed, second_log.read_text()[-2000:]
    # A retried chunk resumes from its own checkpoint, inside its own chunk, never from its start.
    assert any(int(at) > int(chunk) * CHUNK for chunk, at in resumed), resumed
    for chunk, at in resumed:
        assert int(chunk) * CHUNK <= int(at) < (int(chunk) + 1) * CHUNK
    print(f"killed with {written_at_kill} of {TOTAL} written; chunks resumed at {resumed}")
    await store.delete_batch_request(parse, request_id)


async def test_an_attempt_behind_the_stored_progress_never_moves_it_back(
    parse: ParseClient, worker_settings: Settings, user: ParseUser
) -> None:
    """Issue 11: an attempt that lives on after its heartbeat timeout (or resumes from an old checkpoint)
    used to write its lower absolute counts over those of the attempt that replaced it."""
    batch_id = uuid.uuid4().hex
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        worker_settings,
        batch_id=batch_id,
        submission=store.Submission(user.object_id),
        memories=[MemoryItem.model_validate(m) for m in synthetic_memories(300, content_bytes=100)],
    )
    # The newer attempt got to 200 and wrote so; this old attempt starts again from memory 0.
    await store.update_batch_request_status(parse, request_id, "processing")
    await store.set_batch_request_progress(parse, request_id, processed=200, successful=200, failed=0)
    observed: list[int] = []

    async def observe(index: int, item: MemoryItem) -> MemoryItem:
        if index % 25 == 0:
            rows = await parse.find(
                BATCH_MEMORY_REQUEST, {"objectId": request_id}, keys="processedCount", master=True
            )
            observed.append(rows[0]["processedCount"])
        return item

    # Serial chunks of 10: the old attempt reports progress many times before it passes memory 200.
    writer = MemoryWriter(parse, batch_size=10, concurrency=1, processor=observe)
    activities = BatchActivities(worker_settings, parse, writer)
    summary = await ActivityEnvironment().run(
        activities.fetch_and_process_batch_memories, BatchReference(request_id, batch_id)
    )
    assert (summary.status, summary.successful) == ("completed", 300)
    assert observed and min(observed) >= 200, f"stored progress went back: {observed}"
    assert observed == sorted(observed), observed
    request = await store.fetch_batch_memory_request_from_parse(
        parse, worker_settings, request_id, with_memories=False
    )
    assert request is not None and request.processed_count == 300
    await store.delete_batch_request(parse, request_id)


async def test_chunk_progress_moves_only_forward_and_adds_up(
    parse: ParseClient, worker_settings: Settings, user: ParseUser
) -> None:
    request_id, _ = await store_chunked(parse, worker_settings, user, 1200)
    await store.update_batch_request_status(parse, request_id, "processing")

    async def counters() -> tuple[int, int, int, dict]:
        [row] = await parse.find(
            BATCH_MEMORY_REQUEST,
            {"objectId": request_id},
            keys="processedCount,successCount,failCount,chunkProgress",
            master=True,
        )
        return row["processedCount"], row["successCount"], row["failCount"], row.get("chunkProgress") or {}

    advance = store.advance_chunk_progress
    assert await advance(parse, request_id, 0, processed=300, successful=298, failed=2)
    assert await advance(parse, request_id, 1, processed=100, successful=100, failed=0)
    # A stale attempt of chunk 0 (behind what is stored) changes nothing.
    assert not await advance(parse, request_id, 0, processed=120, successful=120, failed=0)
    assert not await advance(parse, request_id, 0, processed=300, successful=299, failed=1)
    assert await advance(parse, request_id, 0, processed=500, successful=497, failed=3)
    processed, ok, failed, chunks = await counters()
    assert (processed, ok, failed) == (600, 597, 3)
    assert chunks == {
        "c0": {"processed": 500, "ok": 497, "failed": 3},
        "c1": {"processed": 100, "ok": 100, "failed": 0},
    }
    # Once the batch is finished, no chunk writes progress any more.
    await store.update_batch_request_status(parse, request_id, "completed")
    assert not await advance(parse, request_id, 2, processed=200, successful=200, failed=0)
    assert (await counters())[0] == 600
    await store.delete_batch_request(parse, request_id)


async def test_cleanup_removes_chunk_files_of_finished_batches_and_keeps_running_ones(
    parse: ParseClient, worker_settings: Settings, user: ParseUser
) -> None:
    from toolkit.parse.cleanup import cleanup_finished_files, local_files_dir

    # The stack is shared: this batch is dated back to 2000 and the cleanup's cutoff is in 2001, so it
    # can select nothing but what this test made (tests/fixtures/long_ago.py).
    running_id, running_batch = await store_chunked(parse, worker_settings, user, 1100)
    finished_id, finished_batch = await store_chunked(parse, worker_settings, user, 600)
    await store.update_batch_request_status(parse, running_id, "processing")
    await store.update_batch_request_status(parse, finished_id, "completed", extra={"completedAt": LONG_AGO})
    directory = local_files_dir(worker_settings)
    assert directory is not None

    def files_of(batch_id: str) -> list[Path]:
        return [path for path in directory.iterdir() if batch_id in path.name]

    # The running batch's files look old enough to be orphans: only their reference keeps them.
    for path in files_of(running_batch):
        os.utime(path, (LONG_AGO.timestamp(), LONG_AGO.timestamp()))
    assert (len(files_of(running_batch)), len(files_of(finished_batch))) == (3, 2)

    report = await cleanup_finished_files(parse, worker_settings, older_than_days=days_since_2001())
    assert not report.errors, report.errors
    assert len(files_of(running_batch)) == 3
    assert files_of(finished_batch) == []
    finished = await store.fetch_batch_memory_request_from_parse(
        parse, worker_settings, finished_id, with_memories=False
    )
    assert finished is not None and finished.batch_chunk_files is None
    await store.delete_batch_request(parse, running_id)
    await store.delete_batch_request(parse, finished_id)
    assert files_of(running_batch) == []

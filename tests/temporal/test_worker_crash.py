"""A worker SIGKILLed mid-batch: a new worker finishes it, no memory lost or duplicated (issue 4)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from temporalio.client import Client

from tests.fixtures.worker_process import start_worker_process, wait_until
from toolkit.parse import ParseClient
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.starter import store_and_start
from toolkit.validation.workloads import synthetic_memories

# Small, serial writes so the batch takes long enough to be killed in the middle.
SLOW_WRITES = {"WRITER_BATCH_SIZE": "5", "WRITER_CONCURRENCY": "1"}
# Seconds of such writes: the first checkpoint reaches the server a second into the attempt (issue 19),
# and 2,000 memories were once all written by the time the test killed the worker. One file, not
# chunks: under BATCH_CHUNK_MEMORIES (5,000 by default; checked below).
TOTAL = 4500


async def test_killed_worker_resumes_from_checkpoint_without_loss_or_duplicates(
    temporal: Client, parse: ParseClient, worker_settings: Settings, user: ParseUser, tmp_path: Path
) -> None:
    first, ready = start_worker_process(worker_settings, tmp_path / "first.log", **SLOW_WRITES)

    async def first_ready() -> bool:
        return ready.exists()

    await wait_until(first_ready, 60, "the first worker")

    assert TOTAL <= worker_settings.batch_chunk_memories, "the batch must be one file, not chunks"
    batch = await store_and_start(
        temporal, parse, worker_settings, user, synthetic_memories(TOTAL, content_bytes=300)
    )

    async def checkpoint_on_server() -> int:
        description = await batch.handle.describe()
        for pending in description.raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                return json.loads(pending.heartbeat_details.payloads[0].data).get("next", 0)
        return 0

    async def checkpoint_past_200() -> bool:
        return await checkpoint_on_server() >= 200

    await wait_until(checkpoint_past_200, 60, "a checkpoint past memory 200 on the server")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    checkpoint_at_kill = await checkpoint_on_server()
    written_at_kill = await count_memories(parse, batch.batch_id)
    assert 0 < written_at_kill < TOTAL, "the kill must land in the middle of the batch"

    second_log = tmp_path / "second.log"
    second, _ = start_worker_process(worker_settings, second_log, **SLOW_WRITES)
    try:
        summary = await asyncio.wait_for(batch.result(), timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    counts = (summary.status, summary.total, summary.successful, summary.failed)
    assert counts == ("completed", TOTAL, TOTAL, 0)
    assert await count_memories(parse, batch.batch_id) == TOTAL

    history = await batch.handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(attempts) >= 2, "the processing activity must have been retried"
    log_text = second_log.read_text()
    resumed = [line for line in log_text.splitlines() if "resumes at memory" in line]
    assert resumed, f"the retry did not resume from a checkpoint:\n{log_text[-2000:]}"
    resumed_at = int(resumed[0].rsplit(" ", 1)[1])
    # The retry starts from the checkpoint the server held, never from 0 and never past what was written.
    assert checkpoint_at_kill <= resumed_at <= written_at_kill
    print(
        f"killed with {written_at_kill} memories written, server checkpoint {checkpoint_at_kill}; "
        f"retry resumed at memory {resumed_at}"
    )

"""The claim-check path end to end: real Temporal, real Parse, an in-process worker (issue 4)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError

from tests.fixtures.temporal_worker import activity_attempts
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchReference, BatchSummary
from toolkit.temporal.starter import store_and_start
from toolkit.temporal.workflows import NEW_WORKFLOW
from toolkit.validation.webhook_receiver import running_receiver
from toolkit.validation.workloads import chitchat_memories


async def test_hundred_memories_complete_with_exact_counts(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    batch = await store_and_start(temporal, parse, worker_settings, user, chitchat_memories(100))
    summary = await batch.result()
    assert (summary.status, summary.total, summary.successful, summary.failed) == ("completed", 100, 100, 0)

    assert await count_memories(parse, batch.batch_id) == 100
    request = await store.fetch_batch_memory_request_from_parse(
        parse, worker_settings, batch.request_id, with_memories=False
    )
    assert request is not None
    assert request.status == "completed"
    assert (request.processed_count, request.success_count, request.fail_count) == (100, 100, 0)
    assert request.started_at is not None and request.completed_at is not None
    assert request.completed_at >= request.started_at
    assert request.processing_duration_ms is not None and request.processing_duration_ms >= 0
    assert request.workflow_id == f"batch-{batch.batch_id}"
    assert request.workflow_run_id


async def test_rerunning_a_finished_batch_writes_nothing_new(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    batch = await store_and_start(temporal, parse, worker_settings, user, chitchat_memories(30))
    await batch.result()
    # A second workflow for the same request finds it finished and writes nothing.
    again = await temporal.execute_workflow(
        NEW_WORKFLOW,
        BatchReference(batch.request_id, batch.batch_id),
        id=f"rerun-{batch.batch_id}",
        task_queue=worker_settings.temporal_task_queue,
        result_type=BatchSummary,
    )
    assert (again.status, again.successful) == ("completed", 30)
    assert await count_memories(parse, batch.batch_id) == 30


async def test_missing_request_fails_without_retrying(
    temporal: Client, worker_settings: Settings, worker: None
) -> None:
    handle = await temporal.start_workflow(
        NEW_WORKFLOW,
        BatchReference("doesNotExist1", "nope"),
        id="missing-" + worker_settings.temporal_task_queue,
        task_queue=worker_settings.temporal_task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    assert getattr(cause, "type", None) == "BatchRequestMissing"
    assert await activity_attempts(handle, "fetch_and_process_batch_memories") == [1], (
        "a missing request must not be retried"
    )


INVALID_MEMORY_FILE = gzip.compress(
    json.dumps(
        {"version": 1, "memories": [{"content": "my very private diary line", "type": "bogus"}]}
    ).encode(),
    mtime=0,
)


@pytest.mark.parametrize(
    ("bad_file", "what"),
    [(b"this is not gzip", "not gzip"), (INVALID_MEMORY_FILE, "an invalid memory")],
    ids=["not-gzip", "invalid-memory"],
)
async def test_unusable_batch_file_fails_the_batch_once_notifies_and_leaks_nothing(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    worker: None,
    user: ParseUser,
    bad_file: bytes,
    what: str,
) -> None:
    with running_receiver("whsec-fail") as receiver:
        batch_id = uuid.uuid4().hex
        request_id = await store.create_batch_memory_request_in_parse(
            parse,
            worker_settings,
            batch_id=batch_id,
            submission=store.Submission(
                user.object_id, webhook_url=receiver.url(), webhook_secret="whsec-fail"
            ),
            memories=[MemoryItem.model_validate(m) for m in chitchat_memories(5)],
        )
        # Swap the stored batch for an unusable one (deleting the original so nothing is orphaned).
        await store.delete_batch_file(parse, request_id)
        bad = await parse.upload_file("bad.json.gz", bad_file, "application/gzip", master=True)
        await parse.update_object(
            "BatchMemoryRequest",
            request_id,
            {"batchDataFile": {"__type": "File", "name": bad["name"]}},
            master=True,
        )
        handle = await temporal.start_workflow(
            NEW_WORKFLOW,
            BatchReference(request_id, batch_id),
            id=f"batch-{batch_id}",
            task_queue=worker_settings.temporal_task_queue,
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert await activity_attempts(handle, "fetch_and_process_batch_memories") == [1], f"{what}: retried"
    request = await store.fetch_batch_memory_request_from_parse(
        parse, worker_settings, request_id, with_memories=False
    )
    assert request is not None and request.status == "failed"
    assert request.completed_at is not None
    # The owner reads the failure's type and a safe sentence; the file's name stays in the worker's log.
    assert [e.error for e in request.errors if e.index == -1] == [
        "CorruptBatchFile: the stored batch file could not be read"
    ]
    assert await count_memories(parse, batch_id) == 0
    # The owner hears of the failure.
    [notified] = receiver.requests
    assert notified.signature_valid and json.loads(notified.body)["status"] == "failed"
    assert request.webhook_sent is True
    assert "private diary" not in (await handle.fetch_history()).to_json()
    await store.delete_batch_request(parse, request_id)


async def test_store_and_start_chunks_a_batch_past_the_chunk_size_as_the_api_does(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    """The bench and notebooks measure big batches through store_and_start: it must take the chunked path."""
    chunked = dataclasses.replace(worker_settings, batch_chunk_memories=100)
    batch = await store_and_start(temporal, parse, chunked, user, chitchat_memories(250))
    summary = await batch.result()
    assert (summary.status, summary.total, summary.successful) == ("completed", 250, 250)
    request = await store.fetch_batch_memory_request_from_parse(
        parse, chunked, batch.request_id, with_memories=False
    )
    assert request is not None and request.batch_metadata is not None
    assert request.batch_data_file is None
    assert len(request.batch_chunk_files or []) == 3
    assert request.batch_metadata.chunk_memory_counts == [100, 100, 50]
    assert await count_memories(parse, batch.batch_id) == 250
    # One activity per chunk: the history grows by chunks, not by memories.
    history = await batch.handle.fetch_history()
    chunk_activities = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "process_batch_chunk"
    ]
    assert len(chunk_activities) == 3

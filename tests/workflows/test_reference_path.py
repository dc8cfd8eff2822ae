"""The claim-check path end to end: real Temporal, real Parse, an in-process worker (issue 4)."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError

from toolkit.batch_types import BatchReference, BatchSummary
from toolkit.memory_writer import count_memories
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.settings import Settings
from toolkit.testing.batches import submit_batch
from toolkit.testing.users import ParseUser
from toolkit.workflows import NEW_WORKFLOW
from toolkit.workloads import chitchat_memories


async def test_hundred_memories_complete_with_exact_counts(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    batch = await submit_batch(temporal, parse, worker_settings, user, chitchat_memories(100))
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
    batch = await submit_batch(temporal, parse, worker_settings, user, chitchat_memories(30))
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
    assert await _activity_attempts(handle) == [1], "a missing request must not be retried"


async def test_corrupt_batch_file_fails_the_batch_without_retrying(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    batch_id = uuid.uuid4().hex
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        worker_settings,
        batch_id=batch_id,
        user_id=user.object_id,
        memories=[MemoryItem.model_validate(m) for m in chitchat_memories(5)],
    )
    # Swap the stored batch for bytes that are not gzip (deleting the original so nothing is orphaned).
    await store.delete_batch_file(parse, request_id)
    garbage = await parse.upload_file("garbage.gz", b"this is not gzip", "application/gzip", master=True)
    await parse.update_object(
        "BatchMemoryRequest",
        request_id,
        {"batchDataFile": {"__type": "File", "name": garbage["name"]}},
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
    assert await _activity_attempts(handle) == [1]
    request = await store.fetch_batch_memory_request_from_parse(
        parse, worker_settings, request_id, with_memories=False
    )
    assert request is not None and request.status == "failed"
    assert any("batch file" in e.error for e in request.errors)
    assert await count_memories(parse, batch_id) == 0
    await store.delete_batch_request(parse, request_id)


async def _activity_attempts(handle) -> list[int]:
    history = await handle.fetch_history()
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]

"""What a batch's owner reads when processing gives up: a type and a safe sentence, no address (issue 16).

A real workflow, real Parse and the real activities that record failures (``mark_batch_failed``,
``finalize_chunked_batch``); only the activity that gives up is a stand-in, because a real one gives up
after 20 attempts over several minutes. It fails the way an outage does: ``ParseUnavailable``, with the
message ``ParseClient`` used to raise, naming the Parse Server's address. The owner then reads the batch
through the real API, as ``GET /v1/batch/{id}/status`` and ``/errors`` answer it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType
from temporalio.worker import Worker

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.activities import BatchActivities
from toolkit.temporal.batch_types import BatchReference, BatchSummary, ChunkReference, ChunkSummary
from toolkit.temporal.failure_text import INTERNAL, TIMED_OUT, failure_text
from toolkit.temporal.starter import start_batch_workflow_with_reference, store_and_start
from toolkit.temporal.workflows import (
    SAFE_FAILURE_PATCH,
    ProcessBatchMemoryFromRequestWorkflow,
    ProcessBatchMemoryWorkflow,
)
from toolkit.validation.workloads import synthetic_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer

ADDRESS = "http://10.20.30.40:1337/parse"
OUTAGE = f"Parse Server at {ADDRESS} unreachable: ConnectError: All connection attempts failed"
SAFE_OUTAGE = "ParseUnavailable: the batch store was unavailable; retries were exhausted"


def gave_up() -> ApplicationError:
    """What the workflow sees of an activity that exhausted its retries during a Parse outage."""
    return ApplicationError(OUTAGE, type="ParseUnavailable", non_retryable=True)


@dataclasses.dataclass
class GivingUp:
    """Which activities of the worker give up like an outage: the first one, or these chunks."""

    first: bool = False
    chunks: frozenset[int] = frozenset()


@pytest.fixture
async def giving_up(
    temporal: Client, parse: ParseClient, worker_settings: Settings
) -> AsyncIterator[GivingUp]:
    """The real worker, except that the activities named in the yielded :class:`GivingUp` give up."""
    real = BatchActivities(worker_settings, parse)
    plan = GivingUp()

    @activity.defn(name="fetch_and_process_batch_memories")
    async def fetch_and_process(reference: BatchReference) -> BatchSummary:
        if plan.first:
            raise gave_up()
        return await real.fetch_and_process_batch_memories(reference)

    @activity.defn(name="process_batch_chunk")
    async def process_chunk(chunk: ChunkReference) -> ChunkSummary:
        if chunk.chunk_num in plan.chunks:
            raise gave_up()
        return await real.process_batch_chunk(chunk)

    # The real activities are methods named like the activities they define.
    kept = [
        fn
        for fn in real.all()
        if getattr(fn, "__name__", "") not in {"fetch_and_process_batch_memories", "process_batch_chunk"}
    ]
    async with Worker(
        temporal,
        task_queue=worker_settings.temporal_task_queue,
        workflows=[ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow],
        activities=[fetch_and_process, process_chunk, *kept],
    ):
        yield plan


async def _owner_reads(http: httpx.AsyncClient, api: ApiServer, user: ParseUser, batch_id: str) -> str:
    """Everything the owner reads about the batch through the API: its status and all its errors."""
    headers = {"X-Parse-Session-Token": user.session_token}
    status = await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=headers)
    errors = await http.get(f"{api.url}/v1/batch/{batch_id}/errors?limit=1000", headers=headers)
    assert status.status_code == errors.status_code == 200, (status.text, errors.text)
    return status.text + errors.text


async def test_a_batch_that_gives_up_tells_its_owner_the_type_not_the_address(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    giving_up: GivingUp,
    api: ApiServer,
    http: httpx.AsyncClient,
    user: ParseUser,
) -> None:
    giving_up.first = True
    batch = await store_and_start(temporal, parse, worker_settings, user, synthetic_memories(3))
    with pytest.raises(WorkflowFailureError):
        await batch.result()

    request = await store.find_batch_request(parse, batch.batch_id)
    assert request is not None and request.status == "failed"
    assert [(e.index, e.error) for e in request.errors] == [(-1, SAFE_OUTAGE)]
    read = await _owner_reads(http, api, user, batch.batch_id)
    assert SAFE_OUTAGE in read
    assert "10.20.30.40" not in read and "Parse Server at" not in read
    # The cause's own message stays in the history, for an operator; the run recorded the patch.
    history = await temporal.get_workflow_handle(f"batch-{batch.batch_id}").fetch_history()
    assert OUTAGE in history.to_json()
    markers = [
        e.marker_recorded_event_attributes.SerializeToString()
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]
    assert any(SAFE_FAILURE_PATCH.encode() in marker for marker in markers), markers


async def test_a_chunk_that_gives_up_tells_the_owner_the_type_not_the_address(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    giving_up: GivingUp,
    api: ApiServer,
    http: httpx.AsyncClient,
    user: ParseUser,
    unique: str,
) -> None:
    settings = dataclasses.replace(worker_settings, batch_chunk_memories=4)
    batch_id = f"safechunks{unique}"
    writer = store.ChunkedBatchWriter(parse, settings, batch_id)
    for memory in synthetic_memories(12, content_bytes=40):
        await writer.add(MemoryItem.model_validate(memory).model_dump(mode="json"))
    request_id = await store.create_chunked_batch_memory_request(
        parse,
        settings,
        batch_id=batch_id,
        submission=store.Submission(user.object_id),
        chunks=await writer.finish(),
    )
    giving_up.chunks = frozenset({1})
    workflow_id = await start_batch_workflow_with_reference(
        temporal, parse, settings, request_id=request_id, batch_id=batch_id
    )
    summary = await temporal.get_workflow_handle(workflow_id, result_type=BatchSummary).result()
    assert (summary.status, summary.successful, summary.failed) == ("partial", 8, 4)

    errors = await store.find_batch_errors(parse, batch_id, limit=100)
    expected = f"not processed: chunk 1 gave up after its retries: {SAFE_OUTAGE}"
    assert [(e.index, e.error) for e in errors] == [(i, expected) for i in range(4, 8)]
    read = await _owner_reads(http, api, user, batch_id)
    assert expected in read
    assert "10.20.30.40" not in read and "Parse Server at" not in read
    await store.delete_batch_request(parse, request_id)


def test_failure_text_never_carries_the_message() -> None:
    def activity_error(cause: BaseException) -> ActivityError:
        error = ActivityError(
            "activity error",
            scheduled_event_id=1,
            started_event_id=2,
            identity="",
            activity_type="x",
            activity_id="1",
            retry_state=None,
        )
        error.__cause__ = cause
        return error

    assert failure_text(activity_error(gave_up())) == SAFE_OUTAGE
    unknown = ApplicationError(f"KeyError at {ADDRESS}", type="KeyError")
    assert failure_text(activity_error(unknown)) == INTERNAL
    corrupt = ApplicationError("batch file abc_x.json.gz of request R is corrupt", type="CorruptBatchFile")
    assert (
        failure_text(activity_error(corrupt)) == "CorruptBatchFile: the stored batch file could not be read"
    )
    timeout = TimeoutError("activity timeout", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[])
    assert failure_text(activity_error(timeout)) == TIMED_OUT

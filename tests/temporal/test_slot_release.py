"""The worker gives a batch's in-flight slot back when the batch ends, whichever way (issue 16).

The API takes the slot and the request holds it (``slotHold``); the worker's completion write, a
chunked batch's finalize, and the failure path each give it back, so the owner's next batch is not
counted against a batch that is over. Real worker, real Parse.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from temporalio.client import Client, WorkflowFailureError

from toolkit.parse import ParseClient, in_flight
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchSummary
from toolkit.temporal.starter import start_batch_workflow_with_reference
from toolkit.validation.workloads import synthetic_memories

CAP = 3


async def _stored_holding_a_slot(
    parse: ParseClient, settings: Settings, user: ParseUser, memories: list[dict], *, chunked: bool
) -> tuple[str, str, in_flight.SlotHold]:
    """A batch stored as the API stores it: a slot taken first, the request holding it."""
    hold = await in_flight.take_slot(parse, user.object_id, CAP)
    batch_id = uuid.uuid4().hex
    submission = store.Submission(user.object_id, slot_hold=hold.token)
    items = [MemoryItem.model_validate(m) for m in memories]
    if chunked:
        writer = store.ChunkedBatchWriter(parse, settings, batch_id)
        for item in items:
            await writer.add(item.model_dump(mode="json"))
        request_id = await store.create_chunked_batch_memory_request(
            parse, settings, batch_id=batch_id, submission=submission, chunks=await writer.finish()
        )
    else:
        request_id = await store.create_batch_memory_request_in_parse(
            parse, settings, batch_id=batch_id, submission=submission, memories=items
        )
    return request_id, batch_id, hold


@pytest.mark.parametrize("chunked", [False, True], ids=["one-file", "chunked"])
async def test_a_finished_batch_gives_its_slot_back(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    worker: None,
    user: ParseUser,
    chunked: bool,
) -> None:
    settings = dataclasses.replace(worker_settings, batch_chunk_memories=5)
    request_id, batch_id, hold = await _stored_holding_a_slot(
        parse, settings, user, synthetic_memories(12, content_bytes=40), chunked=chunked
    )
    assert [h.token for h in await in_flight.holds_of(parse, user.object_id)] == [hold.token]

    workflow_id = await start_batch_workflow_with_reference(
        temporal, parse, settings, request_id=request_id, batch_id=batch_id
    )
    summary = await temporal.get_workflow_handle(workflow_id, result_type=BatchSummary).result()

    assert summary.status == "completed"
    assert await in_flight.holds_of(parse, user.object_id) == []
    assert not await in_flight.release(parse, hold.token), "already given back"
    await store.delete_batch_request(parse, request_id)


async def test_a_failed_batch_gives_its_slot_back(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    request_id, batch_id, hold = await _stored_holding_a_slot(
        parse, worker_settings, user, synthetic_memories(3), chunked=False
    )
    # Its file gone before it runs: the batch fails for good (mark_batch_failed).
    await store.delete_batch_file(parse, request_id)

    workflow_id = await start_batch_workflow_with_reference(
        temporal, parse, worker_settings, request_id=request_id, batch_id=batch_id
    )
    with pytest.raises(WorkflowFailureError):
        await temporal.get_workflow_handle(workflow_id).result()

    request = await store.find_batch_request(parse, batch_id)
    assert request is not None and request.status == "failed"
    assert await in_flight.holds_of(parse, user.object_id) == []
    await store.delete_batch_request(parse, request_id)

"""Starting batch workflows: the reference path and its legacy twin. Workflow id ``batch-<batch_id>``.

:func:`store_and_start` does what the API does after its checks, without HTTP in front: store the batch
in Parse, then start its workflow. The bench, the notebooks and the workflow tests use it to measure the
pipeline on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchContext, BatchReference, BatchSummary, LegacyBatchInput
from toolkit.temporal.workflows import LEGACY_WORKFLOW, NEW_WORKFLOW
from toolkit.timing import span


def workflow_id_for(batch_id: str) -> str:
    return f"batch-{batch_id}"


async def start_batch_workflow_with_reference(
    temporal: Client,
    parse: ParseClient,
    settings: Settings,
    *,
    request_id: str,
    batch_id: str,
    record: bool = True,
) -> str:
    """Start the new path with only ``{"request_id", "batch_id"}`` as input; record the ids on the request.

    ``record=False`` when the request was created with its ``workflowId`` already (the id is derived
    from the batch id): the worker then records the run id with its first write, and the submit
    saves a Parse round trip.
    """
    with span("temporal.start"):
        handle = await temporal.start_workflow(
            NEW_WORKFLOW,
            BatchReference(request_id=request_id, batch_id=batch_id),
            id=workflow_id_for(batch_id),
            task_queue=settings.temporal_task_queue,
            # One batch, one workflow: a repeated start for the same batch is refused by the server.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    if record:
        await store.record_workflow(parse, request_id, handle.id, handle.result_run_id or "")
    return handle.id


async def start_legacy_batch_workflow(
    temporal: Client,
    parse: ParseClient,
    settings: Settings,
    *,
    request_id: str,
    batch_id: str,
    submission: store.Submission,
    memories: Sequence[MemoryItem],
) -> str:
    """Start the legacy path, whose input carries the whole batch (the baseline being replaced).

    The input copies who submitted it next to the memories, as the old path did, but never a credential:
    not the webhook secret, not a session token.
    """
    context = BatchContext(
        request_id=request_id,
        batch_id=batch_id,
        user_id=submission.user_id,
        organization_id=submission.organization_id,
        namespace_id=submission.namespace_id,
        workspace_id=submission.workspace_id,
    )
    with span("temporal.start"):  # named like the new path's start, so Server-Timing counts both
        handle = await temporal.start_workflow(
            LEGACY_WORKFLOW,
            LegacyBatchInput(context=context, memories=[m.model_dump(mode="json") for m in memories]),
            id=workflow_id_for(batch_id),
            task_queue=settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    await store.record_workflow(parse, request_id, handle.id, handle.result_run_id or "")
    return handle.id


@dataclass
class SubmittedBatch:
    request_id: str
    batch_id: str
    handle: WorkflowHandle

    async def result(self) -> BatchSummary:
        return await self.handle.result()


async def store_and_start(
    temporal: Client,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    memories: Sequence[MemoryItem | Mapping[str, Any]],
    *,
    legacy: bool = False,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> SubmittedBatch:
    """Store ``memories`` as a new batch of ``user`` and start its workflow on ``settings``' task queue.

    As the API does, a reference batch whose memories do not fit one chunk (``settings.batch_chunk_memories``
    memories, ``settings.batch_chunk_max_bytes`` of JSON, on their real bytes) is stored as chunk files,
    so a measurement of a big batch measures the chunked workflow a big submission runs.
    """
    items = [MemoryItem.model_validate(m) for m in memories]
    batch_id = uuid.uuid4().hex
    submission = store.Submission(user.object_id, webhook_url=webhook_url, webhook_secret=webhook_secret)
    if not legacy and not store.fits_one_chunk((item.model_dump(mode="json") for item in items), settings):
        request_id = await _store_chunked(parse, settings, submission, batch_id, items)
    else:
        request_id = await store.create_batch_memory_request_in_parse(
            parse,
            settings,
            batch_id=batch_id,
            submission=submission,
            memories=items,
            storage="legacy" if legacy else "reference",
        )
    if legacy:
        workflow_id = await start_legacy_batch_workflow(
            temporal,
            parse,
            settings,
            request_id=request_id,
            batch_id=batch_id,
            submission=submission,
            memories=items,
        )
    else:
        workflow_id = await start_batch_workflow_with_reference(
            temporal, parse, settings, request_id=request_id, batch_id=batch_id
        )
    return SubmittedBatch(
        request_id, batch_id, temporal.get_workflow_handle(workflow_id, result_type=BatchSummary)
    )


async def _store_chunked(
    parse: ParseClient,
    settings: Settings,
    submission: store.Submission,
    batch_id: str,
    items: Sequence[MemoryItem],
) -> str:
    """Upload ``items`` as chunk files and create their request; no file is left behind on an error."""
    writer = store.ChunkedBatchWriter(parse, settings, batch_id)
    try:
        for item in items:
            await writer.add(item.model_dump(mode="json"))
        chunks = await writer.finish()
        return await store.create_chunked_batch_memory_request(
            parse,
            settings,
            batch_id=batch_id,
            submission=submission,
            chunks=chunks,
        )
    except Exception:
        await writer.discard()
        raise

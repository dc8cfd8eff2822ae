"""Submit a batch without HTTP: store it in Parse and start its workflow, as the API does.

Used by the workflow tests and by benchmarks that measure the pipeline without the API in front.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from temporalio.client import Client, WorkflowHandle

from toolkit.batch_types import BatchSummary
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.settings import Settings
from toolkit.starter import start_batch_workflow_with_reference, start_legacy_batch_workflow
from toolkit.testing.users import ParseUser


@dataclass
class SubmittedBatch:
    request_id: str
    batch_id: str
    handle: WorkflowHandle

    async def result(self) -> BatchSummary:
        return await self.handle.result()


async def submit_batch(
    temporal: Client,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    memories: Sequence[dict],
    *,
    legacy: bool = False,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> SubmittedBatch:
    """Store ``memories`` as a new batch of ``user`` and start its workflow on ``settings``' task queue."""
    items = [MemoryItem.model_validate(m) for m in memories]
    batch_id = uuid.uuid4().hex
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        settings,
        batch_id=batch_id,
        user_id=user.object_id,
        memories=items,
        storage="legacy" if legacy else "reference",
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
    )
    if legacy:
        workflow_id = await start_legacy_batch_workflow(
            temporal,
            parse,
            settings,
            request_id=request_id,
            batch_id=batch_id,
            user_id=user.object_id,
            memories=items,
        )
    else:
        workflow_id = await start_batch_workflow_with_reference(
            temporal, parse, settings, request_id=request_id, batch_id=batch_id
        )
    return SubmittedBatch(
        request_id, batch_id, temporal.get_workflow_handle(workflow_id, result_type=BatchSummary)
    )

"""The API's answers built from a stored ``BatchMemoryRequest``: the 202 of a submission (first or
replayed, identical) and the status (counts, progress, an estimate)."""

from __future__ import annotations

from datetime import datetime, timedelta

from toolkit.api.schemas import BatchAccepted, BatchErrorOut, BatchStatusOut
from toolkit.parse.models import FINISHED_STATUSES, BatchMemoryRequest, Storage
from toolkit.temporal.starter import workflow_id_for

# The status answer carries at most this many errors (the first recorded); error_count says how many
# exist, and GET /v1/batch/{id}/errors pages through all of them.
MAX_STATUS_ERRORS = 100


def status_url(batch_id: str) -> str:
    # Relative: right behind any proxy, and identical when an idempotent answer is replayed.
    return f"/v1/batch/{batch_id}/status"


def accepted_from_request(request: BatchMemoryRequest) -> BatchAccepted:
    """The first answer, rebuilt from what was stored (a replay answers exactly what the first call did)."""
    return BatchAccepted(
        batch_id=request.batch_id,
        workflow_id=request.workflow_id or workflow_id_for(request.batch_id),
        status="pending",
        storage=storage_of(request),
        total_memories=request.total_memories,
        status_url=status_url(request.batch_id),
    )


def storage_of(request: BatchMemoryRequest) -> Storage:
    if request.batch_metadata is not None:
        return request.batch_metadata.storage
    # Requests stored before batchMetadata.storage existed: only the reference path uploads a file.
    return "reference" if request.batch_data_file is not None else "legacy"


def progress_percent(processed: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return round(min(100.0, 100.0 * processed / total), 1)


def estimate_completion(request: BatchMemoryRequest, now: datetime) -> datetime | None:
    """Finished: when it finished. Processing: now + remaining / (processed / elapsed). Else unknown."""
    if request.status in FINISHED_STATUSES:
        return request.completed_at
    processed, total = request.processed_count, request.total_memories
    if request.status != "processing" or request.started_at is None or not 0 < processed < total:
        return None
    elapsed_s = (now - request.started_at).total_seconds()
    if elapsed_s <= 0:
        return None
    rate = processed / elapsed_s
    return now + timedelta(seconds=(total - processed) / rate)


def status_from_request(request: BatchMemoryRequest, now: datetime) -> BatchStatusOut:
    # The request stores at most the first MAX_STORED_ERRORS errors (all of them are paged from
    # /v1/batch/{id}/errors); requests from before the bound may hold more, so the cut stays here.
    # One entry per memory: an older request may have recorded the same memory's error twice.
    distinct = request.distinct_errors()
    shown = sorted(distinct, key=lambda e: (e.timestamp, e.index))[:MAX_STATUS_ERRORS]
    errors = [
        BatchErrorOut(index=e.index, error=e.error)
        for e in sorted(shown, key=lambda e: (e.index, e.timestamp))
    ]
    return BatchStatusOut(
        batch_id=request.batch_id,
        status=request.status,
        storage=storage_of(request),
        total_memories=request.total_memories,
        processed=request.processed_count,
        successful=request.success_count,
        failed=request.fail_count,
        progress_percent=progress_percent(request.processed_count, request.total_memories),
        started_at=request.started_at,
        completed_at=request.completed_at,
        estimated_completion=estimate_completion(request, now),
        errors=errors,
        error_count=len(distinct) if request.error_count is None else request.error_count,
        webhook_sent=request.webhook_sent,
    )

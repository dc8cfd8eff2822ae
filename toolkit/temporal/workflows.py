"""The two batch workflows. Deterministic code only: activities do all I/O.

This module is re-imported inside Temporal's sandbox, so it has no import-time side effects.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from toolkit.temporal.batch_types import (
        BatchFailure,
        BatchReference,
        BatchSummary,
        ChunkedFinalizeInput,
        ChunkFailure,
        ChunkReference,
        ChunkSummary,
        LegacyBatchInput,
        LegacyFinalizeInput,
        MemoryResult,
        ShrunkBatchData,
        WebhookOutcome,
    )
    from toolkit.temporal.failure_text import failure_text

NEW_WORKFLOW = "ProcessBatchMemoryFromRequestWorkflow"
LEGACY_WORKFLOW = "ProcessBatchMemoryWorkflow"

# Errors that retrying cannot fix: the request is gone or malformed, or its file is unreadable.
FATAL_ERRORS = ["BatchRequestMissing", "InvalidBatchRequest", "CorruptBatchFile"]

# Sized for the biggest one-file batch (one chunk, 5,000 memories by default) on a slow Parse, with a
# wide margin; a chunk activity gets the same.
PROCESS_TIMEOUT = timedelta(hours=2)
# Runs started before chunked batches (issue 10) never take the chunked branch; new runs that do
# record this marker, so a replay of either kind of history takes the branch it took live.
CHUNKED_PATCH = "chunked-batches-v1"
# A chunk that gives up after its retries makes the batch ``partial`` (the other chunks go on, and
# finalize counts the failed one from Parse). Runs that recorded a chunk failure before this patch
# failed the whole batch, and replay that way.
CHUNK_FAILURE_PATCH = "chunk-failure-partial-v1"
# A dead worker is noticed after this long, and the retry resumes from the last checkpoint.
HEARTBEAT_TIMEOUT = timedelta(seconds=20)
# Retries for real failures (a worker that died, a bug). An outage of Parse spends none of them: the
# activity waits it out itself, heartbeating, for up to the worker's OUTAGE_RETRY_S (hours), and gives
# up only past that, non-retryably (toolkit.temporal.outages). An outage longer than PROCESS_TIMEOUT
# costs one attempt per PROCESS_TIMEOUT: the next attempt goes on counting the same outage.
PROCESS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=FATAL_ERRORS,
)
# Delivery retries with backoff inside the activity; the activity retry covers a dying worker or Parse.
WEBHOOK_TIMEOUT = timedelta(minutes=10)
WEBHOOK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3)
STEP_TIMEOUT = timedelta(minutes=2)
STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=10)
# Marking a batch failed must outlast the outage that failed it (e.g. Parse down for a while).
FAILURE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1), maximum_attempts=60
)
# Finalize, the webhook and marking a batch failed wait out outages inside too (issue 17), so they
# heartbeat and may run as long as a day per attempt; their heartbeat notices a dead worker. Runs
# started before this patch scheduled them with their old timeouts and no heartbeat, and replay so.
OUTAGE_PATCH = "outage-retry-v1"
OUTAGE_STEP_TIMEOUT = timedelta(hours=24)
# Error text of a memory whose activity gave up after its retries.
LOST_PREFIX = "activity failed: "
# The failure texts the owner reads (batch-level error, "not processed: chunk k ..." errors, a legacy
# memory's lost activity) are a type and a safe sentence (toolkit.temporal.failure_text). Runs that
# failed before this patch recorded the exception's own message (it could name the Parse address) and
# replay that way; the text only reaches an activity's input, so no command changes either way.
SAFE_FAILURE_PATCH = "safe-failure-text-v1"

# The legacy fan-out keeps at most this many per-memory activities in flight.
LEGACY_WINDOW = 20


def _step_timeouts(before_patch: timedelta) -> dict[str, timedelta]:
    """The timeouts of a step that waits out outages (see OUTAGE_PATCH); ``before_patch`` for old runs."""
    if workflow.patched(OUTAGE_PATCH):
        return {"start_to_close_timeout": OUTAGE_STEP_TIMEOUT, "heartbeat_timeout": HEARTBEAT_TIMEOUT}
    return {"start_to_close_timeout": before_patch}


async def _with_webhook(reference: BatchReference, summary: BatchSummary) -> BatchSummary:
    """Send the completion webhook in its own activity, so a webhook retry never reprocesses memories."""
    webhook: WebhookOutcome = await workflow.execute_activity(
        "send_batch_webhook",
        reference,
        result_type=WebhookOutcome,
        retry_policy=WEBHOOK_RETRY,
        **_step_timeouts(WEBHOOK_TIMEOUT),
    )
    return dataclasses.replace(summary, webhook_sent=webhook.delivered)


async def _fail_and_notify(reference: BatchReference, error: ActivityError) -> None:
    """After an unrecoverable failure: mark the request ``failed`` (unless it finished) and send the webhook.

    Without this a batch whose processing gave up would stay ``processing`` forever and its owner would
    never hear of it.
    """
    summary: BatchSummary = await workflow.execute_activity(
        "mark_batch_failed",
        BatchFailure(reference, _reason(error)),
        result_type=BatchSummary,
        retry_policy=FAILURE_RETRY,
        **_step_timeouts(STEP_TIMEOUT),
    )
    await _with_webhook(reference, summary)


def _reason(error: ActivityError) -> str:
    """The text a batch's owner reads for an activity that gave up (see SAFE_FAILURE_PATCH)."""
    if workflow.patched(SAFE_FAILURE_PATCH):
        return failure_text(error)
    return _describe(error)


def _describe(error: ActivityError) -> str:
    # Before SAFE_FAILURE_PATCH: the cause's own message (names ids and counts, never content).
    cause = error.cause
    kind = getattr(cause, "type", None) or type(cause).__name__
    return f"{kind}: {cause}"[:500] if cause is not None else str(error)[:500]


@workflow.defn(name=NEW_WORKFLOW)
class ProcessBatchMemoryFromRequestWorkflow:
    """The claim-check path: the input is a reference; one activity fetches and processes the batch."""

    @workflow.run
    async def run(self, reference: BatchReference) -> BatchSummary:
        try:
            summary: BatchSummary = await workflow.execute_activity(
                "fetch_and_process_batch_memories",
                reference,
                result_type=BatchSummary,
                start_to_close_timeout=PROCESS_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=PROCESS_RETRY,
            )
            # A one-file batch is done here, exactly as before chunking; a chunked one has only begun.
            if summary.total_chunks > 1 and workflow.patched(CHUNKED_PATCH):
                summary = await self._process_chunks(reference, summary)
        except ActivityError as error:
            await _fail_and_notify(reference, error)
            raise
        if not summary.webhook_configured:
            # Nothing to deliver: the activity read the request, so no extra activity asks again.
            return summary
        return await _with_webhook(reference, summary)

    async def _process_chunks(self, reference: BatchReference, plan: BatchSummary) -> BatchSummary:
        """One activity per chunk, at most ``plan.chunk_window`` in flight; the totals are their sums.

        History grows by one activity per chunk, whatever the number of memories in it. Any worker on
        the task queue may take any chunk, so several workers share one big batch.
        """
        results: list[ChunkSummary] = []
        failures: list[ChunkFailure] = []
        pending: dict[asyncio.Task[ChunkSummary], int] = {}

        async def collect(return_when: str) -> None:
            done, _ = await workflow.wait(list(pending), return_when=return_when)
            for task in done:
                chunk_num = pending.pop(task)
                try:
                    results.append(task.result())
                except ActivityError as error:
                    if workflow.patched(CHUNK_FAILURE_PATCH):
                        # This chunk gave up after its retries: the others go on, the batch is partial.
                        failures.append(ChunkFailure(chunk_num, _reason(error)))
                        continue
                    for other in pending:
                        other.cancel()
                    raise

        for chunk_num in range(plan.total_chunks):
            if len(pending) >= max(1, plan.chunk_window):
                await collect(asyncio.FIRST_COMPLETED)
            task = workflow.start_activity(
                "process_batch_chunk",
                ChunkReference(reference.request_id, reference.batch_id, chunk_num),
                result_type=ChunkSummary,
                start_to_close_timeout=PROCESS_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=PROCESS_RETRY,
            )
            pending[task] = chunk_num  # type: ignore[index]
        while pending:
            await collect(asyncio.ALL_COMPLETED)
        successful = sum(r.successful for r in results)
        failed = sum(r.failed for r in results)
        summary: BatchSummary = await workflow.execute_activity(
            "finalize_chunked_batch",
            ChunkedFinalizeInput(reference, plan.total, successful, failed, failures),
            result_type=BatchSummary,
            retry_policy=STEP_RETRY,
            **_step_timeouts(STEP_TIMEOUT),
        )
        return summary


@workflow.defn(name=LEGACY_WORKFLOW)
class ProcessBatchMemoryWorkflow:
    """The old path, kept as the measured baseline: the batch rides in the input and fans out per memory."""

    def __init__(self) -> None:
        self._input: LegacyBatchInput | None = None

    def build_shrunk_batch_data(self, idx: int) -> ShrunkBatchData:
        assert self._input is not None
        return ShrunkBatchData(context=self._input.context, index=idx, memory=self._input.memories[idx])

    @workflow.run
    async def run(self, batch: LegacyBatchInput) -> BatchSummary:
        self._input = batch
        reference = BatchReference(batch.context.request_id, batch.context.batch_id)
        try:
            await workflow.execute_activity(
                "mark_batch_processing",
                reference,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=STEP_RETRY,
            )
            results = await self._fan_out(len(batch.memories))
            successful = sum(1 for r in results if r.ok)
            # Memories whose activity gave up never recorded their error themselves: finalize does.
            lost = [r for r in results if not r.ok and r.error and r.error.startswith(LOST_PREFIX)]
            summary: BatchSummary = await workflow.execute_activity(
                "finalize_batch",
                LegacyFinalizeInput(reference, len(results), successful, len(results) - successful, lost),
                result_type=BatchSummary,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=STEP_RETRY,
            )
        except ActivityError as error:
            await _fail_and_notify(reference, error)
            raise
        return await _with_webhook(reference, summary)

    async def _fan_out(self, count: int) -> list[MemoryResult]:
        """One activity per memory, at most LEGACY_WINDOW in flight; results in index order."""
        results: dict[int, MemoryResult] = {}
        pending: dict[asyncio.Task[MemoryResult], int] = {}

        def collect(done: Iterable[asyncio.Task[MemoryResult]]) -> None:
            for task in done:
                index = pending.pop(task)
                try:
                    results[index] = task.result()
                except ActivityError as error:
                    results[index] = MemoryResult(index, False, f"{LOST_PREFIX}{_reason(error)}")

        for idx in range(count):
            if len(pending) >= LEGACY_WINDOW:
                done, _ = await workflow.wait(list(pending), return_when=asyncio.FIRST_COMPLETED)
                collect(done)
            task = workflow.start_activity(
                "process_memory",
                self.build_shrunk_batch_data(idx),
                result_type=MemoryResult,
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=STEP_RETRY,
            )
            pending[task] = idx  # type: ignore[index]
        if pending:
            done, _ = await workflow.wait(list(pending))
            collect(done)
        return [results[i] for i in range(count)]

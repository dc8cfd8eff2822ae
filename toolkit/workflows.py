"""The two batch workflows. Deterministic code only: activities do all I/O.

This module is re-imported inside Temporal's sandbox, so it has no import-time side effects.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from toolkit.batch_types import (
        BatchReference,
        BatchSummary,
        LegacyBatchInput,
        LegacyFinalizeInput,
        MemoryResult,
        ShrunkBatchData,
        WebhookOutcome,
    )

NEW_WORKFLOW = "ProcessBatchMemoryFromRequestWorkflow"
LEGACY_WORKFLOW = "ProcessBatchMemoryWorkflow"

# Errors that retrying cannot fix: the request is gone or malformed, or its file is unreadable.
FATAL_ERRORS = ["BatchRequestMissing", "InvalidBatchRequest", "CorruptBatchFile"]

# Sized for the biggest allowed batch (10,000 memories) on a slow Parse, with a wide margin.
PROCESS_TIMEOUT = timedelta(hours=2)
# A dead worker is noticed after this long, and the retry resumes from the last checkpoint.
HEARTBEAT_TIMEOUT = timedelta(seconds=20)
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

# The legacy fan-out keeps at most this many per-memory activities in flight.
LEGACY_WINDOW = 20


async def _with_webhook(reference: BatchReference, summary: BatchSummary) -> BatchSummary:
    """Send the completion webhook in its own activity, so a webhook retry never reprocesses memories."""
    webhook: WebhookOutcome = await workflow.execute_activity(
        "send_batch_webhook",
        reference,
        result_type=WebhookOutcome,
        start_to_close_timeout=WEBHOOK_TIMEOUT,
        retry_policy=WEBHOOK_RETRY,
    )
    return dataclasses.replace(summary, webhook_sent=webhook.delivered)


@workflow.defn(name=NEW_WORKFLOW)
class ProcessBatchMemoryFromRequestWorkflow:
    """The claim-check path: the input is a reference; one activity fetches and processes the batch."""

    @workflow.run
    async def run(self, reference: BatchReference) -> BatchSummary:
        summary: BatchSummary = await workflow.execute_activity(
            "fetch_and_process_batch_memories",
            reference,
            result_type=BatchSummary,
            start_to_close_timeout=PROCESS_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=PROCESS_RETRY,
        )
        return await _with_webhook(reference, summary)


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
        await workflow.execute_activity(
            "mark_batch_processing", reference, start_to_close_timeout=STEP_TIMEOUT, retry_policy=STEP_RETRY
        )
        results: list[MemoryResult] = []
        pending: set[asyncio.Task[MemoryResult]] = set()
        for idx in range(len(batch.memories)):
            if len(pending) >= LEGACY_WINDOW:
                done, still_running = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending = set(still_running)
                results.extend(task.result() for task in done)
            pending.add(
                workflow.start_activity(  # type: ignore[arg-type]
                    "process_memory",
                    self.build_shrunk_batch_data(idx),
                    result_type=MemoryResult,
                    start_to_close_timeout=STEP_TIMEOUT,
                    retry_policy=STEP_RETRY,
                )
            )
        if pending:
            done, _ = await workflow.wait(pending)
            results.extend(task.result() for task in done)
        successful = sum(1 for r in results if r.ok)
        summary: BatchSummary = await workflow.execute_activity(
            "finalize_batch",
            LegacyFinalizeInput(reference, len(batch.memories), successful, len(results) - successful),
            result_type=BatchSummary,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=STEP_RETRY,
        )
        return await _with_webhook(reference, summary)

"""Activities of both batch workflows. All I/O lives here: Parse, the memory writer, the webhook.

Activities are methods of :class:`BatchActivities`, which holds the settings and the process's one
Parse client, built once by the worker and passed in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from toolkit.batch_types import (
    BatchFailure,
    BatchReference,
    BatchSummary,
    Checkpoint,
    LegacyFinalizeInput,
    MemoryResult,
    ShrunkBatchData,
    WebhookOutcome,
)
from toolkit.memory_writer import MemoryWriter, WriteContext, WriteOutcome
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import FINISHED_STATUSES, BatchError, BatchMemoryRequest, MemoryItem
from toolkit.settings import Settings
from toolkit.webhooks import EVENT_BATCH_COMPLETED, completion_payload, deliver_webhook, delivery_id

log = logging.getLogger(__name__)

# Progress reaches Parse at least this often while memories complete.
PROGRESS_EVERY_MEMORIES = 10
PROGRESS_EVERY_S = 1.0
HEARTBEAT_EVERY_S = 5.0


def final_status(total: int, failed: int) -> str:
    if failed == 0:
        return "completed"
    if failed >= total:
        return "failed"
    return "partial"


def _now() -> datetime:
    return datetime.now(UTC)


class _Progress:
    """Tracks one attempt: the contiguous checkpoint, the counters, and when Parse was last told."""

    def __init__(self, start: Checkpoint, total: int) -> None:
        self.checkpoint = start
        self.total = total
        self.done: dict[int, bool] = {}  # index -> ok, for indexes at or past the checkpoint
        self.ok = start.ok
        self.failed = start.failed
        self.reported = start.next
        self.reported_at = time.monotonic()

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    def record(self, outcomes: list[WriteOutcome]) -> None:
        for outcome in outcomes:
            self.done[outcome.index] = outcome.ok
            if outcome.ok:
                self.ok += 1
            else:
                self.failed += 1
        # Advance the checkpoint over the contiguous prefix of finished indexes.
        cp = self.checkpoint
        next_index, ok, failed = cp.next, cp.ok, cp.failed
        while next_index in self.done:
            if self.done.pop(next_index):
                ok += 1
            else:
                failed += 1
            next_index += 1
        self.checkpoint = Checkpoint(next_index, ok, failed)

    def report_due(self) -> bool:
        return (
            self.processed - self.reported >= PROGRESS_EVERY_MEMORIES
            or time.monotonic() - self.reported_at >= PROGRESS_EVERY_S
        )

    def mark_reported(self) -> None:
        self.reported = self.processed
        self.reported_at = time.monotonic()


class BatchActivities:
    def __init__(self, settings: Settings, parse: ParseClient, writer: MemoryWriter | None = None) -> None:
        self.settings = settings
        self.parse = parse
        self.writer = writer or MemoryWriter.from_settings(parse, settings)

    # ---- the new path -----------------------------------------------------------------------------
    @activity.defn(name="fetch_and_process_batch_memories")
    async def fetch_and_process_batch_memories(self, reference: BatchReference) -> BatchSummary:
        info = activity.info()
        resume = Checkpoint.from_details(info.heartbeat_details)
        try:
            request = await store.fetch_batch_memory_request_from_parse(
                self.parse, self.settings, reference.request_id
            )
        except store.BatchFileError as exc:
            # The workflow marks the request failed and notifies; the message holds no content.
            message = f"batch file unusable: {exc}"
            raise ApplicationError(message, type="CorruptBatchFile", non_retryable=True) from exc
        if request is None:
            raise ApplicationError(
                f"BatchMemoryRequest {reference.request_id} not found",
                type="BatchRequestMissing",
                non_retryable=True,
            )
        if request.batch_id != reference.batch_id:
            raise ApplicationError(
                f"request {reference.request_id} is batch {request.batch_id}, not {reference.batch_id}",
                type="BatchRequestMissing",
                non_retryable=True,
            )
        if request.status in FINISHED_STATUSES:
            return self._summary(request)
        if request.user is None:
            raise ApplicationError(
                f"request {reference.request_id} has no owner", type="InvalidBatchRequest", non_retryable=True
            )

        memories = request.memories or []
        total = len(memories)
        start = resume or Checkpoint()
        if resume:
            log.info("batch %s: attempt %d resumes at memory %d", request.batch_id, info.attempt, resume.next)
        started_at = request.started_at or _now()
        marking: asyncio.Task[None] | None = None
        if request.status != "processing" or request.started_at is None:
            # The run id too: the API stores workflowId at create and leaves the run id to this write.
            # Off the critical path: memories are written while Parse records the start; it is awaited
            # before the completion write, so the status can never fall back to "processing".
            marking = asyncio.create_task(
                store.update_batch_request_status(
                    self.parse,
                    reference.request_id,
                    "processing",
                    extra={"startedAt": started_at, "workflowRunId": info.workflow_run_id},
                )
            )

        progress = _Progress(start, total)
        context = WriteContext(
            batch_id=request.batch_id,
            user_id=request.user.object_id,
            organization_id=request.organization.object_id if request.organization else None,
        )
        heartbeat_task = asyncio.create_task(self._heartbeat_loop(progress))

        async def on_chunk_done(outcomes: list[WriteOutcome]) -> None:
            # Errors before the checkpoint moves past them, so a retry never skips an unrecorded one
            # (a retry may record one twice; readers keep one entry per index).
            await self._record_errors(
                reference.request_id, [(o.index, o.error) for o in outcomes if not o.ok]
            )
            progress.record(outcomes)
            activity.heartbeat(progress.checkpoint.as_details())
            # Once every memory is done the completion write carries the counters: one write, not two.
            if progress.report_due() and progress.processed < total:
                await self._write_progress(reference.request_id, progress)

        try:
            items = [(i, memory) for i, memory in enumerate(memories) if i >= start.next]
            await self.writer.write(context, items, on_chunk_done=on_chunk_done)
        finally:
            heartbeat_task.cancel()
            if marking is not None:
                await marking  # never left running past this attempt
        activity.heartbeat(progress.checkpoint.as_details())

        status = final_status(total, progress.failed)
        completed_at = _now()
        await store.update_batch_request_completion(
            self.parse,
            reference.request_id,
            status=status,
            completed_at=completed_at,
            processing_duration_ms=int((completed_at - started_at).total_seconds() * 1000),
            processed=progress.processed,
            successful=progress.ok,
            failed=progress.failed,
        )
        if self.settings.cleanup_policy == "on_completion":
            await store.delete_batch_file(self.parse, reference.request_id)
        return BatchSummary(
            request.batch_id,
            status,
            total,
            progress.ok,
            progress.failed,
            webhook_configured=bool(request.webhook_url),
        )

    async def _heartbeat_loop(self, progress: _Progress) -> None:
        # Keeps the activity alive while a slow chunk is in flight (no chunk, no heartbeat otherwise).
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            activity.heartbeat(progress.checkpoint.as_details())

    async def _write_progress(self, request_id: str, progress: _Progress) -> None:
        await store.set_batch_request_progress(
            self.parse,
            request_id,
            processed=progress.processed,
            successful=progress.ok,
            failed=progress.failed,
        )
        progress.mark_reported()

    async def _record_errors(self, request_id: str, failures: list[tuple[int, str | None]]) -> None:
        if failures:
            now = _now()
            await store.append_batch_request_errors(
                self.parse,
                request_id,
                [
                    BatchError(index=index, error=error or "unknown error", timestamp=now)
                    for index, error in failures
                ],
            )

    @staticmethod
    def _summary(request: BatchMemoryRequest) -> BatchSummary:
        return BatchSummary(
            request.batch_id,
            request.status,
            request.total_memories or 0,
            request.success_count or 0,
            request.fail_count or 0,
            bool(request.webhook_sent),
            webhook_configured=bool(request.webhook_url),
        )

    # ---- both paths ----------------------------------------------------------------------------------
    @activity.defn(name="send_batch_webhook")
    async def send_batch_webhook(self, reference: BatchReference) -> WebhookOutcome:
        request = await store.fetch_batch_memory_request_from_parse(
            self.parse, self.settings, reference.request_id, with_memories=False
        )
        if request is None:
            return WebhookOutcome(False, skipped_reason="request not found")
        if not request.webhook_url:
            return WebhookOutcome(False, skipped_reason="no webhook_url")
        if request.webhook_sent:
            return WebhookOutcome(True, skipped_reason="already delivered")
        payload = completion_payload(
            batch_id=request.batch_id,
            status=request.status,
            total=request.total_memories or 0,
            successful=request.success_count or 0,
            failed=request.fail_count or 0,
            completed_at=request.completed_at or _now(),
        )
        result = await deliver_webhook(
            request.webhook_url,
            request.webhook_secret,
            payload,
            allow_private=self.settings.webhook_allow_private,
            max_attempts=self.settings.webhook_max_attempts,
            backoff_s=self.settings.webhook_backoff_s,
            timeout_s=self.settings.webhook_timeout_s,
            # The same id on a resend after this activity fails (at least once): receivers dedupe.
            delivery_id=delivery_id(request.batch_id, EVENT_BATCH_COMPLETED),
        )
        if result.delivered:
            await store.mark_webhook_sent(self.parse, reference.request_id)
        else:
            log.warning(
                "batch %s: webhook not delivered after %d attempts: %s",
                request.batch_id,
                result.attempts,
                result.error,
            )
        return WebhookOutcome(result.delivered, result.attempts)

    @activity.defn(name="mark_batch_failed")
    async def mark_batch_failed(self, failure: BatchFailure) -> BatchSummary:
        """Record an unrecoverable failure; a request that already finished is left as it is."""
        request_id = failure.reference.request_id
        request = await store.fetch_batch_memory_request_from_parse(
            self.parse, self.settings, request_id, with_memories=False
        )
        if request is None:
            return BatchSummary(failure.reference.batch_id, "failed", 0, 0, 0)
        if request.status in FINISHED_STATUSES:
            return self._summary(request)
        await self._record_errors(request_id, [(-1, failure.reason)])
        completed_at = _now()
        started_at = request.started_at or completed_at
        await store.update_batch_request_completion(
            self.parse,
            request_id,
            status="failed",
            completed_at=completed_at,
            processing_duration_ms=int((completed_at - started_at).total_seconds() * 1000),
        )
        return BatchSummary(
            request.batch_id, "failed", request.total_memories, request.success_count, request.fail_count
        )

    # ---- the legacy path ------------------------------------------------------------------------------
    @activity.defn(name="mark_batch_processing")
    async def mark_batch_processing(self, reference: BatchReference) -> None:
        await store.update_batch_request_status(
            self.parse, reference.request_id, "processing", extra={"startedAt": _now()}
        )

    @activity.defn(name="process_memory")
    async def process_memory(self, data: ShrunkBatchData) -> MemoryResult:
        ctx = data.context
        context = WriteContext(
            batch_id=ctx.batch_id, user_id=ctx.user_id, organization_id=ctx.organization_id
        )
        [outcome] = await self.writer.write(context, [(data.index, MemoryItem.model_validate(data.memory))])
        await store.update_batch_request_progress(
            self.parse, ctx.request_id, processed=1, successful=int(outcome.ok), failed=int(not outcome.ok)
        )
        if not outcome.ok:
            await self._record_errors(ctx.request_id, [(data.index, outcome.error)])
        return MemoryResult(data.index, outcome.ok, outcome.error)

    @activity.defn(name="finalize_batch")
    async def finalize_batch(self, data: LegacyFinalizeInput) -> BatchSummary:
        request = await store.fetch_batch_memory_request_from_parse(
            self.parse, self.settings, data.reference.request_id, with_memories=False
        )
        started_at = request.started_at if request and request.started_at else _now()
        completed_at = _now()
        status = final_status(data.total, data.failed)
        await self._record_errors(data.reference.request_id, [(r.index, r.error) for r in data.lost])
        # Absolute counts from the workflow: per-memory increments can double-count retried activities.
        await store.update_batch_request_completion(
            self.parse,
            data.reference.request_id,
            status=status,
            completed_at=completed_at,
            processing_duration_ms=int((completed_at - started_at).total_seconds() * 1000),
            processed=data.total,
            successful=data.successful,
            failed=data.failed,
        )
        return BatchSummary(data.reference.batch_id, status, data.total, data.successful, data.failed)

    def all(self) -> list[object]:
        return [
            self.fetch_and_process_batch_memories,
            self.send_batch_webhook,
            self.mark_batch_processing,
            self.process_memory,
            self.finalize_batch,
            self.mark_batch_failed,
        ]

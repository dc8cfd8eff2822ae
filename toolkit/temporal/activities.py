"""Activities of both batch workflows. All I/O lives here: Parse, the memory writer, the webhook.

Activities are methods of :class:`BatchActivities`, which holds the settings and the process's one
Parse client, built once by the worker and passed in. What an attempt has done, and the background
writes of its progress and errors, are in :mod:`toolkit.temporal.progress`. Every activity of the
reference path heartbeats from its first action and waits out outages of Parse for up to
``OUTAGE_RETRY_S`` (:mod:`toolkit.temporal.outages`); the legacy path's activities do neither.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.memory_writer import MemoryWriter, WriteContext
from toolkit.parse.models import FINISHED_STATUSES, BatchError, BatchMemoryRequest, MemoryItem
from toolkit.settings import Settings
from toolkit.temporal.batch_types import (
    BatchFailure,
    BatchReference,
    BatchSummary,
    Checkpoint,
    ChunkedFinalizeInput,
    ChunkReference,
    ChunkSummary,
    LegacyFinalizeInput,
    MemoryResult,
    ShrunkBatchData,
    WebhookOutcome,
)
from toolkit.temporal.outages import ActivityHeartbeat, outlast_outages
from toolkit.temporal.progress import AttemptProgress, ProgressReporter, ProgressWriter
from toolkit.webhooks import EVENT_BATCH_COMPLETED, completion_payload, deliver_webhook, delivery_id

log = logging.getLogger(__name__)

T = TypeVar("T")


def final_status(total: int, failed: int) -> str:
    if failed == 0:
        return "completed"
    if failed >= total:
        return "failed"
    return "partial"


def _now() -> datetime:
    return datetime.now(UTC)


class BatchActivities:
    def __init__(self, settings: Settings, parse: ParseClient, writer: MemoryWriter | None = None) -> None:
        self.settings = settings
        self.parse = parse
        self.writer = writer or MemoryWriter.from_settings(parse, settings)

    async def _outlasting(
        self, what: str, step: Callable[[ActivityHeartbeat], Awaitable[T]], *, wait_forever: bool = False
    ) -> T:
        """Run ``step`` with a heartbeat from now on, through outages of up to ``OUTAGE_RETRY_S``."""
        async with ActivityHeartbeat.of_this_attempt() as heartbeat:
            limit_s = None if wait_forever else self.settings.outage_retry_s
            return await outlast_outages(lambda: step(heartbeat), heartbeat, limit_s=limit_s, what=what)

    # ---- the new path -----------------------------------------------------------------------------
    async def _fetch(self, reference: BatchReference, *, with_memories: bool) -> BatchMemoryRequest:
        try:
            request = await store.fetch_batch_memory_request_from_parse(
                self.parse, self.settings, reference.request_id, with_memories=with_memories
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
        if request.status not in FINISHED_STATUSES and request.user is None:
            raise ApplicationError(
                f"request {reference.request_id} has no owner", type="InvalidBatchRequest", non_retryable=True
            )
        return request

    @staticmethod
    def _context(request: BatchMemoryRequest) -> WriteContext:
        assert request.user is not None
        return WriteContext(
            batch_id=request.batch_id,
            user_id=request.user.object_id,
            organization_id=request.organization.object_id if request.organization else None,
        )

    def _mark_processing(
        self, request: BatchMemoryRequest, request_id: str
    ) -> tuple[datetime, asyncio.Task[None] | None]:
        """Start recording ``processing`` (and the run id); the caller awaits the task before completing.

        The run id too: the API stores workflowId at create and leaves the run id to this write. Off
        the critical path: memories are written while Parse records the start.
        """
        started_at = request.started_at or _now()
        if request.status == "processing" and request.started_at is not None:
            return started_at, None
        extra = {"startedAt": started_at, "workflowRunId": activity.info().workflow_run_id}
        marking = asyncio.create_task(
            store.update_batch_request_status(self.parse, request_id, "processing", extra=extra)
        )
        return started_at, marking

    @activity.defn(name="fetch_and_process_batch_memories")
    async def fetch_and_process_batch_memories(self, reference: BatchReference) -> BatchSummary:
        return await self._outlasting(
            f"batch {reference.batch_id}", lambda heartbeat: self._fetch_and_process(reference, heartbeat)
        )

    async def _fetch_and_process(
        self, reference: BatchReference, heartbeat: ActivityHeartbeat
    ) -> BatchSummary:
        resume = heartbeat.checkpoint
        # The download, inflate and validation of up to a chunk of memories: the heartbeat runs meanwhile.
        request = await self._fetch(reference, with_memories=True)
        heartbeat.reachable()
        if request.status in FINISHED_STATUSES:
            return self._summary(request)
        started_at, marking = self._mark_processing(request, reference.request_id)
        if request.batch_chunk_files:
            if marking is not None:
                await marking
            # A chunked batch: the workflow runs one activity per chunk, then finalize_chunked_batch.
            chunks = len(request.batch_chunk_files)
            log.info("batch %s: %d memories in %d chunks", request.batch_id, request.total_memories, chunks)
            return BatchSummary(
                request.batch_id,
                "processing",
                request.total_memories,
                0,
                0,
                webhook_configured=bool(request.webhook_url),
                total_chunks=chunks,
                chunk_window=max(1, self.settings.batch_chunk_window),
            )

        memories = request.memories or []
        total = len(memories)
        start = resume or Checkpoint()
        if resume:
            attempt = activity.info().attempt
            log.info("batch %s: attempt %d resumes at memory %d", request.batch_id, attempt, resume.next)

        async def write_progress(processed: int, ok: int, failed: int) -> bool:
            if processed >= total:
                return False  # the completion write carries the counters: one write, not two
            return await store.advance_batch_request_progress(
                self.parse, reference.request_id, processed=processed, successful=ok, failed=failed
            )

        try:
            progress = await self._write_all(
                reference.request_id,
                self._context(request),
                iter([(i, memory) for i, memory in enumerate(memories) if i >= start.next]),
                AttemptProgress(start, total),
                write_progress,
                heartbeat,
            )
        finally:
            if marking is not None:
                await marking  # never left running past this attempt; never after the completion
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
            slot_hold=request.slot_hold,
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

    async def _write_all(
        self,
        request_id: str,
        context: WriteContext,
        items: Iterator[tuple[int, MemoryItem]],
        progress: AttemptProgress,
        write_progress: ProgressWriter,
        heartbeat: ActivityHeartbeat,
    ) -> AttemptProgress:
        """Write ``items``, with errors and progress recorded in the background; flush them at the end.

        The heartbeat carries the reporter's safe checkpoint: a retry, or a run after an outage, resumes
        there.
        """

        async def write_errors(failures: list[tuple[int, str | None]]) -> None:
            await self._record_errors(request_id, failures)

        reporter = ProgressReporter(progress, write_errors, write_progress, heartbeat.advance)
        reporter.start()
        try:
            await self.writer.write_stream(context, items, on_chunk_done=reporter.record)
            await reporter.close()
        except store.BatchFileError as exc:
            raise ApplicationError(
                f"batch file unusable: {exc}", type="CorruptBatchFile", non_retryable=True
            ) from exc
        finally:
            await reporter.abandon()
        return progress

    @activity.defn(name="process_batch_chunk")
    async def process_batch_chunk(self, chunk_ref: ChunkReference) -> ChunkSummary:
        """Write one chunk of a chunked batch: stream its file (inflate, parse, write), checkpointed."""
        return await self._outlasting(
            f"batch {chunk_ref.batch_id} chunk {chunk_ref.chunk_num}",
            lambda heartbeat: self._process_chunk(chunk_ref, heartbeat),
        )

    async def _process_chunk(self, chunk_ref: ChunkReference, heartbeat: ActivityHeartbeat) -> ChunkSummary:
        reference = BatchReference(chunk_ref.request_id, chunk_ref.batch_id)
        request = await self._fetch(reference, with_memories=False)
        heartbeat.reachable()
        if request.status in FINISHED_STATUSES:
            # Finalized (or failed) already: nothing of this chunk is needed any more.
            return ChunkSummary(chunk_ref.chunk_num, 0, 0, 0)
        try:
            chunk = store.chunk_of(request, chunk_ref.chunk_num)
            # Up to a chunk of compressed bytes, however slowly they come: the heartbeat runs meanwhile.
            data = await store.download_chunk(self.parse, request, chunk)
        except store.BatchFileError as exc:
            raise ApplicationError(
                f"batch file unusable: {exc}", type="CorruptBatchFile", non_retryable=True
            ) from exc
        resume = heartbeat.checkpoint
        start = resume or Checkpoint(next=chunk.header.first_index)
        if resume:
            log.info(
                "batch %s chunk %d: attempt %d resumes at memory %d",
                request.batch_id,
                chunk_ref.chunk_num,
                activity.info().attempt,
                resume.next,
            )

        async def write_progress(processed: int, ok: int, failed: int) -> bool:
            return await store.advance_chunk_progress(
                self.parse,
                reference.request_id,
                chunk_ref.chunk_num,
                processed=processed,
                successful=ok,
                failed=failed,
            )

        progress = await self._write_all(
            reference.request_id,
            self._context(request),
            store.chunk_memories(data, chunk, self.settings, start=start.next),
            AttemptProgress(start, chunk.memory_count),
            write_progress,
            heartbeat,
        )
        del data
        if progress.processed != chunk.memory_count:
            raise ApplicationError(
                f"chunk {chunk_ref.chunk_num} of batch {request.batch_id}: {progress.processed} of "
                f"{chunk.memory_count} memories accounted for",
                type="CorruptBatchFile",
                non_retryable=True,
            )
        return ChunkSummary(chunk_ref.chunk_num, chunk.memory_count, progress.ok, progress.failed)

    @activity.defn(name="finalize_chunked_batch")
    async def finalize_chunked_batch(self, data: ChunkedFinalizeInput) -> BatchSummary:
        """Finish a chunked batch with the exact totals the workflow summed from its chunks."""
        return await self._outlasting(
            f"batch {data.reference.batch_id} finalize", lambda heartbeat: self._finalize(data, heartbeat)
        )

    async def _finalize(self, data: ChunkedFinalizeInput, heartbeat: ActivityHeartbeat) -> BatchSummary:
        # Every write below is safe to repeat: a run after an outage reads Parse again and ends the same.
        request = await self._fetch(data.reference, with_memories=False)
        heartbeat.reachable()
        if request.status in FINISHED_STATUSES:
            return self._summary(request)
        successful, failed = data.successful, data.failed
        for gave_up in data.failed_chunks:
            # The chunk's last attempt may have written part of it: Parse says which memories exist.
            account = await store.account_failed_chunk(
                self.parse,
                request,
                gave_up.chunk_num,
                f"chunk {gave_up.chunk_num} gave up after its retries: {gave_up.error}",
            )
            log.warning(
                "batch %s: chunk %d gave up; %d of its memories were written",
                request.batch_id,
                gave_up.chunk_num,
                account.successful,
            )
            successful += account.successful
            failed += account.failed
        status = final_status(data.total, failed)
        completed_at = _now()
        started_at = request.started_at or completed_at
        await store.update_batch_request_completion(
            self.parse,
            data.reference.request_id,
            status=status,
            completed_at=completed_at,
            processing_duration_ms=int((completed_at - started_at).total_seconds() * 1000),
            processed=successful + failed,
            successful=successful,
            failed=failed,
            slot_hold=request.slot_hold,
        )
        if self.settings.cleanup_policy == "on_completion":
            await store.delete_batch_file(self.parse, data.reference.request_id)
        return BatchSummary(
            request.batch_id,
            status,
            data.total,
            successful,
            failed,
            webhook_configured=bool(request.webhook_url),
        )

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
        return await self._outlasting(
            f"batch {reference.batch_id} webhook", lambda heartbeat: self._send_webhook(reference, heartbeat)
        )

    async def _send_webhook(self, reference: BatchReference, heartbeat: ActivityHeartbeat) -> WebhookOutcome:
        # Run again after an outage, a delivery whose success could not be recorded is sent again, with
        # the same delivery id (at least once; receivers drop repeats by id).
        request = await store.fetch_batch_memory_request_from_parse(
            self.parse, self.settings, reference.request_id, with_memories=False
        )
        heartbeat.reachable()
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
        """Record an unrecoverable failure; a request that already finished is left as it is.

        Waits for Parse however long it is away: giving up here would leave the batch ``processing``.
        """
        return await self._outlasting(
            f"batch {failure.reference.batch_id} failure",
            lambda heartbeat: self._mark_failed(failure, heartbeat),
            wait_forever=True,
        )

    async def _mark_failed(self, failure: BatchFailure, heartbeat: ActivityHeartbeat) -> BatchSummary:
        request_id = failure.reference.request_id
        request = await store.fetch_batch_memory_request_from_parse(
            self.parse, self.settings, request_id, with_memories=False
        )
        heartbeat.reachable()
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
            slot_hold=request.slot_hold,
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
            slot_hold=request.slot_hold if request else None,
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
            self.process_batch_chunk,
            self.finalize_chunked_batch,
        ]

"""``POST /v1/memory/batch`` read as a stream: a batch bigger than one chunk is stored while it arrives.

A batch that fits one chunk takes :meth:`BatchSubmitter.submit` unchanged (same checks, same order). A
bigger one is decided when its first chunk is full (replay, rollout path, in-flight cap, Temporal
reachable), then written chunk by chunk while the body is still arriving; if it is refused after that,
every chunk file already uploaded is deleted before the answer.
"""

from __future__ import annotations

from starlette.requests import Request
from temporalio.client import Client

from toolkit.api.answers import accepted_from_request
from toolkit.api.auth import AuthenticatedUser
from toolkit.api.body import MemorySink, read_batch_stream
from toolkit.api.errors import IdempotencyConflict, PayloadTooLarge
from toolkit.api.failures import storage_failure, unstorable
from toolkit.api.idempotency import KEY_EXHAUSTED
from toolkit.api.legacy_limit import (
    LEGACY_CONTEXT_MARGIN_BYTES,
    LEGACY_MAX_INPUT_BYTES,
    LegacyInputTooLarge,
    legacy_input_bytes,
)
from toolkit.api.schemas import BatchAccepted, BatchRequestIn, MemoryIn
from toolkit.api.submission import BatchSubmitter, submission_of
from toolkit.parse import batch_requests as store
from toolkit.parse.codec import CodecError
from toolkit.parse.errors import ParseError
from toolkit.parse.models import BatchMemoryRequest
from toolkit.temporal.starter import workflow_id_for


async def submit_streamed(
    submitter: BatchSubmitter, user: AuthenticatedUser, http_request: Request, idempotency_key: str | None
) -> tuple[BatchAccepted, bool]:
    """Read the body as it arrives, then store and start it; return the 202 and whether it is a replay."""
    sink = StreamedSubmission(submitter, user, idempotency_key)
    try:
        batch = await read_batch_stream(http_request, submitter.settings, sink)
        if batch.memories is not None:
            return await submitter.submit(
                user, _with_memories(batch.options, batch.memories), idempotency_key
            )
        if sink.replay is not None:
            return accepted_from_request(sink.replay), True
        if sink.legacy is not None:
            return await submitter.submit(user, _with_memories(batch.options, sink.legacy), idempotency_key)
        assert sink.writer is not None and sink.temporal is not None and sink.batch_id is not None
        chunks = await sink.writer.finish()
        options = batch.options
        request_id = await store.create_chunked_batch_memory_request(
            submitter.parse,
            submitter.settings,
            batch_id=sink.batch_id,
            submission=submission_of(user, options, idempotency_key),
            chunks=chunks,
            workflow_id=workflow_id_for(sink.batch_id),
        )
    except ParseError as exc:
        await sink.discard()
        raise storage_failure(exc) from exc
    except BaseException:
        await sink.discard()
        raise
    # From here the request owns its chunk files: a failed start deletes them with it.
    answer = await submitter.start_stored(
        sink.temporal, user, options, idempotency_key, "reference", sink.batch_id, request_id, batch.count
    )
    if answer is None:
        # Its batch id turned out taken by a discarded submission between the check and the start.
        raise IdempotencyConflict(KEY_EXHAUSTED)
    return answer


def _with_memories(options: BatchRequestIn, memories: list[MemoryIn]) -> BatchRequestIn:
    # Both parts are validated already: assemble without validating 100,000 memories again.
    return BatchRequestIn.model_construct(**{**dict(options), "memories": memories})


class StreamedSubmission(MemorySink):
    """Where the memories of a batch bigger than one chunk go while the body is still being read."""

    def __init__(
        self, submitter: BatchSubmitter, user: AuthenticatedUser, idempotency_key: str | None
    ) -> None:
        self._submitter = submitter
        self._user = user
        self._key = idempotency_key
        self.batch_id: str | None = None
        self.replay: BatchMemoryRequest | None = None
        self.legacy: list[MemoryIn] | None = None
        self._legacy_bytes = 0
        self.writer: store.ChunkedBatchWriter | None = None
        self.temporal: Client | None = None

    async def overflow(self, first: list[MemoryIn]) -> None:
        submitter = self._submitter
        if self._key is not None:
            self.replay = await submitter.keys.replayable(self._user, self._key)
            if self.replay is not None:
                return  # the first answer is replayed; nothing of this body is stored
        storage = await submitter.storage_for(self._user)
        if storage == "legacy":
            # The legacy input carries the whole batch: collected (at most Temporal's 2 MiB), not chunked.
            self.legacy = []
            for memory in first:
                self._add_legacy(memory)
            return
        await submitter.check_in_flight(self._user)
        self.temporal = await submitter.temporal_client()
        self.batch_id = await submitter.keys.free_batch_id(self.temporal, self._user, self._key)
        self.writer = store.ChunkedBatchWriter(submitter.parse, submitter.settings, self.batch_id)
        for memory in first:
            await self._add_chunked(memory)

    async def add(self, memory: MemoryIn) -> None:
        if self.replay is not None:
            return
        if self.legacy is not None:
            self._add_legacy(memory)
        else:
            await self._add_chunked(memory)

    def _add_legacy(self, memory: MemoryIn) -> None:
        assert self.legacy is not None
        self.legacy.append(memory)
        self._legacy_bytes += legacy_input_bytes([memory])[0] - LEGACY_CONTEXT_MARGIN_BYTES
        estimate = self._legacy_bytes + LEGACY_CONTEXT_MARGIN_BYTES
        if estimate > LEGACY_MAX_INPUT_BYTES:
            count = len(self.legacy)
            self.legacy = []  # refused: drop what was collected now
            raise PayloadTooLarge(str(LegacyInputTooLarge(estimate, count, count)))

    async def _add_chunked(self, memory: MemoryIn) -> None:
        assert self.writer is not None
        try:
            await self.writer.add(memory.model_dump(mode="json"))
        except ParseError as exc:
            raise storage_failure(exc) from exc
        except CodecError as exc:
            raise unstorable(exc) from None

    async def discard(self) -> None:
        if self.writer is not None:
            await self.writer.discard()

"""``POST /v1/memory/batch`` read as a stream: a batch bigger than one chunk is stored while it arrives.

A batch that fits one chunk takes :meth:`BatchSubmitter.submit` unchanged (same checks, same order). A
bigger one is decided when its first chunk is full (replay, rollout path, Temporal reachable, an
in-flight slot taken), then written chunk by chunk while the body is still arriving; if it is refused
after that, every chunk file already uploaded is deleted and the slot given back before the answer.

While the body arrives the upload touches its slot's hold every ``HOLD_TOUCH_EVERY_S``: that is how the
cap's repair and ``toolkit cleanup`` tell an upload in progress (its chunk files are not referenced by
any request until the last byte) from one whose process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import Request
from temporalio.client import Client

from toolkit.api.answers import accepted_from_request
from toolkit.api.auth import AuthenticatedUser
from toolkit.api.body import MemorySink, read_batch_stream
from toolkit.api.errors import STORAGE_UNAVAILABLE, IdempotencyConflict, PayloadTooLarge, ServiceUnavailable
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
from toolkit.parse import in_flight
from toolkit.parse.codec import CodecError, chunk_line
from toolkit.parse.errors import ParseError
from toolkit.parse.in_flight import HOLD_TOUCH_EVERY_S, SlotHold
from toolkit.parse.models import BatchMemoryRequest
from toolkit.temporal.starter import workflow_id_for

log = logging.getLogger(__name__)


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
        hold = await sink.hand_over_hold()
        options = batch.options
        request_id = await store.create_chunked_batch_memory_request(
            submitter.parse,
            submitter.settings,
            batch_id=sink.batch_id,
            submission=submission_of(user, options, idempotency_key, hold.token),
            chunks=chunks,
            workflow_id=workflow_id_for(sink.batch_id),
        )
    except ParseError as exc:
        await sink.discard()
        raise storage_failure(exc) from exc
    except BaseException:
        await sink.discard()
        raise
    # From here the request owns its chunk files (a failed start deletes them with it) and its slot.
    temporal, batch_id = sink.temporal, sink.batch_id

    async def start() -> tuple[BatchAccepted, bool]:
        answer = await submitter.start_stored(
            temporal, user, options, idempotency_key, "reference", batch_id, request_id, batch.count
        )
        if answer is None:
            # Its batch id turned out taken by a discarded submission between the check and the start.
            raise IdempotencyConflict(KEY_EXHAUSTED)
        return answer

    return await submitter.cap.holding(hold, start())


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
        self.hold: SlotHold | None = None
        self._toucher: asyncio.Task[None] | None = None

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
        self.temporal = await submitter.temporal_client()
        self.batch_id = await submitter.keys.free_batch_id(self.temporal, self._user, self._key)
        # Before the first chunk file is written: the cap counts this upload from here on.
        self.hold = await submitter.cap.take(self._user, batch_id=self.batch_id)
        self._toucher = asyncio.create_task(self._touch_while_uploading(self.hold))
        self.writer = store.ChunkedBatchWriter(submitter.parse, submitter.settings, self.batch_id)
        for memory in first:
            await self._add_chunked(chunk_line(memory.model_dump(mode="json")))

    async def _touch_while_uploading(self, hold: SlotHold) -> None:
        while True:
            await asyncio.sleep(HOLD_TOUCH_EVERY_S)
            try:
                await in_flight.touch(self._submitter.parse, hold.token)
            except ParseError as exc:
                log.warning("upload of batch %s: could not touch its slot (%s)", self.batch_id, exc)

    async def _stop_touching(self) -> None:
        if self._toucher is not None:
            self._toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._toucher
            self._toucher = None

    async def hand_over_hold(self) -> SlotHold:
        """Stop touching the slot and check it is still this upload's, before its request takes it over.

        A hold untouched for ``HOLD_STALE_AFTER_S`` (Parse unreachable for that long) may have been freed
        by the cap's repair, and its chunk files by ``toolkit cleanup``: such an upload is refused.
        """
        assert self.hold is not None
        await self._stop_touching()
        if not await in_flight.touch(self._submitter.parse, self.hold.token):
            log.error(
                "upload of batch %s lost its in-flight slot before its request was created", self.batch_id
            )
            raise ServiceUnavailable(STORAGE_UNAVAILABLE)
        return self.hold

    async def add(self, memory: MemoryIn, line: bytes) -> None:
        if self.replay is not None:
            return
        if self.legacy is not None:
            self._add_legacy(memory)
        else:
            await self._add_chunked(line)

    def _add_legacy(self, memory: MemoryIn) -> None:
        assert self.legacy is not None
        self.legacy.append(memory)
        self._legacy_bytes += legacy_input_bytes([memory])[0] - LEGACY_CONTEXT_MARGIN_BYTES
        estimate = self._legacy_bytes + LEGACY_CONTEXT_MARGIN_BYTES
        if estimate > LEGACY_MAX_INPUT_BYTES:
            count = len(self.legacy)
            self.legacy = []  # refused: drop what was collected now
            raise PayloadTooLarge(str(LegacyInputTooLarge(estimate, count, count)))

    async def _add_chunked(self, line: bytes) -> None:
        assert self.writer is not None
        try:
            await self.writer.add_line(line)
        except ParseError as exc:
            raise storage_failure(exc) from exc
        except CodecError as exc:
            raise unstorable(exc) from None

    async def discard(self) -> None:
        """Delete what this upload stored and give its slot back (the body was refused or failed)."""
        await self._stop_touching()
        if self.writer is not None:
            await self.writer.discard()
        if self.hold is not None:
            await self._submitter.cap.give_back(self.hold)

"""Chunked batches: chunk files written while the body arrives, their request, and reading a chunk back.

A batch of more than ``batch_chunk_memories`` memories is stored as several gzip NDJSON chunk files
(:mod:`toolkit.parse.codec`), referenced in order by the request's ``batchChunkFiles`` (an Array of
Files); ``batchMetadata.chunk_memory_counts`` gives each chunk's memory count and ``total_chunks`` their
number. One activity per chunk writes it; ``chunkProgress.c<k>`` holds each chunk's counters
(:mod:`toolkit.parse.batch_requests._progress`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from toolkit.parse._client import ParseClient
from toolkit.parse.batch_requests._error_log import append_batch_request_errors
from toolkit.parse.batch_requests._files import (
    BATCH_FILE_CONTENT_TYPE,
    BatchFileError,
    chunk_file_name,
    discard_upload,
    file_url,
    first_invalid_field,
)
from toolkit.parse.batch_requests._objects import utc_now
from toolkit.parse.batch_requests._requests import (
    Submission,
    find_created_despite_error,
    pending_request_body,
)
from toolkit.parse.codec import (
    CHUNK_CODEC,
    ChunkEncoder,
    ChunkHeader,
    CodecError,
    EncodedBatch,
    chunk_line,
    iter_chunk_memories,
)
from toolkit.parse.errors import ObjectNotFound, ParseUnavailable
from toolkit.parse.memory_writer import DEFAULT_MAX_REQUEST_BYTES, WRITE_ENVELOPE_BYTES
from toolkit.parse.models import (
    BatchError,
    BatchMemoryRequest,
    BatchMetadata,
    MemoryItem,
    ParseFile,
    validate_object_id,
)
from toolkit.parse.schema import BATCH_MEMORY_ERROR, BATCH_MEMORY_REQUEST, MEMORY
from toolkit.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredChunk:
    """One uploaded chunk file and what it holds."""

    file: ParseFile
    memory_count: int
    raw_size: int
    compressed_size: int


class ChunkUploads:
    """The chunk files of one batch being stored, uploaded while the next chunk fills.

    At most one upload is in flight, so the API holds at most the chunk being uploaded and the one
    being filled. :meth:`discard` deletes every uploaded file when the batch is refused after all.
    """

    def __init__(self, client: ParseClient, batch_id: str) -> None:
        validate_object_id(batch_id)
        self._client = client
        self._batch_id = batch_id
        self._pending: asyncio.Task[StoredChunk] | None = None
        self.stored: list[StoredChunk] = []

    @property
    def started(self) -> int:
        """How many chunks were handed over (uploaded or uploading)."""
        return len(self.stored) + (1 if self._pending is not None else 0)

    async def add(self, encoded: EncodedBatch, memory_count: int) -> None:
        await self._settle()
        name = chunk_file_name(self._batch_id, len(self.stored))
        self._pending = asyncio.create_task(self._upload(name, encoded, memory_count))

    async def _upload(self, name: str, encoded: EncodedBatch, memory_count: int) -> StoredChunk:
        # POST is not retried: a repeat upload would leave a second, unreferenced file.
        answer = await self._client.upload_file(name, encoded.data, BATCH_FILE_CONTENT_TYPE, master=True)
        return StoredChunk(
            ParseFile(name=answer["name"], url=answer.get("url")),
            memory_count,
            encoded.raw_size,
            encoded.compressed_size,
        )

    async def _settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.stored.append(await pending)

    async def finish(self) -> list[StoredChunk]:
        await self._settle()
        return list(self.stored)

    async def discard(self) -> None:
        """Delete every chunk uploaded so far (the one in flight too, once it lands)."""
        try:
            await self._settle()
        except Exception as exc:  # the failed upload stored nothing
            log.warning("batch %s: chunk upload failed while discarding: %s", self._batch_id, exc)
        for chunk in self.stored:
            await discard_upload(self._client, chunk.file, self._batch_id)
        self.stored = []


# What a chunk's header line may take of its size: ids of at most 64 characters and two numbers.
CHUNK_HEADER_BYTES = 256


def max_memory_bytes(settings: Settings) -> int:
    """The largest memory, as stored JSON (:func:`~toolkit.parse.codec.chunk_line`), a batch may hold.

    It must fit one write to Parse (the memory writer's request cap, with the fields the writer adds)
    and one chunk file; anything bigger could never be stored, so the API refuses it (413).
    """
    return min(
        DEFAULT_MAX_REQUEST_BYTES - WRITE_ENVELOPE_BYTES, settings.batch_chunk_max_bytes - CHUNK_HEADER_BYTES
    )


class ChunkFill:
    """How full one chunk is, counted on the memories' real bytes (their :func:`chunk_line`).

    The one rule for "does the next memory fit": the API decides one file or chunks with it, and the
    chunk writer closes a chunk with it, so a batch is one file exactly when its memories fit one chunk.
    A chunk holds at most ``batch_chunk_memories`` memories and ``batch_chunk_max_bytes`` of JSON, its
    header line counted as :data:`CHUNK_HEADER_BYTES`; a one-file batch of the same memories is no bigger
    (one JSON list instead of lines). gzip grows JSON by a few bytes per 16 KiB at most, so the default
    16 MiB chunk uploads under Parse's default 20 MB limit and inflates far below the worker's limit.
    """

    def __init__(self, settings: Settings) -> None:
        self._max_memories = settings.batch_chunk_memories
        self._max_bytes = settings.batch_chunk_max_bytes
        self.count = 0
        self.bytes = CHUNK_HEADER_BYTES

    def fits(self, line_bytes: int) -> bool:
        return self.count < self._max_memories and self.bytes + line_bytes <= self._max_bytes

    def add(self, line_bytes: int) -> None:
        self.count += 1
        self.bytes += line_bytes


def fits_one_chunk(memories: Iterable[Mapping[str, Any]], settings: Settings) -> bool:
    """Whether these memories (plain JSON-able dicts) are stored as one file: they fit one chunk."""
    fill = ChunkFill(settings)
    for memory in memories:
        line_bytes = len(chunk_line(memory))
        if not fill.fits(line_bytes):
            return False
        fill.add(line_bytes)
    return True


class ChunkedBatchWriter:
    """Encodes the memories of a big batch into chunk files as they arrive and uploads each full one.

    A chunk closes when the next memory does not fit it (:class:`ChunkFill`), so every chunk file
    stays under Parse's upload limit. Holds the chunk being filled (compressed) and at most one being
    uploaded.
    """

    def __init__(self, client: ParseClient, settings: Settings, batch_id: str) -> None:
        self._settings = settings
        self._batch_id = batch_id
        self.uploads = ChunkUploads(client, batch_id)
        self._encoder: ChunkEncoder | None = None
        self._fill = ChunkFill(settings)
        self._next_index = 0

    async def add(self, memory: Mapping[str, Any]) -> None:
        await self.add_line(chunk_line(memory))

    async def add_line(self, line: bytes) -> None:
        """Add one memory already encoded by :func:`~toolkit.parse.codec.chunk_line`."""
        if not self._fill.fits(len(line)):
            await self._close()
        if self._encoder is None:
            if not self._fill.fits(len(line)):
                # The API refuses such a memory first (max_memory_bytes); this guards other callers.
                raise CodecError(
                    f"memory {self._next_index} is {len(line):,} bytes of JSON; a chunk holds at most "
                    f"{self._settings.batch_chunk_max_bytes - CHUNK_HEADER_BYTES:,}"
                )
            header = ChunkHeader(self._batch_id, self.uploads.started, self._next_index)
            self._encoder = ChunkEncoder(header, level=self._settings.gzip_level)
        self._encoder.add_line(line)
        self._fill.add(len(line))
        self._next_index += 1

    async def _close(self) -> None:
        self._fill = ChunkFill(self._settings)
        if self._encoder is not None and self._encoder.count:
            encoder, self._encoder = self._encoder, None
            await self.uploads.add(encoder.finish(), encoder.count)

    async def finish(self) -> list[StoredChunk]:
        await self._close()
        return await self.uploads.finish()

    async def discard(self) -> None:
        self._encoder = None
        await self.uploads.discard()


async def create_chunked_batch_memory_request(
    client: ParseClient,
    settings: Settings,
    *,
    batch_id: str,
    submission: Submission,
    chunks: Sequence[StoredChunk],
    workflow_id: str | None = None,
) -> str:
    """Create the request of a chunked batch whose chunk files are uploaded; return its objectId.

    The caller owns the files until this returns: on an error it deletes them (ChunkUploads.discard),
    unless the create's answer was lost yet the object exists, in which case its id is returned.
    """
    if len(chunks) < 2:
        raise ValueError("a chunked batch has at least two chunks")
    validate_object_id(batch_id)
    total = sum(chunk.memory_count for chunk in chunks)
    raw_size = sum(chunk.raw_size for chunk in chunks)
    compressed_size = sum(chunk.compressed_size for chunk in chunks)
    body = pending_request_body(
        BatchMetadata(
            memory_count=total,
            total_size_bytes=raw_size,
            compressed_size_bytes=compressed_size,
            compression_ratio=round(raw_size / compressed_size, 2) if compressed_size else 0.0,
            codec=CHUNK_CODEC,
            # The request is the whole batch (part 1 of 1 of the submission); its files are
            # total_chunks chunks, each of chunk_memory_counts[k] memories.
            chunk_num=1,
            total_chunks=len(chunks),
            chunk_memory_counts=[chunk.memory_count for chunk in chunks],
            source="batch_api",
            created_at=utc_now(),
            storage="reference",
        ),
        batch_id=batch_id,
        submission=submission,
        workflow_id=workflow_id,
        batch_chunk_files=[chunk.file for chunk in chunks],
    )
    log.info(
        "batch %s: %d memories in %d chunks, %d raw bytes -> %d stored bytes (%s)",
        batch_id,
        total,
        len(chunks),
        raw_size,
        compressed_size,
        CHUNK_CODEC,
    )
    try:
        created = await client.create_object(BATCH_MEMORY_REQUEST, body, master=True)
    except ParseUnavailable:
        existing = await find_created_despite_error(client, batch_id, chunks[0].file.name, "batchChunkFiles")
        if existing is not None:
            return existing
        raise
    return str(created["objectId"])


@dataclass(frozen=True)
class ChunkToProcess:
    """Where chunk ``header.chunk_num`` of a request starts and how many memories it holds."""

    header: ChunkHeader
    memory_count: int
    file: ParseFile


def chunk_of(request: BatchMemoryRequest, chunk_num: int) -> ChunkToProcess:
    """Locate a chunk of a chunked request; :class:`BatchFileError` if the request has no such chunk."""
    files = request.batch_chunk_files or []
    counts = (request.batch_metadata.chunk_memory_counts if request.batch_metadata else None) or []
    if len(files) != len(counts) or not 0 <= chunk_num < len(files):
        raise BatchFileError(
            f"request {request.object_id} (batch {request.batch_id}) has no chunk {chunk_num} "
            f"({len(files)} chunk files, {len(counts)} chunk counts)"
        )
    header = ChunkHeader(request.batch_id, chunk_num, sum(counts[:chunk_num]))
    return ChunkToProcess(header, counts[chunk_num], files[chunk_num])


async def download_chunk(client: ParseClient, request: BatchMemoryRequest, chunk: ChunkToProcess) -> bytes:
    """The chunk file's compressed bytes (at most one chunk in memory); :class:`BatchFileError` if gone."""
    try:
        return await client.download(chunk.file.url or file_url(client, chunk.file.name))
    except ObjectNotFound as exc:
        raise BatchFileError(
            f"chunk file {chunk.file.name} of request {request.object_id} is missing: {exc}"
        ) from exc


def chunk_memories(
    data: bytes, chunk: ChunkToProcess, settings: Settings, *, start: int = 0
) -> Iterator[tuple[int, MemoryItem]]:
    """The chunk's ``(batch index, memory)`` pairs from index ``start`` on, decoded one line at a time.

    Raises :class:`BatchFileError` (not retryable) for a corrupt chunk or one whose memory count is
    not the one the request records; messages name indexes and error types, never content.
    """
    seen = 0
    try:
        for index, plain in iter_chunk_memories(data, chunk.header, settings.max_decompressed_bytes):
            seen += 1
            if index < start:
                continue
            try:
                yield index, MemoryItem.model_validate(plain)
            except ValidationError as exc:
                raise BatchFileError(
                    f"chunk {chunk.header.chunk_num} of batch {chunk.header.batch_id}: memory {index} "
                    f"is invalid: {first_invalid_field(exc)}"
                ) from None
    except CodecError as exc:
        raise BatchFileError(f"chunk file {chunk.file.name} is unusable: {exc}") from exc
    if seen != chunk.memory_count:
        raise BatchFileError(
            f"chunk file {chunk.file.name} holds {seen} memories; the request records {chunk.memory_count}"
        )


async def indexes_in_range(
    client: ParseClient, class_name: str, batch_id: str, start: int, stop: int, *, page: int = 1000
) -> set[int]:
    """The ``index`` values of ``class_name`` objects of ``batch_id`` in ``[start, stop)`` (master key)."""
    found: set[int] = set()
    cursor = start
    while cursor < stop:
        rows = await client.find(
            class_name,
            {"batchId": batch_id, "index": {"$gte": cursor, "$lt": stop}},
            limit=page,
            order="index",
            keys="index",
            master=True,
        )
        found.update(int(row["index"]) for row in rows)
        if len(rows) < page:
            break
        cursor = int(rows[-1]["index"]) + 1
    return found


class ChunkAccount(NamedTuple):
    successful: int
    failed: int


async def account_failed_chunk(
    client: ParseClient, request: BatchMemoryRequest, chunk_num: int, reason: str
) -> ChunkAccount:
    """Count a chunk that gave up after its retries from what Parse holds, and record what it left undone.

    A memory of the chunk that exists as a ``Memory`` was written (objectIds are deterministic, so
    each counts once); every other one failed. A memory the writer had already refused keeps its own
    error; each one never reached gets ``not processed: <reason>``. Reads Parse every time, so a retry
    of the caller gives the same answer.
    """
    assert request.object_id is not None
    chunk = chunk_of(request, chunk_num)
    start = chunk.header.first_index
    stop = start + chunk.memory_count
    written = await indexes_in_range(client, MEMORY, request.batch_id, start, stop)
    refused = await indexes_in_range(client, BATCH_MEMORY_ERROR, request.batch_id, start, stop)
    now = datetime.now(UTC)
    undone = [
        BatchError(index=i, error=f"not processed: {reason}"[:500], timestamp=now)
        for i in range(start, stop)
        if i not in written and i not in refused
    ]
    await append_batch_request_errors(client, request.object_id, undone)
    return ChunkAccount(len(written), chunk.memory_count - len(written))

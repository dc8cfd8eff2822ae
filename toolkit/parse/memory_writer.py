"""Write processed memories to Parse as ``Memory`` objects: batched, bounded-concurrent, idempotent.

Both batch paths and the no-Temporal baseline write through :class:`MemoryWriter` (design §2, §4.2):

- **Batched**: ``batch_size`` creates per ``POST /parse/batch`` call, at most ``concurrency`` calls in
  flight. One request per memory was the old path's bottleneck (~150 objects/s against ~1 k/s batched).
- **Idempotent**: each Memory's objectId is ``memory_object_id(batch_id, index)``. A repeat create of the
  same (batch, index) is refused by Parse with error 137, which the writer counts as success
  (``already_written=True``), so a retried activity or a retried ``/batch`` call never makes a second copy.
  Because every objectId is chosen by the client, a whole ``/batch`` call is safe to resend after a lost
  response (``ParseUnavailable``). Only a Memory the writer itself could have written counts: the
  existing object must be this batch's, at this index, for this owner. Clients cannot create Memory
  objects (master key only, :mod:`toolkit.parse.schema`), but a deployment migrated from the open
  permissions may hold one planted earlier; that memory then fails with a clear error instead of
  being reported written while the batch's content was never stored.
- **Failures are per memory**: a processor error, a memory the writer refuses, or a per-item Parse error
  fails only that index; a ``/batch`` call that fails after its retries fails only the memories of that
  chunk. :meth:`MemoryWriter.write` never raises for data or Parse errors: the caller decides (partial /
  failed). It raises only for misuse (``ValueError``) and for exceptions of ``on_chunk_done``.

What a memory may not contain (checked before sending, so the outcome is the same on every backend):

- a NUL character (``"\\x00"``) in any string, ``content``, ``type``, ``metadata`` values or keys.
  PostgreSQL ``text``/``jsonb`` cannot store it; Parse on Postgres answers that sub-request with
  ``{"code": "08P01", "error": "invalid message format"}`` (or ``22P05`` inside ``metadata``), verified by
  ``tests/writer``. MongoDB would store it, so the writer refuses it itself to behave the same everywhere.
  This is the documented way to make the writer reject one memory: ``content="...\\x00..."`` gives that
  index ``ok=False`` with an error starting ``"invalid memory: "``.
- a single memory larger than ``max_request_bytes`` once encoded (it could never fit a request).

Metadata keys containing ``.`` or starting with ``$`` are *not* pre-checked: Parse itself refuses them
per item (error 121), which exercises the server-side rejection path.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.parse import ParseClient
from toolkit.parse.acl import batch_acl
from toolkit.parse.errors import DUPLICATE_VALUE, ParseError, ParseUnavailable
from toolkit.parse.models import MemoryItem, memory_object_id
from toolkit.settings import Settings

log = logging.getLogger(__name__)

MEMORY_CLASS = "Memory"

# Parse's maxUploadSize (default 20 MB) also caps JSON bodies; a bigger /batch call fails as a whole
# with 413. Stay well under it so one oversized chunk is split instead of failing every memory in it.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
# What the writer adds to a memory's own JSON (content, type, metadata) in its create: the objectId,
# index, batchId, the user pointer and the ACL, with ids of up to 64 characters. The API refuses a
# memory that would not fit one request with them (toolkit.parse.batch_requests.max_memory_bytes).
WRITE_ENVELOPE_BYTES = 1024

# Parse Server's requestComplexity.batchRequestLimit (future default 100) caps sub-requests per call.
MAX_BATCH_SIZE = 100


@dataclass(frozen=True)
class WriteContext:
    """What every Memory of one batch shares: its batch id, its owner, and the org whose role may read."""

    batch_id: str
    user_id: str
    organization_id: str | None = None


@dataclass(frozen=True)
class WriteOutcome:
    """The fate of one memory. ``already_written``: Parse already held it (a repeat write), counted ok."""

    index: int
    ok: bool
    error: str | None = None
    already_written: bool = False


MemoryProcessor = Callable[[int, MemoryItem], Awaitable[MemoryItem]]
ChunkCallback = Callable[[list[WriteOutcome]], Awaitable[None]]


class InvalidMemory(ValueError):
    """A memory the writer refuses to send (see the module docstring for the rules)."""


async def _no_processing(index: int, item: MemoryItem) -> MemoryItem:
    return item


def _user_pointer(user_id: str) -> dict[str, str]:
    return {"__type": "Pointer", "className": "_User", "objectId": user_id}


def _check_no_nul(value: Any, where: str) -> None:
    """Raise :class:`InvalidMemory` if any string in ``value`` (keys included) holds a NUL character."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidMemory(f"{where} contains a NUL character (\\x00), which PostgreSQL cannot store")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _check_no_nul(key, f"{where} key")
            _check_no_nul(inner, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for position, inner in enumerate(value):
            _check_no_nul(inner, f"{where}[{position}]")


def memory_fields(item: MemoryItem) -> dict[str, Any]:
    """The memory's own fields as Parse will store them (``content``, ``type``, ``metadata``)."""
    dumped = item.model_dump(mode="json")
    return {
        "content": dumped["content"],
        "type": dumped.get("type") or "text",
        "metadata": dumped.get("metadata") or {},
    }


# Per-item errors that mean "the database is unreachable", not "this memory is bad": Parse answers a
# /batch with 200 and, per item, a driver or SQLSTATE code (e.g. "ECONNREFUSED", "57P03") or
# 1 (internal error), 100 (connection failed), 124 (timeout) while PostgreSQL is down or restarting.
_OUTAGE_ITEM_CODES = {1, 100, 124}
# ... or no code at all, only node-postgres's words for a connection PostgreSQL dropped (killed mid-write:
# a fault-suite run once saw two memories refused as "Parse error None: Connection terminated unexpectedly").
_OUTAGE_ITEM_MESSAGES = ("Connection terminated", "Client has encountered a connection error")


def _is_outage(error: Any) -> bool:
    if not isinstance(error, dict):
        return False
    code, message = error.get("code"), error.get("error")
    if code is None and isinstance(message, str):
        return message.startswith(_OUTAGE_ITEM_MESSAGES)
    return isinstance(code, str) or code in _OUTAGE_ITEM_CODES


def _format_item_error(error: Any) -> str:
    if isinstance(error, dict):
        return f"Parse error {error.get('code')}: {error.get('error')}"
    return f"Parse error: {error!r}"


# The error of a memory whose deterministic objectId is taken by an object this batch did not write.
NOT_OURS = "a Memory with this memory's id exists but belongs to another batch or owner; not written"


@dataclass
class _Prepared:
    """One memory after processing and validation, ready to send (body) or already failed (outcome)."""

    index: int
    body: dict[str, Any] | None = None
    size: int = 0
    outcome: WriteOutcome | None = None


class MemoryWriter:
    """Writes ``(index, MemoryItem)`` pairs of one batch as Memory objects. One per process is enough."""

    def __init__(
        self,
        client: ParseClient,
        *,
        batch_size: int = 50,
        concurrency: int = 4,
        processor: MemoryProcessor | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}, got {batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.client = client
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.processor: MemoryProcessor = processor or _no_processing
        self.max_request_bytes = max_request_bytes

    @classmethod
    def from_settings(cls, client: ParseClient, settings: Settings) -> MemoryWriter:
        """The worker's writer; the benchmark's baseline builds the same one, to compare like with like."""
        return cls(client, batch_size=settings.writer_batch_size, concurrency=settings.writer_concurrency)

    async def write(
        self,
        context: WriteContext,
        items: Sequence[tuple[int, MemoryItem]],
        *,
        on_chunk_done: ChunkCallback | None = None,
    ) -> list[WriteOutcome]:
        """Write every item; return exactly one outcome per item, sorted by index.

        Chunks are taken in index order and handed to ``concurrency`` workers, so the lowest indexes
        finish first (the activity's contiguous checkpoint advances steadily). ``on_chunk_done`` is
        awaited after each chunk with that chunk's outcomes; calls are serialised, never concurrent.
        """
        indexes = [index for index, _ in items]
        if len(set(indexes)) != len(indexes):
            raise ValueError("duplicate memory indexes in one write")
        if not context.batch_id:
            raise ValueError("a write needs a batch id")
        # Raises ValueError for an empty owner or a negative index before anything is sent.
        acl = batch_acl(context.user_id, context.organization_id)
        for index in indexes:
            memory_object_id(context.batch_id, index)
        shared = {"batchId": context.batch_id, "user": _user_pointer(context.user_id), "ACL": acl}

        ordered = sorted(items, key=lambda pair: pair[0])
        outcomes: list[WriteOutcome] = []

        async def collect(chunk_outcomes: list[WriteOutcome]) -> None:
            outcomes.extend(chunk_outcomes)
            if on_chunk_done is not None:
                await on_chunk_done(chunk_outcomes)

        await self._run(context, shared, iter(ordered), collect, workers=min(self.concurrency, len(ordered)))
        outcomes.sort(key=lambda outcome: outcome.index)
        return outcomes

    async def write_stream(
        self,
        context: WriteContext,
        items: Iterator[tuple[int, MemoryItem]],
        *,
        on_chunk_done: ChunkCallback,
    ) -> None:
        """Write items pulled lazily from ``items`` (ascending, distinct indexes), reporting per chunk.

        The streaming form for big batches: at most ``concurrency`` chunks of ``batch_size`` items
        are taken from the iterator at a time, so memory stays bounded whatever the batch size.
        Outcomes reach the caller only through ``on_chunk_done``. An exception of the iterator
        (e.g. a corrupt file) stops the write and propagates, like one of the callback.
        """
        if not context.batch_id:
            raise ValueError("a write needs a batch id")
        acl = batch_acl(context.user_id, context.organization_id)
        shared = {"batchId": context.batch_id, "user": _user_pointer(context.user_id), "ACL": acl}
        await self._run(context, shared, items, on_chunk_done, workers=self.concurrency)

    async def _run(
        self,
        context: WriteContext,
        shared: dict[str, Any],
        items: Iterator[tuple[int, MemoryItem]],
        on_chunk_done: ChunkCallback,
        *,
        workers: int,
    ) -> None:
        """``workers`` tasks take the next ``batch_size`` items whenever they are free and write them.

        Taking a chunk has no await in it, so the tasks share one iterator safely and chunks are
        taken in index order: the lowest indexes finish first, and the activity's contiguous
        checkpoint advances steadily. Callbacks are serialised, never concurrent.
        """
        callback_lock = asyncio.Lock()

        async def worker() -> None:
            while chunk := list(itertools.islice(items, self.batch_size)):
                chunk_outcomes = await self._write_chunk(context, shared, chunk)
                async with callback_lock:
                    await on_chunk_done(chunk_outcomes)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # A callback or the iterator failed, or we were cancelled: stop the others, then propagate.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- one chunk ------------------------------------------------------------------------------------
    async def _write_chunk(
        self, context: WriteContext, shared: dict[str, Any], chunk: list[tuple[int, MemoryItem]]
    ) -> list[WriteOutcome]:
        prepared = await asyncio.gather(
            *(self._prepare(context, shared, index, item) for index, item in chunk)
        )
        outcomes = [p.outcome for p in prepared if p.outcome is not None]
        for group in self._split_by_size([p for p in prepared if p.body is not None]):
            outcomes.extend(await self._send(context, group))
        outcomes.sort(key=lambda outcome: outcome.index)
        return outcomes

    async def _prepare(
        self, context: WriteContext, shared: dict[str, Any], index: int, item: MemoryItem
    ) -> _Prepared:
        try:
            processed = await self.processor(index, item)
        except Exception as exc:  # the hook is pluggable: any failure of it fails this memory only
            log.warning("batch %s memory %d: processor failed: %r", context.batch_id, index, exc)
            # The user reads the error: its type only; the message (which may name anything) is logged.
            return _Prepared(
                index, outcome=WriteOutcome(index, False, f"processor failed: {type(exc).__name__}")
            )
        try:
            fields = memory_fields(processed)
            _check_no_nul(fields, "memory")
            body = {"objectId": memory_object_id(context.batch_id, index), **fields, "index": index, **shared}
            # Measured as httpx sends it: compact UTF-8 JSON.
            size = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
            if size > self.max_request_bytes:
                raise InvalidMemory(
                    f"memory is {size} bytes encoded, over the {self.max_request_bytes}-byte limit"
                )
        except (InvalidMemory, TypeError, ValueError) as exc:
            return _Prepared(index, outcome=WriteOutcome(index, False, f"invalid memory: {exc}"))
        return _Prepared(index, body=body, size=size)

    def _split_by_size(self, prepared: list[_Prepared]) -> Iterator[list[_Prepared]]:
        """Group memories so no /batch body exceeds ``max_request_bytes`` (usually one group)."""
        group: list[_Prepared] = []
        group_bytes = 0
        for item in prepared:
            if group and group_bytes + item.size > self.max_request_bytes:
                yield group
                group, group_bytes = [], 0
            group.append(item)
            group_bytes += item.size + 64  # + the sub-request's method/path envelope
        if group:
            yield group

    async def _send(self, context: WriteContext, group: list[_Prepared]) -> list[WriteOutcome]:
        path = f"{self.client.mount_path}/classes/{MEMORY_CLASS}"
        requests = [{"method": "POST", "path": path, "body": p.body} for p in group]
        try:
            # retry=True: every objectId is client-chosen, so a resend after a lost response only
            # turns the already-created memories into error 137, never into second copies.
            results = await self.client.batch(requests, master=True, retry=True)
        except ParseUnavailable:
            # An outage is not the memories' fault: recording them as failed would lose them for good
            # (found by the fault suite). Raise, so the activity retries from its checkpoint.
            raise
        except ParseError as exc:
            log.error(
                "batch %s: /batch call for memories %d..%d failed: %s",
                context.batch_id,
                group[0].index,
                group[-1].index,
                exc,
            )
            refused = f"the memory store refused the write (Parse error {exc.code or f'HTTP {exc.status}'})"
            return [WriteOutcome(p.index, False, refused) for p in group]
        if not isinstance(results, list) or len(results) != len(group):
            answered = len(results) if isinstance(results, list) else repr(results)
            error = f"Parse /batch answered {answered} results for {len(group)} requests"
            log.error("batch %s: %s", context.batch_id, error)
            return [WriteOutcome(p.index, False, error) for p in group]
        errors = [result.get("error") if isinstance(result, dict) else None for result in results]
        outage = next((e for e in errors if _is_outage(e)), None)
        if outage is not None:
            # Found by the fault suite (PostgreSQL killed mid-batch): recorded as per-memory failures these
            # were lost for good. Raise, so the activity retries the chunk (written items then answer 137).
            raise ParseUnavailable(f"Parse could not store memories: {_format_item_error(outage)}")
        duplicates = [
            p.index
            for p, error in zip(group, errors, strict=True)
            if isinstance(error, dict) and error.get("code") == DUPLICATE_VALUE
        ]
        ours = await self._written_by_this_batch(context, duplicates) if duplicates else set()
        outcomes: list[WriteOutcome] = []
        for p, result in zip(group, results, strict=True):
            error = result.get("error") if isinstance(result, dict) else {"error": result}
            if error is None:
                outcomes.append(WriteOutcome(p.index, True))
            elif p.index in ours:
                outcomes.append(WriteOutcome(p.index, True, already_written=True))
            elif p.index in duplicates:
                log.error("batch %s memory %d: objectId taken by a foreign object", context.batch_id, p.index)
                outcomes.append(WriteOutcome(p.index, False, NOT_OURS))
            else:
                outcomes.append(WriteOutcome(p.index, False, _format_item_error(error)))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            log.warning(
                "batch %s: Parse refused %d of %d memories (first: index %d: %s)",
                context.batch_id,
                len(failed),
                len(group),
                failed[0].index,
                failed[0].error,
            )
        return outcomes

    async def _written_by_this_batch(self, context: WriteContext, indexes: list[int]) -> set[int]:
        """Which of ``indexes`` already exist as this batch's memory (same batch, index and owner)."""
        ids = {memory_object_id(context.batch_id, index): index for index in indexes}
        rows = await self.client.find(
            MEMORY_CLASS,
            {"objectId": {"$in": list(ids)}},
            limit=len(ids),
            keys="batchId,index,user",
            master=True,
        )
        return {
            ids[row["objectId"]]
            for row in rows
            if row.get("batchId") == context.batch_id
            and row.get("index") == ids[row["objectId"]]
            and (row.get("user") or {}).get("objectId") == context.user_id
        }


async def count_memories(client: ParseClient, batch_id: str) -> int:
    """How many Memory objects batch ``batch_id`` has (master key: ACLs do not hide any)."""
    return await client.count(MEMORY_CLASS, {"batchId": batch_id}, master=True)


async def delete_memories(client: ParseClient, batch_id: str, *, page_size: int = 500) -> int:
    """Delete every Memory of ``batch_id`` (cleanup and tests); return how many were deleted."""
    path = f"{client.mount_path}/classes/{MEMORY_CLASS}"
    deleted = 0
    while True:
        found = await client.find(
            MEMORY_CLASS, {"batchId": batch_id}, limit=page_size, keys="objectId", master=True
        )
        if not found:
            return deleted
        before = deleted
        for start in range(0, len(found), MAX_BATCH_SIZE // 2):
            page = found[start : start + MAX_BATCH_SIZE // 2]
            # DELETE is idempotent in effect (a second one is "not found"), so the call may be resent.
            results = await client.batch(
                [{"method": "DELETE", "path": f"{path}/{row['objectId']}"} for row in page],
                master=True,
                retry=True,
            )
            deleted += sum(1 for result in results if "success" in result)
        if deleted == before:
            raise ParseError(f"could not delete the Memory objects of batch {batch_id}")

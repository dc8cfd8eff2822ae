"""Storage of batches in Parse: the ``BatchMemoryRequest`` object and its gzip batch file (design §4.2).

The API stores a batch here and hands the workflow only the objectId (the claim check); the worker
fetches it back, reports progress and errors on it, and finishes it. Every write uses the master key
(this code runs server side) and sets the ACL explicitly (:func:`toolkit.parse.acl.batch_acl`), because
an object created with the master key and no ACL is public. Reads use the master key unless a
session token is given; then Parse's ACL, CLP and protectedFields decide what the caller sees.

Error contract for the worker:

- :class:`BatchFileError` (not retryable): the request's file is missing, corrupt or over the
  decompression limit. Retrying cannot fix it.
- :class:`~toolkit.parse.errors.ParseUnavailable` (retryable): Parse could not be reached or answered
  5xx, whether for the object or for the file download.

``requestId`` mirrors ``batchId``: the workflow carries the objectId, and the schema keeps ``requestId``
for the original service's tooling, which looks a request up by the id the API returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, get_args

from pydantic import ValidationError

from toolkit.parse._client import ParseClient
from toolkit.parse.acl import batch_acl
from toolkit.parse.codec import (
    CHUNK_CODEC,
    ChunkEncoder,
    ChunkHeader,
    CodecError,
    CorruptBatchFile,
    DecompressionLimitExceeded,
    EncodedBatch,
    chunk_line,
    decode_memories,
    encode_memories,
    iter_chunk_memories,
)
from toolkit.parse.errors import DuplicateValue, ObjectNotFound, ParseError, ParseUnavailable, error_for
from toolkit.parse.models import (
    FINISHED_STATUSES,
    BatchError,
    BatchMemoryRequest,
    BatchMetadata,
    BatchStatus,
    MemoryItem,
    ParseFile,
    Storage,
    error_object_id,
    to_parse_date,
    validate_object_id,
)
from toolkit.parse.schema import BATCH_MEMORY_ERROR, BATCH_MEMORY_REQUEST, MEMORY
from toolkit.settings import Settings

__all__ = [
    "MAX_ERROR_CHARS",
    "ChunkAccount",
    "account_failed_chunk",
    "exceeds_one_chunk",
    "memory_json_estimate",
    "indexes_in_range",
    "MAX_STORED_ERRORS",
    "BatchFileError",
    "ChunkUploads",
    "ChunkedBatchWriter",
    "StoredChunk",
    "advance_batch_request_progress",
    "advance_chunk_progress",
    "chunk_memories",
    "create_chunked_batch_memory_request",
    "download_chunk",
    "append_batch_request_errors",
    "count_in_flight",
    "create_batch_memory_request_in_parse",
    "delete_batch_file",
    "delete_batch_request",
    "delete_file_if_present",
    "fetch_batch_memory_request_from_parse",
    "find_batch_errors",
    "find_batch_request",
    "find_by_idempotency_key",
    "mark_webhook_sent",
    "record_workflow",
    "set_batch_request_progress",
    "update_batch_request_completion",
    "update_batch_request_progress",
    "update_batch_request_status",
]

log = logging.getLogger(__name__)

BATCH_FILE_CONTENT_TYPE = "application/gzip"
# An error text longer than this is cut: one pathological message must not bloat the object.
MAX_ERROR_CHARS = 1_000
# The request's own ``errors`` array holds the first this many; BatchMemoryError holds them all.
MAX_STORED_ERRORS = 100
# Error objects created per Parse transaction (below Parse's batchRequestLimit, with the increment).
_ERRORS_PER_TRANSACTION = 50
_TRANSACTION_ATTEMPTS = 5
# Parse's error code when a files adapter fails to delete (the fs adapter's ENOENT included).
_FILE_DELETE_ERROR = 153
_STATUSES: frozenset[str] = frozenset(get_args(BatchStatus))


class BatchFileError(Exception):
    """The request's batch file is missing, corrupt or over the decompression limit: not retryable."""


# ---- create ----------------------------------------------------------------------------------------


def _validate_ids(**ids: str | None) -> None:
    """Refuse ids that are not plain object ids; the error names the argument."""
    for name, value in ids.items():
        if value is not None:
            try:
                validate_object_id(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None


def _batch_file_name(batch_id: str) -> str:
    return f"{batch_id}.json.gz"


def _now() -> datetime:
    return datetime.now(UTC)


async def create_batch_memory_request_in_parse(
    client: ParseClient,
    settings: Settings,
    *,
    batch_id: str,
    user_id: str,
    memories: Sequence[MemoryItem],
    storage: Storage = "reference",
    organization_id: str | None = None,
    namespace_id: str | None = None,
    workspace_id: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    idempotency_key: str | None = None,
    workflow_id: str | None = None,
) -> str:
    """Store a batch: upload its gzip file (reference storage) and create its request; return the objectId.

    With ``storage="legacy"`` no file is uploaded (the legacy workflow carries the memories itself);
    the request still records the sizes so both paths are measured alike. If the create fails after
    the upload, the file is deleted before the error is re-raised, so no orphan is left behind;
    except when the create's answer was lost (``ParseUnavailable``) yet the object exists: then that
    object's id is returned. Invalid input raises ``ValueError`` before anything is stored.
    """
    if storage not in get_args(Storage):
        raise ValueError(f"storage must be 'reference' or 'legacy', got {storage!r}")
    if not memories:
        raise ValueError("a batch needs at least one memory")
    # batchId becomes part of the file name, the others become pointers: refuse anything path-like.
    validate_object_id(batch_id)
    _validate_ids(
        user_id=user_id, organization_id=organization_id, namespace_id=namespace_id, workspace_id=workspace_id
    )
    items = [m if isinstance(m, MemoryItem) else MemoryItem.model_validate(m) for m in memories]
    plain = [m.model_dump(mode="json") for m in items]

    encoded: EncodedBatch | None = None
    if storage == "reference":
        # A 10,000-memory batch takes ~100 ms to gzip: off the event loop, so the API stays responsive.
        encoded = await asyncio.to_thread(encode_memories, plain, level=settings.gzip_level)
        raw_size, compressed_size, ratio, codec = (
            encoded.raw_size,
            encoded.compressed_size,
            encoded.compression_ratio,
            encoded.codec,
        )
    else:
        # Nothing is compressed on the legacy path: record the raw JSON size the workflow input carries.
        raw_size = len(json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        compressed_size, ratio, codec = raw_size, 1.0, "none"
    del plain
    log.info(
        "batch %s: %d memories, %d raw bytes -> %d stored bytes (%.2fx, %s, storage=%s)",
        batch_id,
        len(items),
        raw_size,
        compressed_size,
        ratio,
        codec,
        storage,
    )

    # Built (and so validated) before the upload: a bad field must not leave a file behind.
    body = _pending_request_body(
        BatchMetadata(
            memory_count=len(items),
            total_size_bytes=raw_size,
            compressed_size_bytes=compressed_size,
            compression_ratio=ratio,
            codec=codec,
            chunk_num=1,
            total_chunks=1,
            source="batch_api",
            created_at=_now(),
            storage=storage,
        ),
        batch_id=batch_id,
        user_id=user_id,
        organization_id=organization_id,
        namespace_id=namespace_id,
        workspace_id=workspace_id,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        idempotency_key=idempotency_key,
        workflow_id=workflow_id,
    )

    uploaded: ParseFile | None = None
    if encoded is not None:
        # POST is not retried: a repeat upload would leave a second, unreferenced file.
        answer = await client.upload_file(
            _batch_file_name(batch_id), encoded.data, BATCH_FILE_CONTENT_TYPE, master=True
        )
        del encoded
        uploaded = ParseFile(name=answer["name"], url=answer.get("url"))
        body["batchDataFile"] = uploaded.to_parse()  # by name only: Parse refuses file URLs
    try:
        created = await client.create_object(BATCH_MEMORY_REQUEST, body, master=True)
    except Exception as exc:
        # Not BaseException: a cancelled create may still land, and then it needs its file.
        if uploaded is None:
            raise
        if isinstance(exc, ParseUnavailable):
            # The create may have landed with only its response lost: then the file is in use.
            existing = await _find_created_despite_error(client, batch_id, uploaded.name)
            if existing is not None:
                log.warning(
                    "batch %s: create answered %s but the request exists (%s)", batch_id, exc, existing
                )
                return existing
        await _discard_upload(client, uploaded, batch_id)
        raise
    object_id: str = created["objectId"]
    return object_id


def _pending_request_body(
    metadata: BatchMetadata,
    *,
    batch_id: str,
    user_id: str,
    organization_id: str | None,
    namespace_id: str | None,
    workspace_id: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    idempotency_key: str | None,
    workflow_id: str | None,
    batch_chunk_files: list[ParseFile] | None = None,
) -> dict[str, Any]:
    """The Parse body of a new ``pending`` request (single-file or chunked), with its ACL.

    Counters start at zero, ``errorCount`` included. ``workflow_id`` is known before the start (it is
    derived from the batch id): stored now, it saves a write later.
    """
    request = BatchMemoryRequest(
        batch_id=batch_id,
        request_id=batch_id,
        user=user_id,
        organization=organization_id,
        namespace=namespace_id,
        workspace=workspace_id,
        batch_chunk_files=batch_chunk_files,
        batch_metadata=metadata,
        status="pending",
        total_memories=metadata.memory_count,
        processed_count=0,
        success_count=0,
        fail_count=0,
        errors=[],
        error_count=0,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        webhook_sent=False,
        idempotency_key=idempotency_key,
        workflow_id=workflow_id,
    )
    return {**request.to_parse(), "ACL": batch_acl(user_id, organization_id)}


async def _find_created_despite_error(
    client: ParseClient, batch_id: str, file_name: str, field: str = "batchDataFile"
) -> str | None:
    try:
        rows = await client.find(
            BATCH_MEMORY_REQUEST, {"batchId": batch_id}, limit=10, keys=field, master=True
        )
    except ParseError:
        return None
    for row in rows:
        stored = row.get(field) or {}
        # batchChunkFiles is an Array of Files: its first file identifies the upload.
        first = (stored[0] if stored else {}) if isinstance(stored, list) else stored
        if first.get("name") == file_name:
            return str(row["objectId"])
    return None


async def _discard_upload(client: ParseClient, uploaded: ParseFile, batch_id: str) -> None:
    try:
        await delete_file_if_present(client, uploaded)
    except ParseError as cleanup_error:
        # The original error matters more; `toolkit cleanup` removes what is left on a local stack.
        log.error("batch %s: could not delete uploaded file %s: %s", batch_id, uploaded.name, cleanup_error)


# ---- files -----------------------------------------------------------------------------------------


def _file_url(client: ParseClient, name: str) -> str:
    return f"{client.base_url}/files/{client.settings.parse_app_id}/{name}"


async def delete_file_if_present(client: ParseClient, file: ParseFile) -> bool:
    """Delete a Parse File; True if it was deleted now, False if it was already gone."""
    try:
        await client.delete_file(file.name)
    except ObjectNotFound:
        return False
    except ParseError as exc:
        if exc.code != _FILE_DELETE_ERROR:
            raise
        # The fs adapter answers 153 (ENOENT) for a missing file, e.g. when a retried DELETE
        # repeats one that worked. Only a download can tell "gone" from a real failure.
        try:
            await client.download(file.url or _file_url(client, file.name))
        except ObjectNotFound:
            return False
        raise
    return True


async def _download_memories(
    client: ParseClient, settings: Settings, request: BatchMemoryRequest
) -> list[MemoryItem] | None:
    file = request.batch_data_file
    storage = request.batch_metadata.storage if request.batch_metadata else "reference"
    finished = request.status in FINISHED_STATUSES
    if file is None and request.batch_chunk_files:
        # A chunked batch: each chunk activity reads its own file (download_chunk).
        return None
    if file is None:
        # A legacy batch has no file, and a finished one may have had it cleaned up.
        if storage == "legacy" or finished:
            return None
        raise BatchFileError(f"request {request.object_id} (batch {request.batch_id}) has no batch file")
    try:
        data = await client.download(file.url or _file_url(client, file.name))
    except ObjectNotFound as exc:
        if finished:
            return None
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} is missing: {exc}"
        ) from exc
    try:
        plain = await asyncio.to_thread(decode_memories, data, settings.max_decompressed_bytes)
    except DecompressionLimitExceeded as exc:
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} is over the decompression limit "
            f"({settings.max_decompressed_bytes:,} bytes): {exc}"
        ) from exc
    except CorruptBatchFile as exc:
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} is corrupt: {exc}"
        ) from exc
    finally:
        del data
    try:
        return [MemoryItem.model_validate(m) for m in plain]
    except ValidationError as exc:
        # Never the error's text: pydantic quotes the offending input, i.e. memory content, and this
        # message ends up in the workflow history.
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} holds {exc.error_count()} invalid "
            f"memory field(s); first: {where}: {first['type']}"
        ) from None


# ---- read ------------------------------------------------------------------------------------------


async def fetch_batch_memory_request_from_parse(
    client: ParseClient, settings: Settings, request_id: str, *, with_memories: bool = True
) -> BatchMemoryRequest | None:
    """The request (master key, so ``webhook_secret`` included), or None if it does not exist.

    ``with_memories`` downloads and decodes the batch file into ``.memories``; a legacy request (no
    file) gives ``memories=None``, and so does a finished one whose file was already cleaned up.
    Raises :class:`BatchFileError` for a missing, corrupt or oversized file of an unfinished request.
    """
    validate_object_id(request_id)
    try:
        data = await client.get_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    except ObjectNotFound:
        return None
    request = BatchMemoryRequest.from_parse(data)
    if with_memories:
        request.memories = await _download_memories(client, settings, request)
    return request


async def find_batch_request(
    client: ParseClient, batch_id: str, *, session_token: str | None = None
) -> BatchMemoryRequest | None:
    """The request of ``batch_id``; as that user when ``session_token`` is given (another's → None)."""
    auth: dict[str, Any] = {"session_token": session_token} if session_token else {"master": True}
    rows = await client.find(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, limit=1, order="createdAt", **auth)
    return BatchMemoryRequest.from_parse(rows[0]) if rows else None


async def count_in_flight(client: ParseClient, user_id: str) -> int:
    """How many of the user's requests are ``pending`` or ``processing`` (index user+status)."""
    validate_object_id(user_id)
    where = {
        "user": {"__type": "Pointer", "className": "_User", "objectId": user_id},
        "status": {"$in": ["pending", "processing"]},
    }
    return await client.count(BATCH_MEMORY_REQUEST, where, master=True)


async def find_by_idempotency_key(client: ParseClient, user_id: str, key: str) -> BatchMemoryRequest | None:
    """The user's earliest request created with this ``Idempotency-Key``, if any."""
    validate_object_id(user_id)
    where = {
        "user": {"__type": "Pointer", "className": "_User", "objectId": user_id},
        "idempotencyKey": key,
    }
    rows = await client.find(BATCH_MEMORY_REQUEST, where, limit=1, order="createdAt", master=True)
    return BatchMemoryRequest.from_parse(rows[0]) if rows else None


# ---- update ----------------------------------------------------------------------------------------


async def _update(client: ParseClient, request_id: str, body: Mapping[str, Any]) -> None:
    validate_object_id(request_id)
    await client.update_object(BATCH_MEMORY_REQUEST, request_id, body, master=True)


def _check_status(status: str) -> None:
    if status not in _STATUSES:
        raise ValueError(f"unknown batch status {status!r}; expected one of {', '.join(sorted(_STATUSES))}")


async def record_workflow(client: ParseClient, request_id: str, workflow_id: str, run_id: str) -> None:
    await _update(client, request_id, {"workflowId": workflow_id, "workflowRunId": run_id})


async def update_batch_request_status(
    client: ParseClient, request_id: str, status: BatchStatus, *, extra: Mapping[str, Any] | None = None
) -> None:
    """Set ``status`` and any ``extra`` Parse fields (datetimes become Parse Dates)."""
    _check_status(status)
    body: dict[str, Any] = {
        key: to_parse_date(value) if isinstance(value, datetime) else value
        for key, value in (extra or {}).items()
    }
    body["status"] = status
    await _update(client, request_id, body)


async def update_batch_request_progress(
    client: ParseClient, request_id: str, *, processed: int, successful: int, failed: int
) -> None:
    """Add to the counters atomically (``Increment``): safe with many concurrent writers."""
    await _update(
        client,
        request_id,
        {
            "processedCount": {"__op": "Increment", "amount": processed},
            "successCount": {"__op": "Increment", "amount": successful},
            "failCount": {"__op": "Increment", "amount": failed},
        },
    )


async def set_batch_request_progress(
    client: ParseClient, request_id: str, *, processed: int, successful: int, failed: int
) -> None:
    """Set the counters to absolute values: a retried write gives the same result."""
    await _update(
        client, request_id, {"processedCount": processed, "successCount": successful, "failCount": failed}
    )


def _error_entry(error: BatchError) -> dict[str, Any]:
    entry = error.to_parse()
    if len(entry["error"]) > MAX_ERROR_CHARS:
        entry["error"] = entry["error"][: MAX_ERROR_CHARS - 1] + "…"
    return entry


class _ErrorOwner(NamedTuple):
    batch_id: str
    user_id: str
    organization_id: str | None


# request id -> owner of its error objects. A request's batch, owner and organization never change,
# so one GET per request and process is enough (bounded: oldest entries go first).
_OWNERS: OrderedDict[str, _ErrorOwner] = OrderedDict()
_OWNERS_MAX = 10_000


async def _error_owner(client: ParseClient, request_id: str) -> _ErrorOwner:
    cached = _OWNERS.get(request_id)
    if cached is not None:
        return cached
    data = await client.get_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    user = (data.get("user") or {}).get("objectId")
    if not user:
        raise ValueError(f"request {request_id} has no owner: its errors cannot be given an ACL")
    owner = _ErrorOwner(data["batchId"], user, (data.get("organization") or {}).get("objectId"))
    _OWNERS[request_id] = owner
    while len(_OWNERS) > _OWNERS_MAX:
        _OWNERS.popitem(last=False)
    return owner


def _error_object(owner: _ErrorOwner, request_id: str, error: BatchError) -> dict[str, Any]:
    entry = _error_entry(error)
    return {
        "objectId": error_object_id(owner.batch_id, error.index),
        "batchId": owner.batch_id,
        "request": {"__type": "Pointer", "className": BATCH_MEMORY_REQUEST, "objectId": request_id},
        "user": {"__type": "Pointer", "className": "_User", "objectId": owner.user_id},
        "index": entry["index"],
        "error": entry["error"],
        "timestamp": to_parse_date(error.timestamp),
        "ACL": batch_acl(owner.user_id, owner.organization_id),
    }


async def append_batch_request_errors(
    client: ParseClient, request_id: str, errors: Sequence[BatchError]
) -> None:
    """Record per-memory errors: one ``BatchMemoryError`` per (batch, index), counted exactly.

    Each failed memory gets one object with a deterministic objectId, so a retried activity that
    records the same memory again updates it (the latest text wins) instead of adding a second. The
    objects created and the request's ``errorCount`` increment go in one Parse transaction, so the
    count is exact. The request's own ``errors`` array keeps only the first
    :data:`MAX_STORED_ERRORS` (a status poll reads a bounded object); the rest are paged from the
    ``BatchMemoryError`` class (:func:`find_batch_errors`).
    """
    if not errors:
        return
    validate_object_id(request_id)
    owner = await _error_owner(client, request_id)
    latest: dict[int, BatchError] = {}
    for error in errors:
        # Within one call, a memory's newest report wins (on a tie, the later one in the list).
        if error.index not in latest or error.timestamp >= latest[error.index].timestamp:
            latest[error.index] = error
    ordered = [latest[index] for index in sorted(latest)]
    for start in range(0, len(ordered), _ERRORS_PER_TRANSACTION):
        await _record_errors(client, request_id, owner, ordered[start : start + _ERRORS_PER_TRANSACTION])


async def _record_errors(
    client: ParseClient, request_id: str, owner: _ErrorOwner, errors: list[BatchError]
) -> None:
    objects = {error_object_id(owner.batch_id, e.index): _error_object(owner, request_id, e) for e in errors}
    for _ in range(_TRANSACTION_ATTEMPTS):
        rows = await client.find(
            BATCH_MEMORY_ERROR,
            {"objectId": {"$in": list(objects)}},
            limit=len(objects),
            keys="objectId",
            master=True,
        )
        existing = {row["objectId"] for row in rows}
        new = [body for object_id, body in objects.items() if object_id not in existing]
        if existing:
            # A retried activity reporting a memory again: the latest text and time replace the old.
            await _batch_or_raise(
                client,
                [
                    {
                        "method": "PUT",
                        "path": f"{client.mount_path}/classes/{BATCH_MEMORY_ERROR}/{object_id}",
                        "body": {
                            "error": objects[object_id]["error"],
                            "timestamp": objects[object_id]["timestamp"],
                        },
                    }
                    for object_id in existing
                ],
                transaction=False,
            )
        if not new:
            return
        increment = {
            "method": "PUT",
            "path": f"{client.mount_path}/classes/{BATCH_MEMORY_REQUEST}/{request_id}",
            "body": {"errorCount": {"__op": "Increment", "amount": len(new)}},
        }
        creates = [
            {"method": "POST", "path": f"{client.mount_path}/classes/{BATCH_MEMORY_ERROR}", "body": body}
            for body in new
        ]
        try:
            results = await _batch_or_raise(client, [*creates, increment], transaction=True)
        except (DuplicateValue, ParseUnavailable):
            # The transaction was rolled back (Parse answers a duplicate inside a transaction with a
            # 500), or its answer was lost. Either way the objects and the count moved together:
            # look again at what exists. A real outage fails that lookup, after its own retries.
            continue
        count = int(results[-1]["success"]["errorCount"])
        first_position = count - len(new)
        sample = [
            {"index": body["index"], "error": body["error"], "timestamp": body["timestamp"]["iso"]}
            for position, body in enumerate(new, start=first_position)
            if position < MAX_STORED_ERRORS
        ]
        if sample:
            await _update(client, request_id, {"errors": {"__op": "Add", "objects": sample}})
        return
    raise ParseUnavailable(
        f"errors of request {request_id}: gave up after {_TRANSACTION_ATTEMPTS} conflicting transactions"
    )


async def _batch_or_raise(
    client: ParseClient, requests: list[dict[str, Any]], *, transaction: bool
) -> list[dict[str, Any]]:
    """POST /batch; raise the first sub-request's error as the matching ParseError."""
    body: dict[str, Any] = {"requests": requests}
    if transaction:
        body["transaction"] = True
    results = await client.request("POST", "batch", json_body=body, master=True)
    if isinstance(results, dict):  # a transaction that failed answers with the one error
        raise error_for(400, results)
    for result in results:
        if "error" in result:
            raise error_for(400, result["error"])
    return results


async def find_batch_errors(
    client: ParseClient,
    batch_id: str,
    *,
    offset: int = 0,
    limit: int = 100,
    session_token: str | None = None,
) -> list[BatchError]:
    """A page of the batch's per-memory errors, by index (as that user when ``session_token`` is given)."""
    auth: dict[str, Any] = {"session_token": session_token} if session_token else {"master": True}
    rows = await client.find(
        BATCH_MEMORY_ERROR,
        {"batchId": batch_id},
        limit=limit,
        skip=offset,
        order="index",
        keys="index,error,timestamp",
        **auth,
    )
    return [BatchError.model_validate(row) for row in rows]


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


async def update_batch_request_completion(
    client: ParseClient,
    request_id: str,
    *,
    status: BatchStatus,
    completed_at: datetime,
    processing_duration_ms: int,
    processed: int | None = None,
    successful: int | None = None,
    failed: int | None = None,
) -> None:
    """Finish the request: final status, completion time, duration, and the final counters if given."""
    _check_status(status)
    body: dict[str, Any] = {
        "status": status,
        "completedAt": to_parse_date(completed_at),
        "processingDurationMs": processing_duration_ms,
    }
    for field, value in (("processedCount", processed), ("successCount", successful), ("failCount", failed)):
        if value is not None:
            body[field] = value
    await _update(client, request_id, body)


async def mark_webhook_sent(client: ParseClient, request_id: str) -> None:
    await _update(client, request_id, {"webhookSent": True})


# ---- delete ----------------------------------------------------------------------------------------


async def _stored_files(client: ParseClient, request_id: str) -> tuple[bool, list[ParseFile]]:
    """(exists, files) of a request, read with the master key: its batch file or its chunk files."""
    validate_object_id(request_id)
    try:
        data = await client.get_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    except ObjectNotFound:
        return False, []
    raw = [data["batchDataFile"]] if data.get("batchDataFile") else []
    raw += data.get("batchChunkFiles") or []
    return True, [ParseFile.model_validate(file) for file in raw]


async def delete_batch_file(client: ParseClient, request_id: str) -> bool:
    """Delete the request's batch file (or chunk files) and unset the field. True if a file was deleted.

    The files go first: if unsetting the field then fails, a rerun finds them gone and only
    unsets, and a finished request with a dangling reference still reads fine.
    """
    exists, files = await _stored_files(client, request_id)
    if not exists or not files:
        return False
    deleted = [await delete_file_if_present(client, file) for file in files]
    await _update(
        client, request_id, {"batchDataFile": {"__op": "Delete"}, "batchChunkFiles": {"__op": "Delete"}}
    )
    return any(deleted)


async def delete_batch_request(client: ParseClient, request_id: str) -> None:
    """Delete the request and its files. A request that does not exist is not an error."""
    exists, files = await _stored_files(client, request_id)
    if not exists:
        return
    for file in files:
        await delete_file_if_present(client, file)
    await _delete_error_objects(client, request_id)
    try:
        await client.delete_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    except ObjectNotFound:
        pass
    _OWNERS.pop(request_id, None)


async def _delete_error_objects(client: ParseClient, request_id: str) -> None:
    """Delete the request's BatchMemoryError objects (before the request: a rerun finds them again)."""
    pointer = {"__type": "Pointer", "className": BATCH_MEMORY_REQUEST, "objectId": request_id}
    while True:
        rows = await client.find(
            BATCH_MEMORY_ERROR,
            {"request": pointer},
            limit=_ERRORS_PER_TRANSACTION,
            keys="objectId",
            master=True,
        )
        if not rows:
            return
        results = await client.batch(
            [
                {
                    "method": "DELETE",
                    "path": f"{client.mount_path}/classes/{BATCH_MEMORY_ERROR}/{row['objectId']}",
                }
                for row in rows
            ],
            master=True,
            retry=True,
        )
        failed = [r["error"] for r in results if "error" in r and r["error"].get("code") != 101]
        if failed:
            raise error_for(400, failed[0])


# ---- chunked batches (issue 10) ------------------------------------------------------------------------
#
# A batch of more than ``batch_chunk_memories`` memories is stored as several gzip NDJSON chunk files
# (toolkit.parse.codec), referenced in order by the request's ``batchChunkFiles`` (an Array of Files);
# ``batchMetadata.chunk_memory_counts`` gives each chunk's memory count and ``total_chunks`` their
# number. One activity per chunk writes it; ``chunkProgress.c<k>`` holds each chunk's counters.


@dataclass(frozen=True)
class StoredChunk:
    """One uploaded chunk file and what it holds."""

    file: ParseFile
    memory_count: int
    raw_size: int
    compressed_size: int


def _chunk_file_name(batch_id: str, chunk_num: int) -> str:
    return f"{batch_id}.chunk{chunk_num:05d}.ndjson.gz"


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
        name = _chunk_file_name(self._batch_id, len(self.stored))
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
            await _discard_upload(self._client, chunk.file, self._batch_id)
        self.stored = []


async def create_chunked_batch_memory_request(
    client: ParseClient,
    settings: Settings,
    *,
    batch_id: str,
    user_id: str,
    chunks: Sequence[StoredChunk],
    organization_id: str | None = None,
    namespace_id: str | None = None,
    workspace_id: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    idempotency_key: str | None = None,
    workflow_id: str | None = None,
) -> str:
    """Create the request of a chunked batch whose chunk files are uploaded; return its objectId.

    The caller owns the files until this returns: on an error it deletes them (ChunkUploads.discard),
    unless the create's answer was lost yet the object exists, in which case its id is returned.
    """
    if len(chunks) < 2:
        raise ValueError("a chunked batch has at least two chunks")
    _validate_ids(
        batch_id=batch_id,
        user_id=user_id,
        organization_id=organization_id,
        namespace_id=namespace_id,
        workspace_id=workspace_id,
    )
    total = sum(chunk.memory_count for chunk in chunks)
    raw_size = sum(chunk.raw_size for chunk in chunks)
    compressed_size = sum(chunk.compressed_size for chunk in chunks)
    body = _pending_request_body(
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
            created_at=_now(),
            storage="reference",
        ),
        batch_id=batch_id,
        user_id=user_id,
        organization_id=organization_id,
        namespace_id=namespace_id,
        workspace_id=workspace_id,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        idempotency_key=idempotency_key,
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
        existing = await _find_created_despite_error(client, batch_id, chunks[0].file.name, "batchChunkFiles")
        if existing is not None:
            return existing
        raise
    return str(created["objectId"])


# A memory's JSON estimated from its content plus a framing allowance (fields, quotes, escapes): good
# enough for a cap, and known without encoding anything.
CHUNK_FRAMING_ALLOWANCE = 256


def memory_json_estimate(content: str) -> int:
    return len(content) + CHUNK_FRAMING_ALLOWANCE


def exceeds_one_chunk(memories: int, json_estimate: int, settings: Settings) -> bool:
    """Whether a batch this big (count, estimated JSON bytes) is stored as chunk files, not one file."""
    return memories > settings.batch_chunk_memories or json_estimate > settings.batch_chunk_max_bytes


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
        return await client.download(chunk.file.url or _file_url(client, chunk.file.name))
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
                first = exc.errors(include_input=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                raise BatchFileError(
                    f"chunk {chunk.header.chunk_num} of batch {chunk.header.batch_id}: memory {index} "
                    f"is invalid: {where}: {first['type']}"
                ) from None
    except CodecError as exc:
        raise BatchFileError(f"chunk file {chunk.file.name} is unusable: {exc}") from exc
    if seen != chunk.memory_count:
        raise BatchFileError(
            f"chunk file {chunk.file.name} holds {seen} memories; the request records {chunk.memory_count}"
        )


# ---- monotonic progress (issue 11) -------------------------------------------------------------------
#
# An attempt that lives on after its heartbeat timeout (or a retry resuming from a lagging checkpoint)
# may hold lower counts than the ones already stored. Progress is therefore written only forward:
# read, compare, write. Each chunk has its own counters (only the attempts of that chunk race), and the
# request's totals move by Increment of each chunk's difference, so the chunks add up exactly.
# The read-then-write leaves a window of one round trip in which two attempts of the same chunk can
# both pass the check; the final counts are set absolutely at completion, from the workflow's sums.


_COUNTERS = ("processedCount", "successCount", "failCount")


async def _read_fields(client: ParseClient, request_id: str, keys: str) -> dict[str, Any] | None:
    rows = await client.find(BATCH_MEMORY_REQUEST, {"objectId": request_id}, limit=1, keys=keys, master=True)
    return rows[0] if rows else None


def _forward(stored: Sequence[int], new: Sequence[int]) -> bool:
    """True if ``new`` (processed, ok, failed) moves past ``stored`` without any count going down."""
    return new[0] > stored[0] and all(n >= s for s, n in zip(stored, new, strict=True))


async def advance_batch_request_progress(
    client: ParseClient, request_id: str, *, processed: int, successful: int, failed: int
) -> bool:
    """Set the counters of a one-file batch, only forward and only while it runs. True if written."""
    validate_object_id(request_id)
    stored = await _read_fields(client, request_id, f"status,{','.join(_COUNTERS)}")
    if stored is None or stored.get("status") in FINISHED_STATUSES:
        return False
    before = [int(stored.get(name) or 0) for name in _COUNTERS]
    if not _forward(before, (processed, successful, failed)):
        return False
    await set_batch_request_progress(
        client, request_id, processed=processed, successful=successful, failed=failed
    )
    return True


async def advance_chunk_progress(
    client: ParseClient, request_id: str, chunk_num: int, *, processed: int, successful: int, failed: int
) -> bool:
    """Move chunk ``chunk_num``'s counters forward, and the request's totals by the same amounts."""
    validate_object_id(request_id)
    stored = await _read_fields(client, request_id, "status,chunkProgress")
    if stored is None or stored.get("status") in FINISHED_STATUSES:
        return False
    key = f"c{chunk_num}"
    entry = (stored.get("chunkProgress") or {}).get(key) or {}
    before = [int(entry.get(name) or 0) for name in ("processed", "ok", "failed")]
    new = (processed, successful, failed)
    if not _forward(before, new):
        return False
    body: dict[str, Any] = {
        f"chunkProgress.{key}": {"processed": processed, "ok": successful, "failed": failed}
    }
    for name, old, value in zip(_COUNTERS, before, new, strict=True):
        if value > old:
            body[name] = {"__op": "Increment", "amount": value - old}
    await _update(client, request_id, body)
    return True


class ChunkedBatchWriter:
    """Encodes the memories of a big batch into chunk files as they arrive and uploads each full one.

    A chunk closes at ``batch_chunk_memories`` memories or before its JSON passes
    ``batch_chunk_max_bytes``, so every chunk file stays under Parse's upload limit (gzip never
    grows data by more than a few bytes per 16 KiB). Holds the chunk being filled (compressed) and
    at most one being uploaded.
    """

    def __init__(self, client: ParseClient, settings: Settings, batch_id: str) -> None:
        self._settings = settings
        self._batch_id = batch_id
        self.uploads = ChunkUploads(client, batch_id)
        self._encoder: ChunkEncoder | None = None
        self._next_index = 0

    async def add(self, memory: Mapping[str, Any]) -> None:
        line = chunk_line(memory)
        encoder = self._encoder
        if encoder is not None and (
            encoder.count >= self._settings.batch_chunk_memories
            or encoder.raw_size + len(line) > self._settings.batch_chunk_max_bytes
        ):
            await self._close()
            encoder = None
        if encoder is None:
            header = ChunkHeader(self._batch_id, self.uploads.started, self._next_index)
            encoder = self._encoder = ChunkEncoder(header, level=self._settings.gzip_level)
        encoder.add_line(line)
        self._next_index += 1

    async def _close(self) -> None:
        if self._encoder is not None and self._encoder.count:
            encoder, self._encoder = self._encoder, None
            await self.uploads.add(encoder.finish(), encoder.count)

    async def finish(self) -> list[StoredChunk]:
        await self._close()
        return await self.uploads.finish()

    async def discard(self) -> None:
        self._encoder = None
        await self.uploads.discard()

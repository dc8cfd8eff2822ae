"""The ``BatchMemoryRequest`` of a batch: create (one file or legacy), read, update, finish, delete."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, get_args

from toolkit.parse import in_flight
from toolkit.parse._client import ParseClient
from toolkit.parse.acl import batch_acl
from toolkit.parse.batch_requests._error_log import delete_error_objects, forget_error_owner
from toolkit.parse.batch_requests._files import (
    BATCH_FILE_CONTENT_TYPE,
    batch_file_name,
    delete_file_if_present,
    discard_upload,
    download_memories,
)
from toolkit.parse.batch_requests._objects import read_request_fields, update_request, utc_now, validate_ids
from toolkit.parse.codec import (
    EncodedBatch,
    encode_memories,
)
from toolkit.parse.errors import ObjectNotFound, ParseError, ParseUnavailable
from toolkit.parse.models import (
    FINISHED_STATUSES,
    BatchError,
    BatchMemoryRequest,
    BatchMetadata,
    BatchStatus,
    MemoryItem,
    ParseFile,
    Storage,
    to_parse_date,
    validate_object_id,
)
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.settings import Settings

log = logging.getLogger(__name__)

_STATUSES: frozenset[str] = frozenset(get_args(BatchStatus))


@dataclass(frozen=True)
class Submission:
    """Who submitted a batch and how to answer them: what a new request stores besides its memories.

    The ids become Parse pointers (and the user's id part of the ACL): each must be a plain objectId,
    checked here so that no create can store a path-like one. The webhook secret never shows in a repr.
    """

    user_id: str
    organization_id: str | None = None
    namespace_id: str | None = None
    workspace_id: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    idempotency_key: str | None = None
    # The in-flight slot taken for this batch (toolkit.parse.in_flight): the request holds it from then on.
    slot_hold: str | None = None

    def __post_init__(self) -> None:
        validate_ids(
            user_id=self.user_id,
            organization_id=self.organization_id,
            namespace_id=self.namespace_id,
            workspace_id=self.workspace_id,
            slot_hold=self.slot_hold,
        )


async def create_batch_memory_request_in_parse(
    client: ParseClient,
    settings: Settings,
    *,
    batch_id: str,
    submission: Submission,
    memories: Sequence[MemoryItem],
    storage: Storage = "reference",
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
    # batchId becomes part of the file name: refuse anything path-like (the submission checked its ids).
    validate_object_id(batch_id)
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
    body = pending_request_body(
        BatchMetadata(
            memory_count=len(items),
            total_size_bytes=raw_size,
            compressed_size_bytes=compressed_size,
            compression_ratio=ratio,
            codec=codec,
            chunk_num=1,
            total_chunks=1,
            source="batch_api",
            created_at=utc_now(),
            storage=storage,
        ),
        batch_id=batch_id,
        submission=submission,
        workflow_id=workflow_id,
    )

    uploaded: ParseFile | None = None
    if encoded is not None:
        # POST is not retried: a repeat upload would leave a second, unreferenced file.
        answer = await client.upload_file(
            batch_file_name(batch_id), encoded.data, BATCH_FILE_CONTENT_TYPE, master=True
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
            existing = await find_created_despite_error(client, batch_id, uploaded.name)
            if existing is not None:
                log.warning(
                    "batch %s: create answered %s but the request exists (%s)", batch_id, exc, existing
                )
                return existing
        await discard_upload(client, uploaded, batch_id)
        raise
    object_id: str = created["objectId"]
    return object_id


def pending_request_body(
    metadata: BatchMetadata,
    *,
    batch_id: str,
    submission: Submission,
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
        user=submission.user_id,
        organization=submission.organization_id,
        namespace=submission.namespace_id,
        workspace=submission.workspace_id,
        batch_chunk_files=batch_chunk_files,
        batch_metadata=metadata,
        status="pending",
        total_memories=metadata.memory_count,
        processed_count=0,
        success_count=0,
        fail_count=0,
        errors=[],
        error_count=0,
        webhook_url=submission.webhook_url,
        webhook_secret=submission.webhook_secret,
        webhook_sent=False,
        idempotency_key=submission.idempotency_key,
        workflow_id=workflow_id,
        slot_hold=submission.slot_hold,
    )
    return {**request.to_parse(), "ACL": batch_acl(submission.user_id, submission.organization_id)}


async def find_created_despite_error(
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
        request.memories = await download_memories(client, settings, request)
    return request


async def find_batch_request(
    client: ParseClient, batch_id: str, *, session_token: str | None = None
) -> BatchMemoryRequest | None:
    """The request of ``batch_id``; as that user when ``session_token`` is given (another's → None)."""
    auth: dict[str, Any] = {"session_token": session_token} if session_token else {"master": True}
    rows = await client.find(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, limit=1, order="createdAt", **auth)
    return BatchMemoryRequest.from_parse(rows[0]) if rows else None


async def find_request_holding(client: ParseClient, slot_hold: str) -> BatchMemoryRequest | None:
    """The request that holds the in-flight slot ``slot_hold``, if one was created (master key)."""
    rows = await client.find(BATCH_MEMORY_REQUEST, {"slotHold": slot_hold}, limit=1, master=True)
    return BatchMemoryRequest.from_parse(rows[0]) if rows else None


async def release_slot(client: ParseClient, slot_hold: str | None) -> None:
    """Give back the in-flight slot of an ended batch. A failure is logged, not raised: the slot is
    freed by the repair that runs when its user reaches the cap (toolkit.api.in_flight)."""
    if slot_hold is None:
        return
    try:
        await in_flight.release(client, slot_hold)
    except ParseError as exc:
        log.warning("in-flight slot %s not given back (%s); the cap's repair will free it", slot_hold, exc)


async def find_by_idempotency_key(client: ParseClient, user_id: str, key: str) -> BatchMemoryRequest | None:
    """The user's earliest request created with this ``Idempotency-Key``, if any."""
    validate_object_id(user_id)
    where = {
        "user": {"__type": "Pointer", "className": "_User", "objectId": user_id},
        "idempotencyKey": key,
    }
    rows = await client.find(BATCH_MEMORY_REQUEST, where, limit=1, order="createdAt", master=True)
    return BatchMemoryRequest.from_parse(rows[0]) if rows else None


def _check_status(status: str) -> None:
    if status not in _STATUSES:
        raise ValueError(f"unknown batch status {status!r}; expected one of {', '.join(sorted(_STATUSES))}")


async def record_workflow(client: ParseClient, request_id: str, workflow_id: str, run_id: str) -> None:
    await update_request(client, request_id, {"workflowId": workflow_id, "workflowRunId": run_id})


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
    await update_request(client, request_id, body)


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
    slot_hold: str | None = None,
) -> None:
    """Finish the request: final status, completion time, duration, and the final counters if given.

    Then the batch's in-flight slot (``slot_hold``) is given back: the batch no longer counts against
    its owner's cap.
    """
    _check_status(status)
    if status not in FINISHED_STATUSES:
        raise ValueError(
            f"a finished batch has status {', '.join(sorted(FINISHED_STATUSES))}, not {status!r}"
        )
    body: dict[str, Any] = {
        "status": status,
        "completedAt": to_parse_date(completed_at),
        "processingDurationMs": processing_duration_ms,
    }
    for name, value in (("processedCount", processed), ("successCount", successful), ("failCount", failed)):
        if value is not None:
            body[name] = value
    await update_request(client, request_id, body)
    await release_slot(client, slot_hold)


async def mark_webhook_sent(client: ParseClient, request_id: str) -> None:
    await update_request(client, request_id, {"webhookSent": True})


async def _stored_files(
    client: ParseClient, request_id: str
) -> tuple[dict[str, Any] | None, list[ParseFile]]:
    """(the raw request or None, its files), read with the master key: its batch file or chunk files."""
    validate_object_id(request_id)
    try:
        data = await client.get_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    except ObjectNotFound:
        return None, []
    raw = [data["batchDataFile"]] if data.get("batchDataFile") else []
    raw += data.get("batchChunkFiles") or []
    return data, [ParseFile.model_validate(file) for file in raw]


async def delete_batch_file(client: ParseClient, request_id: str) -> bool:
    """Delete the request's batch file (or chunk files) and unset the field. True if a file was deleted.

    The files go first: if unsetting the field then fails, a rerun finds them gone and only
    unsets, and a finished request with a dangling reference still reads fine.
    """
    stored, files = await _stored_files(client, request_id)
    if stored is None or not files:
        return False
    deleted = [await delete_file_if_present(client, file) for file in files]
    await update_request(
        client, request_id, {"batchDataFile": {"__op": "Delete"}, "batchChunkFiles": {"__op": "Delete"}}
    )
    return any(deleted)


async def delete_batch_request(client: ParseClient, request_id: str, *, release: bool = True) -> None:
    """Delete the request and its files, and give its in-flight slot back (unless ``release=False``: the
    caller stores the same batch again under the slot). A request that does not exist is not an error."""
    stored, files = await _stored_files(client, request_id)
    if stored is None:
        return
    for file in files:
        await delete_file_if_present(client, file)
    await delete_error_objects(client, request_id)
    try:
        await client.delete_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    except ObjectNotFound:
        pass
    forget_error_owner(request_id)
    if release:
        await release_slot(client, stored.get("slotHold"))


async def retire_unstarted_request(
    client: ParseClient, request_id: str, reason: str, *, release: bool = True
) -> None:
    """Mark a request that will never run ``failed``, when deleting it failed: it keeps nothing of its batch.

    It frees its Idempotency-Key, and its batch id too: a retry with the key stores the same batch id
    again, and a request still claiming that id would answer ``/status`` and ``/errors`` for the new
    batch (``find_batch_request`` takes the oldest). It is renamed ``discarded-<objectId>``, a name no
    batch id can have. ``reason`` stays on the row for an operator; no error object is written (those
    are keyed by batch id). Its slot is given back unless ``release=False``.
    """
    validate_object_id(request_id)
    now = utc_now()
    body = {
        "status": "failed",
        "completedAt": to_parse_date(now),
        "batchId": f"discarded-{request_id}",
        "requestId": f"discarded-{request_id}",
        "idempotencyKey": {"__op": "Delete"},
        "errors": [BatchError(index=-1, error=reason, timestamp=now).to_parse()],
    }
    stored = await read_request_fields(client, request_id, "slotHold")
    await update_request(client, request_id, body)
    if release and stored is not None:
        await release_slot(client, stored.get("slotHold"))

"""``collect_batches``: one row per ``BatchMemoryRequest`` in a time window, from Parse and Temporal.

Read only, with the master key, paged, and assuming nothing about who made the batches: any field may
be missing (a request made by another tool, an older schema, a workflow Temporal no longer knows), and
then its cell is empty rather than the call failing. This is the shared contract every notebook, the
canary analysis and the load tests read batches through (design §7).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from temporalio.client import Client
from temporalio.service import RPCError

from toolkit.parse import ParseClient
from toolkit.parse.models import from_parse_date, to_parse_date
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.settings import Settings
from toolkit.temporal.client import connect

__all__ = ["BATCH_COLUMNS", "collect_batches", "error_type"]

BATCH_COLUMNS: tuple[str, ...] = (
    "batch_id",
    "request_id",
    "user_id",
    "storage",
    "status",
    "total",
    "successful",
    "failed",
    "error_count",
    "created_at",
    "started_at",
    "completed_at",
    "end_to_end_ms",
    "processing_ms",
    "raw_bytes",
    "compressed_bytes",
    "compression_ratio",
    # Chunk files the batch was stored as (1 for one file; legacy batches have none: 1 too). Its
    # history grows by one activity per chunk, so the canary's history budget is per chunk.
    "chunks",
    "workflow_id",
    "workflow_type",
    "input_bytes",
    "history_bytes",
    "history_events",
    "run_status",
    # Beyond the contract's list: the error type of each memory that failed (one per memory), for the
    # "errors by type" views. Types only, never the memory's content.
    "error_types",
)
_INT_COLUMNS = (
    "total",
    "successful",
    "failed",
    "error_count",
    "processing_ms",
    "raw_bytes",
    "compressed_bytes",
    "chunks",
    "input_bytes",
    "history_bytes",
    "history_events",
)
_TIME_COLUMNS = ("created_at", "started_at", "completed_at")
# Everything collect_batches reads; webhookSecret and the batch file are never asked for.
_KEYS = (
    "objectId,batchId,user,status,totalMemories,successCount,failCount,errors,errorCount,createdAt,startedAt,"
    "completedAt,processingDurationMs,batchMetadata,workflowId"
)
_PAGE = 100
# Temporal describe calls in flight at once: enough to read thousands of rows quickly, few enough
# not to load a production frontend.
_DESCRIBE_CONCURRENCY = 8
_DESCRIBE_TIMEOUT = timedelta(seconds=10)


def error_type(message: str) -> str:
    """The type of one recorded error: its text up to the first ``:`` (e.g. ``ParseError 142``).

    Error texts are written by the worker as ``<type>: <detail>``; the detail may name ids and is
    not a type. A text without ``:`` is its own type, cut to 60 characters.
    """
    head = message.split(":", 1)[0].strip()
    return (head or "unknown")[:60]


async def _pages(parse: ParseClient, where: Mapping[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
    """Every matching request, keyed on objectId so rows created while paging never shift a page."""
    last: str | None = None
    while True:
        page_where = {**where, "objectId": {"$gt": last}} if last else dict(where)
        rows = await parse.find(
            BATCH_MEMORY_REQUEST, page_where, limit=_PAGE, order="objectId", keys=_KEYS, master=True
        )
        if rows:
            yield rows
        if len(rows) < _PAGE:
            return
        last = rows[-1]["objectId"]


def _date(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return from_parse_date(value)
    except ValueError:
        return None


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _distinct_error_types(errors: Any) -> list[str]:
    """One error type per failed memory (a retry may record one twice), plus the batch-level ones."""
    if not isinstance(errors, list):
        return []
    per_memory: dict[int, str] = {}
    batch_level: list[str] = []
    for entry in sorted(
        (e for e in errors if isinstance(e, dict)), key=lambda e: str(e.get("timestamp", ""))
    ):
        kind = error_type(str(entry.get("error", "")))
        index = entry.get("index")
        if isinstance(index, int) and index >= 0:
            per_memory[index] = kind  # sorted by time, so the latest attempt wins
        else:
            batch_level.append(kind)
    return batch_level + [per_memory[i] for i in sorted(per_memory)]


def _row(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("batchMetadata") if isinstance(obj.get("batchMetadata"), dict) else {}
    user = obj.get("user")
    created, started, completed = (_date(obj.get(k)) for k in ("createdAt", "startedAt", "completedAt"))
    error_types = _distinct_error_types(obj.get("errors"))
    ratio = metadata.get("compression_ratio")
    return {
        "batch_id": obj.get("batchId"),
        "request_id": obj.get("objectId"),
        "user_id": user.get("objectId") if isinstance(user, dict) else None,
        "storage": metadata.get("storage"),
        "status": obj.get("status"),
        "total": _number(obj.get("totalMemories")),
        "successful": _number(obj.get("successCount")),
        "failed": _number(obj.get("failCount")),
        # errorCount is exact; `errors` holds only the first 100 (requests from before it: all of them).
        "error_count": _number(obj.get("errorCount"))
        if obj.get("errorCount") is not None
        else len(error_types),
        "created_at": created,
        "started_at": started,
        "completed_at": completed,
        "end_to_end_ms": (completed - created).total_seconds() * 1000 if created and completed else None,
        "processing_ms": _number(obj.get("processingDurationMs")),
        "raw_bytes": _number(metadata.get("total_size_bytes")),
        "compressed_bytes": _number(metadata.get("compressed_size_bytes")),
        "compression_ratio": float(ratio) if isinstance(ratio, int | float) else None,
        "chunks": _number(metadata.get("total_chunks")) or 1,
        "workflow_id": obj.get("workflowId"),
        "workflow_type": None,
        "input_bytes": None,
        "history_bytes": None,
        "history_events": None,
        "run_status": None,
        "error_types": error_types,
    }


async def _describe(temporal: Client, row: dict[str, Any], limit: asyncio.Semaphore) -> None:
    """Fill the Temporal columns of ``row`` from describe and the first history event."""
    if not row["workflow_id"]:
        return
    handle = temporal.get_workflow_handle(row["workflow_id"])
    async with limit:
        try:
            description = await handle.describe(rpc_timeout=_DESCRIBE_TIMEOUT)
            info = description.raw_description.workflow_execution_info
            # Only the first event (the start, which holds the input): a legacy history can be megabytes.
            input_bytes = None
            async for event in handle.fetch_history_events(page_size=1, rpc_timeout=_DESCRIBE_TIMEOUT):
                started = event.workflow_execution_started_event_attributes
                input_bytes = sum(len(p.data) for p in started.input.payloads)
                break
        except RPCError:  # unknown to Temporal (e.g. past retention, or another namespace)
            return
    row["workflow_type"] = description.workflow_type
    row["input_bytes"] = input_bytes
    row["history_bytes"] = int(info.history_size_bytes)
    row["history_events"] = int(info.history_length)
    row["run_status"] = description.status.name if description.status is not None else None


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(BATCH_COLUMNS))
    for column in _INT_COLUMNS:
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    for column in _TIME_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True)
    for column in ("end_to_end_ms", "compression_ratio"):
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    return frame.sort_values(["created_at", "request_id"], kind="stable").reset_index(drop=True)


async def collect_batches(
    settings: Settings,
    since: datetime,
    until: datetime | None = None,
    *,
    with_temporal: bool = True,
) -> pd.DataFrame:
    """One row per ``BatchMemoryRequest`` created in ``[since, until)``; columns :data:`BATCH_COLUMNS`.

    Times are tz-aware UTC (a naive ``since``/``until`` is taken as UTC). With ``with_temporal`` the
    Temporal columns (workflow type, input and history bytes, history events, run status) are read
    with ``describe``; they stay empty for a workflow Temporal does not know.
    """
    where: dict[str, Any] = {"createdAt": {"$gte": to_parse_date(_utc(since))}}
    if until is not None:
        if _utc(until) <= _utc(since):
            raise ValueError(f"until ({until}) must be after since ({since})")
        where["createdAt"]["$lt"] = to_parse_date(_utc(until))
    rows: list[dict[str, Any]] = []
    async with ParseClient(settings) as parse:
        async for page in _pages(parse, where):
            rows.extend(_row(obj) for obj in page)
    if with_temporal and rows:
        temporal = await connect(settings)
        limit = asyncio.Semaphore(_DESCRIBE_CONCURRENCY)
        await asyncio.gather(*(_describe(temporal, row, limit) for row in rows))
    return _frame(rows)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

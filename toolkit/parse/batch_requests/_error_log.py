"""The per-memory error log of a batch: one ``BatchMemoryError`` per (batch, index), counted exactly."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

from toolkit.parse._client import ParseClient
from toolkit.parse.acl import batch_acl
from toolkit.parse.batch_requests._objects import update_request
from toolkit.parse.errors import DuplicateValue, ParseUnavailable, error_for
from toolkit.parse.models import (
    BatchError,
    error_object_id,
    to_parse_date,
    validate_object_id,
)
from toolkit.parse.schema import BATCH_MEMORY_ERROR, BATCH_MEMORY_REQUEST

log = logging.getLogger(__name__)

# An error text longer than this is cut: one pathological message must not bloat the object.
MAX_ERROR_CHARS = 1_000


# The request's own ``errors`` array holds the first this many; BatchMemoryError holds them all.
MAX_STORED_ERRORS = 100


# Error objects created per Parse transaction (below Parse's batchRequestLimit, with the increment).
_ERRORS_PER_TRANSACTION = 50


_TRANSACTION_ATTEMPTS = 5


# What an error text may not show its reader (the batch's owner, through /status and /errors): URLs, and
# addresses with a port (an IP, a bracketed IPv6, localhost, or a dotted host name). Every producer of
# error texts writes safe ones already; this is the last net, for a message that quotes its cause.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_ADDRESS = re.compile(
    r"(?:\b\d{1,3}(?:\.\d{1,3}){3}\b|\[[0-9a-f:.]+\]|\blocalhost\b|\b[a-z0-9-]+(?:\.[a-z0-9-]+)+)(?::\d{1,5})\b"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b",
    re.IGNORECASE,
)
ADDRESS_PLACEHOLDER = "<address>"


def without_addresses(text: str) -> str:
    """``text`` with every URL and network address replaced by ``<address>``."""
    return _ADDRESS.sub(ADDRESS_PLACEHOLDER, _URL.sub(ADDRESS_PLACEHOLDER, text))


def _error_entry(error: BatchError) -> dict[str, Any]:
    entry = error.to_parse()
    text = without_addresses(entry["error"])
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    entry["error"] = text
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
            results = await client.transaction([*creates, increment])
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
            await update_request(client, request_id, {"errors": {"__op": "Add", "objects": sample}})
        return
    raise ParseUnavailable(
        f"errors of request {request_id}: gave up after {_TRANSACTION_ATTEMPTS} conflicting transactions"
    )


async def _batch_or_raise(client: ParseClient, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST /batch (not a transaction); raise the first sub-request's error as the matching ParseError."""
    results = await client.batch(requests, master=True)
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


def forget_error_owner(request_id: str) -> None:
    """Drop the cached owner of a deleted request's errors."""
    _OWNERS.pop(request_id, None)


async def delete_error_objects(client: ParseClient, request_id: str) -> None:
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

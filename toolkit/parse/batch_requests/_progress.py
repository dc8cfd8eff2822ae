"""Progress counters of a running batch: the legacy increments, and the monotonic writes of the new path.

An attempt that lives on after its heartbeat timeout (or a retry resuming from a lagging checkpoint)
may hold lower counts than the ones already stored. Progress is therefore written only forward:
read, compare, write. Each chunk has its own counters (only the attempts of that chunk race), and the
request's totals move by Increment of each chunk's difference, so the chunks add up exactly.
The read-then-write leaves a window of one round trip in which two attempts of the same chunk can
both pass the check; the final counts are set absolutely at completion, from the workflow's sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from toolkit.parse._client import ParseClient
from toolkit.parse.batch_requests._objects import read_request_fields, update_request
from toolkit.parse.models import (
    FINISHED_STATUSES,
    validate_object_id,
)


async def update_batch_request_progress(
    client: ParseClient, request_id: str, *, processed: int, successful: int, failed: int
) -> None:
    """Add to the counters atomically (``Increment``): safe with many concurrent writers."""
    await update_request(
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
    await update_request(
        client, request_id, {"processedCount": processed, "successCount": successful, "failCount": failed}
    )


_COUNTERS = ("processedCount", "successCount", "failCount")


def _forward(stored: Sequence[int], new: Sequence[int]) -> bool:
    """True if ``new`` (processed, ok, failed) moves past ``stored`` without any count going down."""
    return new[0] > stored[0] and all(n >= s for s, n in zip(stored, new, strict=True))


async def advance_batch_request_progress(
    client: ParseClient, request_id: str, *, processed: int, successful: int, failed: int
) -> bool:
    """Set the counters of a one-file batch, only forward and only while it runs. True if written."""
    validate_object_id(request_id)
    stored = await read_request_fields(client, request_id, f"status,{','.join(_COUNTERS)}")
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
    stored = await read_request_fields(client, request_id, "status,chunkProgress")
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
    await update_request(client, request_id, body)
    return True

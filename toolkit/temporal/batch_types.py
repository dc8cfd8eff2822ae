"""The small values that travel through Temporal. References and counts only: no credential, no content.

The legacy types (``LegacyBatchInput``, ``ShrunkBatchData``) are the exception on purpose: they carry
memories the way the old path did, so the baseline measures the real thing. They still carry no
credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatchReference:
    """The new path's whole workflow input: ``{"request_id", "batch_id"}``, well under 100 bytes."""

    request_id: str
    batch_id: str


@dataclass(frozen=True)
class BatchSummary:
    batch_id: str
    status: str
    total: int
    successful: int
    failed: int
    webhook_sent: bool = False
    # Whether the request names a webhook_url. The workflow skips the webhook activity when it does
    # not (one activity and one workflow task less). True by default: a result recorded before this
    # field existed replays as "configured", exactly as those runs behaved.
    webhook_configured: bool = True
    # A chunked batch (issue 10): the first activity only starts it and answers how many chunks it
    # has and how many chunk activities may run at once (the worker's setting, recorded in history
    # so a replay takes the same decision). Absent in results recorded before chunking: 1 and 1.
    total_chunks: int = 1
    chunk_window: int = 1


@dataclass(frozen=True)
class ChunkReference:
    """The input of one chunk activity: which request, which chunk. No content."""

    request_id: str
    batch_id: str
    chunk_num: int


@dataclass(frozen=True)
class ChunkSummary:
    chunk_num: int
    total: int
    successful: int
    failed: int


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk whose activity gave up after its retries, and why (ids and error types, no content)."""

    chunk_num: int
    error: str


@dataclass(frozen=True)
class ChunkedFinalizeInput:
    """The exact totals of a chunked batch, summed by the workflow from its chunks' results.

    ``failed_chunks`` are not in the sums: finalize counts each one from what Parse holds. Empty in
    inputs recorded before a chunk failure became ``partial``.
    """

    reference: BatchReference
    total: int
    successful: int
    failed: int
    failed_chunks: list[ChunkFailure] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoint:
    """Heartbeat details: every memory below ``next`` is written; ``ok``/``failed`` count those."""

    next: int = 0
    ok: int = 0
    failed: int = 0

    @classmethod
    def from_details(cls, details: Any) -> Checkpoint | None:
        if not details:
            return None
        raw = details[0]
        # Details without "next" carry no checkpoint (an attempt that heartbeated only an outage).
        if isinstance(raw, dict) and "next" in raw:
            return cls(int(raw["next"]), int(raw.get("ok", 0)), int(raw.get("failed", 0)))
        return None

    def as_details(self) -> dict[str, int]:
        return {"next": self.next, "ok": self.ok, "failed": self.failed}


@dataclass(frozen=True)
class BatchFailure:
    """Why a batch gave up; the message names ids and error types, never content."""

    reference: BatchReference
    reason: str


@dataclass(frozen=True)
class WebhookOutcome:
    delivered: bool
    attempts: int = 0
    skipped_reason: str | None = None


# ---- legacy path ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchContext:
    """What the old path copied next to every memory (minus the credentials it used to copy too)."""

    request_id: str
    batch_id: str
    user_id: str
    organization_id: str | None = None
    namespace_id: str | None = None
    workspace_id: str | None = None


@dataclass(frozen=True)
class LegacyBatchInput:
    context: BatchContext
    memories: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ShrunkBatchData:
    """One memory plus a copy of the batch context: the per-activity input of the legacy path."""

    context: BatchContext
    index: int
    memory: dict[str, Any]


@dataclass(frozen=True)
class MemoryResult:
    index: int
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class LegacyFinalizeInput:
    reference: BatchReference
    total: int
    successful: int
    failed: int
    # Memories whose activity gave up after its retries, so never recorded their own error.
    lost: list[MemoryResult] = field(default_factory=list)

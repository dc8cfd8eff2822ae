"""Request and response bodies of the batch API (design §4.3)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from toolkit.parse.models import MemoryItem, Storage

BatchStatusName = Literal["pending", "processing", "completed", "partial", "failed"]

# Ids of Parse objects the caller names: they end up in pointers and role names.
OBJECT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Idempotency keys: printable ASCII, no spaces, bounded (they are stored and indexed).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
BATCH_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# The validation context key carrying the per-memory content limit of the running app.
MAX_MEMORY_BYTES = "max_memory_bytes"


# Metadata deeper than this is refused. Far past any real use, far below what breaks the storage:
# pydantic stops serializing at ~255 levels, json and Parse's own JSON handling at ~1,000.
MAX_METADATA_DEPTH = 32


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of nested objects/arrays in ``value`` (a scalar is 0, ``{}`` is 1), at most ``limit + 1``.

    Iterative, and it stops one level past ``limit``: a hostile 900-level value costs next to nothing.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _unstorable(field: str, exc: ValueError) -> ValueError:
    if isinstance(exc, UnicodeEncodeError):
        char = exc.object[exc.start : exc.start + 1]
        return ValueError(
            f"{field} contains a lone surrogate (U+{ord(char):04X}), which is not valid UTF-8 text"
        )
    # json.dumps(allow_nan=False) refuses NaN and ±Infinity (1e400 decodes to inf): not JSON numbers.
    return ValueError(f"{field} cannot be stored as JSON ({exc}): NaN and Infinity are not JSON numbers")


class MemoryIn(MemoryItem):
    """One submitted memory. ``content`` is limited in UTF-8 bytes, not characters.

    Everything accepted here must be storable as the batch file's strict UTF-8 JSON (and as a legacy
    workflow input): ``json.loads`` happily returns lone surrogates, NaN and 900-level nesting, so
    they are refused here, with the memory's index, instead of failing in storage as a 500.
    """

    @field_validator("content")
    @classmethod
    def _content_within_limit(cls, value: str, info: ValidationInfo) -> str:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise _unstorable("content", exc) from None
        limit = (info.context or {}).get(MAX_MEMORY_BYTES)
        if limit is not None and size > limit:
            raise ValueError(f"content is {size:,} bytes; the limit is {limit:,} bytes per memory")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        if nesting_depth(value, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
            raise ValueError(
                f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep; "
                f"the limit is {MAX_METADATA_DEPTH}"
            )
        try:
            # Exactly how the batch file encodes it (toolkit.parse.codec): strict UTF-8, no NaN.
            json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except ValueError as exc:  # UnicodeEncodeError is a ValueError
            raise _unstorable("metadata", exc) from None
        return value


class BatchRequestIn(BaseModel):
    """The body of ``POST /v1/memory/batch``. Unknown fields are refused: a typo is not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    memories: list[MemoryIn] = Field(min_length=1, description="1 to MAX_BATCH_MEMORIES memories")
    organization_id: str | None = Field(default=None, pattern=OBJECT_ID_PATTERN)
    namespace_id: str | None = Field(default=None, pattern=OBJECT_ID_PATTERN)
    workspace_id: str | None = Field(default=None, pattern=OBJECT_ID_PATTERN)
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="http(s) URL called on completion"
    )
    webhook_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="HMAC key for X-Batch-Signature; never returned",
    )


class BatchAccepted(BaseModel):
    """The 202 answer: the same shape on the reference and the legacy path."""

    batch_id: str
    workflow_id: str
    status: Literal["pending"] = "pending"
    storage: Storage
    total_memories: int
    status_url: str


class BatchErrorOut(BaseModel):
    index: int
    error: str


class BatchStatusOut(BaseModel):
    batch_id: str
    status: BatchStatusName
    storage: Storage
    total_memories: int
    processed: int
    successful: int
    failed: int
    progress_percent: float
    started_at: datetime | None
    completed_at: datetime | None
    estimated_completion: datetime | None
    errors: list[BatchErrorOut] = Field(
        description="the first errors recorded (at most 100), ordered by index; "
        "all of them: GET /v1/batch/{batch_id}/errors"
    )
    error_count: int = Field(description="how many memories (and batch-level failures) have an error")
    webhook_sent: bool


class BatchErrorDetailOut(BaseModel):
    index: int = Field(description="the memory's index in the batch; -1 for a failure of the whole batch")
    error: str
    timestamp: datetime


class BatchErrorsPage(BaseModel):
    """One page of a batch's per-memory errors, ordered by index."""

    batch_id: str
    error_count: int = Field(description="how many errors the batch has in total")
    offset: int
    limit: int
    errors: list[BatchErrorDetailOut]


# Page size bounds of GET /v1/batch/{batch_id}/errors.
ERRORS_PAGE_DEFAULT = 100
ERRORS_PAGE_MAX = 1000


class ErrorOut(BaseModel):
    """Every non-2xx answer except 422, which carries pydantic's field errors in ``detail``."""

    detail: str


class FieldErrorOut(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    ctx: dict[str, Any] | None = None


class ValidationErrorOut(BaseModel):
    detail: list[FieldErrorOut]

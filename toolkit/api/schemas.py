"""Request and response bodies of the batch API (design §4.3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from toolkit.parse.models import MemoryItem

Storage = Literal["reference", "legacy"]
BatchStatusName = Literal["pending", "processing", "completed", "partial", "failed"]

# Ids of Parse objects the caller names: they end up in pointers and role names.
OBJECT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Idempotency keys: printable ASCII, no spaces, bounded (they are stored and indexed).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
BATCH_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# The validation context key carrying the per-memory content limit of the running app.
MAX_MEMORY_BYTES = "max_memory_bytes"


class MemoryIn(MemoryItem):
    """One submitted memory. ``content`` is limited in UTF-8 bytes, not characters."""

    @field_validator("content")
    @classmethod
    def _content_within_limit(cls, value: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get(MAX_MEMORY_BYTES)
        if limit is not None:
            size = len(value.encode("utf-8"))
            if size > limit:
                raise ValueError(f"content is {size:,} bytes; the limit is {limit:,} bytes per memory")
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
    errors: list[BatchErrorOut] = Field(description="the newest errors (at most 100), ordered by index")
    error_count: int = Field(description="how many errors were recorded in total")
    webhook_sent: bool


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

"""Pydantic models of what the toolkit stores in Parse (design §4.2), and Parse's wire types.

Python code works with snake_case models; Parse speaks camelCase with ``__type`` wrappers for
pointers, files and dates. :meth:`BatchMemoryRequest.to_parse` and :meth:`BatchMemoryRequest.from_parse`
are the only translation between the two, and ``from_parse(to_parse())`` is lossless: every
datetime is kept at Parse's precision (UTC, milliseconds) from the moment it enters a model.

The ACL is deliberately not a field: it is derived from the owner and organization when an object is
written (:mod:`toolkit.parse.acl`), so no code path can round-trip a wrong or public ACL.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "FINISHED_STATUSES",
    "BatchError",
    "BatchMemoryRequest",
    "BatchMetadata",
    "BatchStatus",
    "MemoryItem",
    "MemoryType",
    "ParseDatetime",
    "ParseFile",
    "Storage",
    "Pointer",
    "error_object_id",
    "from_parse_date",
    "memory_object_id",
    "to_parse_date",
    "validate_object_id",
]

# ---- object ids ------------------------------------------------------------------------------------

_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# 18 digest bytes = 144 bits; 25 base-62 digits hold up to ~148.8 bits, so every id has one length.
_DIGEST_BYTES = 18
_ID_DIGITS = 25


def validate_object_id(value: object) -> str:
    """Return ``value`` if it is a safe objectId (``[A-Za-z0-9_-]{1,64}``), else raise ValueError.

    Ids end up in URL paths (``classes/Memory/<id>``) and Parse lets a client choose them, so
    anything that could change the path (``/``, ``..``, ``%``, whitespace) is refused up front.
    """
    if not isinstance(value, str) or _OBJECT_ID.fullmatch(value) is None:
        raise ValueError(f"invalid objectId {value!r}: expected 1-64 characters of [A-Za-z0-9_-]")
    return value


def _base62_id(prefix: str, text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    number = int.from_bytes(digest[:_DIGEST_BYTES], "big")
    digits = []
    for _ in range(_ID_DIGITS):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return prefix + "".join(reversed(digits))


def error_object_id(batch_id: str, index: int) -> str:
    """The objectId of the BatchMemoryError of ``(batch_id, index)`` (index -1: the whole batch).

    Deterministic like :func:`memory_object_id`, so a memory's error is stored once however often
    a retried activity reports it: ``"e"`` plus 25 base-62 digits of sha256(``"error:<batch_id>:<index>"``).
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < -1:
        raise ValueError(f"error index must be an int >= -1, got {index!r}")
    return _base62_id("e", f"error:{batch_id}:{index}")


def memory_object_id(batch_id: str, index: int) -> str:
    """The objectId of the Memory at ``(batch_id, index)``: the same on every attempt, on every worker.

    A retried write therefore collides with the first one (Parse error 137) instead of creating
    a second copy. The id is ``"m"`` plus 25 base-62 digits of sha256(``"<batch_id>:<index>"``).
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"memory index must be a non-negative int, got {index!r}")
    digest = hashlib.sha256(f"{batch_id}:{index}".encode()).digest()
    number = int.from_bytes(digest[:_DIGEST_BYTES], "big")
    digits = []
    for _ in range(_ID_DIGITS):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "m" + "".join(reversed(digits))


# ---- dates -----------------------------------------------------------------------------------------


def _to_utc_ms(value: datetime) -> datetime:
    # Naive datetimes are taken as UTC, as Parse does; everything is cut to Parse's milliseconds.
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def _iso(value: datetime) -> str:
    value = _to_utc_ms(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def to_parse_date(dt: datetime) -> dict[str, str]:
    """``{"__type": "Date", "iso": "2024-05-01T12:00:00.123Z"}``: a Date field as Parse stores it."""
    return {"__type": "Date", "iso": _iso(dt)}


def from_parse_date(value: dict[str, Any] | str | datetime) -> datetime:
    """A tz-aware UTC datetime from a Parse Date (``{"__type": "Date", "iso": …}``) or a plain ISO string.

    Parse returns ``createdAt``/``updatedAt`` as bare strings and every other Date field wrapped.
    """
    if isinstance(value, dict):
        if value.get("__type") != "Date" or not isinstance(value.get("iso"), str):
            raise ValueError(f"not a Parse Date: {value!r}")
        value = value["iso"]
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an ISO 8601 date: {value!r}") from exc
    if not isinstance(value, datetime):
        raise ValueError(f"not a Parse Date: {value!r}")
    return _to_utc_ms(value)


def _parse_date_input(value: Any) -> Any:
    return from_parse_date(value) if isinstance(value, dict | str) else value


ParseDatetime = Annotated[
    datetime,
    BeforeValidator(_parse_date_input),
    AfterValidator(_to_utc_ms),
    PlainSerializer(_iso, return_type=str, when_used="json"),
]
"""A datetime held as Parse holds it: UTC, millisecond precision; JSON form ``…T12:00:00.123Z``."""


# ---- Parse wire types ------------------------------------------------------------------------------


class Pointer(BaseModel):
    """A reference to another Parse object; on the wire ``{"__type": "Pointer", "className", "objectId"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    class_name: str
    object_id: str

    @model_validator(mode="before")
    @classmethod
    def _accept_parse_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "__type" in data:
            if data["__type"] != "Pointer":
                raise ValueError(f"not a Parse Pointer: {data!r}")
            return {"class_name": data.get("className"), "object_id": data.get("objectId")}
        return data

    @field_validator("class_name")
    @classmethod
    def _check_class_name(cls, value: str) -> str:
        if _CLASS_NAME.fullmatch(value) is None:
            raise ValueError(f"invalid Parse class name {value!r}")
        return value

    @field_validator("object_id")
    @classmethod
    def _check_object_id(cls, value: str) -> str:
        return validate_object_id(value)

    def to_parse(self) -> dict[str, str]:
        return {"__type": "Pointer", "className": self.class_name, "objectId": self.object_id}

    @classmethod
    def from_parse(cls, data: dict[str, Any]) -> Pointer:
        return cls.model_validate(data)


class ParseFile(BaseModel):
    """A Parse File. Sent by name only (Parse is set to refuse file URLs); read back with its url."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_parse_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "__type" in data:
            if data["__type"] != "File":
                raise ValueError(f"not a Parse File: {data!r}")
            return {"name": data.get("name"), "url": data.get("url")}
        return data

    def to_parse(self) -> dict[str, str]:
        return {"__type": "File", "name": self.name}

    @classmethod
    def from_parse(cls, data: dict[str, Any]) -> ParseFile:
        return cls.model_validate(data)


# ---- memories --------------------------------------------------------------------------------------

MemoryType = Literal["text", "code_snippet", "document"]


class MemoryItem(BaseModel):
    """One memory as a client submits it and as the batch file carries it."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1)
    type: MemoryType = "text"
    metadata: dict[str, Any] = {}


# ---- BatchMemoryRequest ----------------------------------------------------------------------------

# Which path carried a batch: the Parse File reference (new) or the whole batch in the input (legacy).
Storage = Literal["reference", "legacy"]

BatchStatus = Literal["pending", "processing", "completed", "partial", "failed"]
# A request in one of these states is done: a rerun must not process it again.
FINISHED_STATUSES: tuple[BatchStatus, ...] = ("completed", "partial", "failed")


class BatchError(BaseModel):
    """One entry of ``errors``. ``index`` is -1 for a failure of the whole batch."""

    index: int
    error: str
    timestamp: ParseDatetime

    def to_parse(self) -> dict[str, Any]:
        # Plain ISO string: Add on Postgres drops duplicate entries, and (index, timestamp) keeps them apart.
        return {"index": self.index, "error": self.error, "timestamp": _iso(self.timestamp)}

    @classmethod
    def from_parse(cls, data: dict[str, Any]) -> BatchError:
        return cls.model_validate(data)


class BatchMetadata(BaseModel):
    """The ``batchMetadata`` object: what was stored, how big, how. Unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    memory_count: int
    total_size_bytes: int
    compressed_size_bytes: int
    compression_ratio: float
    codec: str
    chunk_num: int = 1
    total_chunks: int = 1
    source: str = "batch_api"
    created_at: ParseDatetime
    storage: Storage
    # Chunked batches only: the memory count of each chunk file, in order (chunk k starts at the sum
    # of the counts before it).
    chunk_memory_counts: list[int] | None = None

    def to_parse(self) -> dict[str, Any]:
        # An Object field: nested values stay plain JSON (the date as an ISO string).
        return self.model_dump(mode="json", exclude_none=True)


# Python field name -> Parse field name. Only these cross the wire.
_PARSE_FIELDS: dict[str, str] = {
    "batch_id": "batchId",
    "request_id": "requestId",
    "organization": "organization",
    "namespace": "namespace",
    "user": "user",
    "workspace": "workspace",
    "batch_data_file": "batchDataFile",
    "batch_metadata": "batchMetadata",
    "status": "status",
    "total_memories": "totalMemories",
    "processed_count": "processedCount",
    "success_count": "successCount",
    "fail_count": "failCount",
    "errors": "errors",
    "error_count": "errorCount",
    "workflow_id": "workflowId",
    "workflow_run_id": "workflowRunId",
    "webhook_url": "webhookUrl",
    "webhook_secret": "webhookSecret",
    "webhook_sent": "webhookSent",
    "started_at": "startedAt",
    "completed_at": "completedAt",
    "processing_duration_ms": "processingDurationMs",
    "idempotency_key": "idempotencyKey",
    "batch_chunk_files": "batchChunkFiles",
    "chunk_progress": "chunkProgress",
    "slot_hold": "slotHold",
}
# Set by Parse itself: read, never written.
_SERVER_FIELDS: dict[str, str] = {
    "object_id": "objectId",
    "created_at": "createdAt",
    "updated_at": "updatedAt",
}


class BatchMemoryRequest(BaseModel):
    """A stored batch (class ``BatchMemoryRequest``): where its file is, who owns it, how far it got."""

    model_config = ConfigDict(extra="forbid")

    POINTER_CLASSES: ClassVar[dict[str, str]] = {
        "organization": "Organization",
        "namespace": "Namespace",
        "user": "_User",
        "workspace": "WorkSpace",
    }

    # Set by Parse.
    object_id: str | None = None
    created_at: ParseDatetime | None = None
    updated_at: ParseDatetime | None = None

    batch_id: str
    request_id: str | None = None
    organization: Pointer | None = None
    namespace: Pointer | None = None
    user: Pointer | None = None
    workspace: Pointer | None = None
    batch_data_file: ParseFile | None = None
    batch_metadata: BatchMetadata | None = None
    status: BatchStatus = "pending"
    total_memories: int = 0
    processed_count: int = 0
    success_count: int = 0
    fail_count: int = 0
    errors: list[BatchError] = []
    # Exact number of memories (and batch-level failures) with an error; None on requests stored
    # before the counter existed, whose ``errors`` array is then complete.
    error_count: int | None = None
    workflow_id: str | None = None
    workflow_run_id: str | None = None
    webhook_url: str | None = None
    # Kept out of repr so a logged request never shows it.
    webhook_secret: str | None = Field(default=None, repr=False)
    webhook_sent: bool = False
    started_at: ParseDatetime | None = None
    completed_at: ParseDatetime | None = None
    processing_duration_ms: int | None = None
    idempotency_key: str | None = None
    # A chunked batch (issue 10): its chunk files in order, instead of batch_data_file, and the
    # progress of each chunk ({"c<k>": {"processed", "ok", "failed"}}), written by its activity.
    batch_chunk_files: list[ParseFile] | None = None
    chunk_progress: dict[str, Any] | None = None
    # The token of the in-flight slot the batch holds (toolkit.parse.in_flight), given back when it ends.
    slot_hold: str | None = None

    # Not a Parse field: the decoded batch file, filled in after download.
    memories: list[MemoryItem] | None = None

    @field_validator("object_id")
    @classmethod
    def _check_object_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_object_id(value)

    @field_validator("organization", "namespace", "user", "workspace", mode="before")
    @classmethod
    def _pointer_of_expected_class(cls, value: Any, info: ValidationInfo) -> Any:
        """Accept an objectId, a Parse pointer dict or a :class:`Pointer`; refuse one to the wrong class."""
        if value is None:
            return None
        expected = cls.POINTER_CLASSES[info.field_name or ""]
        pointer = (
            Pointer(class_name=expected, object_id=value)
            if isinstance(value, str)
            else Pointer.model_validate(value)
        )
        if pointer.class_name != expected:
            raise ValueError(f"{info.field_name} must point to {expected}, not {pointer.class_name}")
        return pointer

    @field_validator("errors")
    @classmethod
    def _sort_errors(cls, value: list[BatchError]) -> list[BatchError]:
        # Parse's Add reorders arrays on Postgres; a stable order makes reads comparable.
        return sorted(value, key=lambda e: (e.index, e.timestamp))

    def distinct_errors(self) -> list[BatchError]:
        """One error per memory (the latest), plus every batch-level one (index < 0).

        A retried activity may record a memory's error twice; reports count memories, not attempts.
        """
        latest = {e.index: e for e in self.errors if e.index >= 0}  # sorted, so the last one wins
        return [e for e in self.errors if e.index < 0] + list(latest.values())

    def to_parse(self) -> dict[str, Any]:
        """The Parse body for this request: camelCase, ``__type`` values, no None and no server fields."""
        body: dict[str, Any] = {}
        for name, parse_name in _PARSE_FIELDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, Pointer | ParseFile | BatchMetadata):
                value = value.to_parse()
            elif isinstance(value, datetime):
                value = to_parse_date(value)
            elif name == "errors":
                value = [error.to_parse() for error in value]
            elif name == "batch_chunk_files":
                value = [file.to_parse() for file in value]
            body[parse_name] = value
        return body

    @classmethod
    def from_parse(cls, data: dict[str, Any]) -> BatchMemoryRequest:
        """Build from a Parse object as returned by GET/find; ``ACL`` and unknown keys are ignored."""
        fields = {
            name: data[parse_name]
            for name, parse_name in (_PARSE_FIELDS | _SERVER_FIELDS).items()
            if parse_name in data and data[parse_name] is not None
        }
        return cls.model_validate(fields)

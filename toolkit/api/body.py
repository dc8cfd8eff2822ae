"""Reading and validating the body of ``POST /v1/memory/batch`` without trusting its size.

FastAPI would read a declared body model whole before any check, so the route reads the stream
itself: a declared ``Content-Length`` over the cap is refused before one byte is read, and a body
without one (chunked) is refused as soon as it outgrows the cap. Only then is it parsed.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request

from toolkit.api.errors import PayloadTooLarge, RequestInvalid, UnsupportedMediaType
from toolkit.api.schemas import MAX_MEMORY_BYTES, BatchRequestIn
from toolkit.settings import Settings
from toolkit.webhooks import WebhookTargetRefused, check_webhook_url

# Allowance per memory for JSON framing, escaping and metadata, on top of the content limit.
PER_MEMORY_OVERHEAD_BYTES = 4096
ENVELOPE_BYTES = 64 * 1024
# Parsing a body this big would stall the event loop: do it in a worker thread.
THREAD_PARSE_THRESHOLD = 256 * 1024
# A body with thousands of bad memories would answer with thousands of errors; the first ones suffice.
MAX_REPORTED_ERRORS = 100


def max_body_bytes(settings: Settings) -> int:
    """The largest body accepted: all content at the batch limit plus framing for every memory."""
    return settings.max_batch_bytes + settings.max_batch_memories * PER_MEMORY_OVERHEAD_BYTES + ENVELOPE_BYTES


def _check_headers(request: Request, limit: int) -> None:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send plain JSON")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type {content_type!r} is not supported: send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {int(declared):,} bytes; the limit is {limit:,} bytes")


async def read_capped_body(request: Request, limit: int) -> bytearray:
    """The raw body, refused with 413 the moment it exceeds ``limit`` bytes (never held whole)."""
    _check_headers(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit:,} bytes")
        body += chunk
    return body


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    # No "input": echoing a 15 KB memory back in every error helps nobody and may leak it to logs.
    errors = []
    for error in exc.errors(include_url=False, include_input=False)[:MAX_REPORTED_ERRORS]:
        entry: dict[str, Any] = {"type": error["type"], "loc": ["body", *error["loc"]], "msg": error["msg"]}
        if error.get("ctx"):
            entry["ctx"] = {key: _plain(value) for key, value in error["ctx"].items()}
        errors.append(entry)
    return errors


def _json_invalid(loc: list[str | int], msg: str, error: str) -> RequestInvalid:
    return RequestInvalid([{"type": "json_invalid", "loc": loc, "msg": msg, "ctx": {"error": error}}])


def parse_batch(raw: bytes | bytearray, settings: Settings) -> BatchRequestIn:
    """Decode and validate a batch body: 422 for anything malformed, 413 for too many memories or bytes.

    The memory count is checked before validation, so an oversized list is refused without
    validating its items one by one.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        position = getattr(exc, "pos", getattr(exc, "start", 0))
        raise _json_invalid(["body", position], "JSON decode error", str(exc)) from None
    except RecursionError:
        # The decoder recurses once per nesting level; ~1,000 levels exhaust the interpreter's limit.
        raise _json_invalid(
            ["body"], "JSON nested too deeply", "the body nests arrays or objects too deeply"
        ) from None
    except ValueError as exc:
        # Valid JSON Python will not read, e.g. an integer of more than 4,300 digits.
        raise _json_invalid(["body"], "JSON value not accepted", str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get("memories"), list):
        count = len(data["memories"])
        if count > settings.max_batch_memories:
            raise PayloadTooLarge(
                f"too many memories: {count:,}; the limit is {settings.max_batch_memories:,} per batch"
            )
    try:
        batch = BatchRequestIn.model_validate(data, context={MAX_MEMORY_BYTES: settings.max_memory_bytes})
    except ValidationError as exc:
        raise RequestInvalid(_field_errors(exc)) from None
    total = sum(len(memory.content.encode("utf-8")) for memory in batch.memories)
    if total > settings.max_batch_bytes:
        raise PayloadTooLarge(
            f"total memory content is {total:,} bytes; "
            f"the limit is {settings.max_batch_bytes:,} bytes per batch"
        )
    return batch


async def check_webhook(url: str, settings: Settings) -> None:
    """422 unless the webhook URL is http(s) and, unless allowed, resolves to public addresses only.

    Checked at submission so a bad URL is the caller's error now, not a failed delivery later (the
    sender checks again at delivery time: DNS may have changed). Resolving blocks: done in a thread.
    """
    try:
        await anyio.to_thread.run_sync(
            functools.partial(check_webhook_url, url, allow_private=settings.webhook_allow_private)
        )
    except WebhookTargetRefused as exc:
        error = {"type": "value_error", "loc": ["body", "webhook_url"], "msg": str(exc)}
        raise RequestInvalid([error]) from None


async def read_batch(request: Request, settings: Settings) -> BatchRequestIn:
    raw = await read_capped_body(request, max_body_bytes(settings))
    if len(raw) < THREAD_PARSE_THRESHOLD:
        batch = parse_batch(raw, settings)
    else:
        batch = await anyio.to_thread.run_sync(parse_batch, raw, settings)
    del raw
    if batch.webhook_url is not None:
        await check_webhook(batch.webhook_url, settings)
    return batch

"""Reading and validating the body of ``POST /v1/memory/batch`` without trusting its size.

FastAPI would read a declared body model whole before any check, so the route reads the stream
itself: a declared ``Content-Length`` over the cap is refused before one byte is read, and a body
without one (chunked) is refused as soon as it outgrows the cap. Only then is it parsed. A body that
stops arriving for ``BODY_IDLE_TIMEOUT_S`` is refused with 408 (slow clients).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request

from toolkit.api.errors import ApiError, PayloadTooLarge, RequestInvalid, RequestTimeout, UnsupportedMediaType
from toolkit.api.schemas import MAX_MEMORY_BYTES, BatchRequestIn, MemoryIn
from toolkit.parse.batch_requests import ChunkFill, max_memory_bytes
from toolkit.parse.codec import chunk_line
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


async def next_piece(stream: AsyncIterator[bytes], idle_timeout_s: float) -> bytes | None:
    """The next piece of a request body, None at its end; 408 when nothing comes for ``idle_timeout_s``."""
    try:
        return await asyncio.wait_for(stream.__anext__(), idle_timeout_s)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise RequestTimeout(idle_timeout_s) from None


async def read_capped_body(request: Request, limit: int, idle_timeout_s: float) -> bytearray:
    """The raw body, refused with 413 the moment it exceeds ``limit`` bytes (never held whole)."""
    _check_headers(request, limit)
    body = bytearray()
    stream = request.stream().__aiter__()
    while (chunk := await next_piece(stream, idle_timeout_s)) is not None:
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
    raw = await read_capped_body(request, max_body_bytes(settings), settings.body_idle_timeout_s)
    if len(raw) < THREAD_PARSE_THRESHOLD:
        batch = parse_batch(raw, settings)
    else:
        batch = await anyio.to_thread.run_sync(parse_batch, raw, settings)
    del raw
    if batch.webhook_url is not None:
        await check_webhook(batch.webhook_url, settings)
    return batch


# ---- streaming (issue 10) --------------------------------------------------------------------------
#
# A batch of up to 100,000 memories can be a few hundred megabytes of JSON: the body is parsed as it
# arrives, memory by memory, and never held whole. The top-level object is walked by hand; each value
# (each memory, each other field) is decoded by the standard library's decoder (``raw_decode``), so a
# value means exactly what ``json.loads`` would make of it, and the errors name the same places:
# ``["body", <char offset>]`` for malformed JSON, ``["body", "memories", <index>, <field>]`` for an
# invalid memory. The first ``batch_chunk_memories`` memories are kept; past that (or past
# ``batch_chunk_max_bytes`` of JSON) the caller's :class:`MemorySink` takes them one at a time.

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
# Text already parsed is dropped once this much of it piles up in front of the read position.
_TRIM_CHARS = 256 * 1024
_READ_AHEAD_CHARS = 64 * 1024
# The parser holds at most this much of one memory's text; a memory larger than one write to Parse is
# refused once decoded, by its real bytes (toolkit.parse.batch_requests.max_memory_bytes).
MAX_MEMORY_JSON_CHARS = 8 * 1024 * 1024
# Any other top-level field is a short string or an id; one larger than this is refused.
MAX_FIELD_JSON_CHARS = 64 * 1024
# A body of one memory that is valid: the other fields are validated with it in place of the real ones.
_PLACEHOLDER = {"content": "placeholder"}
# A decode error this close to the end of the text read so far may only mean the value goes on in the
# next piece: the decoder stops inside a token at most this long ("-Infinity", a "\uXXXX" escape).
# Further back it is a syntax error, whatever follows (an unterminated string is the one error that
# names its start, not where the text ran out).
_TRUNCATION_CHARS = 16
_BYTE_ORDER_MARK = "\ufeff"


class MemorySink:
    """Takes the memories of a batch too big for one chunk. Raising an :class:`ApiError` refuses it."""

    async def overflow(self, first: list[MemoryIn]) -> None:
        """The first chunk is full: these memories came first; the rest follow through :meth:`add`."""
        raise NotImplementedError

    async def add(self, memory: MemoryIn, line: bytes) -> None:
        """One more memory, with its chunk-file line (:func:`~toolkit.parse.codec.chunk_line`)."""
        raise NotImplementedError


@dataclass
class StreamedBatch:
    """A parsed, valid body. ``memories`` is the whole list when the batch fit one chunk, else None
    (the sink took them); ``options`` holds the other fields, validated."""

    options: BatchRequestIn
    memories: list[MemoryIn] | None
    count: int


class _Text:
    """The body as text, decoded as it arrives, capped at ``limit`` bytes.

    UTF-8 only (RFC 8259). A byte-order mark at the very start is skipped, as ``json.loads`` skipped it
    when bodies were read whole; anywhere else it is text, and so a syntax error.
    """

    def __init__(self, request: Request, limit: int, idle_timeout_s: float) -> None:
        self._stream = request.stream().__aiter__()
        self._idle_timeout_s = idle_timeout_s
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._limit = limit
        self.bytes_read = 0
        self.text = ""
        self.base = 0  # offset in the whole body of text[0]
        self.pos = 0  # read position in text
        self.eof = False
        self._at_start = True

    async def more(self) -> None:
        """Append the next piece of the body (or reach its end)."""
        while not self.eof:
            piece = await next_piece(self._stream, self._idle_timeout_s)
            if piece is None:
                self.eof = True
                piece = b""
            if self.bytes_read + len(piece) > self._limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {self._limit:,} bytes")
            try:
                decoded = self._decoder.decode(piece, final=self.eof)
            except UnicodeDecodeError as exc:
                position = self.bytes_read + exc.start
                raise _json_invalid(
                    ["body", position],
                    "JSON decode error",
                    f"'utf-8' codec can't decode byte at position {position}: {exc.reason}",
                ) from None
            self.bytes_read += len(piece)
            if decoded and self._at_start:
                self._at_start = False
                if decoded.startswith(_BYTE_ORDER_MARK):
                    self.pos += 1
            if decoded or self.eof:
                self.text += decoded
                return

    async def peek(self) -> str | None:
        """The next non-whitespace character (not consumed), None at the end of the body."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return None
            await self.more()

    def trim(self) -> None:
        if self.pos > _TRIM_CHARS:
            self.text = self.text[self.pos :]
            self.base += self.pos
            self.pos = 0

    def error(self, msg: str, at: int | None = None, where: tuple[str | int, ...] = ()) -> RequestInvalid:
        """422 for malformed JSON: ``["body", *where]`` names the value (a memory), else its offset."""
        position = self.base + (self.pos if at is None else at)
        loc: list[str | int] = ["body", *where] if where else ["body", position]
        return _json_invalid(loc, "JSON decode error", f"{msg} (char {position})")

    async def value(
        self, max_chars: int, too_large: Callable[[], ApiError], where: tuple[str | int, ...] = ()
    ) -> Any:
        """Decode the JSON value at the read position, reading as much of the body as it needs.

        ``where`` names the value in a syntax error inside it (``("memories", 3)``); a body that ends
        where the value should begin is located by its offset. A syntax error is answered as soon as
        it is certain, never taken for a value that has not fully arrived.
        """
        await self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof or _certain(exc, len(self.text)):
                    inside = exc.pos < len(self.text)
                    raise self.error(exc.msg, exc.pos, where if inside else ()) from None
                await self._grow(max_chars, too_large)
                continue
            except RecursionError:
                raise _json_invalid(
                    ["body"], "JSON nested too deeply", "the body nests arrays or objects too deeply"
                ) from None
            except ValueError as exc:
                raise _json_invalid(["body"], "JSON value not accepted", str(exc)) from None
            if end == len(self.text) and not self.eof:
                # A number (or literal) at the edge of what arrived may go on in the next piece.
                await self._grow(max_chars, too_large)
                continue
            self.pos = end
            return value

    async def _grow(self, max_chars: int, too_large: Callable[[], ApiError]) -> None:
        pending = len(self.text) - self.pos
        if pending > max_chars:
            raise too_large()
        # Ask for as much again as is pending, so a big value is re-scanned a bounded number of times.
        target = len(self.text) + max(_READ_AHEAD_CHARS, pending)
        while len(self.text) < target and not self.eof:
            await self.more()


def _certain(exc: json.JSONDecodeError, available: int) -> bool:
    """Whether a decode error stays one whatever text follows (see ``_TRUNCATION_CHARS``)."""
    return not exc.msg.startswith("Unterminated string") and exc.pos + _TRUNCATION_CHARS < available


class _BatchStream:
    """Walks ``{"memories": [...], ...}`` as it arrives; see the section comment above."""

    def __init__(self, request: Request, settings: Settings, sink: MemorySink) -> None:
        self.text = _Text(request, max_body_bytes(settings), settings.body_idle_timeout_s)
        self.settings = settings
        self.sink = sink
        self.options: dict[str, Any] = {}
        self.memories_value: Any = None  # the "memories" value when it is not a list
        self.first: list[MemoryIn] = []
        self.first_fill = ChunkFill(settings)
        self.max_memory_bytes = max_memory_bytes(settings)
        self.overflowed = False
        self.count = 0
        self.content_bytes = 0
        self.errors: list[dict[str, Any]] = []
        self.bytes_over_at: int | None = None  # index of the memory whose content passes the limit
        self.refusal: ApiError | None = None  # the sink's (e.g. 503, or the legacy path's 413)

    async def read(self) -> StreamedBatch:
        text = self.text
        first = await text.peek()
        if first != "{":
            # Not an object: decoded whole (it can only be small or malformed) for json.loads' errors.
            value = await text.value(MAX_FIELD_JSON_CHARS, lambda: _not_an_object())
            await self._end()
            _validate(value, self.settings)
            raise _not_an_object()
        text.pos += 1
        seen_memories = False
        if await text.peek() == "}":
            text.pos += 1
        else:
            while True:
                if await text.peek() != '"':
                    raise text.error("Expecting property name enclosed in double quotes")
                key = await text.value(MAX_FIELD_JSON_CHARS, lambda: _field_too_large("a field name"))
                if await text.peek() != ":":
                    raise text.error("Expecting ':' delimiter")
                text.pos += 1
                if key == "memories":
                    if seen_memories:
                        raise text.error('"memories" given twice')
                    seen_memories = True
                    if await text.peek() == "[":
                        await self._memories()
                    else:
                        self.memories_value = await text.value(
                            MAX_MEMORY_JSON_CHARS, lambda: _field_too_large("memories")
                        )
                else:
                    self.options[key] = await text.value(
                        MAX_FIELD_JSON_CHARS, lambda k=key: _field_too_large(k)
                    )
                separator = await text.peek()
                if separator == "}":
                    text.pos += 1
                    break
                if separator != ",":
                    raise text.error("Expecting ',' delimiter")
                text.pos += 1
        await self._end()
        return self._result(seen_memories)

    async def _end(self) -> None:
        if await self.text.peek() is not None:
            raise self.text.error("Extra data")

    async def _memories(self) -> None:
        text = self.text
        text.pos += 1
        if await text.peek() == "]":
            text.pos += 1
            return
        while True:
            index = self.count
            value = await text.value(
                MAX_MEMORY_JSON_CHARS, lambda i=index: _memory_too_large(i), ("memories", index)
            )
            self.count += 1
            await self._take(index, value)
            separator = await text.peek()
            if separator == "]":
                text.pos += 1
                return
            if separator != ",":
                raise text.error("Expecting ',' delimiter")
            text.pos += 1
            text.trim()

    async def _take(self, index: int, value: Any) -> None:
        settings = self.settings
        if self.count > settings.max_batch_memories:
            return  # only counted from here on: the answer is 413, and it names the count
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            # Counted before validation, as the whole-body check counted every valid memory.
            try:
                self.content_bytes += len(value["content"].encode("utf-8"))
            except UnicodeEncodeError:
                pass  # a lone surrogate: the validation error says so
            if self.bytes_over_at is None and self.content_bytes > settings.max_batch_bytes:
                self.bytes_over_at = index
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            return
        try:
            memory = MemoryIn.model_validate(value, context={MAX_MEMORY_BYTES: settings.max_memory_bytes})
        except ValidationError as exc:
            for error in _field_errors(exc):
                error["loc"] = ["body", "memories", index, *error["loc"][1:]]
                self.errors.append(error)
            return
        if self.errors or self.bytes_over_at is not None or self.refusal is not None:
            return  # refused already: nothing more is stored
        # The memory as files store it: its real bytes decide whether it can be stored at all, and
        # whether the batch is one file or chunks.
        line = chunk_line(memory.model_dump(mode="json"))
        if len(line) > self.max_memory_bytes:
            self.refusal = PayloadTooLarge(
                f"memory {index:,} is {len(line):,} bytes as stored JSON; the limit is "
                f"{self.max_memory_bytes:,} bytes per memory (one write to the memory store)"
            )
            return
        try:
            await self._store(memory, line)
        except ApiError as exc:
            self.refusal = exc

    async def _store(self, memory: MemoryIn, line: bytes) -> None:
        if not self.overflowed and self.first_fill.fits(len(line)):
            self.first.append(memory)
            self.first_fill.add(len(line))
            return
        if not self.overflowed:
            # The first chunk holds exactly the memories that fit it: this one starts the second.
            self.overflowed = True
            first, self.first = self.first, []
            await self.sink.overflow(first)
        await self.sink.add(memory, line)

    def _result(self, seen_memories: bool) -> StreamedBatch:
        settings = self.settings
        if self.count > settings.max_batch_memories:
            raise PayloadTooLarge(
                f"too many memories: {self.count:,}; the limit is {settings.max_batch_memories:,} per batch"
            )
        if not seen_memories:
            body: dict[str, Any] = dict(self.options)
        elif self.memories_value is not None:
            body = {**self.options, "memories": self.memories_value}
        else:
            body = {**self.options, "memories": [_PLACEHOLDER] if self.count else []}
        errors = list(self.errors)
        try:
            options = BatchRequestIn.model_validate(
                body, context={MAX_MEMORY_BYTES: settings.max_memory_bytes}
            )
        except ValidationError as exc:
            errors += _field_errors(exc)
        if errors:
            raise RequestInvalid(errors[:MAX_REPORTED_ERRORS])
        if self.bytes_over_at is not None:
            raise PayloadTooLarge(
                f"total memory content is {self.content_bytes:,} bytes; the limit is "
                f"{settings.max_batch_bytes:,} bytes per batch (passed at memory {self.bytes_over_at:,})"
            )
        if self.refusal is not None:
            raise self.refusal
        return StreamedBatch(options, None if self.overflowed else self.first, self.count)


def _validate(value: Any, settings: Settings) -> None:
    try:
        BatchRequestIn.model_validate(value, context={MAX_MEMORY_BYTES: settings.max_memory_bytes})
    except ValidationError as exc:
        raise RequestInvalid(_field_errors(exc)) from None


def _not_an_object() -> RequestInvalid:
    return RequestInvalid([{"type": "model_type", "loc": ["body"], "msg": "the body must be a JSON object"}])


def _field_too_large(name: str) -> ApiError:
    return PayloadTooLarge(f"the value of {name!r} is over {MAX_FIELD_JSON_CHARS:,} characters of JSON")


def _memory_too_large(index: int) -> ApiError:
    return PayloadTooLarge(f"memory {index:,} is over {MAX_MEMORY_JSON_CHARS:,} characters of JSON")


async def read_batch_stream(request: Request, settings: Settings, sink: MemorySink) -> StreamedBatch:
    """Parse and validate the body as it arrives; 413/422 as :func:`parse_batch` would answer them.

    A batch of at most ``batch_chunk_memories`` memories comes back whole (``memories``); a bigger
    one goes to ``sink`` as it is read. The webhook URL is checked at the end, as before.
    """
    _check_headers(request, max_body_bytes(settings))
    batch = await _BatchStream(request, settings, sink).read()
    if batch.options.webhook_url is not None:
        await check_webhook(batch.options.webhook_url, settings)
    return batch

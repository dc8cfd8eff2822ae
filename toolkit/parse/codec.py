"""The batch file codec: a batch of memories as one gzip-compressed JSON document.

The API stores a batch as a Parse File and the worker reads it back, so the file is the contract
between them::

    gzip( {"version": 1, "memories": [{...}, ...]} )     # compact UTF-8 JSON inside

Encoding is deterministic (no timestamp in the gzip header), so the same memories give the same
bytes. Decoding trusts nothing: the stream is inflated in bounded steps and refused as soon as it
outgrows the caller's limit, so a small hostile file can never balloon into gigabytes in memory.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CODEC",
    "FORMAT_VERSION",
    "CodecError",
    "CorruptBatchFile",
    "DecompressionLimitExceeded",
    "EncodedBatch",
    "decode_memories",
    "encode_memories",
]

CODEC = "gzip+json"
FORMAT_VERSION = 1

# Inflate at most this much output, from at most this much input, per step.
_OUTPUT_CHUNK = 256 * 1024
_INPUT_CHUNK = 64 * 1024
# zlib window bits for "gzip header and trailer required" (16 + max window 15).
_GZIP_WBITS = 31


class CodecError(Exception):
    """A batch could not be encoded or decoded."""


class DecompressionLimitExceeded(CodecError):
    """The file inflates past the allowed size: refused before it is held in memory."""


class CorruptBatchFile(CodecError):
    """The bytes are not a batch file: not gzip, truncated, not JSON, or not the expected shape."""


@dataclass(frozen=True)
class EncodedBatch:
    """A batch ready to upload, with the sizes the batch metadata records."""

    data: bytes
    raw_size: int
    compressed_size: int
    codec: str = CODEC

    @property
    def compression_ratio(self) -> float:
        """Raw JSON bytes per compressed byte, to two decimals (e.g. ``7.31``)."""
        if self.compressed_size <= 0:
            return 0.0
        return round(self.raw_size / self.compressed_size, 2)


def encode_memories(memories: Sequence[Mapping[str, Any]], level: int = 6) -> EncodedBatch:
    """Serialise ``memories`` (plain JSON-able dicts) and gzip them at ``level`` (0-9)."""
    if not 0 <= level <= 9:
        raise ValueError(f"gzip level must be between 0 and 9, got {level}")
    document = {"version": FORMAT_VERSION, "memories": list(memories)}
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and the reader would refuse them.
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        raw = text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError
        raise CodecError(f"memories cannot be encoded as UTF-8 JSON: {exc}") from exc
    data = gzip.compress(raw, compresslevel=level, mtime=0)
    return EncodedBatch(data=data, raw_size=len(raw), compressed_size=len(data))


def decode_memories(data: bytes, max_decompressed_bytes: int) -> list[dict[str, Any]]:
    """Inflate and parse a batch file, refusing it once it inflates past ``max_decompressed_bytes``.

    Raises :class:`DecompressionLimitExceeded` for an oversized (or bomb) file and
    :class:`CorruptBatchFile` for anything that is not a well-formed batch file.
    """
    raw = _inflate(data, max_decompressed_bytes)
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise CorruptBatchFile(f"batch file is not UTF-8 text: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CorruptBatchFile(f"batch file is not valid JSON: {exc}") from exc
    finally:
        del raw
    return _memories_of(document)


def _inflate(data: bytes, limit: int) -> bytearray:
    if limit < 0:
        raise ValueError(f"max_decompressed_bytes must be >= 0, got {limit}")
    if not data:
        raise CorruptBatchFile("batch file is empty")
    inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
    out = bytearray()

    def take(pending: bytes | memoryview) -> bytes:
        # Never ask for more than one byte past the limit: that byte is enough to refuse.
        chunk = inflater.decompress(pending, min(_OUTPUT_CHUNK, limit - len(out) + 1))
        out.extend(chunk)
        if len(out) > limit:
            raise DecompressionLimitExceeded(
                f"batch file inflates past the limit of {limit:,} bytes; refused"
            )
        return chunk

    view = memoryview(data)
    try:
        # Input goes in in small slices, so the unconsumed tail zlib hands back stays small too
        # (a copy of the whole remaining input per step would make big files quadratic).
        for start in range(0, len(view), _INPUT_CHUNK):
            end = min(start + _INPUT_CHUNK, len(view))
            pending: bytes | memoryview = view[start:end]
            while pending and not inflater.eof:
                before = len(pending)
                chunk = take(pending)
                pending = inflater.unconsumed_tail
                if not chunk and len(pending) == before and not inflater.eof:
                    raise CorruptBatchFile(
                        "batch file is not a valid gzip stream: inflation makes no progress"
                    )
            if inflater.eof:
                trailing = len(inflater.unused_data) + len(view) - end
                if trailing > 0:
                    raise CorruptBatchFile(
                        f"batch file has {trailing:,} unexpected bytes after the gzip stream"
                    )
                break
        # All input is in; drain what zlib still holds until the stream's end.
        while not inflater.eof:
            if not take(b"") and not inflater.eof:
                raise CorruptBatchFile("batch file is truncated: the gzip stream ends early")
    except zlib.error as exc:
        raise CorruptBatchFile(f"batch file is not a valid gzip stream: {exc}") from exc
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _memories_of(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        raise CorruptBatchFile(f"batch file must hold a JSON object, found {type(document).__name__}")
    version = document.get("version")
    if version != FORMAT_VERSION:
        # The value itself is not quoted: whatever a file holds must not reach logs or workflow history.
        raise CorruptBatchFile(f"unsupported batch file version (expected {FORMAT_VERSION})")
    memories = document.get("memories")
    if not isinstance(memories, list):
        raise CorruptBatchFile(f'batch file "memories" must be a list, found {type(memories).__name__}')
    for index, memory in enumerate(memories):
        if not isinstance(memory, dict):
            raise CorruptBatchFile(f"memory {index} must be a JSON object, found {type(memory).__name__}")
    return memories

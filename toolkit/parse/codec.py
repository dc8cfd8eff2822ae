"""The batch file codecs: a batch as one gzip JSON document, or a big batch as gzip NDJSON chunks.

The API stores a batch as Parse Files and the worker reads them back, so the files are the contract
between them. A batch of up to one chunk's worth of memories is one file::

    gzip( {"version": 1, "memories": [{...}, ...]} )     # compact UTF-8 JSON inside

A bigger batch is several chunk files (issue 10), each written and read as a stream, one line at a
time, so neither side ever holds more than one chunk::

    gzip( {"version": 2, "batch_id": ..., "chunk_num": k, "first_index": i}\n   # header line
          {memory i}\n{memory i+1}\n ... )                                      # one memory per line

Encoding is deterministic (no timestamp in the gzip header), so the same memories give the same
bytes. Decoding trusts nothing: the stream is inflated in bounded steps and refused as soon as it
outgrows the caller's limit, so a small hostile file can never balloon into gigabytes in memory.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHUNK_CODEC",
    "CHUNK_FORMAT_VERSION",
    "CODEC",
    "FORMAT_VERSION",
    "ChunkEncoder",
    "ChunkHeader",
    "chunk_line",
    "CodecError",
    "CorruptBatchFile",
    "DecompressionLimitExceeded",
    "EncodedBatch",
    "decode_memories",
    "encode_memories",
    "iter_chunk_memories",
]

CODEC = "gzip+json"
FORMAT_VERSION = 1
CHUNK_CODEC = "gzip+ndjson"
CHUNK_FORMAT_VERSION = 2

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
    out = bytearray()
    for piece in _inflate_pieces(data, limit):
        out += piece
    return out


def _inflate_pieces(data: bytes, limit: int) -> Iterator[bytes]:
    """Inflate ``data`` in pieces of at most 256 KiB, refusing it once the total passes ``limit``."""
    if limit < 0:
        raise ValueError(f"max_decompressed_bytes must be >= 0, got {limit}")
    if not data:
        raise CorruptBatchFile("batch file is empty")
    inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
    produced = 0

    def take(pending: bytes | memoryview) -> bytes:
        nonlocal produced
        # Never ask for more than one byte past the limit: that byte is enough to refuse.
        chunk = inflater.decompress(pending, min(_OUTPUT_CHUNK, limit - produced + 1))
        produced += len(chunk)
        if produced > limit:
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
                if chunk:
                    yield chunk
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
            chunk = take(b"")
            if chunk:
                yield chunk
            elif not inflater.eof:
                raise CorruptBatchFile("batch file is truncated: the gzip stream ends early")
    except zlib.error as exc:
        raise CorruptBatchFile(f"batch file is not a valid gzip stream: {exc}") from exc


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


# ---- chunk files (gzip NDJSON) -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkHeader:
    """The first line of a chunk file: which batch, which chunk, and the batch index of its first memory.

    The worker checks it against the request, so a chunk file attached to the wrong request or in the
    wrong place is refused instead of writing memories under the wrong objectIds.
    """

    batch_id: str
    chunk_num: int
    first_index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CHUNK_FORMAT_VERSION,
            "batch_id": self.batch_id,
            "chunk_num": self.chunk_num,
            "first_index": self.first_index,
        }


def _json_line(value: Any) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except (TypeError, ValueError) as exc:
        raise CodecError(f"memory cannot be encoded as UTF-8 JSON: {exc}") from exc


def chunk_line(memory: Mapping[str, Any]) -> bytes:
    """One memory as a chunk file line: compact UTF-8 JSON and a newline."""
    return _json_line(memory)


class ChunkEncoder:
    """Builds one chunk file incrementally: add memories one by one, then :meth:`finish`.

    Only the compressed bytes are kept, so a chunk costs its gzip size in memory, not its JSON size.
    """

    def __init__(self, header: ChunkHeader, level: int = 6) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"gzip level must be between 0 and 9, got {level}")
        self.header = header
        self.count = 0
        self.raw_size = 0
        # wbits 31: a gzip wrapper; zlib writes mtime 0, so the same memories give the same bytes.
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        self._parts: list[bytes] = []
        self._write(_json_line(header.to_json()))

    def _write(self, line: bytes) -> None:
        self.raw_size += len(line)
        piece = self._deflater.compress(line)
        if piece:
            self._parts.append(piece)

    def add(self, memory: Mapping[str, Any]) -> int:
        """Append one memory (a plain JSON-able dict); return its encoded size in bytes."""
        line = chunk_line(memory)
        self.add_line(line)
        return len(line)

    def add_line(self, line: bytes) -> None:
        """Append one memory already encoded by :func:`chunk_line`."""
        self._write(line)
        self.count += 1

    def finish(self) -> EncodedBatch:
        self._parts.append(self._deflater.flush())
        data = b"".join(self._parts)
        self._parts = []
        return EncodedBatch(data=data, raw_size=self.raw_size, compressed_size=len(data), codec=CHUNK_CODEC)


def _lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for piece in pieces:
        pending += piece
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        raise CorruptBatchFile("chunk file is truncated: its last line has no newline")


def iter_chunk_memories(
    data: bytes, expected: ChunkHeader, max_decompressed_bytes: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(batch index, memory)`` of a chunk file, one line at a time, checking its header.

    Lazy: the caller holds only the memories it has not written yet. Raises :class:`CorruptBatchFile`
    (or :class:`DecompressionLimitExceeded`) when the bytes are not the expected chunk.
    """
    lines = _lines(_inflate_pieces(data, max_decompressed_bytes))
    first = next(lines, None)
    if first is None:
        raise CorruptBatchFile("chunk file has no header line")
    header = _decode_line(first, "header line")
    if not isinstance(header, dict) or header.get("version") != CHUNK_FORMAT_VERSION:
        raise CorruptBatchFile(f"unsupported chunk file version (expected {CHUNK_FORMAT_VERSION})")
    if header != expected.to_json():
        # Ids and numbers only: nothing a file holds beyond its header reaches logs or history.
        raise CorruptBatchFile(
            f"chunk file header does not match: expected chunk {expected.chunk_num} of batch "
            f"{expected.batch_id} from memory {expected.first_index}"
        )
    for offset, line in enumerate(lines):
        index = expected.first_index + offset
        memory = _decode_line(line, f"memory {index}")
        if not isinstance(memory, dict):
            raise CorruptBatchFile(f"memory {index} must be a JSON object, found {type(memory).__name__}")
        yield index, memory


def _decode_line(line: bytes, what: str) -> Any:
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise CorruptBatchFile(f"chunk file {what} is not UTF-8 text: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise CorruptBatchFile(f"chunk file {what} is not valid JSON: {exc}") from exc

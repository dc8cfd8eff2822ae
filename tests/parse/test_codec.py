"""The batch file codec: round trips, determinism, compression, and refusal of hostile or broken files."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib

import pytest

from toolkit.parse.codec import (
    CodecError,
    CorruptBatchFile,
    DecompressionLimitExceeded,
    EncodedBatch,
    decode_memories,
    encode_memories,
)
from toolkit.validation.workloads import chitchat_memories, synthetic_memories

LIMIT = 64 * 1024 * 1024

UNICODE_MEMORIES = [
    {"content": "emoji 🎉👩‍👩‍👧‍👦🏳️‍🌈 and astral 𝄞", "type": "text", "metadata": {"tag": "🙂"}},
    {
        "content": "中文记忆：今天天气很好。日本語のメモ。한국어 메모.",
        "type": "document",
        "metadata": {"语言": "zh"},
    },
    {"content": "combining é vs é, RTL שלום مرحبا, NBSP\u00a0end", "type": "code_snippet", "metadata": {}},
]


def test_round_trip_of_chitchat_and_unicode_memories() -> None:
    memories = chitchat_memories(200) + UNICODE_MEMORIES

    encoded = encode_memories(memories)

    assert decode_memories(encoded.data, LIMIT) == memories
    assert encoded.codec == "gzip+json"
    assert encoded.compressed_size == len(encoded.data)


def test_json_is_compact_utf8_with_version() -> None:
    encoded = encode_memories(UNICODE_MEMORIES)
    raw = gzip.decompress(encoded.data)

    assert raw == json.dumps(
        {"version": 1, "memories": UNICODE_MEMORIES}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert "🎉".encode() in raw  # not \ud83c\udf89 escapes
    assert encoded.raw_size == len(raw)


def test_encoding_is_deterministic() -> None:
    memories = chitchat_memories(50)
    first = encode_memories(memories)
    second = encode_memories([dict(m) for m in memories])

    assert first == second
    assert first.data[4:8] == b"\x00\x00\x00\x00"  # gzip mtime field is zero


def test_level_changes_size_not_content() -> None:
    memories = chitchat_memories(300)
    fast, best = encode_memories(memories, level=1), encode_memories(memories, level=9)

    assert best.compressed_size <= fast.compressed_size
    assert decode_memories(fast.data, LIMIT) == decode_memories(best.data, LIMIT) == memories
    with pytest.raises(ValueError):
        encode_memories(memories, level=10)


def test_chitchat_gzip_ratio_of_100_memories_is_at_least_5() -> None:
    encoded = encode_memories(chitchat_memories(100))
    print(
        f"chitchat x100: raw {encoded.raw_size} B, gzip {encoded.compressed_size} B, "
        f"ratio {encoded.compression_ratio}"
    )
    assert encoded.compression_ratio >= 5


def test_compression_ratio_is_rounded() -> None:
    assert EncodedBatch(data=b"", raw_size=1000, compressed_size=300).compression_ratio == 3.33


def test_empty_batch_round_trips() -> None:
    assert decode_memories(encode_memories([]).data, LIMIT) == []


def test_unencodable_memories_raise_codec_error() -> None:
    with pytest.raises(CodecError, match="UTF-8 JSON"):
        encode_memories([{"content": "lone surrogate \ud800"}])
    with pytest.raises(CodecError):
        encode_memories([{"content": "x", "metadata": {"score": float("nan")}}])
    with pytest.raises(CodecError):
        encode_memories([{"content": object()}])


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    # 100 MB of zeros compresses to ~100 KB; decoding must stop near the limit, not at 100 MB.
    bomb = gzip.compress(b"\0" * 100_000_000, mtime=0)
    limit = 1_000_000

    tracemalloc.start()
    try:
        with pytest.raises(DecompressionLimitExceeded, match="1,000,000"):
            decode_memories(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(bomb) < 200_000
    assert peak < 5 * limit, f"peak {peak:,} B while refusing a {len(bomb):,} B bomb"


def test_limit_is_exact() -> None:
    encoded = encode_memories(synthetic_memories(20))

    assert len(decode_memories(encoded.data, encoded.raw_size)) == 20
    with pytest.raises(DecompressionLimitExceeded):
        decode_memories(encoded.data, encoded.raw_size - 1)


def test_large_batch_decodes_across_many_chunks() -> None:
    memories = synthetic_memories(3000, content_bytes=1000)  # ~3.2 MB raw, ~2 MB compressed
    encoded = encode_memories(memories, level=1)

    assert decode_memories(encoded.data, LIMIT) == memories


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not gzip", "not a valid gzip stream"),
        (zlib.compress(b'{"version":1,"memories":[]}'), "not a valid gzip stream"),  # zlib, not gzip
        (b"\x1f\x8b\x08\x00garbage after a gzip magic", "gzip"),
        (gzip.compress(b"not json at all", mtime=0), "not valid JSON"),
        (gzip.compress(b"\xff\xfe\xfa", mtime=0), "not UTF-8"),
        (gzip.compress(b'{"version":1,"memories":[NaN]}', mtime=0), "not valid JSON"),
        (gzip.compress(b"[" * 100_000, mtime=0), "not valid JSON"),
        (gzip.compress(b"[]", mtime=0), "JSON object"),
        (gzip.compress(b'{"memories":[]}', mtime=0), "version"),
        (
            gzip.compress(b'{"version":2,"memories":[]}', mtime=0),
            r"unsupported batch file version \(expected 1\)",
        ),
        (gzip.compress(b'{"version":1,"memories":{}}', mtime=0), '"memories" must be a list'),
        (gzip.compress(b'{"version":1}', mtime=0), '"memories" must be a list'),
        (gzip.compress(b'{"version":1,"memories":[{"content":"a"},"b"]}', mtime=0), "memory 1"),
    ],
)
def test_broken_files_are_corrupt(data: bytes, message: str) -> None:
    with pytest.raises(CorruptBatchFile, match=message):
        decode_memories(data, LIMIT)


def test_file_values_are_never_quoted_in_errors() -> None:
    # Error messages reach logs and the workflow history: they must not carry what the file holds.
    data = gzip.compress(b'{"version":"my secret memory","memories":[]}', mtime=0)
    with pytest.raises(CorruptBatchFile) as error:
        decode_memories(data, LIMIT)
    assert "secret" not in str(error.value)


def test_truncated_file_is_corrupt_wherever_it_is_cut() -> None:
    data = encode_memories(chitchat_memories(100)).data
    for cut in (1, 10, len(data) // 2, len(data) - 8, len(data) - 1):
        with pytest.raises(CorruptBatchFile):
            decode_memories(data[:cut], LIMIT)


def test_damaged_checksum_and_trailing_bytes_are_corrupt() -> None:
    data = bytearray(encode_memories(chitchat_memories(10)).data)
    data[-5] ^= 0xFF  # inside the CRC32 trailer

    with pytest.raises(CorruptBatchFile):
        decode_memories(bytes(data), LIMIT)
    with pytest.raises(CorruptBatchFile, match="after the gzip stream"):
        decode_memories(encode_memories([]).data + b"\x00junk", LIMIT)


def test_errors_share_one_base() -> None:
    assert issubclass(CorruptBatchFile, CodecError)
    assert issubclass(DecompressionLimitExceeded, CodecError)


# ---- chunk files (issue 10) ------------------------------------------------------------------------

from toolkit.parse.codec import ChunkEncoder, ChunkHeader, iter_chunk_memories  # noqa: E402

HEADER = ChunkHeader("batch1", 2, 10)


def _chunk(memories: list[dict], header: ChunkHeader = HEADER) -> bytes:
    encoder = ChunkEncoder(header)
    for memory in memories:
        encoder.add(memory)
    return encoder.finish().data


def test_chunk_file_round_trips_with_batch_indexes_and_is_deterministic() -> None:
    memories = [{"content": f"m{i} é", "metadata": {"i": i}} for i in range(3)]
    data = _chunk(memories)
    assert data == _chunk(memories)
    assert list(iter_chunk_memories(data, HEADER, 1 << 20)) == [
        (10, memories[0]),
        (11, memories[1]),
        (12, memories[2]),
    ]
    lines = gzip.decompress(data).split(b"\n")
    assert json.loads(lines[0]) == {"version": 2, "batch_id": "batch1", "chunk_num": 2, "first_index": 10}
    assert len(lines) == 5 and lines[-1] == b""  # header, three memories, final newline


def test_chunk_encoder_counts_raw_bytes_exactly() -> None:
    encoder = ChunkEncoder(HEADER)
    sizes = [encoder.add({"content": "x" * n}) for n in (1, 10, 100)]
    encoded = encoder.finish()
    assert encoded.raw_size == len(gzip.decompress(encoded.data))
    assert sizes == [len(b'{"content":"x"}\n') + n - 1 for n in (1, 10, 100)]
    assert encoded.codec == "gzip+ndjson"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_chunk([{"content": "x"}], ChunkHeader("other", 2, 10)), "header does not match"),
        (_chunk([{"content": "x"}], ChunkHeader("batch1", 3, 10)), "header does not match"),
        (gzip.compress(b'{"version": 1}\n', mtime=0), "unsupported chunk file version"),
        (
            gzip.compress(json.dumps(HEADER.to_json()).encode() + b"\n[1]\n", mtime=0),
            "memory 10",
        ),
        (gzip.compress(json.dumps(HEADER.to_json()).encode() + b"\n{oops\n", mtime=0), "not valid JSON"),
        (gzip.compress(json.dumps(HEADER.to_json()).encode() + b'\n{"content": "x"}', mtime=0), "truncated"),
        (gzip.compress(b"", mtime=0), "no header line"),
        (b"not gzip at all", "not a valid gzip stream"),
    ],
    ids=[
        "other batch",
        "other chunk",
        "old version",
        "not an object",
        "bad json",
        "no newline",
        "empty",
        "not gzip",
    ],
)
def test_chunk_file_that_is_not_the_expected_chunk_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(CorruptBatchFile, match=message):
        list(iter_chunk_memories(data, HEADER, 1 << 20))


def test_chunk_file_over_the_limit_is_refused_while_streaming() -> None:
    data = _chunk([{"content": "x" * 1000} for _ in range(1000)])
    taken = []
    with pytest.raises(DecompressionLimitExceeded):
        for pair in iter_chunk_memories(data, HEADER, 600_000):
            taken.append(pair)
    # Memories before the limit were handed out as they inflated, never the whole file at once.
    assert 0 < len(taken) < 1000

"""The compression table: byte counts are deterministic, so they are asserted exactly."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from tests.fixtures.second_codec import document_bytes, gzip_size
from toolkit.parse.codec import encode_memories
from toolkit.validation.metrics import (
    COMPRESSION_COLUMNS,
    batch_document,
    codec_recommendation,
    compression_table,
    recommend_codec,
)
from toolkit.validation.workloads import make_memories


def test_gzip_cells_are_the_batch_files_the_api_writes() -> None:
    table = compression_table(
        ["chitchat", "synthetic", "chatterbot"], [10, 100], {"gzip": [1, 6, 9]}, min_seconds=0.0
    )
    assert list(table.columns) == list(COMPRESSION_COLUMNS)
    assert len(table) == 3 * 2 * 3
    for row in table.itertuples():
        # Expected sizes from a second implementation of the format (zlib), not from the codec.
        raw = document_bytes(make_memories(row.workload, row.memories))
        compressed = gzip_size(raw, row.level)
        assert (row.raw_bytes, row.compressed_bytes) == (len(raw), compressed)
        assert row.ratio == pytest.approx(len(raw) / compressed)
        assert row.compress_mb_s > 0 and row.decompress_mb_s > 0


def test_zstd_cells_measure_zstd() -> None:
    table = compression_table(["chitchat"], [100], {"zstd": [3]}, min_seconds=0.0)
    raw = batch_document(make_memories("chitchat", 100))
    assert table.compressed_bytes.item() == len(zstandard.ZstdCompressor(level=3).compress(raw))
    assert gzip.decompress(encode_memories(make_memories("chitchat", 100)).data) == raw


def test_the_three_workloads_differ_as_their_text_does() -> None:
    table = compression_table(["chitchat", "synthetic", "chatterbot"], [1000], {"gzip": [6]}, min_seconds=0.0)
    ratio = table.set_index("workload").ratio
    print(ratio.round(2).to_dict())
    # Real chat with repeated metadata keys compresses far better than near-random words.
    assert ratio["chitchat"] > 5 > ratio["synthetic"]
    assert ratio["chatterbot"] > ratio["synthetic"]


def test_recommendation_ranks_settings_against_the_one_in_use_measured_in_the_same_run() -> None:
    table = compression_table(["chitchat"], [100], {"gzip": [1, 6, 9]}, min_seconds=0.0)
    ranking = recommend_codec(table, memories=100, current=("gzip", 6), max_slowdown=1e9)
    assert ranking.qualifies.all()
    assert ranking.set_index("level").speed_vs_current[6] == 1.0
    assert list(ranking.level) == sorted(
        ranking.level, key=lambda lv: -ranking.set_index("level").mean_ratio[lv]
    )
    # A setting that would have to be infinitely faster never qualifies, except the one in use.
    strict = recommend_codec(table, memories=100, current=("gzip", 6), max_slowdown=1.0)
    assert (6 in set(strict[strict.qualifies].level)) and strict.iloc[0].qualifies


def test_the_recommendation_keeps_the_codec_in_use_without_a_real_gain() -> None:
    table = compression_table(["chitchat"], [100], {"gzip": [6, 9]}, min_seconds=0.0)
    keep = codec_recommendation(table, memories=100, current=("gzip", 6), max_slowdown=1e9, min_gain=0.5)
    assert (keep.setting, keep.reason.split(":")[0]) == ("gzip-6", "Keep gzip level 6")
    switch = codec_recommendation(table, memories=100, current=("gzip", 6), max_slowdown=1e9, min_gain=-1.0)
    assert switch.setting == "gzip-9" and switch.reason.startswith("Switch to gzip level 9")

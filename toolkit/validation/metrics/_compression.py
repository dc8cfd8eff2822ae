"""The compression table: codec × level × workload × batch size → ratio and speed both ways.

Every cell compresses the batch file's own document (``{"version": 1, "memories": […]}``, compact UTF-8
JSON, as :func:`toolkit.parse.codec.encode_memories` writes it), so the ratios are those the stored
files get. Speeds are MB (10^6 bytes) of raw JSON per second, in and out, measured in this process by
repeating each operation until it has run for at least ``min_seconds``; they are this machine's, for
comparing codecs with each other, not absolute figures.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import pandas as pd

from toolkit.parse.codec import FORMAT_VERSION
from toolkit.validation.workloads import make_memories

__all__ = [
    "COMPRESSION_COLUMNS",
    "DEFAULT_LEVELS",
    "CompressionMiss",
    "compression_misses",
    "compression_table",
    "Recommendation",
    "codec_recommendation",
    "recommend_codec",
]

COMPRESSION_COLUMNS = (
    "workload",
    "memories",
    "codec",
    "level",
    "raw_bytes",
    "compressed_bytes",
    "ratio",
    "compress_mb_s",
    "decompress_mb_s",
)
DEFAULT_LEVELS: dict[str, tuple[int, ...]] = {"gzip": tuple(range(1, 10)), "zstd": (1, 3, 6, 9, 12, 19)}
_Codec = tuple[Callable[[bytes, int], bytes], Callable[[bytes], bytes]]


def _codecs() -> dict[str, _Codec]:
    import zstandard

    def zstd_compress(data: bytes, level: int) -> bytes:
        return zstandard.ZstdCompressor(level=level).compress(data)

    def zstd_decompress(data: bytes) -> bytes:
        return zstandard.ZstdDecompressor().decompress(data)

    return {
        # As the batch codec writes it: gzip container, no timestamp.
        "gzip": (lambda data, level: gzip.compress(data, compresslevel=level, mtime=0), _gunzip),
        "zstd": (zstd_compress, zstd_decompress),
    }


def _gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, wbits=31)


def batch_document(memories: Sequence[Mapping]) -> bytes:
    """The raw bytes of a batch file before compression (the codec's exact JSON)."""
    document = {"version": FORMAT_VERSION, "memories": list(memories)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _rate(operation: Callable[[], bytes], raw_bytes: int, min_seconds: float) -> float:
    """MB of raw JSON per second over as many repetitions as fill ``min_seconds`` (at least one)."""
    runs, started = 0, time.perf_counter()
    while True:
        operation()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return raw_bytes * runs / elapsed / 1e6


def compression_table(
    workloads: Iterable[str] = ("chitchat", "synthetic", "chatterbot"),
    sizes: Iterable[int] = (10, 100, 1000, 10_000),
    levels: Mapping[str, Iterable[int]] | None = None,
    *,
    min_seconds: float = 0.02,
) -> pd.DataFrame:
    """One row per (workload, batch size, codec, level); columns :data:`COMPRESSION_COLUMNS`.

    CPU only (no server involved). Each round trip is checked: a codec that does not give the
    document back raises ``AssertionError`` rather than reporting a ratio.
    """
    codecs = _codecs()
    chosen = {codec: tuple(lv) for codec, lv in (levels or DEFAULT_LEVELS).items()}
    unknown = set(chosen) - set(codecs)
    if unknown:
        raise ValueError(f"unknown codec(s) {sorted(unknown)}; known: {sorted(codecs)}")
    rows = []
    for workload in workloads:
        for size in sizes:
            raw = batch_document(make_memories(workload, size))
            for codec, codec_levels in chosen.items():
                compress, decompress = codecs[codec]
                for level in codec_levels:
                    packed = compress(raw, level)
                    if decompress(packed) != raw:
                        raise AssertionError(f"{codec} level {level} did not round-trip {workload}/{size}")
                    rows.append(
                        {
                            "workload": workload,
                            "memories": size,
                            "codec": codec,
                            "level": level,
                            "raw_bytes": len(raw),
                            "compressed_bytes": len(packed),
                            "ratio": len(raw) / len(packed),
                            "compress_mb_s": _rate(partial(compress, raw, level), len(raw), min_seconds),
                            "decompress_mb_s": _rate(partial(decompress, packed), len(raw), min_seconds),
                        }
                    )
    return pd.DataFrame(rows, columns=list(COMPRESSION_COLUMNS))


@dataclass(frozen=True)
class CompressionMiss:
    """A workload whose ratio misses the target with the codec in use."""

    workload: str
    memories: int
    ratio: float
    target: float

    def __str__(self) -> str:
        where = f"{self.workload} at {self.memories:,} memories"
        return f"{where}: ratio {self.ratio:.2f}x < target {self.target:g}x"


def compression_misses(
    table: pd.DataFrame,
    *,
    codec: str = "gzip",
    level: int = 6,
    memories: int = 1000,
    target: float = 5.0,
    workloads: Iterable[str] | None = None,
) -> list[CompressionMiss]:
    """The workloads (all in ``table``, or those named) whose ratio at ``memories`` is below ``target``."""
    cells = table[(table.codec == codec) & (table.level == level) & (table.memories == memories)]
    names = list(workloads) if workloads is not None else sorted(cells.workload.unique())
    missing = [w for w in names if w not in set(cells.workload)]
    if missing:
        raise ValueError(f"no {codec}-{level} row at {memories} memories for {missing}")
    return [
        CompressionMiss(w, memories, float(r), target)
        for w, r in cells.set_index("workload").loc[names, "ratio"].items()
        if r < target
    ]


def recommend_codec(
    table: pd.DataFrame,
    *,
    memories: int = 1000,
    current: tuple[str, int] = ("gzip", 6),
    max_slowdown: float = 2.0,
) -> pd.DataFrame:
    """Per codec and level at ``memories``: mean and worst ratio, worst speeds, ranked for a choice.

    Speeds are compared with the setting in use (``current``), measured in the same run, never with
    an absolute figure: ``speed_vs_current`` is the setting's slowest-workload compression speed over
    the current one's. A setting qualifies if it is at most ``max_slowdown`` times slower (the API
    compresses on the request path). Qualifying settings come first, by mean ratio.
    """
    cells = table[table.memories == memories]
    summary = (
        cells.groupby(["codec", "level"])
        .agg(
            mean_ratio=("ratio", "mean"),
            min_ratio=("ratio", "min"),
            min_compress_mb_s=("compress_mb_s", "min"),
            min_decompress_mb_s=("decompress_mb_s", "min"),
        )
        .reset_index()
    )
    mine = summary[(summary.codec == current[0]) & (summary.level == current[1])]
    if mine.empty:
        raise ValueError(f"no {current[0]}-{current[1]} rows at {memories} memories to compare with")
    summary["speed_vs_current"] = summary.min_compress_mb_s / mine.min_compress_mb_s.item()
    summary["qualifies"] = summary.speed_vs_current >= 1 / max_slowdown
    return summary.sort_values(["qualifies", "mean_ratio"], ascending=[False, False]).reset_index(drop=True)


@dataclass(frozen=True)
class Recommendation:
    codec: str
    level: int
    reason: str

    @property
    def setting(self) -> str:
        return f"{self.codec}-{self.level}"


def codec_recommendation(
    table: pd.DataFrame,
    *,
    memories: int = 1000,
    current: tuple[str, int] = ("gzip", 6),
    max_slowdown: float = 2.0,
    min_gain: float = 0.10,
) -> Recommendation:
    """Keep the codec in use unless a setting no more than ``max_slowdown`` slower compresses at
    least ``min_gain`` better on average over the workloads; the reason quotes the figures."""
    ranking = recommend_codec(table, memories=memories, current=current, max_slowdown=max_slowdown)
    now = ranking[(ranking.codec == current[0]) & (ranking.level == current[1])].iloc[0]
    best = ranking.iloc[0]
    gain = best.mean_ratio / now.mean_ratio - 1
    workloads = ", ".join(sorted(table.workload.unique()))
    here = (
        f"{current[0]}-{current[1]} averages {now.mean_ratio:.2f}x over {workloads} at {memories:,} memories "
        f"(worst {now.min_ratio:.2f}x)"
    )
    if (best.codec, best.level) == current or gain < min_gain:
        return Recommendation(
            current[0],
            current[1],
            f"Keep {current[0]} level {current[1]}: {here}; the best setting at most "
            f"{max_slowdown:g}x slower to compress ({best.codec}-{best.level}, {best.mean_ratio:.2f}x) "
            f"gains {gain:+.0%}, under the {min_gain:.0%} that would justify a new codec in the "
            f"batch-file format.",
        )
    return Recommendation(
        str(best.codec),
        int(best.level),
        f"Switch to {best.codec} level {best.level}: {best.mean_ratio:.2f}x on average (worst "
        f"{best.min_ratio:.2f}x) against {here}, a gain of {gain:+.0%}, compressing at "
        f"{best.speed_vs_current:.1f}x the current speed. It needs a batch-file format version 2 that "
        f"the worker reads beside version 1.",
    )

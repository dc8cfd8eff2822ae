"""``toolkit bench``: both paths against a baseline measured in the same run (design §6).

The baseline writes the same memories straight to Parse with the same writer and no Temporal: the
ceiling for this machine. Every figure is printed beside its ratio to that baseline; no bare times.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from temporalio.client import Client

from toolkit.history import measure_history
from toolkit.memory_writer import MemoryWriter, WriteContext
from toolkit.parse import ParseClient
from toolkit.parse.codec import EncodedBatch, encode_memories
from toolkit.parse.models import MemoryItem
from toolkit.settings import Settings
from toolkit.starter import store_and_start
from toolkit.temporal_client import connect
from toolkit.users import ParseUser, sign_up
from toolkit.workloads import make_memories


@dataclass(frozen=True)
class BenchRow:
    workload: str
    memories: int
    path: str  # "baseline", "reference" or "legacy"
    seconds: float
    memories_per_s: float
    vs_baseline: float  # this path's throughput / the baseline's (1.0 = as fast as writing directly)
    success_rate: float
    input_bytes: int | None = None
    history_bytes: int | None = None
    history_events: int | None = None
    raw_bytes: int | None = None
    compressed_bytes: int | None = None
    error: str | None = None  # the path could not carry this batch (e.g. a Temporal limit)


async def _baseline(
    parse: ParseClient, settings: Settings, user: ParseUser, memories: Sequence[dict]
) -> tuple[float, int]:
    writer = MemoryWriter.from_settings(parse, settings)
    context = WriteContext(batch_id=f"bench-{uuid.uuid4().hex}", user_id=user.object_id)
    items = [(i, MemoryItem.model_validate(m)) for i, m in enumerate(memories)]
    started = time.perf_counter()
    outcomes = await writer.write(context, items)
    return time.perf_counter() - started, sum(1 for o in outcomes if o.ok)


async def run_bench(
    settings: Settings,
    *,
    sizes: Sequence[int] = (10, 100, 1000),
    workload: str = "chitchat",
    paths: Sequence[str] = ("reference", "legacy"),
    echo=print,
    **workload_options: int,
) -> list[BenchRow]:
    """Run the baseline and each path for each size, on the stack's worker(s); return the rows."""
    temporal = await connect(settings)
    rows: list[BenchRow] = []
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        for size in sizes:
            memories = make_memories(workload, size, **workload_options)
            encoded = encode_memories(memories, level=settings.gzip_level)
            seconds, ok = await _baseline(parse, settings, user, memories)
            base_rate = size / seconds
            rows.append(
                BenchRow(
                    workload,
                    size,
                    "baseline",
                    seconds,
                    base_rate,
                    1.0,
                    ok / size,
                    raw_bytes=encoded.raw_size,
                    compressed_bytes=encoded.compressed_size,
                )
            )
            echo(_format(rows[-1]))
            for path in paths:
                try:
                    row = await _run_path(
                        temporal, parse, settings, user, workload, memories, path, base_rate, encoded
                    )
                except Exception as exc:  # a Temporal limit on the legacy path is a result, not a crash
                    row = BenchRow(
                        workload,
                        size,
                        path,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    )
                rows.append(row)
                echo(_format(rows[-1]))
    return rows


async def _run_path(
    temporal: Client,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    workload: str,
    memories: Sequence[dict],
    path: str,
    base_rate: float,
    encoded: EncodedBatch,
) -> BenchRow:
    """Submit ``memories`` on one path, wait for the result, and read the history figures."""
    size = len(memories)
    started = time.perf_counter()
    batch = await store_and_start(temporal, parse, settings, user, memories, legacy=path == "legacy")
    summary = await batch.result()
    seconds = time.perf_counter() - started
    figures = await measure_history(batch.handle)
    rate = size / seconds
    return BenchRow(
        workload,
        size,
        path,
        seconds,
        rate,
        rate / base_rate,
        summary.successful / size,
        figures.input_bytes,
        figures.history_bytes,
        figures.history_events,
        encoded.raw_size,
        encoded.compressed_size if path == "reference" else None,
    )


def _format(row: BenchRow) -> str:
    if row.error:
        return f"{row.workload:<9} {row.memories:>6} {row.path:<9} FAILED: {row.error}"
    history = (
        f"history {row.history_bytes:>9,} B {row.history_events:>5} ev" if row.history_bytes else " " * 29
    )
    size = f"input {row.input_bytes:>9,} B" if row.input_bytes is not None else " " * 17
    return (
        f"{row.workload:<9} {row.memories:>6} {row.path:<9} {row.memories_per_s:>8.0f} mem/s "
        f"{row.vs_baseline:>5.2f}x baseline  ok {row.success_rate:>6.1%}  {size}  {history}"
    )

"""``toolkit bench``: both paths against a baseline measured in the same run (design §6).

The baseline writes the same memories straight to Parse with the same writer and no Temporal: the
ceiling for this machine. Every figure is printed beside its ratio to that baseline; no bare times.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.parse.codec import EncodedBatch, encode_memories
from toolkit.parse.memory_writer import MemoryWriter, WriteContext, delete_memories
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser, sign_up
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import store_and_start
from toolkit.validation.perf import procstats
from toolkit.validation.perf.history import measure_history
from toolkit.validation.workloads import make_memories

DEFAULT_SIZES = (10, 100, 1000)
# 100,000 needs chunked batches (MAX_BATCH_MEMORIES) on the stack; the sizes between are accepted as given.
MAX_SIZE = 100_000
MAX_REPEAT = 10


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
    workers: int | None = None  # worker processes of the stack (pid files) during the row
    worker_peak_rss_mb: float | None = None  # highest VmHWM of those workers over this row
    api_peak_rss_mb: float | None = None  # the stack API's VmHWM over this row
    repeat: int = 0  # which repetition of its size this row belongs to (``run_bench(repeat=N)``)


@dataclass(frozen=True)
class RatioSummary:
    """One path at one size over every repetition of a run: the spread of its ratio to the baseline."""

    workload: str
    memories: int
    path: str
    runs: int
    median: float
    low: float
    high: float


async def _baseline(
    parse: ParseClient, settings: Settings, user: ParseUser, memories: Sequence[dict]
) -> tuple[float, int]:
    writer = MemoryWriter.from_settings(parse, settings)
    context = WriteContext(batch_id=f"bench-{uuid.uuid4().hex}", user_id=user.object_id)
    # The clock starts before validation: the paths measured beside it validate the same dicts
    # (store_and_start) inside their own time, so the baseline does too.
    started = time.perf_counter()
    items = [(i, MemoryItem.model_validate(m)) for i, m in enumerate(memories)]
    outcomes = await writer.write(context, items)
    return time.perf_counter() - started, sum(1 for o in outcomes if o.ok)


class _PeakWindow:
    """Peak RSS of the stack's API and workers over one row (the kernel's VmHWM, reset per row)."""

    def __init__(self, settings: Settings) -> None:
        self.pids = procstats.stack_pids(settings.stack_dir)
        self.workers = sorted(pid for part, pid in self.pids.items() if part.startswith("worker"))
        self.api = self.pids.get("api")
        # Where the reset is refused, the figure is the process's lifetime peak (still an upper bound).
        for pid in [*self.workers, *([self.api] if self.api else [])]:
            procstats.reset_peak_rss(pid)

    def apply(self, row: BenchRow) -> BenchRow:
        def mb(pid: int | None) -> float | None:
            kb = procstats.peak_rss_kb(pid) if pid else None
            return round(kb / 1024, 1) if kb else None

        peaks = [p for p in (mb(pid) for pid in self.workers) if p is not None]
        return dataclasses.replace(
            row,
            workers=len(self.workers),
            worker_peak_rss_mb=max(peaks) if peaks else None,
            api_peak_rss_mb=mb(self.api),
        )


async def run_bench(
    settings: Settings,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    workload: str = "chitchat",
    paths: Sequence[str] = ("reference", "legacy"),
    echo=print,
    fixed_cost_runs: int = 0,
    fixed_cost_echo=None,
    repeat: int = 1,
    **workload_options: int,
) -> list[BenchRow]:
    """Run the baseline and each path for each size, on the stack's worker(s); return the rows.

    With ``repeat`` > 1 each size is measured that many times, baseline and paths taking turns, so
    a burst of load from elsewhere on the machine lands on both; :func:`summarize_ratios` gives the
    median and the spread of each ratio. On a busy 2-core machine one run's ratio moves by ±0.1.

    Sizes up to :data:`MAX_SIZE` (10,000 and 100,000 included; the defaults stay quick). Each row
    carries the stack's worker count and the peak RSS of its workers and API during that row. With
    ``fixed_cost_runs`` the 10-memory fixed cost is measured through the API first and its
    breakdown printed (``fixed_cost_echo`` gets the summary rows; see
    :mod:`toolkit.validation.perf.fixed_cost`).
    """
    for size in sizes:
        if not 1 <= size <= MAX_SIZE:
            raise ValueError(f"bench sizes must be 1..{MAX_SIZE:,}, got {size:,}")
    if not 1 <= repeat <= MAX_REPEAT:
        raise ValueError(f"bench repeat must be 1..{MAX_REPEAT}, got {repeat}")
    temporal = await connect(settings)
    rows: list[BenchRow] = []
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        if fixed_cost_runs > 0:
            await _fixed_cost(settings, user, temporal, fixed_cost_runs, echo, fixed_cost_echo)
        for size, rep in ((size, rep) for size in sizes for rep in range(repeat)):
            window = _PeakWindow(settings)
            memories = make_memories(workload, size, **workload_options)
            encoded = encode_memories(memories, level=settings.gzip_level)
            seconds, ok = await _baseline(parse, settings, user, memories)
            base_rate = size / seconds
            rows.append(
                BenchRow(  # the baseline row's peaks: the stack idles while this process writes
                    workload,
                    size,
                    "baseline",
                    seconds,
                    base_rate,
                    1.0,
                    ok / size,
                    raw_bytes=encoded.raw_size,
                    compressed_bytes=encoded.compressed_size,
                    repeat=rep,
                )
            )
            rows[-1] = window.apply(rows[-1])
            echo(_format(rows[-1]))
            for path in paths:
                window = _PeakWindow(settings)
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
                rows.append(window.apply(dataclasses.replace(row, repeat=rep)))
                echo(_format(rows[-1]))
    return rows


def summarize_ratios(rows: Sequence[BenchRow]) -> list[RatioSummary]:
    """Median, lowest and highest ratio to the baseline per (size, path), failed rows left out."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for row in rows:
        if row.path != "baseline" and row.error is None:
            groups.setdefault((row.workload, row.memories, row.path), []).append(row.vs_baseline)
    return [
        RatioSummary(
            workload, memories, path, len(ratios), statistics.median(ratios), min(ratios), max(ratios)
        )
        for (workload, memories, path), ratios in groups.items()
    ]


def format_ratio_summary(summary: RatioSummary) -> str:
    return (
        f"{summary.workload:<9} {summary.memories:>6} {summary.path:<9} ÷ baseline: median "
        f"{summary.median:.2f}x (lowest {summary.low:.2f}x, highest {summary.high:.2f}x, {summary.runs} runs)"
    )


@dataclass(frozen=True)
class WriterRow:
    """The memory writer alone (no Temporal, no API) writing one batch at one concurrency."""

    workload: str
    memories: int
    batch_size: int  # memories per /parse/batch call
    concurrency: int  # calls in flight
    seconds: float
    memories_per_s: float
    vs_first: float  # throughput / that of the run's first concurrency, measured in the same run
    first_concurrency: int
    written: int  # memories the writer reported written
    batch_id: str  # where they were written (deleted again after the row)


async def run_writer_bench(
    settings: Settings,
    *,
    memories: int = 1000,
    workload: str = "chitchat",
    concurrencies: Sequence[int] = (1, 4),
    batch_size: int | None = None,
    echo=print,
) -> list[WriterRow]:
    """Write the same ``memories`` once per concurrency, straight to Parse; one row per concurrency.

    The batch size is the worker's (``WRITER_BATCH_SIZE``) unless given. Each batch is deleted after
    its row, so every row writes the same fresh objects. Ratios are to the first concurrency.
    """
    if not 1 <= memories <= MAX_SIZE:
        raise ValueError(f"writer bench memories must be 1..{MAX_SIZE:,}, got {memories:,}")
    if not concurrencies or any(c < 1 for c in concurrencies):
        raise ValueError(f"writer bench concurrencies must be >= 1, got {list(concurrencies)}")
    size = batch_size or settings.writer_batch_size
    items = [(i, MemoryItem.model_validate(m)) for i, m in enumerate(make_memories(workload, memories))]
    rows: list[WriterRow] = []
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        for concurrency in concurrencies:
            writer = MemoryWriter(parse, batch_size=size, concurrency=concurrency)
            context = WriteContext(batch_id=f"writer-bench-{uuid.uuid4().hex}", user_id=user.object_id)
            started = time.perf_counter()
            outcomes = await writer.write(context, items)
            seconds = time.perf_counter() - started
            await delete_memories(parse, context.batch_id)
            rate = memories / seconds
            first = rows[0] if rows else None
            rows.append(
                WriterRow(
                    workload=workload,
                    memories=memories,
                    batch_size=size,
                    concurrency=concurrency,
                    seconds=seconds,
                    memories_per_s=rate,
                    vs_first=rate / first.memories_per_s if first else 1.0,
                    first_concurrency=first.concurrency if first else concurrency,
                    written=sum(1 for o in outcomes if o.ok),
                    batch_id=context.batch_id,
                )
            )
            echo(format_writer_row(rows[-1]))
    return rows


def format_writer_row(row: WriterRow) -> str:
    missing = "" if row.written == row.memories else f"  ({row.memories - row.written:,} NOT WRITTEN)"
    return (
        f"writer {row.workload:<9} {row.memories:>6} memories, {row.batch_size} per call, "
        f"concurrency {row.concurrency:>2}: {row.memories_per_s:>7.0f} mem/s "
        f"{row.vs_first:>5.2f}x concurrency {row.first_concurrency}{missing}"
    )


async def _fixed_cost(
    settings: Settings, user: ParseUser, temporal: Client, runs: int, echo, summary_echo
) -> None:
    from toolkit.validation.perf import fixed_cost

    try:
        measured = await fixed_cost.measure_fixed_cost(
            settings, user.session_token, runs=runs, temporal=temporal
        )
    except (fixed_cost.FixedCostError, OSError, httpx.HTTPError) as exc:
        echo(f"fixed cost not measured: {type(exc).__name__}: {str(exc)[:300]}")
        return
    summary = fixed_cost.summarize(measured)
    for line in fixed_cost.format_summary(summary):
        echo(line)
    if summary_echo is not None:
        summary_echo(summary)


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
    rss = (
        f"  {row.workers}w rss worker {row.worker_peak_rss_mb or 0:>6.0f} MB"
        f" api {row.api_peak_rss_mb or 0:>5.0f} MB"
        if row.workers is not None
        else ""
    )
    return (
        f"{row.workload:<9} {row.memories:>6} {row.path:<9} {row.memories_per_s:>8.0f} mem/s "
        f"{row.vs_baseline:>5.2f}x baseline  ok {row.success_rate:>6.1%}  {size}  {history}{rss}"
    )

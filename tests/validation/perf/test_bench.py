"""`toolkit bench`: rows for the baseline and both paths, and a legacy limit recorded as a failed row."""

from __future__ import annotations

import pytest

from toolkit.parse import ParseClient
from toolkit.parse.memory_writer import count_memories
from toolkit.settings import Settings
from toolkit.validation.perf import procstats
from toolkit.validation.perf.bench import format_ratio_summary, run_bench, run_writer_bench, summarize_ratios


async def test_bench_reports_each_path_against_the_baseline(worker_settings: Settings, worker: None) -> None:
    rows = await run_bench(worker_settings, sizes=(20,), workload="chitchat", echo=print)
    by_path = {row.path: row for row in rows}
    assert list(by_path) == ["baseline", "reference", "legacy"]
    assert all(row.success_rate == 1.0 and row.error is None for row in rows)
    assert by_path["baseline"].vs_baseline == 1.0
    # Same memories on both rows, so the throughput ratio is the inverse ratio of their times.
    assert by_path["reference"].vs_baseline == pytest.approx(
        by_path["baseline"].seconds / by_path["reference"].seconds
    )
    assert by_path["reference"].input_bytes <= 100 < by_path["legacy"].input_bytes
    assert by_path["reference"].compressed_bytes < by_path["reference"].raw_bytes


async def test_a_batch_the_legacy_path_cannot_carry_is_a_failed_row_not_a_crash(
    worker_settings: Settings, worker: None
) -> None:
    # 200 memories of 14,000 bytes: ~2.8 MB of input, over Temporal's 2 MiB payload limit.
    rows = await run_bench(
        worker_settings, sizes=(200,), workload="synthetic", echo=print, content_bytes=14_000
    )
    by_path = {row.path: row for row in rows}
    assert by_path["reference"].success_rate == 1.0 and by_path["reference"].error is None
    assert by_path["legacy"].error is not None
    assert by_path["legacy"].error == "RPCError: Blob data size exceeds limit."


async def test_bench_rows_name_the_workers_and_their_peak_memory(
    worker_settings: Settings, worker: None
) -> None:
    rows = await run_bench(
        worker_settings, sizes=(10,), workload="chitchat", paths=("reference",), echo=print
    )
    stack_workers = procstats.worker_count(worker_settings.stack_dir)
    assert [row.path for row in rows] == ["baseline", "reference"]
    for row in rows:
        assert row.workers == stack_workers
        assert row.api_peak_rss_mb is not None and row.api_peak_rss_mb > 0
        if stack_workers:
            assert row.worker_peak_rss_mb is not None and row.worker_peak_rss_mb > 0


async def test_bench_refuses_sizes_past_its_range_before_doing_anything(worker_settings: Settings) -> None:
    with pytest.raises(ValueError, match="1..100,000"):
        await run_bench(worker_settings, sizes=(10, 100_001), echo=print)


async def test_repeated_bench_takes_turns_and_summarizes_each_ratio(
    worker_settings: Settings, worker: None
) -> None:
    rows = await run_bench(worker_settings, sizes=(10, 20), paths=("reference",), repeat=2, echo=print)
    # Each size measured twice, the baseline before the path each time.
    assert [(r.memories, r.repeat, r.path) for r in rows] == [
        (10, 0, "baseline"),
        (10, 0, "reference"),
        (10, 1, "baseline"),
        (10, 1, "reference"),
        (20, 0, "baseline"),
        (20, 0, "reference"),
        (20, 1, "baseline"),
        (20, 1, "reference"),
    ]
    # Each reference row's ratio is to the baseline of its own turn.
    for baseline, reference in zip(rows[::2], rows[1::2], strict=True):
        assert reference.vs_baseline == pytest.approx(baseline.seconds / reference.seconds)
    summaries = {(s.memories, s.path): s for s in summarize_ratios(rows)}
    assert set(summaries) == {(10, "reference"), (20, "reference")}
    for (size, _), summary in summaries.items():
        ratios = sorted(r.vs_baseline for r in rows if r.memories == size and r.path == "reference")
        assert (summary.runs, summary.low, summary.high) == (2, ratios[0], ratios[1])
        assert summary.low <= summary.median <= summary.high
        assert "median" in format_ratio_summary(summary) and "2 runs" in format_ratio_summary(summary)


async def test_bench_refuses_a_repeat_past_its_range(worker_settings: Settings) -> None:
    with pytest.raises(ValueError, match="repeat must be 1..10"):
        await run_bench(worker_settings, sizes=(10,), repeat=11, echo=print)


async def test_writer_bench_writes_each_concurrency_once_and_deletes_what_it_wrote(
    settings: Settings, parse: ParseClient
) -> None:
    rows = await run_writer_bench(settings, memories=40, concurrencies=(1, 2), batch_size=10, echo=print)
    assert [(r.memories, r.batch_size, r.concurrency, r.written) for r in rows] == [
        (40, 10, 1, 40),
        (40, 10, 2, 40),
    ]
    assert len({r.batch_id for r in rows}) == 2
    for row in rows:
        assert await count_memories(parse, row.batch_id) == 0
    # Ratios are to the first concurrency: the inverse ratio of the times of the same 40 memories.
    assert (rows[0].vs_first, rows[0].first_concurrency, rows[1].first_concurrency) == (1.0, 1, 1)
    assert rows[1].vs_first == pytest.approx(rows[0].seconds / rows[1].seconds)


@pytest.mark.parametrize(("memories", "concurrencies"), [(0, (1,)), (10, ()), (10, (1, 0))])
async def test_writer_bench_refuses_bad_arguments_before_writing(
    settings: Settings, memories: int, concurrencies: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="writer bench"):
        await run_writer_bench(settings, memories=memories, concurrencies=concurrencies, echo=print)

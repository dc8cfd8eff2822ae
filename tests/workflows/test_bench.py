"""`toolkit bench`: rows for the baseline and both paths, and a legacy limit recorded as a failed row."""

from __future__ import annotations

from toolkit.bench import run_bench
from toolkit.settings import Settings


async def test_bench_reports_each_path_against_the_baseline(worker_settings: Settings, worker: None) -> None:
    rows = await run_bench(worker_settings, sizes=(20,), workload="chitchat", echo=print)
    by_path = {row.path: row for row in rows}
    assert list(by_path) == ["baseline", "reference", "legacy"]
    assert all(row.success_rate == 1.0 and row.error is None for row in rows)
    assert by_path["baseline"].vs_baseline == 1.0
    assert (
        by_path["reference"].vs_baseline
        == by_path["reference"].memories_per_s / by_path["baseline"].memories_per_s
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
    assert "size exceeds limit" in by_path["legacy"].error or "larger than max" in by_path["legacy"].error

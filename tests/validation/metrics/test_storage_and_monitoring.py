"""Storage accounting and the monitoring aggregations, on batches made on the real stack."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchContext, LegacyBatchInput
from toolkit.temporal.starter import store_and_start
from toolkit.temporal.workflows import LEGACY_WORKFLOW
from toolkit.validation.metrics import (
    LEGACY_RUNNING_QUERY,
    collect_batches,
    error_rates,
    path_summary,
    per_period,
    running_legacy_workflows,
    storage_account,
    storage_days_over,
)
from toolkit.validation.workloads import chitchat_memories


async def test_a_new_reference_batch_adds_its_file_to_storage_and_to_its_day(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    # Policy "after 0 days": every finished request's file is due for cleanup.
    settings = dataclasses.replace(worker_settings, cleanup_after_days=0)
    since = datetime.now(UTC) - timedelta(seconds=1)
    before = await storage_account(settings, since)
    batch = await store_and_start(temporal, parse, settings, user, chitchat_memories(50))
    await batch.result()
    after = await storage_account(settings, since)
    row = (
        (await collect_batches(settings, since, with_temporal=False))
        .set_index("batch_id")
        .loc[batch.batch_id]
    )
    assert after.stored_files - before.stored_files == 1
    assert after.stored_bytes - before.stored_bytes == row.compressed_bytes
    assert after.due_files - before.due_files == 1
    assert after.due_bytes - before.due_bytes == row.compressed_bytes
    today = after.per_day.set_index("day").compressed_bytes
    assert today.sum() - before.per_day.compressed_bytes.sum() == row.compressed_bytes
    assert not after.per_day.over_target.any()
    assert "batch files stored now" in set(after.summary().figure)


def _frame() -> pd.DataFrame:
    t0 = pd.Timestamp("2026-01-01T10:00:00Z")
    rows = [
        # path, status, created offset (min), e2e ms, total, failed, error types
        ("reference", "completed", 1, 1000.0, 100, 0, []),
        ("reference", "completed", 2, 3000.0, 100, 0, []),
        ("reference", "partial", 65, 2000.0, 100, 2, ["ParseError 142", "ParseError 142"]),
        ("legacy", "failed", 3, 9000.0, 10, 10, ["ApplicationError"]),
        ("legacy", "processing", 4, None, 10, 0, []),
    ]
    return pd.DataFrame(
        [
            {
                "batch_id": f"b{i}",
                "storage": path,
                "status": status,
                "created_at": t0 + pd.Timedelta(minutes=minutes),
                "end_to_end_ms": e2e,
                "total": total,
                "failed": failed,
                "error_types": errors,
            }
            for i, (path, status, minutes, e2e, total, failed, errors) in enumerate(rows)
        ]
    )


def test_per_period_counts_success_and_percentiles() -> None:
    table = per_period(_frame(), "1h").set_index(["period", "path"])
    first = table.loc[(pd.Timestamp("2026-01-01T10:00:00Z"), "reference")]
    assert (first.batches, first.finished, first.success_rate) == (2, 2, 1.0)
    assert (first.p50_ms, first.p95_ms) == (2000.0, 2900.0)
    legacy = table.loc[(pd.Timestamp("2026-01-01T10:00:00Z"), "legacy")]
    assert (legacy.batches, legacy.finished, legacy.success_rate) == (2, 1, 0.0)
    assert table.loc[(pd.Timestamp("2026-01-01T11:00:00Z"), "reference")].success_rate == 0.0


def test_path_summary_and_error_rates_by_type() -> None:
    summary = path_summary(_frame()).set_index("path")
    assert summary.loc["reference", "success_rate"] == 2 / 3
    assert summary.loc["reference", "memory_error_rate"] == 2 / 300
    assert summary.loc["legacy", "memories"] == 20
    rates = error_rates(_frame()).set_index(["path", "error_type"])
    assert rates.loc[("reference", "ParseError 142"), ["errors", "rate"]].tolist() == [2, 2 / 300]
    # One ApplicationError entry over the legacy path's 20 memories (two batches of 10).
    assert rates.loc[("legacy", "ApplicationError"), "rate"] == 1 / 20
    assert error_rates(_frame().assign(error_types=[[]] * 5)).empty


async def test_a_running_legacy_workflow_is_listed_until_it_ends(
    settings: Settings, temporal: Client
) -> None:
    queue = f"unpolled-{uuid.uuid4().hex[:8]}"
    context = BatchContext(request_id="r", batch_id=uuid.uuid4().hex, user_id="u")
    handle = await temporal.start_workflow(
        LEGACY_WORKFLOW, LegacyBatchInput(context, []), id=f"monitor-{context.batch_id}", task_queue=queue
    )
    try:
        for _ in range(50):  # visibility is eventually consistent
            running = await running_legacy_workflows(settings)
            if handle.id in set(running.workflow_id):
                break
            await asyncio.sleep(0.1)
        assert running.set_index("workflow_id").loc[handle.id, "task_queue"] == queue
    finally:
        await handle.terminate(reason="test over")
    for _ in range(50):
        if handle.id not in set((await running_legacy_workflows(settings)).workflow_id):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"{handle.id} still listed by {LEGACY_RUNNING_QUERY}")


def test_storage_days_over_lists_each_day_at_or_over_its_target() -> None:
    per_day = pd.DataFrame(
        {
            "day": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
            "batches": [3, 40, 1],
            "compressed_bytes": [999, 1_000, 2_500_000],
            "over_target": [False, True, True],  # target 1,000 B
        }
    )
    assert storage_days_over(per_day) == [
        "2026-01-02: 1,000 B in 40 batch files",
        "2026-01-03: 2,500,000 B in 1 batch files",
    ]
    assert storage_days_over(per_day.iloc[:1]) == []
    assert storage_days_over(per_day.iloc[:0]) == []

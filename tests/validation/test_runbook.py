"""The runbook against the real stack: a failing gate rolls back, a dry run changes nothing, a failed
preflight stops before any change."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from toolkit.parse import ParseClient
from toolkit.rollout import RolloutFlags, read_flags, write_flags
from toolkit.settings import Settings
from toolkit.validation.canary import CanaryConfig
from toolkit.validation.runbook import RunbookConfig, run_runbook
from toolkit.validation.traffic import TrafficPlan

# 3 batches per path per analysis: the least a Mann–Whitney test can separate at p < 0.05 is 4 vs 4
# (3 vs 3 gives p = 0.1), so the judge here decides on its hard gates, which is what the rollback needs.
TRAFFIC = TrafficPlan(batches=6, batch_sizes=(2, 4), users=4, min_users_per_path=2, workload="synthetic")


@pytest.fixture
async def flags_kept(parse: ParseClient, settings: Settings) -> AsyncIterator[RolloutFlags]:
    """The flags as found; put back after the test whatever it did."""
    before = await read_flags(parse, settings)
    yield before
    await write_flags(parse, settings, enabled=before.use_parse_batch_storage, percent=before.canary_percent)


async def test_failing_gate_turns_the_flag_off_and_says_why(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags
) -> None:
    # Real measurements against a budget the test sets below them: the reference path's history is
    # ~2.4 KB per batch, so a 1,000-byte budget fails the gate at the first stage.
    config = RunbookConfig(
        stages=(50, 100),
        canary=CanaryConfig(min_samples=3, max_canary_history_bytes=1000),
        traffic=TRAFFIC,
        restore_flags=False,
        cleanup=False,
    )
    result = await run_runbook(settings, config)

    assert result.outcome == "rolled back"
    live = await read_flags(parse, settings)
    assert live.use_parse_batch_storage is False
    assert result.flags_after == live
    assert "history per canary batch" in result.reason and "1,000 B" in result.reason
    record = result.record
    gate = record[(record["phase"] == "gate")]
    assert gate["result"].tolist() == ["fail"]
    assert gate["stage"].tolist() == [50]
    rollback = record[record["phase"] == "rollback"].iloc[0]
    assert rollback["result"] == "ok" and rollback["flag_on"] == False  # noqa: E712 (numpy bool)
    assert "history per canary batch" in rollback["detail"]
    # It stopped: 100 % was never set.
    assert 100 not in record.loc[record["step"] == "set flags", "stage"].tolist()
    assert record.iloc[-1]["result"] == "rolled back"
    assert result.rollback_s is not None


async def test_dry_run_changes_nothing(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags
) -> None:
    marked = await write_flags(parse, settings, enabled=True, percent=37)
    result = await run_runbook(settings, RunbookConfig(dry_run=True, traffic=TRAFFIC))
    assert result.outcome == "dry run"
    assert await read_flags(parse, settings) == marked
    record = result.record
    stage_rows = record[record["step"] == "set flags"]
    assert stage_rows["stage"].tolist() == [0, 10, 25, 50, 75, 100]
    assert stage_rows["result"].eq("dry-run").all()
    assert "would set on=True percent=10" in stage_rows.iloc[1]["detail"]
    assert not record["phase"].isin(["gate", "rollback", "restore"]).any()
    assert record.loc[record["step"] == "batch files cleaned", "result"].tolist() == ["dry-run"]


async def test_failed_preflight_changes_nothing(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags
) -> None:
    # A task queue no worker polls: the preflight must stop the run before any flag is set.
    unpolled = dataclasses.replace(settings, temporal_task_queue="nobody-polls-this-queue")
    result = await run_runbook(unpolled, RunbookConfig(stages=(0, 10), traffic=TRAFFIC))
    assert result.outcome == "preflight failed"
    polling = result.record.set_index("step").loc["worker polling"]
    assert polling["result"] == "fail" and "0 workflow pollers" in polling["detail"]
    assert not (result.record["step"] == "set flags").any()
    assert await read_flags(parse, settings) == flags_kept

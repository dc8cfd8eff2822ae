"""The payload notebook's third column (legacy path + external storage) on the real stack, and its gate."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from dataclasses import fields
from datetime import timedelta

import pandas as pd
import pytest
from temporalio.client import Client

from tests.fixtures.stored_payloads import payload_row
from toolkit.parse import ParseClient
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.external_storage import file_name_for
from toolkit.validation.metrics import (
    DRIVER_COLUMNS,
    DRIVER_MAX_INPUT_BYTES,
    driver_comparison,
    driver_gate_failures,
    measure_legacy_with_driver,
    payload_reduction,
    run_driver_sweep,
    run_sweep,
)
from toolkit.validation.perf.bench import BenchRow

THRESHOLD = 1_024  # low, so a 10-memory legacy input (~2.5 KB of chitchat) is stored outside


async def test_the_driver_column_beside_both_paths_and_its_gate(settings: Settings) -> None:
    # The stack's worker runs all three, as in the notebook. The driver also runs a size the sweep does
    # not (10), which must keep NaN in the reference and legacy columns.
    sweep = await run_sweep(settings, [20], workload="chitchat", paths=("reference", "legacy"))
    driver = await run_driver_sweep(settings, [10, 20], workload="chitchat", threshold=THRESHOLD)

    assert list(driver.columns) == DRIVER_COLUMNS and list(driver.memories) == [10, 20]
    assert driver.error.isna().all(), driver.error.tolist()
    assert (driver.status == "completed").all() and (driver.threshold == THRESHOLD).all()
    # Each input was stored: the claim stands for at least the threshold, and is itself small.
    assert (driver.externally_stored_bytes >= THRESHOLD).all()
    assert (driver.input_bytes <= DRIVER_MAX_INPUT_BYTES).all()
    # The stored payload is the legacy input: twice the memories, more bytes; the claim does not grow.
    small, large = driver.itertuples()
    assert large.externally_stored_bytes > small.externally_stored_bytes
    assert large.input_bytes == small.input_bytes

    reduction = payload_reduction(sweep)
    table = driver_comparison(reduction, driver)
    assert list(table.memories) == [10, 20] and (table.workload == "chitchat").all()
    for figure in ("input_bytes", "history_bytes", "history_events"):
        assert {f"reference_{figure}", f"legacy_{figure}", f"driver_{figure}"} <= set(table.columns)
    at_10, at_20 = table.set_index("memories").loc[10], table.set_index("memories").loc[20]
    assert pd.isna(at_10.reference_input_bytes) and pd.isna(at_10.legacy_history_bytes)
    assert at_10.driver_status == "completed"
    # Same 20 memories on the legacy path without the driver: the claim is far smaller than its input,
    # and that input is what the driver stored (the stored payload adds its encoding metadata to the data).
    assert at_20.driver_input_bytes * 10 < at_20.legacy_input_bytes
    assert 0 < at_20.driver_externally_stored_bytes - at_20.legacy_input_bytes < 100
    assert at_20.reference_input_bytes < at_20.driver_input_bytes
    # Not a small history: the per-memory activity inputs stay in it, unlike the reference path's.
    assert at_20.driver_history_events > 3 * at_20.reference_history_events
    # The driver's history is the smaller one (the formula is pinned in the test below).
    assert at_20.driver_history_bytes < at_20.legacy_history_bytes
    assert 0 < at_20.driver_history_reduction_pct < 100
    assert driver_gate_failures(table) == []

    # The gate bites: a claim regressed to 5,000 B fails at both sizes (the 10-memory row, which the
    # legacy column did not run, is judged on the payload the driver run carried).
    regressed = driver_gate_failures(table.assign(driver_input_bytes=5_000))
    assert len(regressed) == 2 and all("input 5,000 B > 1,024 B" in f for f in regressed), regressed
    failed = driver_gate_failures(table.assign(driver_status=["completed", "failed"]))
    assert failed == ["20 memories: the legacy + driver batch ended 'failed', not 'completed'"]
    # A threshold no size reached stored nothing, so the claim gate would test nothing: that fails too.
    [vacuous] = driver_gate_failures(table.assign(driver_threshold=10**9))
    assert "tested nothing" in vacuous
    assert driver_gate_failures(table.assign(driver_input_bytes=5_000), max_input_bytes=5_000) == []


def test_the_driver_history_reduction_is_the_share_of_the_legacy_history_saved() -> None:
    """Hand-made figures: 500 B of history against a legacy 2,000 B is 75 % smaller."""
    sweep = pd.DataFrame(
        [
            {"workload": "chitchat", "memories": 20, "path": path, "input_bytes": inputs,
             "history_bytes": history, "history_events": events, "success_rate": 1.0, "error": None}
            for path, inputs, history, events in (("reference", 73, 1_300, 11), ("legacy", 5_000, 2_000, 90))
        ]
    )  # fmt: skip
    driver = pd.DataFrame(
        [["chitchat", 20, 1_024, 150, 5_050, 500, 90, 1.0, "completed", None, "wf", "b"]],
        columns=DRIVER_COLUMNS,
    )
    [row] = driver_comparison(payload_reduction(sweep), driver).itertuples()
    assert row.driver_history_reduction_pct == pytest.approx(75.0)
    assert (row.reference_history_bytes, row.legacy_history_bytes, row.driver_history_bytes) == (
        1_300,
        2_000,
        500,
    )


async def test_a_size_that_cannot_run_is_a_row_with_its_error_and_fails_the_gate(settings: Settings) -> None:
    driver = await run_driver_sweep(settings, [5], workload="no-such-workload", threshold=THRESHOLD)
    [row] = driver.itertuples()
    assert row.memories == 5 and row.threshold == THRESHOLD and pd.isna(row.input_bytes)
    assert row.error.startswith("ValueError: unknown workload 'no-such-workload'")
    no_sweep = pd.DataFrame(columns=[f.name for f in fields(BenchRow)])  # only the driver column ran
    table = driver_comparison(payload_reduction(no_sweep), driver)
    [failure] = driver_gate_failures(table)
    assert failure.startswith("5 memories: the legacy + driver run failed: ValueError: unknown workload")


async def test_legacy_batch_with_the_driver_keeps_its_input_outside_the_history(
    worker: None, worker_settings: Settings, parse: ParseClient
) -> None:
    """The payload notebook's third column: the legacy path through a client with the driver on."""
    figures = await measure_legacy_with_driver(worker_settings, 10, threshold=1024)
    assert figures.status == "completed"
    assert (figures.memories, figures.threshold, figures.workload) == (10, 1024, "chitchat")
    # The input in the history is the claim alone: driver name, digest and the file's name.
    digest_0 = "0" * 64
    name_0 = f"{'0' * 32}_{file_name_for(digest_0)}"  # Parse's random prefix, 32 hex digits
    claim = json.dumps(
        {"driverName": "parse-files", "claimData": {"digest": digest_0, "name": name_0}},
        separators=(",", ":"),
    )
    assert figures.input_bytes == len(claim)
    temporal = await connect(worker_settings)
    history = await temporal.get_workflow_handle(figures.workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    digest = started.input.payloads[0].data.split(b'"digest":"')[1][:64].decode()
    assert (await payload_row(parse, digest))["payloadBytes"] == figures.externally_stored_bytes > 1024


async def test_a_driver_measurement_that_times_out_terminates_its_legacy_run(
    temporal: Client, settings: Settings
) -> None:
    """Nothing polls this queue: the measurement gives up, and no legacy workflow is left running."""
    unpolled = dataclasses.replace(settings, temporal_task_queue=f"unpolled-{uuid.uuid4().hex[:10]}")
    with pytest.raises(TimeoutError):
        await measure_legacy_with_driver(unpolled, 20, threshold=1024, timeout=timedelta(seconds=1))
    query = f'TaskQueue="{unpolled.temporal_task_queue}"'
    for _ in range(50):  # visibility may trail the start by a moment
        runs = [run async for run in temporal.list_workflows(query)]
        if runs:
            break
        await asyncio.sleep(0.1)
    assert len(runs) == 1
    description = await temporal.get_workflow_handle(runs[0].id).describe()
    assert description.status is not None and description.status.name == "TERMINATED"

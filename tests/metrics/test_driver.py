"""The payload notebook's third column (legacy path + external storage) on the real stack, and its gate."""

from __future__ import annotations

from dataclasses import fields

import pandas as pd
import pytest

from toolkit.bench import BenchRow
from toolkit.metrics import (
    DRIVER_COLUMNS,
    DRIVER_MAX_INPUT_BYTES,
    driver_comparison,
    driver_gate_failures,
    payload_reduction,
    run_driver_sweep,
    run_sweep,
)
from toolkit.settings import Settings

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
    saved = 1 - at_20.driver_history_bytes / at_20.legacy_history_bytes
    assert at_20.driver_history_reduction_pct == pytest.approx(100 * saved)
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


async def test_a_size_that_cannot_run_is_a_row_with_its_error_and_fails_the_gate(settings: Settings) -> None:
    driver = await run_driver_sweep(settings, [5], workload="no-such-workload", threshold=THRESHOLD)
    [row] = driver.itertuples()
    assert row.memories == 5 and row.threshold == THRESHOLD and pd.isna(row.input_bytes)
    assert row.error.startswith("ValueError: unknown workload 'no-such-workload'")
    no_sweep = pd.DataFrame(columns=[f.name for f in fields(BenchRow)])  # only the driver column ran
    table = driver_comparison(payload_reduction(no_sweep), driver)
    [failure] = driver_gate_failures(table)
    assert failure.startswith("5 memories: the legacy + driver run failed: ValueError: unknown workload")

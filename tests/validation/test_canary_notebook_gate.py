"""Notebook 03's gate cell fails on a failing canary: read-only over real traffic, with a tight budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import papermill
import pytest

from toolkit.validation.notebooks import read_summary

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03_canary_comparison.ipynb"


def test_canary_gate_assert_fails_on_a_failing_canary(canary_window: Any, tmp_path: Path) -> None:
    executed = tmp_path / NOTEBOOK.name
    parameters = {
        "GENERATE_TRAFFIC": False,
        "WINDOW_START": canary_window.traffic.since.isoformat(),
        "WINDOW_END": canary_window.traffic.until.isoformat(),
        "MIN_SAMPLES": 4,
        # Real reference histories are ~2.4 KB per batch: a 1,000-byte budget must fail the gate.
        "MAX_CANARY_HISTORY_BYTES": 1000,
    }
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(
            str(NOTEBOOK),
            str(executed),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(NOTEBOOK.parent),
            progress_bar=False,
        )
    assert failure.value.ename == "AssertionError"
    assert "history per canary batch" in failure.value.evalue
    summary = read_summary(executed)
    assert summary["canary_verdict"] == "fail"
    assert summary["canary_mode"] == "read-only window"
    assert summary["canary_batches"] == {"canary": 4, "baseline": 4}

"""Notebook 05's gate on the daily storage of batch files can fail: on a local stack no day nears the plan's
1 GB, so the test lowers DAILY_STORAGE_TARGET_BYTES below what one real batch file stores."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.starter import store_and_start
from toolkit.validation.notebooks import IpcKernelManager, read_summary
from toolkit.validation.workloads import chitchat_memories

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "05_monitoring.ipynb"


def execute(executed: Path, **parameters: object) -> None:
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters=parameters,
        kernel_name="python3",
        kernel_manager_class=IpcKernelManager,
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )


async def test_storage_gate_fails_on_a_day_over_the_target(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    worker: None,
    user: ParseUser,
    tmp_path: Path,
) -> None:
    batch = await store_and_start(temporal, parse, worker_settings, user, chitchat_memories(50))
    await batch.result()  # today now holds at least this batch file (a few KB)
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(tmp_path / "low.ipynb", DAILY_STORAGE_TARGET_BYTES=1000)
    assert failure.value.ename == "AssertionError"
    assert "batch files over the daily target of 1,000 B" in failure.value.evalue
    assert " B in " in failure.value.evalue and "batch files" in failure.value.evalue
    # The summary cell comes after the gate: nothing was recorded as if the day were within budget.
    assert "storage_worst_day_bytes" not in read_summary(tmp_path / "low.ipynb")

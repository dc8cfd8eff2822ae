"""Notebook parameters of the wrong type stop the run at once, naming the parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import papermill
import pytest

from toolkit.validation.notebooks import IpcKernelManager
from toolkit.validation.parameters import NotebookParameterError, check_parameters

RUNBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "04_rollout_runbook.ipynb"
ANNOTATIONS = {
    "STAGES": list[int],
    "SOAK_S": float,
    "DRY_RUN": bool,
    "WORKLOAD": str,
    "WINDOW_START": str | None,
    "MAX_CANARY_HISTORY_BYTES": int | None,
    "FLAGS": dict[str, bool],
}


def namespace(**values: Any) -> dict[str, Any]:
    defaults = {
        "STAGES": [0, 50, 100],
        "SOAK_S": 0,
        "DRY_RUN": False,
        "WORKLOAD": "chitchat",
        "WINDOW_START": None,
        "MAX_CANARY_HISTORY_BYTES": 10_000,
        "FLAGS": {"a": True},
    }
    return {"__annotations__": ANNOTATIONS, **defaults, **values}


def test_defaults_and_well_typed_values_pass() -> None:
    check_parameters(namespace())
    check_parameters(
        namespace(SOAK_S=2.5, WINDOW_START="2026-01-05T10:00:00Z", MAX_CANARY_HISTORY_BYTES=None)
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"STAGES": "[0, 10, 50, 100]"}, "parameter STAGES must be list[int], got str '[0, 10, 50, 100]'"),
        ({"STAGES": [0, "10"]}, "parameter STAGES must be list[int], got list [0, '10']"),
        ({"SOAK_S": "60"}, "parameter SOAK_S must be float, got str '60'"),
        ({"SOAK_S": True}, "parameter SOAK_S must be float, got bool True"),
        ({"DRY_RUN": "False"}, "parameter DRY_RUN must be bool, got str 'False'"),
        (
            {"MAX_CANARY_HISTORY_BYTES": 1.5},
            "parameter MAX_CANARY_HISTORY_BYTES must be int | None, got float 1.5",
        ),
        ({"FLAGS": {"a": 1}}, "parameter FLAGS must be dict[str, bool], got dict {'a': 1}"),
    ],
)
def test_a_wrong_type_is_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(NotebookParameterError) as failure:
        check_parameters(namespace(**values))
    assert str(failure.value).startswith(message)


def test_a_list_passed_as_text_says_how_to_pass_it() -> None:
    with pytest.raises(
        NotebookParameterError, match=r'give the value as YAML: -y "STAGES: \[0, 10, 50, 100\]"'
    ):
        check_parameters(namespace(STAGES="[0, 10, 50, 100]"))


def test_every_wrong_parameter_is_named_at_once() -> None:
    with pytest.raises(NotebookParameterError) as failure:
        check_parameters(namespace(STAGES="x", WORKLOAD=3))
    assert "STAGES" in str(failure.value) and "WORKLOAD" in str(failure.value)


def test_the_runbook_notebook_names_a_list_passed_as_text(tmp_path: Path) -> None:
    """`papermill … -p STAGES "[0, 10, 50, 100]"` passes a string; the runbook failed with "TypeError: '<='
    not supported between instances of 'int' and 'str'". Nothing runs against the stack before the check."""
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(
            str(RUNBOOK),
            str(tmp_path / "out.ipynb"),
            parameters={"STAGES": "[0, 10, 50, 100]"},
            kernel_name="python3",
            kernel_manager_class=IpcKernelManager,
            cwd=str(RUNBOOK.parent),
            progress_bar=False,
        )
    assert failure.value.ename == "NotebookParameterError"
    assert "parameter STAGES must be list[int], got str '[0, 10, 50, 100]'" in failure.value.evalue

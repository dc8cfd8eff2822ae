"""The committed notebooks are templates: no outputs, no execution counts, a header and a parameters cell
whose parameters are typed and checked."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS if p.name[:2].isdigit()], "no NN_name.ipynb in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_execution_counts(path: Path) -> None:
    notebook = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert dirty == [], (
        f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_then_one_parameters_cell(path: Path) -> None:
    cells = json.loads(path.read_text())["cells"]
    header = "".join(cells[0]["source"]).lower()
    assert cells[0]["cell_type"] == "markdown"
    for part in ("purpose", "precondition", "change", "roll"):
        assert part in header, f"{path.name}: the header cell does not say its {part}…"
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one parameters-tagged cell, found {tagged}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_is_typed_and_checked_before_use(path: Path) -> None:
    # A parameter without its type is not checked (toolkit.validation.parameters): papermill's -p would
    # hand it a string that fails deep in the package instead of at the cell after the parameters.
    cells = json.loads(path.read_text())["cells"]
    at = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    statements = ast.parse("".join(cells[at]["source"])).body
    untyped = [ast.unparse(s.targets[0]) for s in statements if isinstance(s, ast.Assign)]
    assert untyped == [], f"{path.name}: parameters without a type: {untyped}"
    following = next(c for c in cells[at + 1 :] if c["cell_type"] == "code")
    assert "check_parameters(globals())" in "".join(following["source"]), (
        f"{path.name}: the code cell after the parameters does not call check_parameters(globals())"
    )

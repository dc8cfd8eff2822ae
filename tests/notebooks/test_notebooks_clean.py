"""The committed notebooks are templates: no outputs, no execution counts, a header and a parameters cell."""

from __future__ import annotations

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

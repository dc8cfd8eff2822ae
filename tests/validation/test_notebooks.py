"""toolkit.validation.notebooks: papermill runs into a timestamped folder, HTML copies with alternative text,
summaries read back and kept in summary.json, the reports index rebuilt; and no kernel noise."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from toolkit.validation.notebooks import (
    FULL_PARAMETERS,
    NOTEBOOKS_DIR,
    UnknownNotebookParameter,
    check_known_parameters,
    read_summary,
    report_dir,
    run_notebooks,
    summary_lines,
)


def _write(path: Path, *sources: str) -> None:
    params = new_code_cell(sources[0])
    params.metadata["tags"] = ["parameters"]
    book = new_notebook(cells=[new_markdown_cell("# t"), params, *(new_code_cell(s) for s in sources[1:])])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, path)


def test_every_notebook_runs_into_one_report_folder_with_html_and_its_summary(tmp_path: Path) -> None:
    books = tmp_path / "nb"
    books.mkdir()
    _write(books / "01_broken.ipynb", "X = 1", "assert X == 2, 'gate failed: X is 1'")
    _write(
        books / "02_after.ipynb",
        "SIZE = 10",
        "from toolkit.validation.notebooks import record_summary\n"
        "record_summary({'size': SIZE, 'ratio': 7.5})",
        "record_summary({'verdict': 'pass'})",
    )
    (books / "scratch.ipynb").write_text("not a numbered notebook: ignored")

    now = datetime(2026, 1, 5, 10, 15, 2, tzinfo=UTC)
    reports = tmp_path / "reports"
    out, runs = run_notebooks(reports, notebooks_dir=books, parameters={"02_after": {"SIZE": 1000}}, now=now)
    assert out == reports / "20260105T101502Z"
    assert [r.name for r in runs] == ["01_broken", "02_after"]
    broken, after = runs
    assert broken.error is not None and "gate failed: X is 1" in broken.error and broken.summary == {}
    # A failing notebook does not stop the next; parameters reach it; its summaries merge in order.
    assert after.error is None and after.summary == {"size": 1000, "ratio": 7.5, "verdict": "pass"}
    for run in runs:
        assert run.executed.parent == out and run.html is not None and run.html.stat().st_size > 10_000
    assert read_summary(after.executed) == after.summary
    lines = summary_lines(out, runs)
    assert lines[0].startswith("01_broken: FAILED") and lines[1].startswith("02_after: ok in")
    assert "    size: 1,000" in lines and "    ratio: 7.50" in lines
    assert lines[-2].startswith(f"report: {out}")
    # The folder's summary.json keeps every notebook's outcome and figures; the index lists the run.
    kept = json.loads((out / "summary.json").read_text())
    assert [(n["name"], n["ok"], n["parameters"]) for n in kept["notebooks"]] == [
        ("01_broken", False, {}),
        ("02_after", True, {"SIZE": 1000}),
    ]
    assert kept["notebooks"][1]["summary"] == {"size": 1000, "ratio": 7.5, "verdict": "pass"}
    assert "20260105T101502Z" in (reports / "index.html").read_text()


def test_a_report_folder_is_never_reused(tmp_path: Path) -> None:
    now = datetime(2026, 1, 5, 10, 15, 2, tzinfo=UTC)
    report_dir(tmp_path, now)
    with pytest.raises(FileExistsError):
        report_dir(tmp_path, now)


PLOT = """import matplotlib.pyplot as plt
from toolkit.validation.figures import show_figure
fig, ax = plt.subplots()
ax.plot([10, 100], [2400, 2500], marker="o", label="reference path")
ax.set(xlabel="batch size (memories)", ylabel="history (bytes)", title="History per batch")
ax.legend()
show_figure(fig, "Flat at about 2.4 KB.")"""


def test_plots_carry_alt_text_and_the_run_is_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Each notebook printed the kernel's "running over TCP without encryption" warning and nbconvert's
    "Alternative text is missing on N image(s)"; the plots had no alternative text."""
    books = tmp_path / "nb"
    books.mkdir()
    _write(books / "01_plot.ipynb", "N = 1", PLOT)
    with caplog.at_level(logging.WARNING):
        out, [run] = run_notebooks(tmp_path / "reports", notebooks_dir=books, parameters={})
    assert run.error is None, run.error
    html = run.html.read_text() if run.html else ""
    images = re.findall(r"<img [^>]*>", html)
    assert len(images) == 1
    alt = re.search(r'alt="([^"]*)"', images[0])
    assert alt is not None and alt.group(1).startswith(
        "Flat at about 2.4 KB. History per batch (x axis: batch size"
    )
    assert "series: reference path" in alt.group(1)
    err = capfd.readouterr().err
    assert "without encryption" not in err
    assert not [r for r in caplog.records if "Alternative text is missing" in r.getMessage()]


def test_a_parameter_the_notebook_does_not_declare_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    """papermill only warns "Passed unknown parameter" and runs the defaults: a misspelt full-size
    parameter ran notebook 06 at its CI size in `make run` unnoticed."""
    books = tmp_path / "nb"
    books.mkdir()
    _write(books / "01_a.ipynb", "SIZE: int = 10")
    with pytest.raises(
        UnknownNotebookParameter, match="01_a.ipynb declares no parameter SIZES; it takes SIZE"
    ):
        run_notebooks(tmp_path / "reports", notebooks_dir=books, parameters={"01_a": {"SIZES": [1]}})
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("name", sorted(FULL_PARAMETERS))
def test_full_parameters_name_only_declared_parameters(name: str) -> None:
    check_known_parameters(NOTEBOOKS_DIR / f"{name}.ipynb", FULL_PARAMETERS[name])

"""Executing the validation notebooks: the records ``make run`` leaves in ``reports/<UTC timestamp>/``.

Each notebook in ``notebooks/`` is a template. A run executes it with papermill (the project's own
kernel, parameters injected after its ``parameters`` cell), writes the executed copy and an HTML copy
next to it, and reads back the ``summary`` the notebook recorded with :func:`record_summary`: a dict
of headline figures, kept in the executed notebook as an output of its own MIME type (the scrapbook
"glue" idea without the dependency). Nothing here knows what a given notebook measures: summaries are
read generically, so a notebook added later shows up in the printed summary by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolkit.settings import REPO_ROOT

__all__ = [
    "FULL_PARAMETERS",
    "NOTEBOOKS_DIR",
    "SUMMARY_MIME",
    "NotebookRun",
    "read_summary",
    "record_summary",
    "report_dir",
    "run_notebook",
    "run_notebooks",
]

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SUMMARY_MIME = "application/vnd.batch-memory-toolkit.summary+json"
KERNEL_NAME = "python3"  # papermill resolves it to this interpreter's own ipykernel
# What `make run` passes instead of each notebook's CI-sized defaults (the defaults are what nbval runs).
FULL_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_payload_audit": {"TOP_N": 10},
    "01_payload_size_metrics": {"SIZES": [10, 100, 1000, 10_000]},
    "02_compression_ratio_analysis": {
        "SIZES": [10, 100, 1000, 10_000],
        "GZIP_LEVELS": list(range(1, 10)),
        "ZSTD_LEVELS": [1, 3, 9, 19],
    },
    "05_monitoring": {"WINDOW_HOURS": 24},
    "07_throughput": {
        "CONCURRENCY": [1, 4, 16, 40],
        "BATCHES_PER_SUBMITTER": 2,
        "MEMORIES_PER_BATCH": 100,
        "WORKLOAD": "chitchat",
    },
}
_CELL_TIMEOUT_S = 900


def record_summary(summary: Mapping[str, Any]) -> None:
    """Called from a notebook: keep ``summary`` (JSON-able headline figures) in the executed copy."""
    from IPython.display import display

    data = json.loads(json.dumps(dict(summary), default=str))  # fail here, not when reading it back
    text = "\n".join(f"{key}: {value}" for key, value in data.items())
    display({SUMMARY_MIME: data, "text/plain": text}, raw=True)


def read_summary(executed: Path) -> dict[str, Any]:
    """The merged summaries a notebook recorded ({} if none); later records win on the same key."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    summary: dict[str, Any] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if SUMMARY_MIME in data:
                summary.update(data[SUMMARY_MIME])
    return summary


@dataclass
class NotebookRun:
    name: str
    executed: Path
    html: Path | None
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the failing cell's error; the executed copy is still written


def report_dir(reports_root: Path, now: datetime | None = None) -> Path:
    """``<reports_root>/<UTC timestamp>``, e.g. ``reports/20260105T101502Z``; created, never reused."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = reports_root / stamp
    path.mkdir(parents=True, exist_ok=False)
    return path


def _write_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def run_notebook(notebook: Path, out_dir: Path, parameters: Mapping[str, Any] | None = None) -> NotebookRun:
    """Execute one notebook into ``out_dir`` (executed ``.ipynb`` + ``.html``) and read its summary."""
    import papermill

    executed = out_dir / notebook.name
    started = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=dict(parameters or {}),
            kernel_name=KERNEL_NAME,
            cwd=str(notebook.parent),
            progress_bar=False,
            execution_timeout=_CELL_TIMEOUT_S,
        )
    except papermill.PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    seconds = time.perf_counter() - started
    html = _write_html(executed) if executed.exists() else None
    summary = read_summary(executed) if executed.exists() else {}
    return NotebookRun(notebook.stem, executed, html, seconds, summary, error)


def run_notebooks(
    reports_root: Path,
    *,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
) -> tuple[Path, list[NotebookRun]]:
    """Execute every ``NN_*.ipynb`` in ``notebooks_dir`` in order into a new report folder.

    ``parameters`` maps a notebook's stem to its papermill parameters (default: :data:`FULL_PARAMETERS`).
    A failing notebook does not stop the others; its run carries the error.
    """
    chosen = FULL_PARAMETERS if parameters is None else parameters
    notebooks = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {notebooks_dir}")
    out_dir = report_dir(reports_root, now)
    runs = [run_notebook(nb, out_dir, chosen.get(nb.stem)) for nb in notebooks]
    return out_dir, runs


def summary_lines(out_dir: Path, runs: list[NotebookRun]) -> list[str]:
    """What ``make run`` prints: each notebook's outcome and recorded figures, then the folder."""
    lines = []
    for run in runs:
        outcome = "ok" if run.error is None else f"FAILED ({run.error[:200]})"
        lines.append(f"{run.name}: {outcome} in {run.seconds:.0f} s")
        lines.extend(f"    {key}: {_show(value)}" for key, value in run.summary.items())
    lines.append(f"report: {out_dir} ({len(runs)} executed notebooks with HTML copies)")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)

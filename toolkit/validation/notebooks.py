"""Executing the validation notebooks: the records ``make run`` leaves in ``reports/<UTC timestamp>/``.

Each notebook in ``notebooks/`` is a template. A run executes it with papermill (the project's own
kernel, parameters injected after its ``parameters`` cell), writes the executed copy and an HTML copy
next to it, and reads back the ``summary`` the notebook recorded with :func:`record_summary`: a dict
of headline figures, kept in the executed notebook as an output of its own MIME type (the scrapbook
"glue" idea without the dependency). Nothing here knows what a given notebook measures: summaries are
read generically, so a notebook added later shows up in the printed summary by itself. The folder's
``summary.json`` keeps every notebook's outcome, time, parameters and summary for the reports index
(:mod:`toolkit.validation.reports_index`), which every run rebuilds.

The kernel talks to papermill over IPC sockets (files only this user can open), not TCP on localhost:
nothing else on the machine can connect to it, and it has no reason to warn about plain-text TCP. The
HTML copies carry each plot's alternative text (:mod:`toolkit.validation.figures`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from toolkit.settings import REPO_ROOT
from toolkit.validation.figures import ALT_KEY
from toolkit.validation.summaries import SUMMARY_MIME, read_summary, record_summary

__all__ = [
    "FULL_PARAMETERS",
    "NOTEBOOKS_DIR",
    "SUMMARY_MIME",
    "NotebookRun",
    "read_summary",
    "record_summary",
    "report_dir",
    "SUMMARY_FILE",
    "UnknownNotebookParameter",
    "check_known_parameters",
    "run_notebook",
    "run_notebooks",
    "write_run_summary",
]

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "python3"  # papermill resolves it to this interpreter's own ipykernel
SUMMARY_FILE = "summary.json"
# What `make run` passes instead of each notebook's CI-sized defaults (the defaults are what nbval runs):
# the sizes a decision needs. 03 and 04 judge with the default tolerances and as many batches per path as
# the judge computes it needs (capped); 04 goes through every stage; 06 runs the plan's concurrent and
# large scenarios on both paths itself.
FULL_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_payload_audit": {"TOP_N": 10},
    "01_payload_size_metrics": {"SIZES": [10, 100, 1000, 10_000]},
    "02_compression_ratio_analysis": {
        "SIZES": [10, 100, 1000, 10_000],
        "GZIP_LEVELS": list(range(1, 10)),
        "ZSTD_LEVELS": [1, 3, 9, 19],
    },
    "03_canary_comparison": {
        "PILOT_BATCHES": 16,
        "BATCH_SIZES": [10, 20, 30],
        "USERS": 8,
        "MAX_BATCHES_PER_PATH": 80,
    },
    "04_rollout_runbook": {
        "STAGES": [0, 10, 25, 50, 75, 100],
        "TRAFFIC_BATCHES": 16,
        "TRAFFIC_BATCH_SIZES": [10, 20, 30],
        "TRAFFIC_USERS": 8,
        "MAX_BATCHES_PER_PATH": 60,
        "SOAK_S": 0,
    },
    "05_monitoring": {"WINDOW_HOURS": 24},
    "06_load_test_report": {
        "CONCURRENT_USERS": 10,
        "CONCURRENT_BATCH_SIZE": 100,
        "LARGE_BATCH_SIZE": 500,
        "WORKLOAD": "chitchat",
    },
    "07_throughput": {
        "CONCURRENCY": [1, 4, 16, 40],
        "BATCHES_PER_SUBMITTER": 2,
        "MEMORIES_PER_BATCH": 100,
        "WORKLOAD": "chitchat",
    },
}
_CELL_TIMEOUT_S = 900


class UnknownNotebookParameter(ValueError):
    """A parameter the notebook's ``parameters`` cell does not declare (papermill would only warn, and the
    notebook would run at its defaults)."""


def check_known_parameters(notebook: Path, parameters: Mapping[str, Any]) -> None:
    import papermill

    known = set(papermill.inspect_notebook(str(notebook)))
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise UnknownNotebookParameter(
            f"{notebook.name} declares no parameter {', '.join(unknown)}; it takes {', '.join(sorted(known))}"
        )


class IpcKernelManager(AsyncKernelManager):
    """A kernel reached over IPC sockets next to its connection file (mode 0600), not over TCP."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport = "ipc"


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


# The lab template's image block, plus the alternative text the figure helper left in the metadata.
_ALT_TEMPLATE = (
    """{%- extends 'lab/index.html.j2' -%}
{%- block data_png scoped -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
{%- set alt = output | get_metadata('"""
    + ALT_KEY
    + """', 'image/png') -%}
{%- if alt is not none %} alt="{{ alt | escape_html }}"{%- endif %}>
</div>
{%- endblock data_png -%}
"""
)


def _write_html(executed: Path) -> Path:
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        extra_loaders=[jinja2.DictLoader({"with_alt.html.j2": _ALT_TEMPLATE})],
        template_file="with_alt.html.j2",
    )
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
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
            kernel_manager_class=IpcKernelManager,
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


def write_run_summary(
    out_dir: Path, runs: list[NotebookRun], parameters: Mapping[str, Mapping[str, Any]]
) -> Path:
    """``<out_dir>/summary.json``: each notebook's outcome, seconds, parameters and recorded figures."""
    path = out_dir / SUMMARY_FILE
    data = {
        "report": out_dir.name,
        "notebooks": [
            {
                "name": run.name,
                "ok": run.error is None,
                "error": run.error,
                "seconds": round(run.seconds, 1),
                "parameters": dict(parameters.get(run.name) or {}),
                "html": run.html.name if run.html else None,
                "summary": run.summary,
            }
            for run in runs
        ],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def run_notebooks(
    reports_root: Path,
    *,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    parameters: Mapping[str, Mapping[str, Any]] | None = None,
    now: datetime | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, list[NotebookRun]]:
    """Execute every ``NN_*.ipynb`` in ``notebooks_dir`` in order into a new report folder, write its
    ``summary.json``, and rebuild ``<reports_root>/index.html``.

    ``parameters`` maps a notebook's stem to its papermill parameters (default: :data:`FULL_PARAMETERS`).
    A failing notebook does not stop the others; its run carries the error. ``log`` gets a line as
    each notebook starts and ends.
    """
    from toolkit.validation.reports_index import build_index

    chosen = FULL_PARAMETERS if parameters is None else parameters
    notebooks = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {notebooks_dir}")
    for notebook in notebooks:  # a misspelt parameter fails the run before anything runs
        check_known_parameters(notebook, chosen.get(notebook.stem) or {})
    out_dir = report_dir(reports_root, now)
    runs = []
    for number, notebook in enumerate(notebooks, start=1):
        if log is not None:
            log(f"[{number}/{len(notebooks)}] {notebook.stem} ...")
        run = run_notebook(notebook, out_dir, chosen.get(notebook.stem))
        runs.append(run)
        if log is not None:
            log(
                f"[{number}/{len(notebooks)}] {notebook.stem}: {'ok' if run.error is None else 'FAILED'} "
                f"in {run.seconds:.0f} s"
            )
    write_run_summary(out_dir, runs, chosen)
    build_index(reports_root)
    return out_dir, runs


def summary_lines(out_dir: Path, runs: list[NotebookRun]) -> list[str]:
    """What ``make run`` prints: each notebook's outcome and recorded figures, then the folder."""
    lines = []
    for run in runs:
        outcome = "ok" if run.error is None else f"FAILED ({run.error[:200]})"
        lines.append(f"{run.name}: {outcome} in {run.seconds:.0f} s")
        lines.extend(f"    {key}: {_show(value)}" for key, value in run.summary.items())
    lines.append(f"report: {out_dir} ({len(runs)} executed notebooks with HTML copies)")
    lines.append(f"index of every run, with trends: {out_dir.parent / 'index.html'}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)

"""``reports/index.html``: every run of the notebooks, its headline figures and verdicts, and their trends.

Each ``reports/<UTC timestamp>/`` folder is one run (``make run``, ``toolkit notebooks run``); its
``summary.json`` holds what each notebook recorded (:mod:`toolkit.validation.notebooks`; an older folder
without one is read from its executed notebooks). The index lists the runs, newest first, with their
headline figures and verdicts in words and links to every executed notebook, and plots the figures
across runs, so that a regression between two runs shows at a glance: the reference path's history
per batch, the reductions and the compression ratio, the load scenarios' p95 per path, and a grid of
verdicts. Every run rebuilds it; it is self-contained (plots inlined, each with alternative text).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from toolkit.validation.figures import describe_figure, figure_png
from toolkit.validation.summaries import read_summary

__all__ = ["INDEX_FILE", "ReportRun", "build_index", "headline_table", "load_report_runs"]

INDEX_FILE = "index.html"
# Words for verdict-like values: which mean "good", which "bad" (anything else is neither).
GOOD = {"pass", "completed", "ok", "passed", True}
BAD = {"fail", "failed", "rolled back", "rollback failed", "preflight failed", False}


@dataclass(frozen=True)
class ReportRun:
    stamp: str  # the folder name, a UTC timestamp
    path: Path
    notebooks: list[dict[str, Any]]  # name, ok, error, seconds, html, summary

    def summary(self, notebook_prefix: str) -> dict[str, Any]:
        for notebook in self.notebooks:
            if notebook["name"].startswith(notebook_prefix):
                return notebook.get("summary") or {}
        return {}

    @property
    def ok(self) -> str:
        """``5/6``; ``?/6`` for a folder from before summary.json, whose outcomes were not kept."""
        if any(n.get("ok") is None for n in self.notebooks):
            return f"?/{len(self.notebooks)}"
        return f"{sum(1 for n in self.notebooks if n['ok'])}/{len(self.notebooks)}"

    @property
    def seconds(self) -> float:
        return float(sum(n.get("seconds") or 0 for n in self.notebooks))


def _from_executed(folder: Path) -> list[dict[str, Any]]:
    """A folder written before summary.json existed: its executed notebooks' own summaries."""
    notebooks = []
    for executed in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        html = executed.with_suffix(".html")
        notebooks.append(
            {
                "name": executed.stem,
                "ok": None,
                "error": None,
                "seconds": None,
                "html": html.name if html.exists() else None,
                "summary": read_summary(executed),
            }
        )
    return notebooks


def load_report_runs(reports_root: Path) -> list[ReportRun]:
    """Every run folder under ``reports_root``, oldest first."""
    runs = []
    for folder in sorted(p for p in reports_root.glob("[0-9]" * 8 + "T*Z") if p.is_dir()):
        summary = folder / "summary.json"
        if summary.is_file():
            notebooks = json.loads(summary.read_text(encoding="utf-8")).get("notebooks", [])
        else:
            notebooks = _from_executed(folder)
        if notebooks:
            runs.append(ReportRun(folder.name, folder, notebooks))
    return runs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _load_runs(run: ReportRun) -> list[dict[str, Any]]:
    """The load scenarios of notebook 06 (one per scenario and path)."""
    return list(run.summary("06").get("load_runs") or [])


def headline_table(runs: list[ReportRun]) -> pd.DataFrame:
    """One row per run: the figures the index plots and the verdicts it lists."""
    rows = []
    for run in runs:
        payload, compression = run.summary("01"), run.summary("02")
        canary, runbook, monitoring = run.summary("03"), run.summary("04"), run.summary("05")
        row: dict[str, Any] = {
            "run": run.stamp,
            "notebooks_ok": run.ok,
            "minutes": round(run.seconds / 60, 1) if run.seconds else None,
            "reference_history_bytes": _number(payload.get("reference_history_bytes_max")),
            "history_reduction_pct": _number(payload.get("history_reduction_pct")),
            "input_reduction_pct": _number(payload.get("input_reduction_pct")),
            "compression_ratio": _number(compression.get("gate_ratio")),
            "canary_verdict": canary.get("canary_verdict"),
            "canary_detectable_latency_ratio": _number(canary.get("detectable_latency_ratio")),
            "canary_detectable_success_drop_pts": None
            if _number(canary.get("detectable_success_drop")) is None
            else round(100 * float(canary["detectable_success_drop"]), 2),
            "canary_batches_per_path": canary.get("canary_batches"),
            "runbook_outcome": runbook.get("runbook_outcome"),
            "runbook_stages_passed": runbook.get("stages_passed"),
            "storage_worst_day_bytes": _number(monitoring.get("storage_worst_day_bytes")),
        }
        for load in _load_runs(run):
            # A p95 is comparable only at the same batch size: each size is its own series.
            size = f" ×{load['memories_per_batch']}" if load.get("memories_per_batch") else ""
            row[f"load {load['scenario']}{size}/{load['path']} p95_s"] = _number(load.get("p95_s"))
            row[f"load {load['scenario']}/{load['path']}"] = "pass" if load.get("gates_passed") else "fail"
        rows.append(row)
    return pd.DataFrame(rows)


# ---- plots -------------------------------------------------------------------------------------------
def _img(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    text = f"{alt} {describe_figure(fig)}"
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{data}" alt="{escape(text)}">'


def _trend_plots(table: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(table)))
    labels = [stamp[4:8] + " " + stamp[9:13] for stamp in table["run"]]  # MMDD HHMM (UTC)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))

    def series(ax: Any, column: str, label: str, marker: str = "o") -> None:
        if column in table and table[column].notna().any():
            ax.plot(x, table[column], marker=marker, label=label)

    series(axes[0, 0], "reference_history_bytes", "reference path, largest batch of notebook 01")
    axes[0, 0].axhline(10_000, color="red", linestyle=":", label="plan: < 10 KB per batch")
    axes[0, 0].set(title="Workflow history per batch", ylabel="history (bytes)")
    series(axes[0, 1], "history_reduction_pct", "history reduction vs legacy (%)")
    series(axes[0, 1], "input_reduction_pct", "workflow input reduction vs legacy (%)", "s")
    axes[0, 1].axhline(95, color="red", linestyle=":", label="plan: history > 95 % smaller")
    axes[0, 1].set(title="Reduction against the legacy path", ylabel="reduction (%)")
    twin = axes[0, 1].twinx()
    if "compression_ratio" in table and table["compression_ratio"].notna().any():
        twin.plot(x, table["compression_ratio"], marker="^", color="tab:green", label="compression ratio (×)")
    twin.set_ylabel("gzip compression ratio (×), plan > 5×")
    load_columns = [c for c in table.columns if c.startswith("load ") and c.endswith(" p95_s")]
    for column in load_columns:
        series(axes[1, 0], column, column.removeprefix("load ").removesuffix(" p95_s"))
    axes[1, 0].axhline(120, color="red", linestyle=":", label="plan: concurrent p95 < 120 s")
    axes[1, 0].set(title="Load scenarios: p95 end-to-end per path", ylabel="p95 end-to-end (s, log scale)")
    if load_columns:
        axes[1, 0].set_yscale("log")
    series(axes[1, 1], "canary_detectable_latency_ratio", "slowdown it could detect (× median)")
    axes[1, 1].axhline(1.25, color="red", linestyle=":", label="tolerance 1.25×")
    axes[1, 1].set(title="What the canary could detect", ylabel="detectable slowdown (×)")
    twin2 = axes[1, 1].twinx()
    if table.get("canary_detectable_success_drop_pts") is not None:
        twin2.plot(
            x,
            table["canary_detectable_success_drop_pts"],
            marker="s",
            color="tab:purple",
            label="success drop (points)",
        )
    twin2.set_ylabel("detectable success-rate drop (points), tolerance 2")
    for ax in axes.flat:
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.set_xlabel("run (UTC, MMDD HHMM)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for twin_ax in (twin, twin2):
        if twin_ax.get_legend_handles_labels()[0]:
            twin_ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Headline figures across runs")
    fig.tight_layout()
    latest = table.iloc[-1]
    alt = (
        f"{len(table)} runs. Latest: reference history {latest.get('reference_history_bytes')} B, "
        f"history reduction {latest.get('history_reduction_pct')} %, "
        f"compression {latest.get('compression_ratio')}×."
    )
    return _img(fig, alt)


def _all_ok(ok: str) -> str:
    done, total = ok.split("/")
    return "ok" if done == total else ok


def _verdict_grid(table: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    table = table.assign(notebooks=[_all_ok(ok) for ok in table["notebooks_ok"]])
    load_checks = [c for c in table.columns if c.startswith("load ") and not c.endswith("p95_s")]
    checks = ["notebooks", "canary_verdict", "runbook_outcome", *load_checks]
    names = {"notebooks": "notebooks", "canary_verdict": "canary (03)", "runbook_outcome": "runbook (04)"}
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(table) + 3), 0.5 * len(checks) + 1.5))
    for col, (_, row) in enumerate(table.iterrows()):
        for line, check in enumerate(checks):
            value = row.get(check)
            shown = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
            color = "#7fbf7f" if shown in GOOD else "#e07b7b" if shown in BAD else "#d0d0d0"
            ax.add_patch(plt.Rectangle((col, line), 0.95, 0.9, color=color))
            ax.text(col + 0.47, line + 0.45, shown or "—", ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(table))
    ax.set_ylim(0, len(checks))
    ax.set_xticks(
        [i + 0.47 for i in range(len(table))], [s[4:8] + " " + s[9:13] for s in table["run"]], fontsize=8
    )
    ax.set_yticks(
        [i + 0.45 for i in range(len(checks))],
        [names.get(c, c.removeprefix("load ")) for c in checks],
        fontsize=8,
    )
    ax.set(xlabel="run (UTC, MMDD HHMM)", title="Verdicts per run (green good, red bad, grey undecided)")
    ax.invert_yaxis()
    fig.tight_layout()
    latest = table.iloc[-1]
    alt = "Latest run: " + ", ".join(f"{names.get(c, c)} {latest.get(c)}" for c in checks) + "."
    return _img(fig, alt)


# ---- the page ----------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, Mapping):
        return escape(", ".join(f"{k} {v}" for k, v in value.items()))
    return escape(str(value))


def _runs_table(runs: list[ReportRun], table: pd.DataFrame) -> str:
    columns = [c for c in table.columns if c != "run"]
    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in ["run", "notebooks", *columns])
    body = []
    for run, (_, row) in zip(reversed(runs), table.iloc[::-1].iterrows(), strict=True):
        links = " ".join(
            f'<a href="{escape(run.stamp)}/{escape(n["html"])}">{escape(n["name"][:2])}</a>'
            + ("" if n.get("ok") is not False else "&#x2717;")
            for n in run.notebooks
            if n.get("html")
        )
        cells = "".join(f"<td>{_cell(row[c])}</td>" for c in columns)
        body.append(f"<tr><td>{escape(run.stamp)}</td><td>{links}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _latest_words(run: ReportRun) -> str:
    canary, runbook, load = run.summary("03"), run.summary("04"), run.summary("06")
    lines = []
    if canary:
        lines.append(f"Canary: {canary.get('canary_verdict')}. {canary.get('canary_could_detect', '')}")
    if runbook:
        lines.append(f"Runbook: {runbook.get('runbook_outcome')} — {runbook.get('runbook_reason')}")
    for entry in load.get("load_runs") or []:
        lines.append(f"Load {entry['scenario']} on the {entry['path']} path: {entry.get('verdict')}")
    failed = [n["name"] for n in run.notebooks if n.get("ok") is False]
    if failed:
        lines.append(f"Failed notebooks: {', '.join(failed)}")
    return "".join(f"<li>{escape(line)}</li>" for line in lines)


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#eee}td:first-child{text-align:left}img{max-width:100%}"""


def build_index(reports_root: Path) -> Path:
    """Write ``<reports_root>/index.html`` from every run folder there; return its path."""
    runs = load_report_runs(reports_root)
    path = reports_root / INDEX_FILE
    reports_root.mkdir(parents=True, exist_ok=True)
    if not runs:
        path.write_text(
            "<!doctype html><title>Reports</title><p>No runs yet: `make run`.</p>\n", encoding="utf-8"
        )
        return path
    table = headline_table(runs)
    latest = runs[-1]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Batch Memory Toolkit: validation runs</title>
<style>{_STYLE}</style></head><body>
<h1>Validation runs ({len(runs)})</h1>
<h2>Latest: {escape(latest.stamp)}</h2><ul>{_latest_words(latest)}</ul>
<h2>Trends</h2>{_trend_plots(table)}
{_verdict_grid(table)}
<h2>Every run, newest first</h2>{_runs_table(runs, table)}
<p>Each run is a folder <code>reports/&lt;UTC timestamp&gt;/</code> with the executed notebooks (.ipynb,
.html) and <code>summary.json</code>. Figures name their workload in the notebooks; times were measured on
the machine of the run.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path

"""Read a load run back (``reports/load/<scenario>-<UTC timestamp>/``) and judge it against the plan's gates.

The logic behind ``notebooks/06_load_test_report.ipynb``: the notebook only calls these and plots.
The run directory is written by ``loadtests/locustfile.py`` through :mod:`toolkit.validation.load.record`.

Gates (design §7): concurrent 10×100 — every batch succeeds, mean < 60 s, p95 < 120 s; large (500
memories) — completes, under 5 minutes, the worker and API stay under 500 MB; sustained (one batch a
minute for an hour) — every batch completes, no memory growth; stress — each step's success rate and p95
against the run's own gates, the knee being the last step that passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CONCURRENT_MEAN_S = 60.0
CONCURRENT_P95_S = 120.0
LARGE_MAX_S = 300.0
LARGE_MAX_MB = 500.0
# A part "grows" when a straight line through its RSS after warm-up rises faster than this. Garbage
# collectors move RSS by a few MB back and forth; a leak of 10 MB per hour is already worth a look.
LEAK_MB_PER_H = 10.0
LEAK_MIN_SPAN_S = 600.0  # growth is judged over ten minutes or more (the sustained scenario runs an hour)
WARMUP_FRACTION = 0.1  # the first 10% of a run (imports, caches, pools filling) is not judged for growth


class RunNotFound(FileNotFoundError):
    """No run directory where one was looked for."""


@dataclass
class LoadRun:
    path: Path
    info: dict[str, Any]  # run.json
    batches: pd.DataFrame  # batches.csv + elapsed_s (finish, since the run started) and end_to_end_s
    rss: pd.DataFrame  # rss.csv
    stats: pd.DataFrame  # locust_stats.csv
    failures: pd.DataFrame  # locust_failures.csv
    storage: dict[str, Any]
    flags: dict[str, Any]
    steps: pd.DataFrame  # steps.csv (stress only; empty otherwise)
    server: (
        pd.DataFrame
    )  # batches_server.csv: toolkit.validation.metrics.collect_batches rows of this run's batches

    @property
    def scenario(self) -> str:
        return str(self.info["scenario"])

    @property
    def workload(self) -> str:
        return str(self.info["plan"]["workload"])

    @property
    def title(self) -> str:
        plan = self.info["plan"]
        return f"{self.scenario} on path={plan['path']}, {plan['workload']} workload, {self.path.name}"


def run_dirs(root: Path, scenario: str | None = None) -> list[Path]:
    """Run directories under ``root`` that hold a ``run.json``, oldest first (by their UTC timestamp)."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "run.json").is_file()]
    if scenario:
        runs = [p for p in runs if p.name.startswith(f"{scenario}-")]
    return sorted(runs, key=lambda p: (p.name.split("-", 1)[-1], p.name))


def latest_run(root: Path, scenario: str | None = None) -> Path:
    runs = run_dirs(root, scenario)
    if not runs:
        which = f"{scenario} run" if scenario else "load run"
        raise RunNotFound(f"no {which} under {root}: run `make load` first")
    return runs[-1]


def _csv(path: Path, **options: Any) -> pd.DataFrame:
    return pd.read_csv(path, **options) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_run(path: Path) -> LoadRun:
    path = Path(path)
    if not (path / "run.json").is_file():
        raise RunNotFound(f"{path} is not a load run directory (no run.json)")
    info = _json(path / "run.json")
    batches = _csv(path / "batches.csv", dtype={"error": "string", "webhook": "string", "storage": "string"})
    if not batches.empty:
        started = pd.Timestamp(info["started_at"])
        for column in ("submitted_at", "finished_at"):
            batches[column] = pd.to_datetime(batches[column], utc=True, format="ISO8601")
        batches["elapsed_s"] = (batches["finished_at"] - started).dt.total_seconds()
        batches["end_to_end_s"] = batches["end_to_end_ms"] / 1000
        batches["error"] = batches["error"].fillna("").astype(str)
        batches["webhook"] = batches["webhook"].fillna("").astype(str)
        batches["ok"] = batches["error"] == ""
        batches = batches.sort_values("finished_at", ignore_index=True)
    return LoadRun(
        path=path,
        info=info,
        batches=batches,
        rss=_csv(path / "rss.csv"),
        stats=_csv(path / "locust_stats.csv"),
        failures=_csv(path / "locust_failures.csv"),
        storage=_json(path / "storage.json"),
        flags=_json(path / "flags.json"),
        steps=_csv(path / "steps.csv"),
        server=_csv(path / "batches_server.csv"),
    )


# ---- summaries ---------------------------------------------------------------------------------------


def latency_summary(run: LoadRun) -> pd.DataFrame:
    """Per path (and in total): batches, success rate and end-to-end p50/p95/mean/max in seconds."""
    columns = ["storage", "batches", "succeeded", "success_rate_pct", "p50_s", "p95_s", "mean_s", "max_s"]
    if run.batches.empty:
        return pd.DataFrame(columns=columns)
    groups = [(storage, rows) for storage, rows in run.batches.groupby("storage")]
    if len(groups) > 1:
        groups.append(("all", run.batches))
    out = []
    for storage, rows in groups:
        e2e = rows["end_to_end_s"]
        out.append(
            {
                "storage": storage,
                "batches": len(rows),
                "succeeded": int(rows["ok"].sum()),
                "success_rate_pct": round(100.0 * rows["ok"].mean(), 2),
                "p50_s": round(float(e2e.quantile(0.5)), 2),
                "p95_s": round(float(e2e.quantile(0.95)), 2),
                "mean_s": round(float(e2e.mean()), 2),
                "max_s": round(float(e2e.max()), 2),
            }
        )
    return pd.DataFrame(out, columns=columns)


def throughput(run: LoadRun, bin_s: float = 60.0) -> pd.DataFrame:
    """Finished batches and memories per bin of ``bin_s`` seconds (by finish time), failures apart."""
    columns = ["bin_start_s", "batches", "failed_batches", "memories", "memories_per_s"]
    if run.batches.empty:
        return pd.DataFrame(columns=columns)
    b = run.batches
    bins = (b["elapsed_s"] // bin_s * bin_s).rename("bin_start_s")
    grouped = b.groupby(bins)
    out = pd.DataFrame(
        {
            "batches": grouped.size(),
            "failed_batches": grouped["ok"].apply(lambda ok: int((~ok).sum())),
            "memories": b.assign(done=b["successful"].fillna(0)).groupby(bins)["done"].sum().astype(int),
        }
    ).reset_index()
    out["memories_per_s"] = (out["memories"] / bin_s).round(2)
    return out[columns]


def server_summary(run: LoadRun) -> pd.DataFrame:
    """Per path, what Parse and Temporal recorded: workflow input and history size, processing time."""
    columns = [
        "storage",
        "batches",
        "input_bytes",
        "history_bytes_median",
        "history_bytes_max",
        "history_events_median",
        "processing_p50_s",
        "processing_p95_s",
    ]
    if run.server.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for storage, rows in run.server.groupby("storage"):
        processing = rows["processing_ms"].dropna() / 1000
        out.append(
            {
                "storage": storage,
                "batches": len(rows),
                "input_bytes": rows["input_bytes"].median(),
                "history_bytes_median": rows["history_bytes"].median(),
                "history_bytes_max": rows["history_bytes"].max(),
                "history_events_median": rows["history_events"].median(),
                "processing_p50_s": round(float(processing.quantile(0.5)), 2) if len(processing) else None,
                "processing_p95_s": round(float(processing.quantile(0.95)), 2) if len(processing) else None,
            }
        )
    return pd.DataFrame(out, columns=columns)


def failure_reasons(run: LoadRun) -> pd.DataFrame:
    """Failed batches counted by reason (the reason up to its first colon: the low-cardinality part)."""
    if run.batches.empty or run.batches["ok"].all():
        return pd.DataFrame(columns=["reason", "batches"])
    failed = run.batches.loc[~run.batches["ok"], "error"].str.split(":").str[0]
    return failed.value_counts().rename_axis("reason").reset_index(name="batches")


def rss_summary(run: LoadRun, warmup_fraction: float = WARMUP_FRACTION) -> pd.DataFrame:
    """Per sampled part: peak RSS during the run, the process's lifetime peak, and the growth slope.

    The slope is a least-squares line through the RSS samples after the warm-up, in MB per hour; a part
    leaks when it exceeds :data:`LEAK_MB_PER_H`. Judged (``leak`` not None) only over at least
    :data:`LEAK_MIN_SPAN_S` and 3 samples: a minute's jitter extrapolated to an hour says nothing.
    """
    columns = ["part", "samples", "start_mb", "end_mb", "peak_rss_mb", "peak_hwm_mb", "slope_mb_per_h"]
    columns += ["growth_mb", "leak"]
    if run.rss.empty:
        return pd.DataFrame(columns=columns)
    duration = float(run.rss["elapsed_s"].max())
    out = []
    for part, rows in run.rss.groupby("part", sort=False):
        judged = rows[rows["elapsed_s"] >= duration * warmup_fraction]
        slope: float | None = None
        span_s = float(judged["elapsed_s"].max() - judged["elapsed_s"].min()) if len(judged) else 0.0
        if len(judged) >= 3 and span_s >= LEAK_MIN_SPAN_S:
            slope = float(np.polyfit(judged["elapsed_s"] / 3600.0, judged["rss_mb"], 1)[0])
        out.append(
            {
                "part": part,
                "samples": len(rows),
                "start_mb": round(float(rows["rss_mb"].iloc[0]), 1),
                "end_mb": round(float(rows["rss_mb"].iloc[-1]), 1),
                "peak_rss_mb": round(float(rows["rss_mb"].max()), 1),
                "peak_hwm_mb": round(float(rows["hwm_mb"].max()), 1),
                "slope_mb_per_h": None if slope is None else round(slope, 2),
                "growth_mb": None if slope is None else round(slope * span_s / 3600.0, 1),
                "leak": None if slope is None else slope > LEAK_MB_PER_H,
            }
        )
    return pd.DataFrame(out, columns=columns)


def stress_knee(run: LoadRun) -> int | None:
    """The user count of the last stress step that passed its gates; None when even the first failed."""
    if run.steps.empty:
        return None
    passed = run.steps[run.steps["passed"].astype(bool)]
    return int(passed["users"].max()) if not passed.empty else None


def storage_delta(run: LoadRun) -> dict[str, int | None]:
    before, after = run.storage.get("before") or {}, run.storage.get("after") or {}
    keys = ("files", "bytes", "local_files", "local_bytes")
    known = {key for key in keys if after.get(key) is not None and before.get(key) is not None}
    return {key: after[key] - before[key] if key in known else None for key in keys}


# ---- gates and verdicts ------------------------------------------------------------------------------


def _gate(gate: str, target: str, measured: Any, passed: bool) -> dict[str, Any]:
    return {"gate": gate, "target": target, "measured": measured, "passed": bool(passed)}


def gates(run: LoadRun) -> pd.DataFrame:
    """The plan's gates for the run's scenario, each with what was measured and whether it passed."""
    b, rows = run.batches, []
    expected = run.info.get("expected_batches")
    count = len(b)
    success = float(100.0 * b["ok"].mean()) if count else 0.0
    every = _gate(
        "every batch completed",
        f"{expected if expected is not None else 'all'} of {expected if expected is not None else 'all'}",
        f"{int(b['ok'].sum()) if count else 0} of {count}",
        count > 0 and success == 100.0 and (expected is None or count == expected),
    )
    if run.scenario == "concurrent":
        mean = float(b["end_to_end_s"].mean()) if count else float("inf")
        p95 = float(b["end_to_end_s"].quantile(0.95)) if count else float("inf")
        rows += [
            every,
            _gate("mean end-to-end", f"< {CONCURRENT_MEAN_S:g} s", f"{mean:.1f} s", mean < CONCURRENT_MEAN_S),
            _gate("p95 end-to-end", f"< {CONCURRENT_P95_S:g} s", f"{p95:.1f} s", p95 < CONCURRENT_P95_S),
        ]
    elif run.scenario == "large":
        longest = float(b["end_to_end_s"].max()) if count else float("inf")
        rows.append(every)
        rows.append(_gate("end-to-end", f"< {LARGE_MAX_S:g} s", f"{longest:.1f} s", longest < LARGE_MAX_S))
        for part in rss_summary(run).itertuples():
            if part.part == "api" or part.part.startswith("worker"):
                rows.append(
                    _gate(
                        f"{part.part} peak RSS",
                        f"< {LARGE_MAX_MB:g} MB",
                        f"{part.peak_rss_mb:.0f} MB",
                        part.peak_rss_mb < LARGE_MAX_MB,
                    )
                )
    elif run.scenario == "sustained":
        rows.append(every)
        for part in rss_summary(run).itertuples():
            slope = part.slope_mb_per_h
            measured = "n/a (under 10 min of samples)" if slope is None else f"{slope:+.1f} MB/h"
            rows.append(
                _gate(f"{part.part} memory growth", f"< {LEAK_MB_PER_H:g} MB/h", measured, part.leak is False)
            )
    elif run.scenario == "stress":
        plan = run.info["plan"]
        target = f"success >= {plan['gate_success_pct']:g}%, p95 <= {plan['gate_p95_s']:g} s"
        for step in run.steps.itertuples():
            p95 = "n/a" if pd.isna(step.p95_s) else f"{step.p95_s:.1f} s"
            rows.append(
                _gate(
                    f"step {step.step}: {step.users} users",
                    target,
                    f"{step.batches} batches, {step.success_rate:.1f}%, p95 {p95}",
                    bool(step.passed),
                )
            )
    return pd.DataFrame(rows, columns=["gate", "target", "measured", "passed"])


def verdicts(run: LoadRun) -> list[str]:
    """The run's outcome in sentences, for the notebook's last cell."""
    lines = [f"Run {run.title}."]
    table = gates(run)
    if run.scenario == "stress":
        knee = stress_knee(run)
        failed = run.steps[~run.steps["passed"].astype(bool)] if not run.steps.empty else run.steps
        if knee is None:
            lines.append("Stress: even the first step crossed a gate; no knee below it on this machine.")
        elif failed.empty:
            lines.append(f"Stress: every step passed up to {knee} users; the knee lies beyond them.")
        else:
            first = failed.iloc[0]
            lines.append(f"Stress: the knee is at {knee} users; at {first['users']} users {first['reason']}.")
    else:
        bad = table[~table["passed"]]
        if bad.empty:
            lines.append(f"{run.scenario}: every gate passed ({', '.join(table['gate'])}).")
        else:
            for row in bad.itertuples():
                lines.append(f"{run.scenario}: FAILED {row.gate}: {row.measured}, target {row.target}.")
    leaks = rss_summary(run)
    for part in leaks.itertuples():
        if part.leak:
            slope = part.slope_mb_per_h
            lines.append(f"Memory: {part.part} grew {slope:+.1f} MB/h after warm-up (a leak suspect).")
    machine = run.info.get("machine") or {}
    load = (machine.get("load_average") or [None])[0]
    lines.append(
        f"Measured on {machine.get('cpus', '?')} CPUs (load average at start "
        f"{'?' if load is None else f'{load:.1f}'}), {run.workload} workload."
    )
    return lines


# ---- several runs side by side (the plan's scenarios on both paths) ----------------------------------


def latest_runs(root: Path, scenarios: list[str], paths: list[str]) -> list[Path]:
    """The latest recorded run of each scenario on each path (those that exist)."""
    found = []
    for scenario in scenarios:
        for path in paths:
            runs = [p for p in run_dirs(root, scenario) if load_run(p).info["plan"]["path"] == path]
            if runs:
                found.append(runs[-1])
    return found


def _path(run: LoadRun) -> str:
    return str(run.info["plan"]["path"])


def side_by_side(runs: list[LoadRun]) -> pd.DataFrame:
    """One row per scenario and gate, one column pair (measured, passed) per path: the plan's gates for
    every run, read across."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        for gate in gates(run).itertuples():
            row = rows.setdefault((run.scenario, gate.gate), {"scenario": run.scenario, "gate": gate.gate})
            row["target"] = gate.target
            row[f"{_path(run)} measured"] = gate.measured
            row[f"{_path(run)} passed"] = bool(gate.passed)
    return pd.DataFrame(list(rows.values()))


def run_summary(run: LoadRun) -> dict[str, Any]:
    """A run's headline figures, for a notebook's recorded summary and the reports index."""
    b = run.batches
    table = gates(run)
    e2e = b["end_to_end_s"] if len(b) else pd.Series(dtype="float64")
    bad = table[~table["passed"]]
    return {
        "scenario": run.scenario,
        "path": _path(run),
        "workload": run.workload,
        "batches": len(b),
        "completed": int(b["ok"].sum()) if len(b) else 0,
        "memories_per_batch": int(run.info["plan"].get("batch_size") or 0),
        "mean_s": round(float(e2e.mean()), 2) if len(e2e) else None,
        "p95_s": round(float(e2e.quantile(0.95)), 2) if len(e2e) else None,
        "max_s": round(float(e2e.max()), 2) if len(e2e) else None,
        "gates_passed": bool(len(table)) and bad.empty,
        "verdict": "every gate passed"
        if bad.empty
        else "; ".join(f"FAILED {r.gate}: {r.measured}, target {r.target}" for r in bad.itertuples()),
        "run_dir": run.path.name,
    }


def load_gate_failures(runs: list[LoadRun], *, gated_path: str = "reference") -> list[str]:
    """What the notebook's gate refuses: a run in which not every batch completed (either path: a
    baseline that loses batches is no baseline), and any of the plan's gates missed on ``gated_path``
    (the legacy path is the measured baseline; its misses are reported, not gated)."""
    failures = []
    for run in runs:
        label = f"{run.scenario} on the {_path(run)} path ({run.path.name})"
        for gate in gates(run).itertuples():
            if gate.passed:
                continue
            if gate.gate == "every batch completed" or _path(run) == gated_path:
                failures.append(f"{label}: {gate.gate} {gate.measured}, target {gate.target}")
    return failures

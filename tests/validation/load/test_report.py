"""Reading a load run back and judging it: run directories written with toolkit.validation.load.record's own
writers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from toolkit.validation.load import record as load_record
from toolkit.validation.load import report as load_report

STARTED = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def make_run(root: Path, scenario: str, batches: list[dict], **info: object) -> Path:
    path = load_record.new_run_dir(root, scenario, STARTED)
    plan = {"workload": "synthetic", "path": "reference", "gate_success_pct": 95.0, "gate_p95_s": 120.0}
    load_record.write_json(
        path / "run.json",
        {"scenario": scenario, "plan": plan, "started_at": STARTED.isoformat(), **info},
    )
    log = load_record.CsvLog(path / "batches.csv", load_record.BATCH_COLUMNS)
    for i, row in enumerate(batches):
        finished = STARTED + timedelta(seconds=row["end_to_end_ms"] / 1000 + i)
        log.write({"storage": "reference", "submitted_at": STARTED.isoformat(), "error": "", **row,
                   "finished_at": finished.isoformat()})  # fmt: skip
    log.close()
    return path


def write_rss(path: Path, series: dict[str, list[tuple[float, float]]]) -> None:
    log = load_record.CsvLog(path / "rss.csv", load_record.RSS_COLUMNS)
    for part, points in series.items():
        for elapsed, mb in points:
            log.write({"elapsed_s": elapsed, "utc": "", "part": part, "pid": 1, "rss_mb": mb, "hwm_mb": mb})
    log.close()


def test_concurrent_gates_need_every_batch_and_the_latency_bounds(tmp_path: Path) -> None:
    times = [10_000.0 * (i + 1) for i in range(10)]  # 10 s … 100 s: mean 55 s, p95 95.5 s
    run = load_report.load_run(
        make_run(tmp_path, "concurrent", [{"end_to_end_ms": t} for t in times], expected_batches=10)
    )
    table = load_report.gates(run).set_index("gate")
    assert table["passed"].to_dict() == {
        "every batch completed": True,
        "mean end-to-end": True,
        "p95 end-to-end": True,
    }
    assert table.loc["p95 end-to-end", "measured"] == "95.5 s"

    times[-1] = 400_000.0  # one slow batch moves the mean past 60 s and the p95 past 120 s
    failed = [{"end_to_end_ms": t} for t in times[:-1]] + [
        {"end_to_end_ms": times[-1], "error": "ended partial"}
    ]
    run = load_report.load_run(make_run(tmp_path, "concurrent", failed, expected_batches=10))
    assert not load_report.gates(run)["passed"].any()
    assert load_report.latency_summary(run).iloc[0]["success_rate_pct"] == 90.0
    assert load_report.failure_reasons(run).to_dict("records") == [{"reason": "ended partial", "batches": 1}]


def test_leak_check_fits_a_line_after_the_warm_up(tmp_path: Path) -> None:
    path = make_run(tmp_path, "sustained", [{"end_to_end_ms": 1000.0}], expected_batches=1)
    hour = [i * 360.0 for i in range(11)]  # an hour in 6-minute samples
    write_rss(
        path,
        {
            # Warm-up from 60 to 100 MB in the first sample, then flat: no leak.
            "worker": [(t, 60.0 if t == 0 else 100.0) for t in hour],
            # 30 MB per hour, steadily: a leak.
            "api": [(t, 80.0 + 30.0 * t / 3600) for t in hour],
        },
    )
    run = load_report.load_run(path)
    rss = load_report.rss_summary(run).set_index("part")
    assert rss.loc["worker", "slope_mb_per_h"] == 0.0 and not rss.loc["worker", "leak"]
    assert rss.loc["api", "slope_mb_per_h"] == 30.0 and rss.loc["api", "leak"]
    gates = load_report.gates(run).set_index("gate")["passed"].to_dict()
    assert gates == {"every batch completed": True, "worker memory growth": True, "api memory growth": False}


def test_stress_knee_is_the_last_step_that_passed(tmp_path: Path) -> None:
    path = make_run(tmp_path, "stress", [{"end_to_end_ms": 5000.0}])
    log = load_record.CsvLog(path / "steps.csv", load_record.STEP_COLUMNS)
    for step, (users, passed) in enumerate([(10, True), (25, True), (50, False)], start=1):
        log.write({"step": step, "users": users, "batches": 5, "success_rate": 100.0, "p95_s": 9.0,
                   "passed": passed, "reason": "" if passed else "p95 130.0 s > 120 s"})  # fmt: skip
    log.close()
    run = load_report.load_run(path)
    assert load_report.stress_knee(run) == 25
    assert "the knee is at 25 users; at 50 users p95 130.0 s > 120 s" in " ".join(load_report.verdicts(run))


def test_latest_run_goes_by_the_timestamp_in_the_name(tmp_path: Path) -> None:
    with pytest.raises(load_report.RunNotFound):
        load_report.latest_run(tmp_path)
    later = load_record.new_run_dir(tmp_path, "large", STARTED + timedelta(hours=1))
    earlier = load_record.new_run_dir(tmp_path, "concurrent", STARTED)
    again = load_record.new_run_dir(tmp_path, "concurrent", STARTED)  # same second: a suffix, not a clash
    for path in (later, earlier, again):
        load_record.write_json(path / "run.json", {})
    assert again.name == earlier.name + "-1"
    assert load_report.latest_run(tmp_path) == later
    assert load_report.latest_run(tmp_path, "concurrent") == again


def test_rss_log_samples_the_stack_parts_from_their_pid_files(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "api.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "pids" / "worker-2.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "pids" / "postgres.pid").write_text(f"{os.getpid()}\n")  # not a sampled part
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    (tmp_path / "pids" / "parse.pid").write_text(finished.stdout.decode())  # gone: left out
    pids = load_record.sampled_pids(tmp_path)
    assert pids == {"api": os.getpid(), "worker-2": os.getpid()}
    log = load_record.RssLog(tmp_path / "rss.csv", pids, STARTED)
    log.sample(STARTED + timedelta(seconds=2))
    log.close()
    rows = pd.read_csv(tmp_path / "rss.csv")
    assert list(rows["part"]) == ["api", "worker-2"] and list(rows["elapsed_s"]) == [2.0, 2.0]
    assert ((rows["rss_mb"] > 0) & (rows["rss_mb"] <= rows["hwm_mb"]) & (rows["cpu_s"] > 0)).all()

"""reports/index.html from run folders: the runs newest first, their verdicts in words, and trend plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

from toolkit.validation.reports_index import build_index, headline_table, load_report_runs


def run_folder(
    root: Path, stamp: str, *, history: int, canary: str, load_p95: float, failed: str = ""
) -> None:
    folder = root / stamp
    folder.mkdir(parents=True)
    notebooks = {
        "01_payload_size_metrics": {"reference_history_bytes_max": history, "history_reduction_pct": 99.8},
        "02_compression_ratio_analysis": {"gate_ratio": 7.1},
        "03_canary_comparison": {
            "canary_verdict": canary,
            "detectable_latency_ratio": 1.2,
            "detectable_success_drop": 0.016,
            "canary_could_detect": "With 20 canary and 20 baseline batches ...",
        },
        "04_rollout_runbook": {"runbook_outcome": "completed", "runbook_reason": "every stage passed"},
        "06_load_test_report": {
            "load_runs": [
                {"scenario": "concurrent", "path": "reference", "p95_s": load_p95, "gates_passed": True,
                 "verdict": "every gate passed"},
                {"scenario": "concurrent", "path": "legacy", "p95_s": 30.0, "gates_passed": False,
                 "verdict": "FAILED mean end-to-end: 61.0 s, target < 60 s"},
            ]
        },
    }  # fmt: skip
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "report": stamp,
                "notebooks": [
                    {"name": name, "ok": name != failed, "error": None, "seconds": 60.0,
                     "html": f"{name}.html", "summary": summary}
                    for name, summary in notebooks.items()
                ],
            }
        )
    )  # fmt: skip


def test_the_index_lists_every_run_with_its_verdicts_and_plots_the_trends(tmp_path: Path) -> None:
    run_folder(tmp_path, "20260105T101502Z", history=2400, canary="pass", load_p95=2.5)
    run_folder(
        tmp_path,
        "20260106T090000Z",
        history=9800,
        canary="not enough data",
        load_p95=4.0,
        failed="03_canary_comparison",
    )
    (tmp_path / "load").mkdir()  # Locust's records live beside the runs: not a run

    runs = load_report_runs(tmp_path)
    assert [r.stamp for r in runs] == ["20260105T101502Z", "20260106T090000Z"]
    table = headline_table(runs)
    assert table["reference_history_bytes"].tolist() == [2400, 9800]
    assert table["canary_detectable_success_drop_pts"].tolist() == [1.6, 1.6]
    assert table["load concurrent/reference p95_s"].tolist() == [2.5, 4.0]
    assert table["load concurrent/legacy"].tolist() == ["fail", "fail"]
    assert table["notebooks_ok"].tolist() == ["5/5", "4/5"]

    page = build_index(tmp_path).read_text()
    # Newest first, linking each executed notebook; the failed one marked.
    assert page.index("<td>20260106T090000Z</td>") < page.index("<td>20260105T101502Z</td>")
    assert 'href="20260106T090000Z/03_canary_comparison.html"' in page
    assert "03</a>&#x2717;" in page
    # The latest run's verdicts in words.
    assert "Canary: not enough data." in page and "Runbook: completed" in page
    assert "Load concurrent on the legacy path: FAILED mean end-to-end: 61.0 s, target &lt; 60 s" in page
    # Two plots (trends, verdict grid), each with an alternative text naming what it shows.
    images = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)">', page)
    assert len(images) == 2
    assert "Latest: reference history 9800.0 B" in images[0] and "Workflow history per batch" in images[0]
    assert images[1].startswith(
        "Latest run: notebooks 4/5, canary (03) not enough data, runbook (04) completed"
    )


def test_no_runs_yet(tmp_path: Path) -> None:
    assert "No runs yet" in build_index(tmp_path / "reports").read_text()

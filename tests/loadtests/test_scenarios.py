"""Short forms of the four Locust scenarios against the real stack, each Locust in its own process.

Locust patches its process with gevent, so it is never imported here: every run is
``python -m locust -f loadtests/locustfile.py --headless …``
(:func:`toolkit.validation.load.record.run_scenario`), which exits non-zero on any failed batch. The tests
then read the run directory it recorded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from temporalio.client import Client

from tests.fixtures.api_server import ApiServer
from tests.fixtures.second_codec import document_bytes, gzip_size
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.rollout import read_flags
from toolkit.settings import REPO_ROOT, Settings
from toolkit.validation.load import record as load_record
from toolkit.validation.load import report as load_report
from toolkit.validation.notebooks import read_summary
from toolkit.validation.workloads import synthetic_memories

pytestmark = pytest.mark.stack

SHORT = ("--workload", "synthetic", "--job-timeout-s", "180")


@pytest.fixture(scope="module")
def report_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("load-runs")


@pytest.fixture(scope="module")
def load_env(stack_environ: dict[str, str], report_root: Path) -> dict[str, str]:
    return {**stack_environ, "LOAD_REPORT_ROOT": str(report_root)}


def run(scenario: str, root: Path, env: dict[str, str], *options: str) -> load_report.LoadRun:
    done = load_record.run_scenario(scenario, root, *SHORT, *options, env=env, timeout_s=300)
    return load_report.load_run(done.run_dir)


def job_row(loaded: load_report.LoadRun, name: str) -> pd.Series:
    rows = loaded.stats[(loaded.stats["Type"] == "JOB") & (loaded.stats["Name"] == name)]
    assert len(rows) == 1, loaded.stats[["Type", "Name"]]
    return rows.iloc[0]


def stored_bytes(settings: Settings, seeds: range, size: int) -> int:
    """What the reference path stores for the synthetic batches of these seeds, by a second
    implementation of the file format (tests/fixtures/second_codec.py), not by the codec."""
    total = 0
    for seed in seeds:
        memories = synthetic_memories(size, seed=seed)
        items = [MemoryItem.model_validate(m).model_dump(mode="json") for m in memories]
        total += gzip_size(document_bytes(items), settings.gzip_level)
    return total


@pytest.fixture(scope="module")
async def concurrent_run(
    settings: Settings, parse: ParseClient, report_root: Path, load_env: dict[str, str]
) -> tuple[load_report.LoadRun, object, object]:
    before = await read_flags(parse, settings)
    options = ("-u", "3", "--batch-size", "20", "--path", "reference", "--webhooks")
    loaded = run("concurrent", report_root, load_env, *options)
    return loaded, before, await read_flags(parse, settings)


async def test_concurrent_on_the_reference_path_with_verified_webhooks(
    concurrent_run: tuple[load_report.LoadRun, object, object], settings: Settings
) -> None:
    loaded, flags_before, flags_after = concurrent_run
    b = loaded.batches
    assert len(b) == 3 and b["ok"].all(), b[["status", "error"]]
    assert set(b["storage"]) == {"reference"} and set(b["status"]) == {"completed"}
    assert set(b["webhook"]) == {"ok"}  # delivered, in time, and the signature verified
    assert (b["successful"] == 20).all()
    job = job_row(loaded, "reference batch")
    assert (job["Request Count"], job["Failure Count"]) == (3, 0)
    polls = loaded.stats[loaded.stats["Name"] == "/v1/batch/[batch_id]/status"]
    assert len(polls) == 1 and polls.iloc[0]["Request Count"] >= 3  # one grouped row for every poll
    # The flags: everyone on the reference path during the run, as they were afterwards.
    assert loaded.flags["in_force"]["use_parse_batch_storage"] is True
    assert loaded.flags["in_force"]["canary_percent"] == 100
    assert flags_after == flags_before
    # Three new batch files, byte for byte what the codec makes of those memories.
    delta = load_report.storage_delta(loaded)
    expected = stored_bytes(settings, range(3), 20)
    assert (delta["files"], delta["bytes"]) == (3, expected)
    assert (delta["local_files"], delta["local_bytes"]) == (3, expected)
    assert set(loaded.rss["part"]) >= {"worker", "api", "parse"}
    assert (loaded.path / "report.html").stat().st_size > 0
    gates = load_report.gates(loaded).set_index("gate")  # judged, not asserted: speed is no test result
    assert list(gates.index) == ["every batch completed", "mean end-to-end", "p95 end-to-end"]
    assert gates.loc["every batch completed", "passed"]


def test_large_on_the_legacy_path(report_root: Path, load_env: dict[str, str]) -> None:
    loaded = run("large", report_root, load_env, "--batch-size", "60", "--path", "legacy")
    b = loaded.batches
    assert len(b) == 1 and b["ok"].all(), b[["status", "error"]]
    assert (b.iloc[0]["storage"], b.iloc[0]["status"], b.iloc[0]["successful"]) == ("legacy", "completed", 60)
    assert job_row(loaded, "legacy batch")["Failure Count"] == 0
    assert load_report.storage_delta(loaded)["files"] == 0  # the legacy path stores no file
    assert loaded.flags["in_force"]["use_parse_batch_storage"] is False
    gates = set(load_report.gates(loaded)["gate"])
    assert gates >= {"every batch completed", "end-to-end", "worker peak RSS"}


def test_sustained_paces_batches_start_to_start(report_root: Path, load_env: dict[str, str]) -> None:
    loaded = run(
        "sustained",
        report_root,
        load_env,
        "--batch-size",
        "10",
        "--batches-per-user",
        "2",
        "--interval-s",
        "3",
    )
    b = loaded.batches.sort_values("submitted_at")
    assert len(b) == 2 and b["ok"].all(), b[["status", "error"]]
    assert loaded.info["expected_batches"] == 2
    assert (b["submitted_at"].diff().dropna() >= timedelta(seconds=3)).all()
    assert "untouched" not in loaded.flags and loaded.flags["path"] == "current"
    assert {"every batch completed", "worker memory growth"} <= set(load_report.gates(loaded)["gate"])


def test_stress_steps_and_knee(report_root: Path, load_env: dict[str, str]) -> None:
    # A p95 gate no 10-memory batch can cross: the steps are judged on success, so the test is not timed.
    options = ("--batch-size", "10", "--stress-steps", "1,2", "--step-s", "12", "--gate-p95-s", "3600")
    loaded = run("stress", report_root, load_env, *options, "--path", "reference")
    steps = loaded.steps
    assert list(steps["users"]) == [1, 2] and steps["passed"].all(), steps
    assert (steps["batches"] > 0).all()
    assert load_report.stress_knee(loaded) == 2
    assert loaded.batches["ok"].all() and set(loaded.batches["storage"]) == {"reference"}


async def test_a_batch_past_its_time_limit_is_a_failed_job(
    report_root: Path,
    load_env: dict[str, str],
    unpolled_api: ApiServer,
    temporal: Client,
    parse: ParseClient,
) -> None:
    # No worker polls the task queue of this API, so the batch can never be final within the limit,
    # however fast the machine (a real 200-memory batch used to finish within 0.5 s on a quick one).
    env = {**load_env, "TOOLKIT_API_URL": unpolled_api.url}
    done = load_record.run_scenario(
        "concurrent", report_root, "-u", "1", "--batch-size", "5", "--path", "reference",
        "--job-timeout-s", "0.5", "--workload", "synthetic", env=env, check=False, timeout_s=300,
    )  # fmt: skip
    assert done.returncode == 1 and done.run_dir is not None, done.output[-2000:]
    loaded = load_report.load_run(done.run_dir)
    [batch_id] = loaded.batches["batch_id"]
    await temporal.get_workflow_handle(f"batch-{batch_id}").terminate(reason="test: nothing polls it")
    stored = await store.find_batch_request(parse, batch_id)
    assert stored is not None and stored.object_id is not None
    await store.delete_batch_request(parse, stored.object_id)
    assert list(loaded.batches["error"].str.startswith("not final after 0.5 s")) == [True]
    assert list(loaded.batches["status"]) == ["pending"]
    assert job_row(loaded, "reference batch")["Failure Count"] == 1
    assert list(loaded.failures["Error"]) == ["JobFailed('timed out after 0.5 s')"]
    assert not load_report.gates(loaded).set_index("gate").loc["every batch completed", "passed"]


def test_a_bad_option_stops_locust_before_anything_runs(tmp_path: Path, load_env: dict[str, str]) -> None:
    # Every check is unit-tested in tests/loadtests/test_options.py; this is the same through Locust.
    done = load_record.run_scenario("concurrent", tmp_path, "--batch-size", "0", env=load_env, check=False)
    assert done.returncode == 2, done.output[-2000:]
    assert "argument --batch-size: must be at least 1, got 0" in done.output
    assert done.run_dir is None and not any(tmp_path.iterdir())


def test_report_notebook_reads_a_recorded_run(
    concurrent_run: tuple[load_report.LoadRun, object, object], tmp_path: Path, stack_environ: dict[str, str]
) -> None:
    # A root holding only the concurrent run: with MAKE_RUNS=False the notebook reports the latest recorded
    # run of each scenario and path (its default, making the runs itself, is what nbval runs in make test).
    loaded = concurrent_run[0]
    root = tmp_path / "load"
    shutil.copytree(loaded.path, root / loaded.path.name)
    executed = tmp_path / "06.ipynb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(REPO_ROOT / "notebooks" / "06_load_test_report.ipynb"),
            str(executed),
            "-k",
            "python3",
            "-y",
            "{MAKE_RUNS: false, SCENARIOS: [concurrent], PATHS: [reference]}",
        ],
        env={**stack_environ, "LOAD_REPORT_ROOT": str(root)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = read_summary(executed)
    assert [run["run_dir"] for run in summary["load_runs"]] == [loaded.path.name]
    assert summary["load_runs"][0]["completed"] == len(loaded.batches) == 3
    assert (root / loaded.path.name).is_dir()

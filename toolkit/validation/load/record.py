"""What a load run records next to Locust's own stats (issue 9): process memory, batch-file storage, files.

The locustfile (``loadtests/``) calls these; :mod:`toolkit.validation.load.report` reads the run back. Nothing
here imports Locust or gevent, so it is tested with plain pytest.

A run directory ``reports/load/<scenario>-<UTC timestamp>/`` holds:

- ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``,
  ``report.html``: Locust's own output;
- ``batches.csv``: one row per batch, as the simulated user saw it (:data:`BATCH_COLUMNS`);
- ``rss.csv``: resident memory and CPU seconds of the stack's workers, API and Parse, through the run;
- ``storage.json``: the Parse storage used by batch files before and after the run;
- ``flags.json``: the rollout flags before, during and after the run;
- ``run.json``: the scenario, its resolved options, start and end time, the machine;
- ``steps.csv`` (stress only): each step's users, batches, success rate, p95 and whether it passed.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolkit.parse import ParseClient
from toolkit.parse.cleanup import local_files_dir
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.settings import REPO_ROOT, Settings
from toolkit.validation.perf import procstats

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
# The stack's parts whose memory a run samples (pid files in <stack dir>/pids/).
SAMPLED_PARTS = ("worker", "api", "parse")

BATCH_COLUMNS = (
    "batch_id",
    "user",
    "storage",
    "status",
    "total",
    "successful",
    "failed",
    "submitted_at",  # UTC, when the POST was sent
    "finished_at",  # UTC, when the final status was seen (or the user gave up)
    "accepted_ms",  # POST round trip
    "end_to_end_ms",  # submit to final status, as the user saw it (the JOB time)
    "server_end_to_end_ms",  # submit to the completedAt the server recorded
    "webhook",  # "", "ok", "missing", "late" or "bad signature"
    "webhook_delay_ms",  # completedAt to delivery
    "error",  # why the batch counts as failed, "" when it succeeded
)
RSS_COLUMNS = ("elapsed_s", "utc", "part", "pid", "rss_mb", "hwm_mb", "cpu_s")
STEP_COLUMNS = (
    "step",
    "users",
    "started_s",
    "ended_s",
    "batches",
    "success_rate",
    "p95_s",
    "passed",
    "reason",
)

_PAGE = 1000


def utc_stamp(moment: datetime) -> str:
    """The run directory's timestamp: sortable, no characters a shell or Windows minds."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def new_run_dir(root: Path, scenario: str, started: datetime) -> Path:
    """Create ``root/<scenario>-<UTC timestamp>`` (a suffix keeps two runs started in one second apart)."""
    root.mkdir(parents=True, exist_ok=True)
    base = f"{scenario}-{utc_stamp(started)}"
    for attempt in range(100):
        path = root / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free run directory name under {root} for {base}")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def machine() -> dict[str, Any]:
    """What the figures were measured on (every figure needs its machine)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


class CsvLog:
    """Append rows to a CSV with a fixed header, flushed per row so a killed run keeps what it had."""

    def __init__(self, path: Path, columns: Iterable[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ---- process memory ------------------------------------------------------------------------------------


def sampled_pids(stack_dir: Path) -> dict[str, int]:
    """The live parts a run samples (every ``worker*``, the API and Parse), from the stack's pid files."""
    return {
        part: pid
        for part, pid in procstats.stack_pids(stack_dir).items()
        if part in SAMPLED_PARTS or part.startswith("worker")
    }


class RssLog:
    """``rss.csv``: a row per part per sample (toolkit.validation.perf.procstats), with the seconds since the
    run started."""

    def __init__(self, path: Path, pids: Mapping[str, int], started: datetime) -> None:
        self.pids = dict(pids)
        self.started = started
        self._log = CsvLog(path, RSS_COLUMNS)

    def sample(self, now: datetime | None = None) -> list[procstats.ProcSample]:
        now = now or datetime.now(UTC)
        samples = procstats.sample(self.pids)
        for s in samples:
            self._log.write(
                {
                    "elapsed_s": round((now - self.started).total_seconds(), 3),
                    "utc": now.isoformat(),
                    "part": s.part,
                    "pid": s.pid,
                    "rss_mb": round(s.rss_kb / 1024, 3),
                    "hwm_mb": round(s.peak_rss_kb / 1024, 3),
                    "cpu_s": round(s.cpu_s, 2),
                }
            )
        return samples

    def close(self) -> None:
        self._log.close()


# ---- batch-file storage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFileStorage:
    """Parse storage used by batch files.

    ``files``/``bytes`` come from Parse itself (requests that still hold a file, and the compressed sizes
    their metadata records), so they work with any files adapter. ``local_*`` is what the local stack's
    files directory holds on disk (orphans included); None when that directory is not on this machine.
    """

    files: int
    bytes: int
    local_files: int | None
    local_bytes: int | None

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


async def batch_file_storage(settings: Settings) -> BatchFileStorage:
    """Count the batch files in Parse now (master key, paged by objectId, read only).

    Stand-in until ``toolkit.validation.metrics`` ships its storage accounting; the run records the same four
    numbers.
    """
    files = total = 0
    last: str | None = None
    async with ParseClient(settings) as parse:
        while True:
            where: dict[str, Any] = {"batchDataFile": {"$exists": True}}
            if last is not None:
                where["objectId"] = {"$gt": last}
            rows = await parse.find(
                BATCH_MEMORY_REQUEST, where, limit=_PAGE, order="objectId", keys="batchMetadata", master=True
            )
            for row in rows:
                files += 1
                total += int((row.get("batchMetadata") or {}).get("compressed_size_bytes") or 0)
            if len(rows) < _PAGE:
                break
            last = rows[-1]["objectId"]
    local_files = local_bytes = None
    directory = local_files_dir(settings)
    if directory is not None:
        sizes = [p.stat().st_size for p in directory.iterdir() if p.is_file()]
        local_files, local_bytes = len(sizes), sum(sizes)
    return BatchFileStorage(files, total, local_files, local_bytes)


# ---- running a scenario from Python (tests, and notebook 06 when there is no run yet) ------------------


class LoadRunFailed(RuntimeError):
    """Locust exited non-zero; the message ends with the tail of its output."""

    def __init__(self, returncode: int, output: str, run_dir: Path | None) -> None:
        super().__init__(f"locust exited {returncode}:\n{output[-3000:]}")
        self.returncode = returncode
        self.output = output
        self.run_dir = run_dir


@dataclass(frozen=True)
class ScenarioRun:
    returncode: int
    run_dir: Path | None  # None when Locust stopped before recording (e.g. a refused option)
    output: str  # Locust's stdout and stderr


def run_scenario(
    scenario: str,
    report_root: Path,
    *options: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
    check: bool = True,
) -> ScenarioRun:
    """Run ``locust -f loadtests/locustfile.py --headless --scenario …`` in its own process.

    Locust patches its process with gevent, so it never runs inside the caller's. Returns the run
    directory it created under ``report_root``; raises :class:`LoadRunFailed` on a non-zero exit.
    """
    before = set(report_root.iterdir()) if report_root.is_dir() else set()
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    argv += ["--scenario", scenario, "--report-root", str(report_root), *options]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=dict(os.environ if env is None else env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
    )
    created = sorted(set(report_root.iterdir()) - before) if report_root.is_dir() else []
    run_dir = created[-1] if created else None
    if check and (done.returncode != 0 or run_dir is None):
        raise LoadRunFailed(done.returncode, done.stdout, run_dir)
    return ScenarioRun(done.returncode, run_dir, done.stdout)


# ---- the plan's scenarios on both paths, side by side (notebook 06 in `make run`) ----------------------


@dataclass(frozen=True)
class ScenarioSpec:
    """One Locust run: a scenario on one path, with the options that size it."""

    scenario: str
    path: str
    options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.scenario} on the {self.path} path"


def side_by_side_specs(
    scenarios: Sequence[str],
    paths: Sequence[str],
    *,
    concurrent_users: int,
    concurrent_batch_size: int,
    large_batch_size: int,
    workload: str,
    webhooks: bool,
) -> list[ScenarioSpec]:
    """Each of ``scenarios`` (``concurrent``, ``large``) on each of ``paths``, sized as given (the plan:
    10 users × 100 memories, one batch of 500)."""
    sizes = {
        "concurrent": ("-u", str(concurrent_users), "--batch-size", str(concurrent_batch_size)),
        "large": ("--batch-size", str(large_batch_size)),
    }
    unknown = sorted(set(scenarios) - set(sizes))
    if unknown:
        raise ValueError(f"side by side runs only concurrent and large, not {unknown}")
    common = ("--workload", workload, *(("--webhooks",) if webhooks else ()))
    return [
        ScenarioSpec(scenario, path, (*sizes[scenario], "--path", path, *common))
        for scenario in scenarios
        for path in paths
    ]


def run_scenarios(
    specs: Sequence[ScenarioSpec],
    report_root: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> list[ScenarioRun]:
    """Run each spec in turn (each Locust in its own process). A run with failed batches is kept, not
    raised: the report judges it. One that recorded nothing raises :class:`LoadRunFailed`."""
    done = []
    for number, spec in enumerate(specs, start=1):
        if log is not None:
            log(f"[{number}/{len(specs)}] {spec.label}: locust {' '.join(spec.options)} ...")
        started = time.perf_counter()
        run = run_scenario(
            spec.scenario, report_root, *spec.options, env=env, timeout_s=timeout_s, check=False
        )
        if run.run_dir is None:
            raise LoadRunFailed(run.returncode, run.output, None)
        if log is not None:
            outcome = "every batch completed" if run.returncode == 0 else f"locust exited {run.returncode}"
            log(f"[{number}/{len(specs)}] {spec.label}: {outcome} in {time.perf_counter() - started:.0f} s")
        done.append(run)
    return done

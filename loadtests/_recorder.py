"""The run record, written by the master or the local runner: ``reports/load/<scenario>-<UTC timestamp>/``.

Locust's CSV and HTML, one row per batch, RSS and CPU of the stack's processes, batch-file storage before
and after, and the rollout flags (set for ``--path`` at the start, put back at the end, also on SIGTERM or
an interrupted run). The files are described in :mod:`toolkit.validation.load.record`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import gevent
from _plan import Plan
from locust import __version__ as locust_version
from locust.env import Environment
from locust.runners import MasterRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

from toolkit.parse import ParseClient
from toolkit.rollout import FLAGS_TTL_S, RolloutFlags, read_flags, write_flags
from toolkit.settings import Settings
from toolkit.validation.load import record
from toolkit.validation.metrics import collect_batches

T = TypeVar("T")
SERVER_VIEW_TIMEOUT_S = 120.0

_ASYNC_LOCK = threading.Lock()  # patched by gevent: a waiting greenlet lets the others run


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one toolkit coroutine to completion; one event loop at a time in this process.

    Locust has patched the process with gevent: the toolkit's asyncio functions (users, rollout flags,
    storage) run through here, one at a time, never inside a user's HTTP traffic.
    """
    with _ASYNC_LOCK:
        return asyncio.run(make())


class RunRecorder:
    """Writes one run's record; ``finished`` holds ``(monotonic arrival, row)`` of every batch reported."""

    def __init__(self, environment: Environment, plan: Plan, settings: Settings) -> None:
        self.environment = environment
        self.plan = plan
        self.settings = settings
        self.finished: list[tuple[float, dict[str, Any]]] = []
        self.started_mono = time.monotonic()
        self.flags: dict[str, Any] = {}
        self._flags_before: RolloutFlags | None = None
        self._restored = True
        self._greenlets: list[gevent.Greenlet] = []
        self.dir = self._open(environment.parsed_options)
        # Headless Locust installs its own SIGTERM handler only after a shape has finished; until
        # then SIGTERM would kill the run with the flags still set. Stop it the orderly way instead.
        gevent.signal_handler(signal.SIGTERM, self._on_sigterm)

    def _open(self, options: argparse.Namespace) -> Path:
        started = datetime.now(UTC)
        run_dir = record.new_run_dir(Path(self.plan.report_root), self.plan.scenario, started)
        self.run_info: dict[str, Any] = {
            "scenario": self.plan.scenario,
            "plan": asdict(self.plan),
            "expected_batches": self.plan.expected_batches,
            "created_at": started.isoformat(),
            "started_at": started.isoformat(),
            "api_url": self.environment.host,
            "locust": locust_version,
            "machine": record.machine(),
            "distributed": isinstance(self.environment.runner, MasterRunner),
        }
        record.write_json(run_dir / "run.json", self.run_info)
        self.user_html = options.html_file
        if not options.html_file:
            options.html_file = str(run_dir / "report.html")
        self.batches = record.CsvLog(run_dir / "batches.csv", record.BATCH_COLUMNS)
        self.csv_writer = StatsCSVFileWriter(
            self.environment, PERCENTILES_TO_REPORT, str(run_dir / "locust"), full_history=True
        )
        self._greenlets.append(gevent.spawn(self.csv_writer.stats_writer))
        self.steps: record.CsvLog | None = None
        if self.plan.scenario == "stress":
            self.steps = record.CsvLog(run_dir / "steps.csv", record.STEP_COLUMNS)
        return run_dir

    def start(self) -> None:
        """The test starts: storage before, the ``--path`` flags in force, RSS sampling."""
        self.started_mono = time.monotonic()
        started = datetime.now(UTC)
        self.run_info["started_at"] = started.isoformat()  # the test's start: elapsed times count from here
        self.storage_before = run_async(lambda: record.batch_file_storage(self.settings))
        before = run_async(lambda: _read_flags(self.settings))
        self.flags = {"path": self.plan.path, "before": asdict(before)}
        if self.plan.path != "current":
            enabled = self.plan.path == "reference"
            self._flags_before, self._restored = before, False
            run_async(lambda: _write_flags(self.settings, enabled, 100 if enabled else None))
            gevent.sleep(FLAGS_TTL_S + 0.5)  # every API process re-reads the flags within this
        self.flags["in_force"] = asdict(run_async(lambda: _read_flags(self.settings)))
        record.write_json(self.dir / "flags.json", self.flags)
        self.rss = record.RssLog(self.dir / "rss.csv", record.sampled_pids(self.settings.stack_dir), started)
        self.run_info["rss_pids"] = self.rss.pids
        interval = 10.0 if self.plan.scenario == "sustained" else 2.0
        self._greenlets.append(gevent.spawn(self._sample_rss, interval))

    def _sample_rss(self, interval_s: float) -> None:
        while True:
            self.rss.sample()
            gevent.sleep(interval_s)

    def add_batch(self, row: dict[str, Any]) -> None:
        self.finished.append((time.monotonic(), row))
        self.batches.write(row)

    def add_step(self, verdict: dict[str, Any]) -> None:
        if self.steps is not None:
            self.steps.write(verdict)

    def stop(self) -> None:
        """The test stops: flags put back, storage after, the batches as the servers saw them."""
        self._restore_flags()
        self.rss.sample()
        after = run_async(lambda: record.batch_file_storage(self.settings))
        record.write_json(
            self.dir / "storage.json",
            {"before": self.storage_before.as_dict(), "after": after.as_dict()},
        )
        self._write_server_view()

    def _write_server_view(self) -> None:
        """``batches_server.csv``: this run's batches as Parse and Temporal saw them (collect_batches)."""
        ids = {row["batch_id"] for _, row in self.finished if row.get("batch_id")}
        if not ids:
            return
        since = datetime.fromisoformat(self.run_info["started_at"]) - timedelta(seconds=5)
        try:
            frame = run_async(
                lambda: asyncio.wait_for(collect_batches(self.settings, since), SERVER_VIEW_TIMEOUT_S)
            )
        except Exception as exc:  # the record stays useful without it; say why it is missing
            self.run_info["server_view_error"] = f"{type(exc).__name__}: {exc}"
            return
        frame[frame["batch_id"].isin(ids)].to_csv(self.dir / "batches_server.csv", index=False)

    def _on_sigterm(self) -> None:
        logging.getLogger(__name__).warning("SIGTERM: stopping the run, putting the flags back")
        self.environment.runner.quit()

    def _restore_flags(self) -> None:
        if self._restored or self._flags_before is None:
            return
        before = self._flags_before
        run_async(lambda: _write_flags(self.settings, before.use_parse_batch_storage, before.canary_percent))
        self._restored = True
        self.flags["after"] = asdict(run_async(lambda: _read_flags(self.settings)))
        record.write_json(self.dir / "flags.json", self.flags)

    def quit(self, stress_verdicts: list[dict[str, Any]]) -> None:
        """Locust quits: flags put back (an interrupted run too), final CSVs and ``run.json``."""
        self._restore_flags()
        for greenlet in self._greenlets:
            greenlet.kill(block=True)
        _final_csv(self.csv_writer)
        self.batches.close()
        if self.steps is not None:
            self.steps.close()
        if self.user_html and Path(self.user_html).is_file():
            shutil.copy(self.user_html, self.dir / "report.html")
        ended = datetime.now(UTC)
        self.run_info.update(
            ended_at=ended.isoformat(),
            batches_reported=len(self.finished),
            stress_verdicts=stress_verdicts,
        )
        record.write_json(self.dir / "run.json", self.run_info)


def _final_csv(writer: StatsCSVFileWriter) -> None:
    """A last write of Locust's CSV files with the final numbers (its writer runs once a second); close."""
    for handle, header, write_rows in (
        (writer.requests_csv_filehandle, writer.requests_csv_columns, writer._requests_data_rows),
        (writer.failures_csv_filehandle, writer.failures_columns, writer._failures_data_rows),
        (writer.exceptions_csv_filehandle, writer.exceptions_columns, writer._exceptions_data_rows),
    ):
        handle.seek(0)
        handle.truncate()
        out = csv.writer(handle)
        out.writerow(header)
        write_rows(out)
    writer._stats_history_data_rows(writer.stats_history_csv_writer, time.time())
    writer.close_files()


async def _read_flags(settings: Settings) -> RolloutFlags:
    async with ParseClient(settings) as parse:
        return await read_flags(parse, settings)


async def _write_flags(settings: Settings, enabled: bool, percent: int | None) -> RolloutFlags:
    async with ParseClient(settings) as parse:
        return await write_flags(parse, settings, enabled=enabled, percent=percent)

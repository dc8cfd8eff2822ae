"""The machinery behind loadtests/locustfile.py: options, the batch job of one user, the webhook receiver,
and the run record (Locust CSV/HTML, batches, RSS, storage, flags) written by the master or local runner.

Locust has patched the process with gevent before this module is imported: blocking calls here yield to
other users. The toolkit's asyncio functions (users, rollout flags, storage) run through :func:`run_async`,
one at a time, never inside a user's HTTP traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import gevent
from gevent.pywsgi import WSGIServer
from locust import __version__ as locust_version
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter, calculate_response_time_percentile

from toolkit import load_record as record
from toolkit.metrics import collect_batches
from toolkit.parse import ParseClient
from toolkit.parse.models import FINISHED_STATUSES
from toolkit.rollout import FLAGS_TTL_S, RolloutFlags, read_flags, write_flags
from toolkit.settings import Settings, load_settings
from toolkit.users import ParseUser, log_in_or_sign_up
from toolkit.webhooks import SIGNATURE_HEADER, verify_signature
from toolkit.workloads import make_memories

T = TypeVar("T")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Parse call would drown Locust's output

FINAL_STATUSES = frozenset(FINISHED_STATUSES)
STATUS_NAME = "/v1/batch/[batch_id]/status"  # every status poll is one row in the stats
SUBMIT_NAME = "/v1/memory/batch"
POLL_FIRST_S, POLL_MAX_S = 0.25, 2.0  # polling backs off to 2 s: the JOB time is at most ~2 s late
WEBHOOK_GRACE_S = 30.0  # a delivery later than this after completion is "late"
BATCH_MESSAGE = "batch_record"  # worker -> master: one finished batch
SERVER_VIEW_TIMEOUT_S = 120.0
START_BARRIER_S = 120.0  # the longest a logged-in user waits for the others before its first batch


@dataclass(frozen=True)
class Shape:
    """A scenario's defaults; ``batches_per_user=None`` means until the test stops."""

    users: int
    batch_size: int
    batches_per_user: int | None
    interval_s: float


@dataclass(frozen=True)
class Plan:
    """The scenario with every option resolved."""

    scenario: str
    users: int
    batch_size: int
    batches_per_user: int | None
    interval_s: float
    workload: str
    path: str
    webhooks: bool
    job_timeout_s: float
    stress_steps: tuple[int, ...]
    step_s: float
    gate_success_pct: float
    gate_p95_s: float
    report_root: str

    @classmethod
    def resolve(
        cls, options: argparse.Namespace, scenarios: dict[str, Shape], users: int | None, settings: Settings
    ) -> Plan:
        shape = scenarios[options.scenario]
        if options.scenario == "stress":
            users = options.stress_steps[0]
        return cls(
            scenario=options.scenario,
            users=users or shape.users,
            batch_size=options.batch_size or shape.batch_size,
            batches_per_user=options.batches_per_user or shape.batches_per_user,
            interval_s=shape.interval_s if options.interval_s is None else options.interval_s,
            workload=options.workload,
            path=options.path,
            webhooks=bool(options.webhooks),
            job_timeout_s=options.job_timeout_s,
            stress_steps=tuple(options.stress_steps),
            step_s=options.step_s,
            gate_success_pct=options.gate_success_pct,
            gate_p95_s=options.gate_p95_s,
            report_root=options.report_root or str(settings.load_report_root),
        )

    @property
    def expected_batches(self) -> int | None:
        return None if self.batches_per_user is None else self.users * self.batches_per_user

    @property
    def stop_timeout_s(self) -> float:
        # A running batch must be allowed to finish, or it is never recorded.
        return self.job_timeout_s + (WEBHOOK_GRACE_S if self.webhooks else 0) + 10


# ---- asyncio from gevent -------------------------------------------------------------------------------

_ASYNC_LOCK = threading.Lock()  # patched by gevent: a waiting greenlet lets the others run


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one toolkit coroutine to completion; one event loop at a time in this process."""
    with _ASYNC_LOCK:
        return asyncio.run(make())


# ---- the webhook receiver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    received_at: datetime
    signature_valid: bool
    status: str | None


class WebhookReceiver:
    """Receives the batch webhooks on 127.0.0.1 and checks each signature as a real receiver would."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(32)
        self.deliveries: dict[str, list[Delivery]] = {}
        self._server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/batch-webhook"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read()
        header = environ.get("HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_"), "")
        valid = verify_signature(self.secret, header, body)
        try:
            payload = json.loads(body)
            batch_id, status = str(payload["batch_id"]), payload.get("status")
        except (ValueError, KeyError, TypeError):
            batch_id, status = "", None
        self.deliveries.setdefault(batch_id, []).append(Delivery(datetime.now(UTC), valid, status))
        start_response("204 No Content" if valid else "401 Unauthorized", [("Content-Length", "0")])
        return [b""]

    def check(self, batch_id: str, status: str, completed_at: datetime | None) -> tuple[str, float | None]:
        """Wait for the batch's delivery: ``(outcome, delay_ms)``, outcome one of ok, missing, late,
        bad signature, wrong status."""
        reference = completed_at or datetime.now(UTC)
        deadline = time.monotonic() + WEBHOOK_GRACE_S
        while not self.deliveries.get(batch_id) and time.monotonic() < deadline:
            gevent.sleep(0.1)
        deliveries = self.deliveries.get(batch_id)
        if not deliveries:
            return "missing", None
        first = deliveries[0]
        delay_ms = (first.received_at - reference).total_seconds() * 1000
        if not all(d.signature_valid for d in deliveries):
            return "bad signature", delay_ms
        if first.status != status:
            return "wrong status", delay_ms
        if delay_ms > WEBHOOK_GRACE_S * 1000:
            return "late", delay_ms
        return "ok", delay_ms


# ---- one user's batches ------------------------------------------------------------------------------


class JobFailed(Exception):
    """A batch that did not end ``completed`` (the message is the reason; low-cardinality for the stats)."""


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail if detail is not None else response.text[:200])[:300]


class BatchJobs:
    """One simulated user: a real Parse user that submits batches and follows each one to its end."""

    _user_numbers = itertools.count()
    _seeds = itertools.count()

    def __init__(self, user: Any, state: RunState) -> None:
        self.user = user
        self.state = state
        self.plan = state.plan
        runner = user.environment.runner
        worker = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        username = f"load-w{worker}-u{next(self._user_numbers)}"
        # Same names every run, so reruns reuse the accounts and keep their canary buckets.
        password = _derived_password(state.settings, username)
        self.parse_user: ParseUser = run_async(lambda: _log_in(state.settings, username, password))
        state.logged_in += 1
        self.done = 0
        self._last_start: float | None = None

    def wants_more(self) -> bool:
        return self.plan.batches_per_user is None or self.done < self.plan.batches_per_user

    def pause_s(self) -> float:
        """Pacing: ``interval_s`` from one batch's start to the next (idle once the quota is done)."""
        if not self.wants_more():
            return 1.0
        if self._last_start is None:
            return 0.0
        return max(0.0, self.plan.interval_s - (time.monotonic() - self._last_start))

    def run_one(self) -> None:
        if not self.wants_more():
            return
        if self.done == 0:
            self._wait_for_the_others()
        self._last_start = time.monotonic()
        self.done += 1
        row = self._run_batch()
        self.state.report(self.user.environment, row)

    def _wait_for_the_others(self) -> None:
        """Start together: the first batch waits until every user of this process has logged in."""
        runner, deadline = self.user.environment.runner, time.monotonic() + START_BARRIER_S
        while self.state.logged_in < runner.target_user_count and time.monotonic() < deadline:
            gevent.sleep(0.05)

    def _run_batch(self) -> dict[str, Any]:
        plan, client = self.plan, self.user.client
        memories = make_memories(plan.workload, plan.batch_size, seed=next(self._seeds))
        body: dict[str, Any] = {"memories": memories}
        receiver = self.state.receiver
        if receiver is not None:
            body.update(webhook_url=receiver.url, webhook_secret=receiver.secret)
        payload = json.dumps(body).encode()
        headers = {"X-Parse-Session-Token": self.parse_user.session_token, "Content-Type": "application/json"}
        row: dict[str, Any] = {"user": self.parse_user.username, "total": len(memories), "error": ""}
        started_wall, started = datetime.now(UTC), time.monotonic()
        row["submitted_at"] = started_wall.isoformat()
        storage = plan.path if plan.path != "current" else "unknown"
        reason = ""
        with client.post(SUBMIT_NAME, data=payload, headers=headers, catch_response=True) as r:
            row["accepted_ms"] = round((time.monotonic() - started) * 1000, 1)
            if r.status_code != 202:
                reason = f"submit answered HTTP {r.status_code}"
                row["error"] = f"{reason}: {_detail(r)}"
                r.failure(row["error"])
            else:
                accepted = r.json()
        if not reason:
            storage, row["batch_id"] = accepted["storage"], accepted["batch_id"]
            status, reason = self._follow(accepted, headers, started, row)
            elapsed_ms = (time.monotonic() - started) * 1000  # to the final status, not to the webhook
            row.update(
                status=status.get("status", ""),
                successful=status.get("successful", ""),
                failed=status.get("failed", ""),
            )
            completed_at = _parse_time(status.get("completed_at"))
            if completed_at is not None:
                row["server_end_to_end_ms"] = round((completed_at - started_wall).total_seconds() * 1000, 1)
            if plan.path != "current" and storage != plan.path and not reason:
                reason = f"went the {storage} path, not {plan.path}"
                row["error"] = reason
            if receiver is not None and row["status"] in FINAL_STATUSES:
                outcome, delay = receiver.check(row["batch_id"], row["status"], completed_at)
                row["webhook"], row["webhook_delay_ms"] = outcome, "" if delay is None else round(delay, 1)
                if outcome != "ok" and not reason:
                    reason = row["error"] = f"webhook {outcome}"
        else:
            elapsed_ms = (time.monotonic() - started) * 1000
        row.update(storage=storage, end_to_end_ms=round(elapsed_ms, 1))
        row["finished_at"] = datetime.now(UTC).isoformat()
        self.user.environment.events.request.fire(
            request_type="JOB",
            name=f"{storage} batch",
            response_time=elapsed_ms,
            response_length=len(payload),
            exception=JobFailed(reason) if reason else None,
            context={},
            start_time=started_wall.timestamp(),
        )
        return row

    def _follow(
        self, accepted: dict[str, Any], headers: dict[str, str], started: float, row: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """Poll the status until it is final or the job times out: ``(last status, failure reason)``."""
        deadline = started + self.plan.job_timeout_s
        delay, status = POLL_FIRST_S, {"status": accepted.get("status", "pending")}
        while True:
            gevent.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, POLL_MAX_S)
            with self.user.client.get(
                accepted["status_url"], headers=headers, name=STATUS_NAME, catch_response=True
            ) as r:
                if r.status_code == 200:
                    status = r.json()
                elif r.status_code == 404:
                    r.failure("status 404")
                    row["error"] = "status answered 404: the batch is unknown"
                    return status, "status 404"
                else:
                    r.failure(f"status HTTP {r.status_code}")  # transient: keep polling until the deadline
            final = status.get("status")
            if final == "completed":
                return status, ""
            if final in ("partial", "failed"):
                errors = status.get("errors") or [{}]
                row["error"] = (
                    f"ended {final}: {status.get('failed')} of {status.get('total_memories')} failed; "
                    f"first error: {errors[0].get('error', '?')}"
                )[:500]
                return status, f"ended {final}"
            if time.monotonic() >= deadline:
                row["error"] = (
                    f"not final after {self.plan.job_timeout_s:g} s: {final}, "
                    f"{status.get('processed', 0)}/{status.get('total_memories', '?')} processed"
                )
                return status, f"timed out after {self.plan.job_timeout_s:g} s"


def _derived_password(settings: Settings, username: str) -> str:
    key = (settings.parse_master_key or settings.parse_app_id).encode()
    return hmac.new(key, f"load-user:{username}".encode(), hashlib.sha256).hexdigest()


async def _log_in(settings: Settings, username: str, password: str) -> ParseUser:
    async with ParseClient(settings) as parse:
        return await log_in_or_sign_up(parse, username, password)


# ---- the run -----------------------------------------------------------------------------------------


@dataclass
class StressStep:
    index: int = 0
    requested: bool = False  # its user count was handed to Locust
    started: float | None = None  # monotonic, once its users were all running


class RunState:
    """Per process: the plan, settings, webhook receiver; on the master/local runner also the run record."""

    def __init__(self, environment: Environment, scenarios: dict[str, Shape]) -> None:
        options = environment.parsed_options
        self.environment = environment
        self.scenarios = scenarios
        self.settings = load_settings()
        self.plan = Plan.resolve(options, scenarios, options.num_users, self.settings)
        self.receiver: WebhookReceiver | None = None
        self.logged_in = 0  # users of this process that have logged in
        self.is_recorder = not isinstance(environment.runner, WorkerRunner)
        self.finished: list[tuple[float, dict[str, Any]]] = []  # (monotonic arrival, row)
        self.started_mono = time.monotonic()
        self.dir: Path | None = None
        self.flags: dict[str, Any] = {}
        self._flags_before: RolloutFlags | None = None
        self._restored = True
        self._greenlets: list[gevent.Greenlet] = []
        self.stress = StressStep()
        self.step_verdicts: list[dict[str, Any]] = []
        if not environment.host:
            environment.host = self.settings.api_url
        if float(options.stop_timeout or 0) == 0:
            environment.stop_timeout = self.plan.stop_timeout_s
        if self.is_recorder:
            self._open_record(options)
            environment.runner.register_message(BATCH_MESSAGE, self._on_batch)
            # Headless Locust installs its own SIGTERM handler only after a shape has finished; until
            # then SIGTERM would kill the run with the flags still set. Stop it the orderly way instead.
            gevent.signal_handler(signal.SIGTERM, self._on_sigterm)

    # -- every process ------------------------------------------------------------------------------
    def on_test_start(self) -> None:
        options = self.environment.parsed_options
        if not self.is_recorder:  # a worker gets the master's options with its first spawn message
            self.plan = Plan.resolve(options, self.scenarios, None, self.settings)
        if not isinstance(self.environment.runner, MasterRunner):
            make_memories(self.plan.workload, 1)  # load the dataset now, not inside the first user's batch
            if self.plan.webhooks and self.receiver is None:
                self.receiver = WebhookReceiver()
                self.receiver.start()
        if self.is_recorder:
            self._start_record()

    def report(self, environment: Environment, row: dict[str, Any]) -> None:
        environment.runner.send_message(BATCH_MESSAGE, row)

    # -- the recorder (master or local runner) ------------------------------------------------------
    def _open_record(self, options: argparse.Namespace) -> None:
        started = datetime.now(UTC)
        self.dir = record.new_run_dir(Path(self.plan.report_root), self.plan.scenario, started)
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
        record.write_json(self.dir / "run.json", self.run_info)
        self.user_html = options.html_file
        if not options.html_file:
            options.html_file = str(self.dir / "report.html")
        self.batches = record.CsvLog(self.dir / "batches.csv", record.BATCH_COLUMNS)
        self.csv_writer = StatsCSVFileWriter(
            self.environment, PERCENTILES_TO_REPORT, str(self.dir / "locust"), full_history=True
        )
        self._greenlets.append(gevent.spawn(self.csv_writer.stats_writer))
        self.steps: record.CsvLog | None = None
        if self.plan.scenario == "stress":
            self.steps = record.CsvLog(self.dir / "steps.csv", record.STEP_COLUMNS)

    def _start_record(self) -> None:
        assert self.dir is not None
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

    def _on_batch(self, environment: Environment, msg: Any, **_: Any) -> None:
        self.finished.append((time.monotonic(), msg.data))
        self.batches.write(msg.data)

    def on_test_stop(self) -> None:
        if not self.is_recorder or self.dir is None:
            return
        self._restore_flags()
        self.rss.sample()
        after = run_async(lambda: record.batch_file_storage(self.settings))
        record.write_json(
            self.dir / "storage.json",
            {"before": self.storage_before.as_dict(), "after": after.as_dict()},
        )
        self._write_server_view()

    def _write_server_view(self) -> None:
        """``batches_server.csv``: this run's batches as Parse and Temporal saw them (toolkit.metrics)."""
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
        record.write_json(self.dir / "flags.json", self.flags)  # type: ignore[operator]

    def on_quitting(self) -> None:
        if not self.is_recorder or self.dir is None:
            return
        self._restore_flags()  # an interrupted run still puts the flags back
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
            stress_verdicts=self.step_verdicts,
        )
        record.write_json(self.dir / "run.json", self.run_info)

    # -- the shapes ---------------------------------------------------------------------------------
    def fixed_tick(self, run_time: float) -> tuple[int, float] | None:
        """All users at once; stop once every batch has reported, or well past the plan's longest time."""
        plan = self.plan
        expected = plan.expected_batches or 0
        time_cap = (plan.batches_per_user or 1) * plan.interval_s + plan.stop_timeout_s + 60
        if len(self.finished) >= expected or run_time > time_cap:
            return None
        return plan.users, float(plan.users)

    def stress_tick(self) -> tuple[int, float] | None:
        """Step through the user counts; after each step judge the batches that finished during it."""
        plan, step, now = self.plan, self.stress, time.monotonic()
        users = plan.stress_steps[step.index]
        if not step.requested:
            step.requested = True
            return users, float(users)
        if step.started is None:
            if not self._all_running(users):
                return users, float(users)
            step.started = now  # the step's clock starts once its users are spawned and logged in
        if now - step.started < plan.step_s:
            return users, float(users)
        verdict = self._judge_step(step.index + 1, users, step.started, now)
        self.step_verdicts.append(verdict)
        if self.steps is not None:
            self.steps.write(verdict)
        if not verdict["passed"] or step.index + 1 == len(plan.stress_steps):
            return None
        self.stress = StressStep(index=step.index + 1, requested=True)
        following = plan.stress_steps[step.index + 1]
        return following, float(following)

    def _all_running(self, users: int) -> bool:
        runner = self.environment.runner
        # A master does not see its workers' log-ins; their users wait for each other (BatchJobs).
        logged_in = isinstance(runner, MasterRunner) or self.logged_in >= users
        return runner.user_count >= users and logged_in

    def _judge_step(self, number: int, users: int, start: float, end: float) -> dict[str, Any]:
        plan = self.plan
        rows = [r for t, r in self.finished if start <= t < end]
        times = [float(r["end_to_end_ms"]) for r in rows]
        ok = sum(1 for r in rows if not r.get("error"))
        success = 100.0 * ok / len(rows) if rows else 0.0
        p95_s = _p95_ms(times) / 1000 if times else None
        if not rows:
            passed, reason = False, f"no batch finished within the {plan.step_s:g} s step"
        elif success < plan.gate_success_pct:
            passed, reason = False, f"success {success:.1f}% < {plan.gate_success_pct:g}%"
        elif p95_s is not None and p95_s > plan.gate_p95_s:
            passed, reason = False, f"p95 {p95_s:.1f} s > {plan.gate_p95_s:g} s"
        else:
            passed, reason = True, ""
        return {
            "step": number,
            "users": users,
            "started_s": round(start - self.started_mono, 1),
            "ended_s": round(end - self.started_mono, 1),
            "batches": len(rows),
            "success_rate": round(success, 2),
            "p95_s": None if p95_s is None else round(p95_s, 2),
            "passed": passed,
            "reason": reason,
        }


def _p95_ms(times: list[float]) -> float:
    histogram: dict[int, int] = {}
    for t in times:
        histogram[round(t)] = histogram.get(round(t), 0) + 1
    return float(calculate_response_time_percentile(histogram, len(times), 0.95))


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

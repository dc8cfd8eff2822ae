"""Load scenarios for the batch API: concurrent, large, sustained and stress, on either path.

    locust -f loadtests/locustfile.py --headless --scenario concurrent [--path reference] [--webhooks]

Each simulated user is a real Parse user (logged in, or signed up, on start). It submits batches of real
memories to ``POST /v1/memory/batch``, polls ``GET /v1/batch/{id}/status`` (one row in the stats), and
reports every batch's end-to-end time as a ``JOB`` event named after its path; a batch that ends
``partial`` or ``failed``, times out, or (with ``--webhooks``) whose signed webhook is missing, late or
badly signed is a failure with the reason.

Beside this file: ``_options.py`` (the command-line options and their checks), ``_plan.py`` (a
scenario's resolved plan), ``_run.py`` (what each Locust process keeps), ``_recorder.py`` (the run
record in ``reports/load/<scenario>-<UTC timestamp>/``, which ``notebooks/06_load_test_report.ipynb``
reads), ``_stress.py`` (the load shapes and the stress verdicts) and ``_webhooks.py`` (the receiver
that checks every delivery). Options: ``locust -f loadtests/locustfile.py --help``.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from typing import Any

import gevent
from _options import add_options
from _plan import Shape
from _run import RunState
from locust import HttpUser, LoadTestShape, events, task
from locust.runners import WorkerRunner

from toolkit.parse.models import FINISHED_STATUSES
from toolkit.validation.workloads import make_memories

# The plan's shapes; --batch-size, --batches-per-user, --interval-s and -u override them.
SCENARIOS = {
    # 10 users, one 100-memory batch each, all at once.
    "concurrent": Shape(users=10, batch_size=100, batches_per_user=1, interval_s=0),
    # One 500-memory batch.
    "large": Shape(users=1, batch_size=500, batches_per_user=1, interval_s=0),
    # One batch a minute for an hour.
    "sustained": Shape(users=1, batch_size=100, batches_per_user=60, interval_s=60),
    # Users ramp through --stress-steps (10, 25, 50, 100), each for --step-s, back to back, until a
    # step's success rate or p95 crosses its gate: the last step that passed is the path's knee.
    "stress": Shape(users=10, batch_size=100, batches_per_user=None, interval_s=0),
}

SUBMIT_NAME = "/v1/memory/batch"
STATUS_NAME = "/v1/batch/[batch_id]/status"  # every status poll is one row in the stats
POLL_FIRST_S, POLL_MAX_S = 0.25, 2.0  # polling backs off to 2 s: the JOB time is at most ~2 s late
START_BARRIER_S = 120.0  # the longest a logged-in user waits for the others before its first batch

state: RunState | None = None


class JobFailed(Exception):
    """A batch that did not end ``completed`` (the message is the reason; low-cardinality for the stats)."""


class BatchUser(HttpUser):
    """A real Parse user that submits batches and follows each one to its end."""

    _numbers = itertools.count()
    _seeds = itertools.count()

    def on_start(self) -> None:
        assert state is not None
        self.state, self.plan = state, state.plan
        runner = self.environment.runner
        worker = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        self.parse_user = state.log_in(f"load-w{worker}-u{next(self._numbers)}")
        self.headers = {
            "X-Parse-Session-Token": self.parse_user.session_token,
            "Content-Type": "application/json",
        }
        self.done = 0
        self.last_start: float | None = None

    def wait_time(self) -> float:
        """Pacing: ``--interval-s`` from one batch's start to the next (idle once the quota is done)."""
        if not self.wants_more():
            return 1.0
        if self.last_start is None:
            return 0.0
        return max(0.0, self.plan.interval_s - (time.monotonic() - self.last_start))

    def wants_more(self) -> bool:
        return self.plan.batches_per_user is None or self.done < self.plan.batches_per_user

    @task
    def one_batch(self) -> None:
        if not self.wants_more():
            return
        if self.done == 0:
            self.wait_for_the_others()
        self.last_start = time.monotonic()
        self.done += 1

        memories = make_memories(self.plan.workload, self.plan.batch_size, seed=next(self._seeds))
        body: dict[str, Any] = {"memories": memories}
        webhooks = self.state.webhooks
        if webhooks is not None:
            body.update(webhook_url=webhooks.url, webhook_secret=webhooks.secret)
        payload = json.dumps(body).encode()
        row: dict[str, Any] = {"user": self.parse_user.username, "total": len(memories), "error": ""}
        started_wall, started = datetime.now(UTC), time.monotonic()
        row["submitted_at"] = started_wall.isoformat()
        storage = self.plan.path if self.plan.path != "current" else "unknown"

        # 1. Submit.
        accepted, reason = self.submit(payload, row, started)
        if accepted is not None:
            storage, row["batch_id"] = accepted["storage"], accepted["batch_id"]
            # 2. Poll the status until it is final (or the job's time is up).
            status, reason = self.poll_until_final(accepted, started, row)
            elapsed_ms = (time.monotonic() - started) * 1000  # to the final status, not to the webhook
            row.update(
                status=status.get("status", ""),
                successful=status.get("successful", ""),
                failed=status.get("failed", ""),
            )
            completed_at = _parse_time(status.get("completed_at"))
            if completed_at is not None:
                row["server_end_to_end_ms"] = round((completed_at - started_wall).total_seconds() * 1000, 1)
            # 3. Check it went the path asked for, and its webhook.
            if self.plan.path != "current" and storage != self.plan.path and not reason:
                reason = row["error"] = f"went the {storage} path, not {self.plan.path}"
            if webhooks is not None and row["status"] in FINISHED_STATUSES:
                outcome, delay = webhooks.outcome(row["batch_id"], row["status"], completed_at)
                row["webhook"], row["webhook_delay_ms"] = outcome, "" if delay is None else round(delay, 1)
                if outcome != "ok" and not reason:
                    reason = row["error"] = f"webhook {outcome}"
        else:
            elapsed_ms = (time.monotonic() - started) * 1000

        # 4. Report the batch: one JOB event in Locust's stats, one row in the run record.
        row.update(
            storage=storage, end_to_end_ms=round(elapsed_ms, 1), finished_at=datetime.now(UTC).isoformat()
        )
        self.environment.events.request.fire(
            request_type="JOB",
            name=f"{storage} batch",
            response_time=elapsed_ms,
            response_length=len(payload),
            exception=JobFailed(reason) if reason else None,
            context={},
            start_time=started_wall.timestamp(),
        )
        self.state.report(row)

    def submit(
        self, payload: bytes, row: dict[str, Any], started: float
    ) -> tuple[dict[str, Any] | None, str]:
        """POST the batch: ``(the 202 answer, "")``, or ``(None, the failure reason)``."""
        with self.client.post(SUBMIT_NAME, data=payload, headers=self.headers, catch_response=True) as r:
            row["accepted_ms"] = round((time.monotonic() - started) * 1000, 1)
            if r.status_code == 202:
                return r.json(), ""
            reason = f"submit answered HTTP {r.status_code}"
            row["error"] = f"{reason}: {_detail(r)}"
            r.failure(row["error"])
            return None, reason

    def poll_until_final(
        self, accepted: dict[str, Any], started: float, row: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """Poll the status until it is final or the job times out: ``(last status, failure reason)``."""
        deadline = started + self.plan.job_timeout_s
        delay, status = POLL_FIRST_S, {"status": accepted.get("status", "pending")}
        while True:
            gevent.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, POLL_MAX_S)
            with self.client.get(
                accepted["status_url"], headers=self.headers, name=STATUS_NAME, catch_response=True
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

    def wait_for_the_others(self) -> None:
        """Start together: the first batch waits until every user of this process has logged in."""
        runner, deadline = self.environment.runner, time.monotonic() + START_BARRIER_S
        while self.state.logged_in < runner.target_user_count and time.monotonic() < deadline:
            gevent.sleep(0.05)


class ScenarioShape(LoadTestShape):
    use_common_options = True  # -u sets the users of the fixed shapes

    def tick(self) -> tuple[int, float] | None:
        assert state is not None
        return state.tick(self.get_run_time())


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


# ---- Locust's events: set up each process, record the run ------------------------------------------------


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    add_options(parser, SCENARIOS)


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    global state
    state = RunState(environment, SCENARIOS)


@events.test_start.add_listener
def _on_test_start(**_: Any) -> None:
    assert state is not None
    state.on_test_start()  # the --path flags, storage before, RSS sampling


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    assert state is not None
    state.on_test_stop()  # flags put back, storage after


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    assert state is not None
    state.on_quitting()  # final CSVs and run.json

"""Load scenarios for the batch API: concurrent, large, sustained and stress, on either path (issue 9).

    locust -f loadtests/locustfile.py --headless --scenario concurrent [--path reference] [--webhooks]

Each simulated user is a real Parse user (logged in, or signed up, on start). It submits batches of real
memories to ``POST /v1/memory/batch``, polls ``GET /v1/batch/{id}/status`` (one row in the stats), and
reports every batch's end-to-end time as a ``JOB`` event named after its path; a batch that ends
``partial`` or ``failed``, times out, or (with ``--webhooks``) whose signed webhook is missing, late or
badly signed is a failure with the reason.

Every run is recorded in ``reports/load/<scenario>-<UTC timestamp>/`` (Locust CSV and HTML, one row per
batch, RSS of the stack's worker, API and Parse, batch-file storage before and after, the rollout flags):
``notebooks/06_load_test_report.ipynb`` reads it. Options: ``locust -f loadtests/locustfile.py --help``.
"""

from __future__ import annotations

from typing import Any

import _support as load  # next to this file (Locust puts the locustfile's folder on sys.path)
from _options import add_options
from locust import HttpUser, LoadTestShape, events, task

# The plan's shapes; --batch-size, --batches-per-user, --interval-s and -u override them.
SCENARIOS = {
    # 10 users, one 100-memory batch each, all at once.
    "concurrent": load.Shape(users=10, batch_size=100, batches_per_user=1, interval_s=0),
    # One 500-memory batch.
    "large": load.Shape(users=1, batch_size=500, batches_per_user=1, interval_s=0),
    # One batch a minute for an hour.
    "sustained": load.Shape(users=1, batch_size=100, batches_per_user=60, interval_s=60),
    # Users ramp through --stress-steps (10, 25, 50, 100), each for --step-s, back to back, until a
    # step's success rate or p95 crosses its gate: the last step that passed is the path's knee.
    "stress": load.Shape(users=10, batch_size=100, batches_per_user=None, interval_s=0),
}

state: load.RunState | None = None


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    add_options(parser, SCENARIOS)


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    global state
    state = load.RunState(environment, SCENARIOS)


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


class BatchUser(HttpUser):
    def on_start(self) -> None:
        assert state is not None
        self.jobs = load.BatchJobs(self, state)

    def wait_time(self) -> float:
        return self.jobs.pause_s()

    @task
    def one_batch(self) -> None:
        self.jobs.run_one()


class ScenarioShape(LoadTestShape):
    use_common_options = True  # -u sets the users of the fixed shapes

    def tick(self) -> tuple[int, float] | None:
        assert state is not None
        if state.plan.scenario == "stress":
            return state.stress_tick()
        return state.fixed_tick(self.get_run_time())

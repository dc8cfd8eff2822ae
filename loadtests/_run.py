"""What each Locust process keeps for the run: the plan, the settings, the webhook receiver, the users
logged in, and on the master or local runner the recorder and the load shape's state."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from _plan import Plan, Shape
from _recorder import RunRecorder, run_async
from _stress import StressSteps, fixed_tick
from _webhooks import WebhookCheck
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser, log_in_or_sign_up
from toolkit.settings import Settings, load_settings
from toolkit.validation.workloads import make_memories

BATCH_MESSAGE = "batch_record"  # worker -> master: one finished batch


class RunState:
    def __init__(self, environment: Environment, scenarios: dict[str, Shape]) -> None:
        options = environment.parsed_options
        self.environment = environment
        self.scenarios = scenarios
        self.settings = load_settings()
        self.plan = Plan.resolve(options, scenarios, options.num_users, self.settings)
        self.webhooks: WebhookCheck | None = None
        self.logged_in = 0  # users of this process that have logged in
        self.recorder: RunRecorder | None = None
        self.stress = StressSteps(self.plan)
        if not environment.host:
            environment.host = self.settings.api_url
        if float(options.stop_timeout or 0) == 0:
            environment.stop_timeout = self.plan.stop_timeout_s
        if not isinstance(environment.runner, WorkerRunner):
            self.recorder = RunRecorder(environment, self.plan, self.settings)
            environment.runner.register_message(BATCH_MESSAGE, self._on_batch)

    def _on_batch(self, environment: Environment, msg: Any, **_: Any) -> None:
        assert self.recorder is not None
        self.recorder.add_batch(msg.data)

    def on_test_start(self) -> None:
        if self.recorder is None:  # a worker gets the master's options with its first spawn message
            self.plan = Plan.resolve(self.environment.parsed_options, self.scenarios, None, self.settings)
        if not isinstance(self.environment.runner, MasterRunner):
            make_memories(self.plan.workload, 1)  # load the dataset now, not inside the first user's batch
            if self.plan.webhooks and self.webhooks is None:
                self.webhooks = WebhookCheck()
                self.webhooks.start()
        if self.recorder is not None:
            self.recorder.start()

    def on_test_stop(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()

    def on_quitting(self) -> None:
        if self.recorder is not None:
            self.recorder.quit(self.stress.verdicts)

    def report(self, row: dict[str, Any]) -> None:
        """Hand one finished batch to the recorder (through the master when distributed)."""
        self.environment.runner.send_message(BATCH_MESSAGE, row)

    def log_in(self, username: str) -> ParseUser:
        """Log the load user in (signed up the first time): same names and passwords on every run, so
        reruns reuse the accounts and keep their canary buckets."""
        settings = self.settings
        password = _derived_password(settings, username)
        user = run_async(lambda: _log_in(settings, username, password))
        self.logged_in += 1
        return user

    # -- the load shape (master or local runner) ----------------------------------------------------
    def tick(self, run_time: float) -> tuple[int, float] | None:
        assert self.recorder is not None
        finished = self.recorder.finished
        if self.plan.scenario != "stress":
            return fixed_tick(self.plan, len(finished), run_time)
        shape, verdict = self.stress.tick(self._all_running, finished, self.recorder.started_mono)
        if verdict is not None:
            self.recorder.add_step(verdict)
        return shape

    def _all_running(self, users: int) -> bool:
        runner = self.environment.runner
        # A master does not see its workers' log-ins; their users wait for each other (BatchUser).
        logged_in = isinstance(runner, MasterRunner) or self.logged_in >= users
        return runner.user_count >= users and logged_in


def _derived_password(settings: Settings, username: str) -> str:
    key = (settings.parse_master_key or settings.parse_app_id).encode()
    return hmac.new(key, f"load-user:{username}".encode(), hashlib.sha256).hexdigest()


async def _log_in(settings: Settings, username: str, password: str) -> ParseUser:
    async with ParseClient(settings) as parse:
        return await log_in_or_sign_up(parse, username, password)

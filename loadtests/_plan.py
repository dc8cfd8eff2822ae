"""A scenario's shape and the plan it resolves to once the command-line options are applied.

No Locust import: the plan is plain data, unit-tested with pytest.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from toolkit.settings import Settings

WEBHOOK_GRACE_S = 30.0  # a delivery later than this after completion is "late"


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

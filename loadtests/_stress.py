"""The load shapes: the fixed scenarios (all users at once) and the stress stepping with its per-step verdict.

Stress ramps users through ``--stress-steps``, each step for ``--step-s`` once its users are running, and
judges the batches that finished during the step against ``--gate-success-pct`` and ``--gate-p95-s``.
The first step that fails ends the run; the last step that passed is the path's knee.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _plan import Plan
from locust.stats import calculate_response_time_percentile


def fixed_tick(plan: Plan, finished: int, run_time: float) -> tuple[int, float] | None:
    """All users at once; stop once every batch has reported, or well past the plan's longest time."""
    expected = plan.expected_batches or 0
    time_cap = (plan.batches_per_user or 1) * plan.interval_s + plan.stop_timeout_s + 60
    if finished >= expected or run_time > time_cap:
        return None
    return plan.users, float(plan.users)


@dataclass
class _Step:
    index: int = 0
    requested: bool = False  # its user count was handed to Locust
    started: float | None = None  # monotonic, once its users were all running


@dataclass
class StressSteps:
    """Where the stress ramp is, and the verdict of every step judged so far."""

    plan: Plan
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    _step: _Step = field(default_factory=_Step)

    def tick(
        self,
        all_running: Callable[[int], bool],
        finished: list[tuple[float, dict[str, Any]]],
        run_started: float,
    ) -> tuple[tuple[int, float] | None, dict[str, Any] | None]:
        """``(users and spawn rate, or None to stop; the verdict of a step that just ended, if any)``.

        ``all_running(n)`` says whether ``n`` users are spawned and logged in; ``finished`` holds ``(monotonic
        arrival, batch row)`` of every batch reported so far; ``run_started`` is the run's monotonic start,
        from which a verdict's times count.
        """
        plan, step, now = self.plan, self._step, time.monotonic()
        users = plan.stress_steps[step.index]
        if not step.requested:
            step.requested = True
            return (users, float(users)), None
        if step.started is None:
            if not all_running(users):
                return (users, float(users)), None
            step.started = now  # the step's clock starts once its users are spawned and logged in
        if now - step.started < plan.step_s:
            return (users, float(users)), None
        verdict = self._judge(step.index + 1, users, step.started, now, finished, run_started)
        self.verdicts.append(verdict)
        if not verdict["passed"] or step.index + 1 == len(plan.stress_steps):
            return None, verdict
        self._step = _Step(index=step.index + 1, requested=True)
        following = plan.stress_steps[step.index + 1]
        return (following, float(following)), verdict

    def _judge(
        self,
        number: int,
        users: int,
        start: float,
        end: float,
        finished: list[tuple[float, dict[str, Any]]],
        run_started: float,
    ) -> dict[str, Any]:
        plan = self.plan
        rows = [r for t, r in finished if start <= t < end]
        times = [float(r["end_to_end_ms"]) for r in rows]
        ok = sum(1 for r in rows if not r.get("error"))
        success = 100.0 * ok / len(rows) if rows else 0.0
        p95_s = p95_ms(times) / 1000 if times else None
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
            "started_s": round(start - run_started, 1),
            "ended_s": round(end - run_started, 1),
            "batches": len(rows),
            "success_rate": round(success, 2),
            "p95_s": None if p95_s is None else round(p95_s, 2),
            "passed": passed,
            "reason": reason,
        }


def p95_ms(times: list[float]) -> float:
    """The 95th percentile as Locust computes it for its own stats (rounded to whole milliseconds)."""
    histogram: dict[int, int] = {}
    for t in times:
        histogram[round(t)] = histogram.get(round(t), 0) + 1
    return float(calculate_response_time_percentile(histogram, len(times), 0.95))

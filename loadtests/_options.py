"""The locustfile's own command-line options and their checks (no Locust import: unit-tested with pytest).

Locust's parser is argparse, so a bad value stops Locust before anything runs: exit 2 and the reason.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from toolkit.validation.workloads import WORKLOADS

PATHS = ("reference", "legacy", "current")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(minimum: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if value != value or value < minimum or (strict and value == minimum):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _steps(text: str) -> tuple[int, ...]:
    steps = tuple(_positive_int(part.strip()) for part in text.split(","))
    if list(steps) != sorted(set(steps)):
        raise argparse.ArgumentTypeError(f"user counts must rise, got {text!r}")
    return steps


def _percent(text: str) -> float:
    value = _seconds(0, strict=False)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be at most 100, got {text}")
    return value


def add_options(parser: Any, scenarios: Iterable[str]) -> None:
    """The locustfile's own options (Locust's parser is argparse: a bad value exits 2 with the reason)."""
    parser.add_argument("--scenario", choices=sorted(scenarios), default="concurrent", help="load shape")
    parser.add_argument(
        "--path",
        choices=PATHS,
        default="current",
        help="rollout flags for the run: everyone on the reference or legacy path, or leave them as they are",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="chitchat", help="memories to send")
    parser.add_argument("--batch-size", type=_positive_int, help="memories per batch (scenario default)")
    parser.add_argument("--batches-per-user", type=_positive_int, help="batches each user submits")
    parser.add_argument("--interval-s", type=_seconds(0, False), help="seconds between batch starts")
    parser.add_argument("--webhooks", action="store_true", help="signed webhook per batch, verified")
    parser.add_argument("--job-timeout-s", type=_seconds(0, True), default=600.0, help="a batch's time limit")
    parser.add_argument("--stress-steps", type=_steps, default=(10, 25, 50, 100), help="stress: users/step")
    parser.add_argument("--step-s", type=_seconds(0, True), default=180.0, help="stress: seconds per step")
    parser.add_argument("--gate-success-pct", type=_percent, default=95.0, help="stress: success rate gate")
    parser.add_argument("--gate-p95-s", type=_seconds(0, True), default=120.0, help="stress: p95 gate (s)")
    parser.add_argument("--report-root", help="run records (default LOAD_REPORT_ROOT, reports/load)")

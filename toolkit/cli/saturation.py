"""``toolkit saturation``: many batches at once on both paths, beside writing directly, in one run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from toolkit.parse.errors import ParseError
from toolkit.settings import Settings
from toolkit.validation.perf import profile
from toolkit.validation.perf.saturation import (
    MAX_BATCHES_PER_SUBMITTER,
    MAX_SUBMITTERS,
    PlanError,
    Round,
    SaturationError,
    SaturationPlan,
    check_batch_size,
    format_counts,
    format_header,
    format_row,
    format_warnings,
    measure_saturation,
)
from toolkit.validation.perf.scale_out import MAX_WORKERS
from toolkit.validation.perf.server_counts import CountsUnavailable
from toolkit.validation.perf.variants import RunningVariant, VariantError
from toolkit.validation.traffic import NotEnoughUsers

# The plan's fields by the options that set them, so an error names what the user typed.
OPTIONS = {
    "concurrency": "--concurrency",
    "paths": "--paths",
    "webhook_paths": "--webhook-paths",
    "batches_per_submitter": "--batches",
    "memories_per_batch": "--memories",
    "poll_interval_s": "--poll-interval",
    "workers": "--workers",
    "memories_per_round": "the highest --concurrency × --batches × --memories",
}


def _shown(value: object) -> str:
    """A refused value as it was typed: ``nan``, ``0``, ``-1.5``, ``reference other``."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_parser(sub: Any, func: Callable[[argparse.Namespace, Settings], int]) -> None:
    p = sub.add_parser(
        "saturation",
        help="many batches at once through the API, both paths, beside writing straight to Parse (one run)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        help=f"submitters per round (1-{MAX_SUBMITTERS})",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=3,
        help=f"batches each submitter sends back to back per round (1-{MAX_BATCHES_PER_SUBMITTER})",
    )
    p.add_argument("--memories", type=int, default=100, help="memories per batch (1-MAX_BATCH_MEMORIES)")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.25,
        help=f"seconds between status polls of a batch (above 0, at most {SaturationPlan.batch_timeout_s:g})",
    )
    p.add_argument("--paths", nargs="+", choices=["reference", "legacy"], default=["reference", "legacy"])
    p.add_argument(
        "--webhook-paths",
        nargs="*",
        choices=["reference", "legacy"],
        default=["reference"],
        help="paths measured once more at the highest concurrency, waiting for webhooks instead of polling",
    )
    p.add_argument("--workers", type=int, default=1, help=f"worker processes (1-{MAX_WORKERS})")
    p.add_argument("--workload", choices=["chitchat", "synthetic"], default="chitchat")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the API and worker(s) with py-spy during each path round; records go to DIR",
    )
    p.add_argument(
        "--profile-rate", type=int, default=profile.SAMPLE_RATE_HZ, help="py-spy samples per second (1-1000)"
    )
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.set_defaults(func=func)


def _profiler(
    out_dir: Path, rate_hz: int, summaries: list[profile.Profile], missing: list[str]
) -> Callable[[Round, RunningVariant], AbstractAsyncContextManager[Any]]:
    """Wraps each path round in a py-spy record of the variant's API and worker(s); a record py-spy could
    not write goes to ``missing`` (the round's figures are kept)."""

    def around(round_: Round, variant: RunningVariant) -> AbstractAsyncContextManager[Any]:
        @asynccontextmanager
        async def recording() -> AsyncIterator[None]:
            directory = out_dir / round_.label
            async with profile.profiling(variant.pids, directory, rate_hz=rate_hz) as recorded:
                yield
            for label, record in recorded.files.items():
                if label in recorded.problems:
                    problem = " ".join(recorded.problems[label].split())
                    missing.append(
                        f"{round_.label} {label}: py-spy wrote no record ({problem}); see {directory}"
                    )
                else:
                    summaries.append(profile.summarize(record, f"{round_.label} {label}"))

        return recording()

    return around


def saturation_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        check_batch_size(args.memories, settings)
        plan = SaturationPlan(
            concurrency=tuple(args.concurrency),
            paths=tuple(args.paths),
            batches_per_submitter=args.batches,
            memories_per_batch=args.memories,
            poll_interval_s=args.poll_interval,
            webhook_paths=tuple(args.webhook_paths),
            workload=args.workload,
            workers=args.workers,
        )
    except PlanError as exc:
        print(f"saturation: {OPTIONS.get(exc.name, exc.name)} takes {exc.allowed}, got {_shown(exc.value)}")
        return 2
    summaries: list[profile.Profile] = []
    missing: list[str] = []
    around = None
    if args.profile:
        if not 1 <= args.profile_rate <= 1000:
            print(f"saturation: --profile-rate takes 1-1000, got {args.profile_rate}")
            return 2
        try:
            profile.py_spy()
        except profile.ProfilerUnavailable as exc:
            print(f"saturation: {exc}")
            return 2
        around = _profiler(Path(args.profile), args.profile_rate, summaries, missing)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"{plan.memories_per_batch}-memory {plan.workload} batches, {plan.batches_per_submitter} per "
        f"submitter per round, status polled every {plan.poll_interval_s:g} s; direct = Parse /batch, "
        f"{plan.direct_batch_size} per call, {plan.direct_in_flight} in flight"
    )
    print(
        "(ratios are to the direct round just before; CPU and requests are per batch; load average at start: "
        f"{', '.join(f'{v:.2f}' for v in load) if load else 'unknown'})"
    )
    print(format_header())
    try:
        rows = asyncio.run(measure_saturation(settings, plan, echo=print, around_path_round=around))
    except (
        SaturationError,
        CountsUnavailable,
        VariantError,
        profile.ProfilerUnavailable,
        NotEnoughUsers,
        ParseError,
    ) as exc:
        print(f"saturation not measured: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 1
    print("-- the same rows, every round:")
    print(format_header())
    for row in rows:
        print(format_row(row))
        for line in format_warnings(row):
            print(line)
    print("-- the requests behind them, per batch:")
    for row in rows:
        for line in format_counts(row):
            print(line)
    for summary in summaries:
        for line in profile.format_profile(summary):
            print(line)
    for line in missing:
        print(f"-- profile of {line}")
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if all(r.completed == r.batches for r in rows) else 1

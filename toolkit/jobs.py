"""The main job behind ``make run``: exercise the running stack end to end and print what it shows.

1. every part of the stack is healthy;
2. a real 1,000-memory chitchat batch goes through the HTTP API, with live progress, to its final status;
3. ``toolkit bench``: both paths against the direct-write baseline, measured in this same run.
"""

from __future__ import annotations

import asyncio

from toolkit import stack
from toolkit.settings import Settings

MAIN_JOB_MEMORIES = 1000
BENCH_SIZES = (10, 100, 1000)


def run_main_job(settings: Settings) -> int:
    from toolkit.api.rollout import rollout_command
    from toolkit.bench import run_bench
    from toolkit.cli import build_parser
    from toolkit.submit import submit_command

    print("== 1. the stack")
    rows = stack.status(settings)
    for row in rows:
        print(f"{row.name:<9} {'healthy' if row.healthy else 'NOT HEALTHY':<12} {row.url}")
    print(f"Temporal UI: {settings.temporal_ui}")
    if not all(row.healthy for row in rows):
        print("the stack is not healthy: run `toolkit stack up` and see .stack/logs/")
        return 1

    print(f"\n== 2. a {MAIN_JOB_MEMORIES}-memory chitchat batch through the API")
    print("live rollout flags (change with `toolkit rollout on --percent 100`):")
    rollout_command(build_parser().parse_args(["rollout", "status"]), settings)
    args = build_parser().parse_args(
        ["submit", "--memories", str(MAIN_JOB_MEMORIES), "--wait", "--timeout", "600"]
    )
    submitted = submit_command(args, settings)

    print("\n== 3. both paths against the direct-write baseline (same run, chitchat workload)")
    asyncio.run(run_bench(settings, sizes=BENCH_SIZES, workload="chitchat"))
    return submitted

"""``toolkit run``, the main job behind ``make run``: exercise the running stack end to end.

1. every part of the stack is healthy;
2. a real 1,000-memory chitchat batch goes through the HTTP API, with live progress, to its final status;
3. ``toolkit bench``: both paths against the direct-write baseline, measured in this same run.
"""

from __future__ import annotations

import argparse
import asyncio

from toolkit import stack
from toolkit.cli.rollout import rollout_command
from toolkit.cli.submit import submit_command
from toolkit.settings import Settings

MAIN_JOB_MEMORIES = 1000
BENCH_SIZES = (10, 100, 1000)


def run_main_job(settings: Settings) -> int:
    from toolkit.bench import run_bench

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
    rollout_command(argparse.Namespace(action="status", percent=None, user=None), settings)
    submitted = submit_command(
        argparse.Namespace(
            memories=MAIN_JOB_MEMORIES,
            workload="chitchat",
            wait=True,
            timeout=600.0,
            idempotency_key=None,
            webhook_url=None,
        ),
        settings,
    )

    print("\n== 3. both paths against the direct-write baseline (same run, chitchat workload)")
    asyncio.run(run_bench(settings, sizes=BENCH_SIZES, workload="chitchat"))
    return submitted

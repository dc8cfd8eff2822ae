"""``toolkit bench``: both paths against a direct-write baseline, measured in one run."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from toolkit.bench import run_bench
from toolkit.settings import Settings


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    print("(ratios are to the baseline measured in this run; absolute times depend on this machine's load)")
    rows = asyncio.run(
        run_bench(
            settings,
            sizes=args.sizes,
            workload=args.workload,
            fixed_cost_runs=args.fixed_cost_runs,
        )
    )
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0

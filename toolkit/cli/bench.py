"""``toolkit bench``: both paths against a direct-write baseline, measured in one run."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from toolkit.bench import run_bench
from toolkit.settings import Settings


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(run_bench(settings, sizes=args.sizes, workload=args.workload))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0

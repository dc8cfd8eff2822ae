"""``toolkit bench``: both paths against a direct-write baseline, measured in one run."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from toolkit.settings import Settings
from toolkit.validation.perf.bench import (
    MAX_REPEAT,
    format_ratio_summary,
    run_bench,
    run_writer_bench,
    summarize_ratios,
)


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.repeat <= MAX_REPEAT:
        print(f"--repeat takes 1-{MAX_REPEAT}, got {args.repeat}")
        return 2
    if args.writer:
        return _writer_bench(args, settings)
    print("(ratios are to the baseline measured in this run; absolute times depend on this machine's load)")
    rows = asyncio.run(
        run_bench(
            settings,
            sizes=args.sizes,
            workload=args.workload,
            paths=args.paths,
            fixed_cost_runs=args.fixed_cost_runs,
            repeat=args.repeat,
        )
    )
    if args.repeat > 1:
        print(f"-- over {args.repeat} runs of each size (baseline and paths taking turns):")
        for summary in summarize_ratios(rows):
            print(format_ratio_summary(summary))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def _writer_bench(args: argparse.Namespace, settings: Settings) -> int:
    """``--writer``: the memory writer alone, at each ``--writer-concurrency``, for each size."""
    if any(c < 1 for c in args.writer_concurrency):
        print(f"--writer-concurrency takes values >= 1, got {args.writer_concurrency}")
        return 2
    print("(ratios are to the first concurrency, measured in this run; absolute rates depend on the load)")
    rows = []
    for size in args.sizes:
        rows += asyncio.run(
            run_writer_bench(
                settings, memories=size, workload=args.workload, concurrencies=args.writer_concurrency
            )
        )
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if all(r.written == r.memories for r in rows) else 1

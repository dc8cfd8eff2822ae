"""``toolkit scale-out``: the same batches on 1 and on N workers; who worked, the speedup, the ceiling."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from toolkit.parse import ParseClient
from toolkit.parse.users import sign_up
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.validation.perf.scale_out import MAX_WORKERS, ScaleOutError, format_rows, measure_scale_out
from toolkit.validation.perf.variants import VariantError


def scale_out_command(args: argparse.Namespace, settings: Settings) -> int:
    counts = sorted(set(args.workers))
    if counts[0] < 1 or counts[-1] > MAX_WORKERS:
        print(f"--workers takes counts from 1 to {MAX_WORKERS}, got {args.workers}")
        return 2
    if not 1 <= args.batches <= 100 or not 1 <= args.memories <= 100_000:
        print("--batches takes 1-100 and --memories 1-100000")
        return 2
    env: dict[str, str] = {}
    if args.worker_slots is not None:
        if args.worker_slots < 1:
            print(f"--worker-slots takes 1 or more, got {args.worker_slots}")
            return 2
        env["WORKER_MAX_CONCURRENT_ACTIVITIES"] = str(args.worker_slots)
    print(
        f"{args.batches} batch(es) of {args.memories:,} {args.workload} memories on "
        f"{', '.join(map(str, counts))} worker(s)"
        + (f" of {args.worker_slots} activity slot(s) each" if args.worker_slots else "")
        + "; speedups are to the first row of this run"
    )

    async def run() -> list:
        temporal = await connect(settings)
        async with ParseClient(settings) as parse:
            user = await sign_up(parse)
        return await measure_scale_out(
            settings,
            user.session_token,
            temporal,
            worker_counts=counts,
            batches=args.batches,
            memories_per_batch=args.memories,
            workload=args.workload,
            env=env,
            echo=print,
        )

    try:
        rows = asyncio.run(run())
    except (ScaleOutError, VariantError) as exc:
        print(f"scale-out not measured: {exc}")
        return 1
    for line in format_rows(rows):
        print(line)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    return 0

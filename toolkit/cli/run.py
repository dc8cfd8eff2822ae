"""``toolkit run``, the main job behind ``make run``: validate the migration on the running stack.

1. every part of the stack is healthy, and the live rollout flags are shown;
2. the validation notebooks run at decision size (papermill, ``FULL_PARAMETERS``) into
   ``reports/<UTC timestamp>/``, each with an HTML copy, a line as each starts and ends; the headline
   figures are read back from the executed notebooks and printed, and ``reports/index.html`` is rebuilt
   with every run and the trends across runs.

The notebooks are the measurement: 01 sweeps both paths against the direct-write baseline (the bench),
02 the codecs, 03 a canary through the real API with as many batches as the judge needs, 04 the rollout
runbook through every stage, 05 the monitoring views, 06 the plan's concurrent and large load scenarios
on both paths. 4-8 minutes on a 2-core machine (README, "Commands").
"""

from __future__ import annotations

import argparse
import time

from toolkit import stack
from toolkit.cli.rollout import rollout_command
from toolkit.settings import REPO_ROOT, Settings


def run_main_job(settings: Settings) -> int:
    from toolkit.validation.notebooks import NOTEBOOKS_DIR, run_notebooks, summary_lines

    print("== 1. the stack")
    rows = stack.status(settings)
    for row in rows:
        print(f"{row.name:<9} {'healthy' if row.healthy else 'NOT HEALTHY':<12} {row.url}")
    print(f"Temporal UI: {settings.temporal_ui}")
    if not all(row.healthy for row in rows):
        print("the stack is not healthy: run `toolkit stack up` and see .stack/logs/")
        return 1
    print("live rollout flags (the runbook notebook changes them and puts them back):")
    rollout_command(argparse.Namespace(action="status", percent=None, user=None), settings)

    print(
        f"\n== 2. the validation notebooks in {NOTEBOOKS_DIR.relative_to(REPO_ROOT)}/, at full size",
        flush=True,
    )
    started = time.perf_counter()
    out_dir, runs = run_notebooks(REPO_ROOT / "reports", log=lambda line: print(line, flush=True))
    print("\n".join(summary_lines(out_dir, runs)))
    print(f"the notebooks took {(time.perf_counter() - started) / 60:.1f} min")
    return 0 if all(run.error is None for run in runs) else 1

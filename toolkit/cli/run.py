"""``toolkit run``, the main job behind ``make run``: validate the migration on the running stack.

1. every part of the stack is healthy, and the live rollout flags are shown;
2. the validation notebooks run at full size (papermill) into ``reports/<UTC timestamp>/``, each with an
   HTML copy, and the headline figures are read back from those executed notebooks and printed.

The notebooks are the measurement: 01 sweeps both paths against the direct-write baseline (the bench),
02 the codecs, 03 a canary through the real API, 04 the rollout runbook, 05 the monitoring views.
"""

from __future__ import annotations

import argparse

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
    out_dir, runs = run_notebooks(REPO_ROOT / "reports")
    print("\n".join(summary_lines(out_dir, runs)))
    return 0 if all(run.error is None for run in runs) else 1

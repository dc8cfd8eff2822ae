"""The main job behind ``make run``: exercise the running stack and print what it shows."""

from __future__ import annotations

from toolkit import stack
from toolkit.settings import Settings


def run_main_job(settings: Settings) -> int:
    rows = stack.status(settings)
    for row in rows:
        print(f"{row.name:<9} {'healthy' if row.healthy else 'NOT HEALTHY':<12} {row.url}")
    print(f"Temporal UI: {settings.temporal_ui}")
    return 0 if all(row.healthy for row in rows) else 1

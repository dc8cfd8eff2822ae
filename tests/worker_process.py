"""Worker processes for tests that kill one (`python -m toolkit worker`), and a poll-until helper."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from toolkit.settings import Settings


def start_worker_process(settings: Settings, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a worker on ``settings``' stack and task queue, logging to ``log``; (process, ready file).

    ``env`` adds settings (e.g. ``WRITER_BATCH_SIZE="5"``). The process leads its own session, so a
    test can kill it and its children by process group.
    """
    ready = log.with_suffix(".ready")
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "-v", "worker", "--ready-file", str(ready)],
        env={
            **os.environ,
            "TOOLKIT_STACK_DIR": str(settings.stack_dir),
            "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
            **env,
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, ready


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)

"""``toolkit worker``: one process serving the batch workflows and activities on the task queue."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from toolkit.settings import Settings
from toolkit.temporal_client import connect

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, *, ready_file: Path | None = None) -> None:
    client = await connect(settings)
    log.info("worker connected to %s, task queue %s", settings.temporal_target, settings.temporal_task_queue)
    if ready_file is not None:
        ready_file.write_text(f"{os.getpid()}\n")
    # Workflows and activities are registered here once they exist (issue 4).
    del client
    await asyncio.Event().wait()

"""The API and the worker run on the C event loop and HTTP parser (issue 19), as started in the stack.

`python -m toolkit api` names uvloop and httptools to uvicorn, and `python -m toolkit worker` runs on
uvloop: a missing one must fail at start, not fall back unnoticed to the pure-Python pair, which cost
a large share of the API's CPU per batch. What a process has loaded is read from its memory map.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.api_server import ApiServer
from tests.fixtures.worker_process import start_worker_process
from toolkit.settings import Settings
from toolkit.stack._process import stop_pid


def mapped_files(pid: int) -> str:
    """The memory map of process ``pid``: every shared object it has loaded, by path."""
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_api_runs_on_uvloop_and_httptools(start_api: Callable[..., ApiServer]) -> None:
    server = start_api()
    maps = mapped_files(server.process.pid)
    assert "/uvloop/loop." in maps, "the API is not on uvloop"
    assert "/httptools/parser/parser." in maps, "the API does not parse HTTP with httptools"


@pytest.mark.timeout(120)
async def test_the_worker_runs_on_uvloop(settings: Settings, tmp_path: Path) -> None:
    queue = f"runtime-{uuid.uuid4().hex[:8]}"
    worker_settings = dataclasses.replace(settings, temporal_task_queue=queue)
    proc, ready = start_worker_process(worker_settings, tmp_path / "worker.log")
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert ready.exists(), (tmp_path / "worker.log").read_text(errors="replace")
        maps = mapped_files(proc.pid)
        assert "/uvloop/loop." in maps, "the worker is not on uvloop"
    finally:
        stop_pid(proc.pid)
        proc.wait(timeout=30)

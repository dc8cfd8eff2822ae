"""Side-by-side code variants for same-run comparisons (fixed cost before/after, ``toolkit scale-out``).

A variant is an API process and a worker process run from a given checkout of this repository (e.g.
a ``git worktree`` of the commit before a change), on their own task queue and API port, against
the stack's Parse and Temporal. Measuring several variants in one run, submissions alternating,
gives before/after figures that share the machine's load at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from toolkit.ports import free_port
from toolkit.settings import Settings

STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


class VariantError(Exception):
    """A variant's API or worker did not come up."""


@dataclass(frozen=True)
class Variant:
    label: str
    checkout: Path | None = None  # None: this process's own code
    env: Mapping[str, str] = field(default_factory=dict)  # extra settings for both processes
    workers: int = 1


@dataclass
class RunningVariant:
    variant: Variant
    api_url: str
    task_queue: str
    pids: dict[str, int]  # "api", "worker", "worker2", … → pid


def _spawn(argv: list[str], env: dict[str, str], cwd: Path, log_file: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_GRACE_S)


async def _wait_ready(
    api_url: str, ready_files: list[Path], processes: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx.AsyncClient(base_url=api_url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                raise VariantError(f"a variant process exited early (codes {[p.poll() for p in processes]})")
            api_ok = False
            with contextlib.suppress(httpx.HTTPError):
                api_ok = (await http.get("/healthz")).status_code == 200
            if api_ok and all(f.exists() for f in ready_files):
                return
            await asyncio.sleep(0.3)
    raise VariantError(f"variant at {api_url} not ready within {STARTUP_TIMEOUT_S:g} s")


@contextlib.asynccontextmanager
async def running(settings: Settings, variants: list[Variant]) -> AsyncIterator[list[RunningVariant]]:
    """Start every variant's API and worker(s); stop them (by pid) when the block ends."""
    started: list[subprocess.Popen[bytes]] = []
    result: list[RunningVariant] = []
    try:
        for variant in variants:
            checkout = (variant.checkout or settings.checkout_dir).resolve()
            queue = f"variant-{variant.label}-{os.getpid()}"
            port = free_port()
            env = {
                **os.environ,
                "TOOLKIT_STACK_DIR": str(settings.stack_dir),
                **settings.stack_env(),
                **variant.env,
                "TEMPORAL_TASK_QUEUE": queue,
                # The stack's worker holds its metrics port; a second exporter on it would not start.
                "WORKER_METRICS_PORT": "0",
                # The checkout's package first: `python -m toolkit` from its folder imports its code.
                "PYTHONPATH": str(checkout),
            }
            logs = settings.stack_dir / "logs"
            api = _spawn(
                [sys.executable, "-m", "toolkit", "api", "--port", str(port)],
                env,
                checkout,
                logs / f"variant-{variant.label}-api.log",
            )
            started.append(api)
            pids = {"api": api.pid}
            ready: list[Path] = []
            for n in range(variant.workers):
                ready_file = settings.stack_dir / "run" / f"variant-{variant.label}-{n}.ready"
                ready_file.parent.mkdir(parents=True, exist_ok=True)
                ready_file.unlink(missing_ok=True)
                worker = _spawn(
                    [sys.executable, "-m", "toolkit", "worker", "--ready-file", str(ready_file)],
                    env,
                    checkout,
                    logs / f"variant-{variant.label}-worker{n}.log",
                )
                started.append(worker)
                pids["worker" if n == 0 else f"worker{n + 1}"] = worker.pid
                ready.append(ready_file)
            url = f"http://127.0.0.1:{port}"
            await _wait_ready(url, ready, started)
            result.append(RunningVariant(variant, url, queue, pids))
        yield result
    finally:
        for process in reversed(started):
            _stop(process)

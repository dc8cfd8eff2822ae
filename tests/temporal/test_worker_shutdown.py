"""A worker stopped with SIGTERM mid-batch, as a deploy stops it: it drains or hands back its activity.

On SIGTERM the worker stops taking tasks and gives its running activities ``WORKER_GRACEFUL_SHUTDOWN_S``
to finish (it drains). An activity still running then is cancelled and fails as ``WorkerShutdown``:
Temporal retries it at once, on another worker, from its last heartbeated checkpoint (it is handed
back), instead of waiting out the heartbeat timeout as it must when a worker is killed. Either way the
worker exits 0 and the batch completes with exact counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.fixtures.parse_proxy import parse_url_via
from tests.fixtures.temporal_worker import activity_attempts
from tests.fixtures.worker_process import start_worker_process, wait_until
from toolkit.parse import ParseClient
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.starter import SubmittedBatch, store_and_start
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import synthetic_memories

# Small, serial writes so the batch is still running when the signal arrives.
SLOW_WRITES = {"WRITER_BATCH_SIZE": "5", "WRITER_CONCURRENCY": "1"}
PROCESSING = "fetch_and_process_batch_memories"
SHUTDOWN_LOGGED = "shutting down:"  # what toolkit/temporal/worker.py logs when the signal is handled


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A test that fails before it stops its workers must not leave them polling."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def _ready_worker(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    process, ready = start_worker_process(settings, log, **SLOW_WRITES, **env)
    _started.append(process)

    async def is_ready() -> bool:
        return ready.exists()

    await wait_until(is_ready, 60, f"the worker logging to {log.name}")
    return process


async def _written_past(parse: ParseClient, batch: SubmittedBatch, count: int) -> int:
    """Wait until the batch has at least ``count`` memories in Parse; return how many it has."""
    written = 0

    async def past() -> bool:
        nonlocal written
        written = await count_memories(parse, batch.batch_id)
        return written >= count

    await wait_until(past, 120, f"{count} memories of batch {batch.batch_id} in Parse")
    return written


async def _terminate(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a deploy sends it; the exit code once the process is gone."""
    process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(process.wait, 120)


async def _finish_on_a_second_worker(
    parse: ParseClient, settings: Settings, batch: SubmittedBatch, total: int, log: Path
) -> list[int]:
    """A worker that still polls finishes the batch, with exact counts; the processing attempts."""
    second = await _ready_worker(settings, log)
    try:
        summary = await asyncio.wait_for(batch.result(), timeout=300)
    finally:
        assert await _terminate(second) == 0
    counts = (summary.status, summary.total, summary.successful, summary.failed)
    assert counts == ("completed", total, total, 0)
    assert await count_memories(parse, batch.batch_id) == total
    return await activity_attempts(batch.handle, PROCESSING)


async def test_sigterm_with_time_to_finish_drains_the_running_activity(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    user: ParseUser,
    tmp_path: Path,
    parse_proxy: TcpProxy,
) -> None:
    # The worker reaches Parse through a real proxy, so the test can hold its writes: the activity is
    # certainly mid-batch when the signal is handled, however fast the machine writes.
    first_log = tmp_path / "first.log"
    proxied = {"PARSE_SERVER_URL": parse_url_via(worker_settings, parse_proxy)}
    first = await _ready_worker(worker_settings, first_log, WORKER_GRACEFUL_SHUTDOWN_S="600", **proxied)
    total = 400
    batch = await store_and_start(
        temporal, parse, worker_settings, user, synthetic_memories(total, content_bytes=300)
    )
    await _written_past(parse, batch, 10)
    parse_proxy.set_mode("drop_replies")  # the write in flight, and every one after it, waits

    first.send_signal(signal.SIGTERM)

    async def stopping() -> bool:
        return SHUTDOWN_LOGGED in first_log.read_text()

    await wait_until(stopping, 60, "the worker to log its shutdown")
    assert await count_memories(parse, batch.batch_id) < total
    parse_proxy.set_mode("forward")  # cuts the held connections: the writes are retried and go on
    exit_code = await asyncio.to_thread(first.wait, 600)
    assert exit_code == 0, first_log.read_text()[-3000:]
    # It finished the activity before it exited: every memory is written, and by one attempt.
    assert await count_memories(parse, batch.batch_id) == total
    # The rest of the workflow (its last workflow task) needs a worker that still polls.
    attempts = await _finish_on_a_second_worker(parse, worker_settings, batch, total, tmp_path / "second.log")
    assert attempts == [1]


async def test_sigterm_past_the_grace_period_hands_the_activity_back_with_its_checkpoint(
    temporal: Client, parse: ParseClient, worker_settings: Settings, user: ParseUser, tmp_path: Path
) -> None:
    # No grace: the running activity is handed back as soon as the signal is handled.
    first = await _ready_worker(worker_settings, tmp_path / "first.log", WORKER_GRACEFUL_SHUTDOWN_S="0")
    total = 1000
    batch = await store_and_start(
        temporal, parse, worker_settings, user, synthetic_memories(total, content_bytes=300)
    )
    await _written_past(parse, batch, 100)

    exit_code = await _terminate(first)

    assert exit_code == 0, (tmp_path / "first.log").read_text()[-3000:]
    written_at_exit = await count_memories(parse, batch.batch_id)
    assert written_at_exit < total, "the activity finished before the signal: nothing was handed back"
    # Handed back, not abandoned: the attempt already failed as WorkerShutdown and the activity waits
    # for its next one (a killed worker's attempt stays 'started' until the heartbeat timeout). The
    # server holds the checkpoint the attempt reached: at most the one write in flight behind what
    # Parse has (WRITER_BATCH_SIZE 5, WRITER_CONCURRENCY 1), never the throttled heartbeat of a second ago.
    [pending] = (await batch.handle.describe()).raw_description.pending_activities
    assert pending.last_failure.application_failure_info.type == "WorkerShutdown", pending.last_failure
    handed_back = json.loads(pending.heartbeat_details.payloads[0].data)["next"]
    assert written_at_exit - 5 <= handed_back <= written_at_exit

    second_log = tmp_path / "second.log"
    attempts = await _finish_on_a_second_worker(parse, worker_settings, batch, total, second_log)
    assert attempts == [2]  # the history keeps the start of the last attempt only
    # The second attempt resumed exactly where the first handed back.
    resumed = re.findall(r"attempt 2 resumes at memory (\d+)", second_log.read_text())
    assert resumed == [str(handed_back)], second_log.read_text()[-2000:]

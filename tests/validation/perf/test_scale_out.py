"""Scale-out on real processes: one chunked batch shared by two workers (issue 10).

Each worker may hold one activity at a time, so while one writes a chunk the other must take the
next: the history's ``ActivityTaskStarted`` identities show both at work.
"""

from __future__ import annotations

import argparse

from temporalio.client import Client

from tests.fixtures.api_server import FlagSetter
from toolkit.cli.scale_out import scale_out_command
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.validation.perf.scale_out import measure_scale_out

CHUNK = 100
MEMORIES = 600  # six chunks


async def test_two_workers_share_one_chunked_batch(
    settings: Settings, user: ParseUser, set_flags: FlagSetter
) -> None:
    await set_flags(enabled=True, percent=100)
    temporal: Client = await connect(settings)
    env = {
        "BATCH_CHUNK_MEMORIES": str(CHUNK),
        "WORKER_MAX_CONCURRENT_ACTIVITIES": "1",
        # Serial writes of 5: a chunk lasts long enough that the other worker is asked for the next.
        "WRITER_BATCH_SIZE": "5",
        "WRITER_CONCURRENCY": "1",
    }
    [row] = await measure_scale_out(
        settings,
        user.session_token,
        temporal,
        worker_counts=[2],
        batches=1,
        memories_per_batch=MEMORIES,
        workload="synthetic",
        env=env,
    )
    assert (row.workers, row.batches, row.memories_per_batch, row.speedup) == (2, 1, MEMORIES, 1.0)
    # Plan + six chunks + finalize, run by two distinct worker processes.
    assert sum(row.activities_by_worker.values()) == 1 + MEMORIES // CHUNK + 1
    assert len(row.activities_by_worker) == 2, row.activities_by_worker
    assert all(count >= 1 for count in row.activities_by_worker.values())
    # CPU seconds for every part of the stack and both workers; the ceiling is one of them.
    assert {"worker", "worker2", "api", "parse", "temporal"} <= set(row.cpu_s)
    assert row.ceiling in row.wall_cores
    assert row.cpu_s["worker"] > 0 and row.cpu_s["worker2"] > 0


def test_scale_out_command_refuses_bad_counts_before_starting_anything(settings: Settings, capsys) -> None:
    cases = (([0, 2], 1, 10, None), ([1, 9], 1, 10, None), ([1], 0, 10, None), ([1], 1, 100_001, None))
    for workers, batches, memories, slots in (*cases, ([1], 1, 10, 0)):
        args = argparse.Namespace(
            workers=workers,
            batches=batches,
            memories=memories,
            worker_slots=slots,
            workload="chitchat",
            json=False,
        )
        assert scale_out_command(args, settings) == 2
    out = capsys.readouterr().out
    assert "--workers takes counts from 1 to 8" in out
    assert "--batches takes 1-100 and --memories 1-100000" in out
    assert "--worker-slots takes 1 or more, got 0" in out

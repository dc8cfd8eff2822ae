"""Scale-out: the same load on 1 and on N workers, who did the work, and which process is the ceiling.

For each worker count a variant (API + workers from this code, own task queue; see
:mod:`toolkit.validation.perf.variants`) is started, ``batches`` batches are submitted through its API at
once, and the run is timed until every workflow has finished. The workflow histories say which worker ran each
activity (the ``identity`` of ``ActivityTaskStarted``: ``<pid>@<host>``), and ``/proc`` says how many CPU
seconds each process of the stack used meanwhile: the part closest to a full core is the ceiling.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchSummary
from toolkit.validation.perf import procstats
from toolkit.validation.perf.variants import Variant, running
from toolkit.validation.workloads import make_memories

SUBMIT_TIMEOUT_S = 300.0
MAX_WORKERS = 8


class ScaleOutError(Exception):
    """A batch of the scale-out run was refused or did not complete."""


@dataclass(frozen=True)
class ScaleOutRow:
    workers: int
    batches: int
    memories_per_batch: int
    seconds: float  # first submit → last workflow closed, as this process saw it
    memories_per_s: float
    speedup: float  # memories_per_s / that of the first row (the fewest workers) of the same run
    activities_by_worker: dict[str, int] = field(default_factory=dict)  # identity → activities run
    cpu_s: dict[str, float] = field(default_factory=dict)  # process → CPU seconds during the run
    wall_cores: dict[str, float] = field(default_factory=dict)  # cpu_s / seconds: cores kept busy
    # Share of every core of the machine that was busy, whoever used it (others' load included).
    machine_busy: float | None = None

    @property
    def ceiling(self) -> str | None:
        """The process that kept the most CPU busy."""
        return max(self.wall_cores, key=self.wall_cores.__getitem__) if self.wall_cores else None


async def _activity_identities(temporal: Client, workflow_id: str) -> Counter[str]:
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    return Counter(
        e.activity_task_started_event_attributes.identity
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )


async def _one_run(
    settings: Settings,
    temporal: Client,
    session_token: str,
    api_url: str,
    pids: dict[str, int],
    batches: int,
    memories: list[dict],
) -> tuple[float, Counter[str], dict[str, float], float | None]:
    # The stack's own API and workers idle on another task queue: the variant's processes do the work.
    shared = {
        part: pid
        for part, pid in procstats.stack_pids(settings.stack_dir).items()
        if part != "api" and not part.startswith("worker")
    }
    # This process started the variant: "bench" is its own threads, or it would count the variant twice.
    watched = {**shared, **pids, "bench": os.getpid()}
    before = procstats.sample(watched, alone={"bench"})
    machine_before = procstats.machine_cpu_seconds()
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=api_url, timeout=SUBMIT_TIMEOUT_S) as http:
        answers = await asyncio.gather(
            *(
                http.post(
                    "/v1/memory/batch",
                    json={"memories": memories},
                    headers={"X-Parse-Session-Token": session_token},
                )
                for _ in range(batches)
            )
        )
    refused = [a for a in answers if a.status_code != 202]
    if refused:
        raise ScaleOutError(f"submit answered {refused[0].status_code}: {refused[0].text[:300]}")
    workflow_ids = [a.json()["workflow_id"] for a in answers]
    if any(a.json().get("storage") != "reference" for a in answers):
        raise ScaleOutError("batches went to the legacy path: turn the rollout on to measure scale-out")
    results = await asyncio.gather(
        *(temporal.get_workflow_handle(w, result_type=BatchSummary).result() for w in workflow_ids)
    )
    seconds = time.perf_counter() - started
    after = procstats.sample(watched, alone={"bench"})
    machine_after = procstats.machine_cpu_seconds()
    busy = None
    if machine_before and machine_after and machine_after[1] > machine_before[1]:
        busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
    if any(r.status != "completed" for r in results):
        raise ScaleOutError(f"not every batch completed: {[r.status for r in results]}")
    identities: Counter[str] = Counter()
    for workflow_id in workflow_ids:
        identities += await _activity_identities(temporal, workflow_id)
    return seconds, identities, procstats.cpu_delta(before, after), busy


async def measure_scale_out(
    settings: Settings,
    session_token: str,
    temporal: Client,
    *,
    worker_counts: Sequence[int] = (1, 2),
    batches: int = 4,
    memories_per_batch: int = 2000,
    workload: str = "chitchat",
    env: Mapping[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[ScaleOutRow]:
    """One row per worker count, the same batches each time; speedups against the first row.

    ``env`` adds settings to the variant's API and workers (e.g. a smaller ``BATCH_CHUNK_MEMORIES``).
    """
    memories = make_memories(workload, memories_per_batch)
    rows: list[ScaleOutRow] = []
    for count in worker_counts:
        if echo is not None:
            echo(f"... {count} worker(s): starting an API and the workers, then submitting")
        variant_spec = Variant(f"scale{count}", env=dict(env or {}), workers=count)
        async with running(settings, [variant_spec]) as [variant]:
            seconds, identities, cpu, busy = await _one_run(
                settings, temporal, session_token, variant.api_url, variant.pids, batches, memories
            )
        rate = batches * memories_per_batch / seconds
        rows.append(
            ScaleOutRow(
                workers=count,
                batches=batches,
                memories_per_batch=memories_per_batch,
                seconds=seconds,
                memories_per_s=rate,
                speedup=rate / rows[0].memories_per_s if rows else 1.0,
                activities_by_worker=dict(identities),
                cpu_s={k: round(v, 2) for k, v in cpu.items()},
                wall_cores={k: round(v / seconds, 2) for k, v in cpu.items()},
                machine_busy=round(busy, 3) if busy is not None else None,
            )
        )
    return rows


def format_rows(rows: Sequence[ScaleOutRow]) -> list[str]:
    lines = []
    for r in rows:
        lines.append(
            f"{r.workers} worker(s): {r.batches} x {r.memories_per_batch} memories in {r.seconds:.1f} s, "
            f"{r.memories_per_s:.0f} mem/s, speedup {r.speedup:.2f}x; ceiling: {r.ceiling}"
        )
        lines.append(f"   activities by worker: {r.activities_by_worker}")
        lines.append(f"   cores busy: {r.wall_cores}; whole machine busy: {r.machine_busy}")
    return lines

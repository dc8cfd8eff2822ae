"""Runs of the toolkit's own two workflows for the audit to find: one batch on each path, to completion.

The audit reads; this writes. Notebook 00 calls it first so that the audit of a fresh local stack covers
both workflow types (``ProcessBatchMemoryFromRequestWorkflow`` and the legacy ``ProcessBatchMemoryWorkflow``).
It signs up one Parse user and writes the batch's memories twice, like one size of notebook 01.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.parse import ParseClient
from toolkit.parse.users import sign_up
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import store_and_start
from toolkit.validation.workloads import make_memories

__all__ = ["SampleRun", "run_sample_batches"]


@dataclass(frozen=True)
class SampleRun:
    path: str  # "reference" or "legacy"
    workflow_type: str
    workflow_id: str
    run_id: str
    memories: int
    status: str  # the batch's final status


async def run_sample_batches(
    settings: Settings, memories: int, workload: str = "chitchat"
) -> list[SampleRun]:
    """One batch of ``memories`` on the reference path, then the same memories on the legacy path."""
    temporal = await connect(settings)
    items = make_memories(workload, memories)
    runs: list[SampleRun] = []
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        for path in ("reference", "legacy"):
            batch = await store_and_start(temporal, parse, settings, user, items, legacy=path == "legacy")
            summary = await batch.result()
            description = await batch.handle.describe()
            runs.append(
                SampleRun(
                    path,
                    description.workflow_type,
                    batch.handle.id,
                    description.run_id,
                    memories,
                    summary.status,
                )
            )
    return runs

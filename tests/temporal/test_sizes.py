"""Deterministic byte counts read from the real Temporal server: the reason for the migration."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.starter import store_and_start
from toolkit.validation.perf.history import measure_history
from toolkit.validation.workloads import chitchat_memories, synthetic_memories


async def test_reference_input_and_history_stay_small_whatever_the_batch_size(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    figures = {}
    for size in (10, 100, 1000):
        batch = await store_and_start(temporal, parse, worker_settings, user, chitchat_memories(size))
        summary = await batch.result()
        assert summary.successful == size
        figures[size] = await measure_history(batch.handle)
    for size, fig in figures.items():
        print(
            f"reference path, {size:>5} memories: input {fig.input_bytes} B, "
            f"history {fig.history_bytes} B / {fig.history_events} events"
        )
        assert fig.input_bytes <= 100
        assert fig.history_bytes <= 10_000
    # The input does not grow with the batch at all.
    assert len({fig.input_bytes for fig in figures.values()}) == 1


@pytest.mark.parametrize(
    ("workload", "memories", "min_ratio"),
    [
        # 500-byte memories, the design's size-sweep unit: the "expect >= 50x" holds.
        ("synthetic-500B", synthetic_memories(100, content_bytes=500), 50),
        # Real chat lines are short (~100 B with metadata); measured 48x here, so 40x is the honest floor.
        ("chitchat", chitchat_memories(100), 40),
    ],
)
async def test_legacy_history_at_100_memories_dwarfs_the_reference(
    temporal: Client,
    parse: ParseClient,
    worker_settings: Settings,
    worker: None,
    user: ParseUser,
    workload: str,
    memories: list[dict],
    min_ratio: int,
) -> None:
    reference = await store_and_start(temporal, parse, worker_settings, user, memories)
    legacy = await store_and_start(temporal, parse, worker_settings, user, memories, legacy=True)
    assert (await reference.result()).successful == 100
    legacy_summary = await legacy.result()
    assert (legacy_summary.status, legacy_summary.successful) == ("completed", 100)
    ref, old = await measure_history(reference.handle), await measure_history(legacy.handle)
    print(
        f"{workload}, 100 memories: reference history {ref.history_bytes} B / {ref.history_events} events; "
        f"legacy {old.history_bytes} B / {old.history_events} events; "
        f"ratio {old.history_bytes / ref.history_bytes:.0f}x; "
        f"inputs {ref.input_bytes} B vs {old.input_bytes} B"
    )
    assert old.history_bytes >= min_ratio * ref.history_bytes
    # Every memory is stored at least twice in the legacy history: in the input and in its activity's input.
    assert old.history_bytes >= 2 * old.input_bytes
